//! A Python pickle payload read into the document the JSON path works on, without executing
//! anything: Python job libraries (Huey, and others configured with a pickle serializer)
//! push pickles, and a generic rule's pointers then name their fields.
//!
//! # What a pickle becomes
//!
//! The reader runs the pickle machine of protocols 2 to 5 (the binary opcodes Python 3
//! writes; the text opcodes of protocols 0 and 1 other than `GLOBAL` are refused) over values
//! of its own, never over Python objects:
//! - `None`, booleans, integers, floats and strings are themselves; tuples and lists are
//!   arrays; a dict is an object (keys as [`document`] writes them); a set or frozenset is an
//!   array sorted by the elements' JSON text, since Python's set order changes between
//!   processes;
//! - bytes and bytearrays are `{"$bytes": "<hex>"}`, integers past 64 bits
//!   `{"$int": "0x..."}` (a `uuid.UUID`'s 128-bit `int`), as [`document`] says;
//! - a global (`GLOBAL`, `STACK_GLOBAL`) is the string `"module.name"`;
//! - an object built by `REDUCE` is `{"reduce": callable, "args": [...]}`, one built by
//!   `NEWOBJ` or `NEWOBJ_EX` `{"new": class, "args": [...]}` (and `"kwargs": {...}`); `BUILD`
//!   adds its `"state"`, and items appended or set on the object (an `OrderedDict`, a list
//!   subclass) are its `"listitems"` and `"dictitems"`. So a namedtuple's third field is
//!   `/args/2` and a `uuid.UUID` is `{"new": "uuid.UUID", "args": [], "state": {"int":
//!   {"$int": "0x..."}}}`, removed whole by the pointer naming it;
//! - protocol 2's spellings of newer opcodes read as the newer ones do: a set or frozenset
//!   rebuilt by `builtins.set(list)`, bytes by `_codecs.encode(text, "latin1")`, so a job
//!   pickled with either protocol has one fingerprint.
//!
//! # Why not serde-pickle
//!
//! `serde-pickle` reads protocols up to 5 but resolves only the few globals it knows (set,
//! frozenset, list, int, bytearray, `_codecs.encode`); any other, such as a namedtuple's
//! class or `uuid.UUID`, is kept as an opaque global, and the object built from it becomes
//! an `UnresolvedGlobal` error or, with `replace_unresolved_globals`, `None`. A Huey message would read as `None`: every job the same.
//! What a pickling job library writes is objects built from globals, so this reader keeps
//! them as data instead.
//!
//! # Bounds
//!
//! Values are built in an arena and shared by index, as the pickle's memo shares them; a
//! document is written from the arena once the pickle has stopped. The input is at most
//! [`MAX_INPUT`] bytes, the arena and the written document at most [`MAX_VALUES`] values
//! each (a value the memo shares counts once per place it is written), the written strings
//! at most [`MAX_TEXT`] bytes, the memo at most [`MAX_MEMO`] entries, and nesting at most
//! [`MAX_DEPTH`] (a value containing itself is refused by that bound). Every count in the
//! input is checked against the bytes left before it is used. Past a bound, on an opcode
//! it does not know, or on malformed input, the payload is not read: the guard counts it
//! `unread` and passes it, as it does a payload that is not JSON.

use rustc_hash::FxHashMap;
use serde_json::{Map, Value};

use super::document;

/// The longest pickle read, in bytes.
pub const MAX_INPUT: usize = 1 << 20;
/// The most values built, and the most written into the document.
pub const MAX_VALUES: usize = 100_000;
/// The most entries in the memo.
pub const MAX_MEMO: usize = 100_000;
/// The most bytes of strings (and hexadecimal bytes) written into the document.
pub const MAX_TEXT: usize = 4 << 20;
/// The deepest nesting written (serde_json's own limit for JSON).
pub const MAX_DEPTH: usize = 128;

/// Why a pickle was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickleError {
    /// Longer than [`MAX_INPUT`].
    #[error("pickle over {MAX_INPUT} bytes")]
    TooLong,
    /// An opcode's argument runs past the end, or there is no `STOP`.
    #[error("truncated")]
    Truncated,
    /// Past one of the bounds.
    #[error("over the bound on {0}")]
    OverBound(&'static str),
    /// Nested deeper than [`MAX_DEPTH`] (or containing itself).
    #[error("nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// An opcode this reader does not run.
    #[error("opcode 0x{0:02x} not read")]
    Unsupported(u8),
    /// Anything else Python's unpickler would refuse too.
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

/// The document in the pickle `input`.
pub fn read(input: &[u8]) -> Result<Value, PickleError> {
    if input.len() > MAX_INPUT {
        return Err(PickleError::TooLong);
    }
    let mut machine = Machine {
        input,
        pos: 0,
        values: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: FxHashMap::default(),
    };
    let top = machine.run()?;
    Writer {
        values: &machine.values,
        written: 0,
        text: 0,
    }
    .value(top, 0)
}

/// A value's place in the arena.
type Id = u32;

/// A value the pickle machine built.
#[derive(Debug)]
enum Val<'a> {
    None,
    Bool(bool),
    Int(i64),
    UInt(u64),
    /// An integer past 64 bits: little-endian two's complement, as pickled.
    Long(&'a [u8]),
    Float(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
    Global(String),
    Seq(Seq, Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Object(Box<Object>),
    /// A code of the extension registry (`copyreg.add_extension`).
    Ext(i64),
}

/// The kinds of sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seq {
    Tuple,
    List,
    Set,
}

/// An object built by `REDUCE` (`new` false) or `NEWOBJ`.
#[derive(Debug)]
struct Object {
    new: bool,
    callable: Id,
    args: Id,
    kwargs: Option<Id>,
    state: Option<Id>,
    listitems: Vec<Id>,
    dictitems: Vec<(Id, Id)>,
}

/// The pickle machine: its input, arena, stack, marks and memo.
struct Machine<'a> {
    input: &'a [u8],
    pos: usize,
    values: Vec<Val<'a>>,
    stack: Vec<Id>,
    /// Where the stack was at each open `MARK`.
    marks: Vec<usize>,
    memo: FxHashMap<u32, Id>,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PickleError> {
        if n > self.input.len() - self.pos {
            return Err(PickleError::Truncated);
        }
        let b = &self.input[self.pos..self.pos + n];
        self.pos += n;
        Ok(b)
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N], PickleError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// A length of `N` little-endian bytes; the bytes it counts are checked when taken.
    fn len<const N: usize>(&mut self) -> Result<usize, PickleError> {
        let b = self.le::<N>()?;
        let n = b
            .iter()
            .rev()
            .fold(0u64, |acc, &x| (acc << 8) | u64::from(x));
        usize::try_from(n).map_err(|_| PickleError::Truncated)
    }

    /// A text line, without its newline (`GLOBAL`'s module and name).
    fn line(&mut self) -> Result<&'a str, PickleError> {
        let rest = &self.input[self.pos..];
        let n = memchr::memchr(b'\n', rest).ok_or(PickleError::Truncated)?;
        self.pos += n + 1;
        std::str::from_utf8(&rest[..n]).map_err(|_| PickleError::Malformed("global not UTF-8"))
    }

    fn str(&mut self, n: usize) -> Result<Val<'a>, PickleError> {
        let b = self.take(n)?;
        std::str::from_utf8(b)
            .map(Val::Str)
            .map_err(|_| PickleError::Malformed("string not UTF-8"))
    }

    /// A new value on the stack.
    fn push(&mut self, v: Val<'a>) -> Result<(), PickleError> {
        if self.values.len() >= MAX_VALUES {
            return Err(PickleError::OverBound("values"));
        }
        self.stack.push(self.values.len() as Id);
        self.values.push(v);
        Ok(())
    }

    /// Where the values since the last mark begin.
    fn base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Result<Id, PickleError> {
        if self.stack.len() <= self.base() {
            return Err(PickleError::Malformed("stack underflow"));
        }
        Ok(self.stack.pop().unwrap_or_default())
    }

    fn top(&self) -> Result<Id, PickleError> {
        if self.stack.len() <= self.base() {
            return Err(PickleError::Malformed("stack underflow"));
        }
        Ok(self.stack[self.stack.len() - 1])
    }

    /// The values since the last mark, and the mark closed.
    fn pop_mark(&mut self) -> Result<Vec<Id>, PickleError> {
        let base = self.marks.pop().ok_or(PickleError::Malformed("no mark"))?;
        Ok(self.stack.split_off(base))
    }

    /// The last `n` values, for TUPLE1 to TUPLE3.
    fn pop_n(&mut self, n: usize) -> Result<Vec<Id>, PickleError> {
        if self.stack.len() < self.base() + n {
            return Err(PickleError::Malformed("stack underflow"));
        }
        Ok(self.stack.split_off(self.stack.len() - n))
    }

    fn memo_put(&mut self, index: u32) -> Result<(), PickleError> {
        let top = self.top()?;
        if self.memo.len() >= MAX_MEMO && !self.memo.contains_key(&index) {
            return Err(PickleError::OverBound("memo"));
        }
        self.memo.insert(index, top);
        Ok(())
    }

    fn memo_get(&mut self, index: u32) -> Result<(), PickleError> {
        let id = *self
            .memo
            .get(&index)
            .ok_or(PickleError::Malformed("memo entry missing"))?;
        self.stack.push(id);
        Ok(())
    }

    /// An integer of `n` little-endian two's-complement bytes (LONG1, LONG4).
    fn long(&mut self, n: usize) -> Result<(), PickleError> {
        let b = self.take(n)?;
        let negative = b.last().is_some_and(|x| x & 0x80 != 0);
        let v = if b.len() <= 8 {
            let fill = if negative { 0xff } else { 0 };
            let mut a = [fill; 8];
            a[..b.len()].copy_from_slice(b);
            Val::Int(i64::from_le_bytes(a))
        } else if b.len() == 9 && b[8] == 0 {
            let mut a = [0; 8];
            a.copy_from_slice(&b[..8]);
            Val::UInt(u64::from_le_bytes(a))
        } else {
            Val::Long(b)
        };
        self.push(v)
    }

    /// Items appended to the list (or list-like object) under them.
    fn append(&mut self, items: Vec<Id>) -> Result<(), PickleError> {
        let target = self.top()?;
        match &mut self.values[target as usize] {
            Val::Seq(Seq::List, v) => v.extend(items),
            Val::Object(o) => o.listitems.extend(items),
            _ => return Err(PickleError::Malformed("append to a non-list")),
        }
        Ok(())
    }

    /// Key-value pairs set on the dict (or dict-like object) under them.
    fn set_items(&mut self, items: Vec<Id>) -> Result<(), PickleError> {
        if items.len() % 2 != 0 {
            return Err(PickleError::Malformed("odd number of dict items"));
        }
        let pairs = items.chunks_exact(2).map(|p| (p[0], p[1]));
        let target = self.top()?;
        match &mut self.values[target as usize] {
            Val::Dict(v) => v.extend(pairs),
            Val::Object(o) => o.dictitems.extend(pairs),
            _ => return Err(PickleError::Malformed("set item on a non-dict")),
        }
        Ok(())
    }

    fn object(&mut self, new: bool, kwargs: Option<Id>) -> Result<(), PickleError> {
        let args = self.pop()?;
        let callable = self.pop()?;
        self.push(Val::Object(Box::new(Object {
            new,
            callable,
            args,
            kwargs,
            state: None,
            listitems: Vec::new(),
            dictitems: Vec::new(),
        })))
    }

    /// Run the pickle to its `STOP`; the value it leaves.
    fn run(&mut self) -> Result<Id, PickleError> {
        loop {
            let op = self.take(1)?[0];
            match op {
                // PROTO, FRAME: the version read, frames are only a hint for buffering.
                0x80 => {
                    if self.take(1)?[0] > 5 {
                        return Err(PickleError::Unsupported(op));
                    }
                }
                0x95 => {
                    self.take(8)?;
                }
                b'.' => return self.stop(),
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    if self.stack.len() > self.base() {
                        self.stack.pop();
                    } else {
                        self.pop_mark()?;
                    }
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let top = self.top()?;
                    self.stack.push(top);
                }
                b'N' => self.push(Val::None)?,
                0x88 => self.push(Val::Bool(true))?,
                0x89 => self.push(Val::Bool(false))?,
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.push(Val::Int(v.into()))?
                }
                b'K' => {
                    let v = self.take(1)?[0];
                    self.push(Val::Int(v.into()))?
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.push(Val::Int(v.into()))?
                }
                0x8a => {
                    let n = self.len::<1>()?;
                    self.long(n)?
                }
                0x8b => {
                    let n = i32::from_le_bytes(self.le()?);
                    let n = usize::try_from(n).map_err(|_| PickleError::Malformed("LONG4"))?;
                    self.long(n)?
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.push(Val::Float(v))?
                }
                0x8c => {
                    let n = self.len::<1>()?;
                    let v = self.str(n)?;
                    self.push(v)?
                }
                b'X' => {
                    let n = self.len::<4>()?;
                    let v = self.str(n)?;
                    self.push(v)?
                }
                0x8d => {
                    let n = self.len::<8>()?;
                    let v = self.str(n)?;
                    self.push(v)?
                }
                // SHORT_BINBYTES, SHORT_BINSTRING (a Python 2 str, bytes to Python 3).
                b'C' | b'U' => {
                    let n = self.len::<1>()?;
                    let v = Val::Bytes(self.take(n)?);
                    self.push(v)?
                }
                // BINBYTES, BINSTRING.
                b'B' | b'T' => {
                    let n = self.len::<4>()?;
                    let v = Val::Bytes(self.take(n)?);
                    self.push(v)?
                }
                // BINBYTES8, BYTEARRAY8.
                0x8e | 0x96 => {
                    let n = self.len::<8>()?;
                    let v = Val::Bytes(self.take(n)?);
                    self.push(v)?
                }
                b')' => self.push(Val::Seq(Seq::Tuple, Vec::new()))?,
                b't' => {
                    let items = self.pop_mark()?;
                    self.push(Val::Seq(Seq::Tuple, items))?
                }
                0x85..=0x87 => {
                    let items = self.pop_n(usize::from(op - 0x84))?;
                    self.push(Val::Seq(Seq::Tuple, items))?
                }
                b']' => self.push(Val::Seq(Seq::List, Vec::new()))?,
                b'l' => {
                    let items = self.pop_mark()?;
                    self.push(Val::Seq(Seq::List, items))?
                }
                b'a' => {
                    let item = self.pop()?;
                    self.append(vec![item])?
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    self.append(items)?
                }
                b'}' => self.push(Val::Dict(Vec::new()))?,
                b'd' => {
                    let items = self.pop_mark()?;
                    self.push(Val::Dict(Vec::new()))?;
                    self.set_items(items)?
                }
                b's' => {
                    let items = self.pop_n(2)?;
                    self.set_items(items)?
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?
                }
                0x8f => self.push(Val::Seq(Seq::Set, Vec::new()))?,
                0x90 => {
                    let items = self.pop_mark()?;
                    let target = self.top()?;
                    match &mut self.values[target as usize] {
                        Val::Seq(Seq::Set, v) => v.extend(items),
                        _ => return Err(PickleError::Malformed("add items to a non-set")),
                    }
                }
                0x91 => {
                    let items = self.pop_mark()?;
                    self.push(Val::Seq(Seq::Set, items))?
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.push(Val::Global(format!("{module}.{name}")))?
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let global = match (&self.values[module as usize], &self.values[name as usize])
                    {
                        (Val::Str(m), Val::Str(n)) => format!("{m}.{n}"),
                        _ => return Err(PickleError::Malformed("STACK_GLOBAL of non-strings")),
                    };
                    self.push(Val::Global(global))?
                }
                b'R' => self.object(false, None)?,
                0x81 => self.object(true, None)?,
                0x92 => {
                    let kwargs = self.pop()?;
                    self.object(true, Some(kwargs))?
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    match &mut self.values[target as usize] {
                        Val::Object(o) if o.state.is_none() => o.state = Some(state),
                        _ => return Err(PickleError::Malformed("BUILD of a non-object")),
                    }
                }
                b'q' => {
                    let i = self.take(1)?[0];
                    self.memo_put(i.into())?
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.le()?);
                    self.memo_put(i)?
                }
                0x94 => {
                    let i = u32::try_from(self.memo.len()).unwrap_or(u32::MAX);
                    self.memo_put(i)?
                }
                b'h' => {
                    let i = self.take(1)?[0];
                    self.memo_get(i.into())?
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.le()?);
                    self.memo_get(i)?
                }
                0x82 => {
                    let code = self.take(1)?[0];
                    self.push(Val::Ext(code.into()))?
                }
                0x83 => {
                    let code = u16::from_le_bytes(self.le()?);
                    self.push(Val::Ext(code.into()))?
                }
                0x84 => {
                    let code = i32::from_le_bytes(self.le()?);
                    self.push(Val::Ext(code.into()))?
                }
                // READONLY_BUFFER: a buffer's mutability, nothing of its content.
                0x98 => {
                    self.top()?;
                }
                // NEXT_BUFFER (out-of-band data, not in the payload), PERSID, BINPERSID, INST,
                // OBJ, the text opcodes and anything unknown.
                _ => return Err(PickleError::Unsupported(op)),
            }
        }
    }

    /// `STOP`: the one value left, with nothing after it.
    fn stop(&mut self) -> Result<Id, PickleError> {
        if self.pos != self.input.len() {
            return Err(PickleError::Malformed("bytes after STOP"));
        }
        if !self.marks.is_empty() || self.stack.len() != 1 {
            return Err(PickleError::Malformed("stack not one value at STOP"));
        }
        self.pop()
    }
}

/// Writes the document from the arena, counting what it writes.
struct Writer<'v, 'a> {
    values: &'v [Val<'a>],
    written: usize,
    text: usize,
}

impl<'v, 'a> Writer<'v, 'a> {
    /// A value of the arena, borrowed from the arena rather than the writer.
    fn get(&self, id: Id) -> &'v Val<'a> {
        &self.values[id as usize]
    }

    fn text(&mut self, n: usize) -> Result<(), PickleError> {
        self.text += n;
        if self.text > MAX_TEXT {
            return Err(PickleError::OverBound("text"));
        }
        Ok(())
    }

    fn value(&mut self, id: Id, depth: usize) -> Result<Value, PickleError> {
        if depth > MAX_DEPTH {
            return Err(PickleError::TooDeep);
        }
        self.written += 1;
        if self.written > MAX_VALUES {
            return Err(PickleError::OverBound("values written"));
        }
        Ok(match self.get(id) {
            Val::None => Value::Null,
            Val::Bool(b) => Value::Bool(*b),
            Val::Int(i) => (*i).into(),
            Val::UInt(u) => (*u).into(),
            Val::Long(b) => {
                self.text(b.len() * 2 + 3)?;
                document::single("$int", long_hex(b).into())
            }
            Val::Float(f) => document::float(*f),
            Val::Str(s) => {
                self.text(s.len())?;
                Value::String(s.to_string())
            }
            Val::Bytes(b) => {
                self.text(b.len() * 2)?;
                document::bytes(b)
            }
            Val::Global(g) => {
                self.text(g.len())?;
                Value::String(g.clone())
            }
            Val::Seq(Seq::Set, items) => self.set(items, depth)?,
            Val::Seq(_, items) => Value::Array(self.array(items, depth)?),
            Val::Dict(pairs) => Value::Object(self.dict(pairs, depth)?),
            Val::Object(o) => self.object(o, depth)?,
            Val::Ext(code) => document::single("$ext", (*code).into()),
        })
    }

    fn array(&mut self, items: &[Id], depth: usize) -> Result<Vec<Value>, PickleError> {
        items.iter().map(|&i| self.value(i, depth + 1)).collect()
    }

    /// A set's elements, sorted by their JSON text.
    fn set(&mut self, items: &[Id], depth: usize) -> Result<Value, PickleError> {
        let mut v = self.array(items, depth)?;
        v.sort_by_cached_key(Value::to_string);
        Ok(Value::Array(v))
    }

    fn dict(
        &mut self,
        pairs: &[(Id, Id)],
        depth: usize,
    ) -> Result<Map<String, Value>, PickleError> {
        let mut m = Map::new();
        for &(k, v) in pairs {
            // A key that is not a string is written as JSON text, and a dict key inside a
            // key escapes that text again, doubling it level after level: counted as text.
            let key = match self.value(k, depth + 1)? {
                Value::String(s) => s,
                other => {
                    let text = document::key(other);
                    self.text(text.len())?;
                    text
                }
            };
            m.insert(key, self.value(v, depth + 1)?);
        }
        Ok(m)
    }

    fn object(&mut self, o: &Object, depth: usize) -> Result<Value, PickleError> {
        if let Some(v) = self.protocol_2_spelling(o, depth)? {
            return Ok(v);
        }
        let mut m = Map::new();
        let how = if o.new { "new" } else { "reduce" };
        m.insert(how.into(), self.value(o.callable, depth + 1)?);
        m.insert("args".into(), self.value(o.args, depth + 1)?);
        if let Some(k) = o.kwargs {
            m.insert("kwargs".into(), self.value(k, depth + 1)?);
        }
        if let Some(s) = o.state {
            m.insert("state".into(), self.value(s, depth + 1)?);
        }
        if !o.listitems.is_empty() {
            let items = self.array(&o.listitems, depth + 1)?;
            m.insert("listitems".into(), Value::Array(items));
        }
        if !o.dictitems.is_empty() {
            let items = self.dict(&o.dictitems, depth + 1)?;
            m.insert("dictitems".into(), Value::Object(items));
        }
        Ok(Value::Object(m))
    }

    /// A set, frozenset or bytes as protocol 2 (which has no opcode for them) rebuilds it:
    /// written as the newer protocols' opcodes read.
    fn protocol_2_spelling(
        &mut self,
        o: &Object,
        depth: usize,
    ) -> Result<Option<Value>, PickleError> {
        if o.new || o.kwargs.is_some() || o.state.is_some() {
            return Ok(None);
        }
        let (Val::Global(callable), Val::Seq(Seq::Tuple, args)) =
            (self.get(o.callable), self.get(o.args))
        else {
            return Ok(None);
        };
        match (callable.as_str(), args.as_slice()) {
            (
                "builtins.set" | "builtins.frozenset" | "__builtin__.set" | "__builtin__.frozenset",
                [list],
            ) => match self.get(*list) {
                Val::Seq(Seq::List, items) => self.set(items, depth).map(Some),
                _ => Ok(None),
            },
            ("_codecs.encode", [text, encoding]) => {
                let (Val::Str(text), Val::Str("latin1" | "latin-1")) =
                    (self.get(*text), self.get(*encoding))
                else {
                    return Ok(None);
                };
                let Ok(b) = text
                    .chars()
                    .map(|c| u8::try_from(u32::from(c)))
                    .collect::<Result<Vec<u8>, _>>()
                else {
                    return Ok(None);
                };
                self.text(b.len() * 2)?;
                Ok(Some(document::bytes(&b)))
            }
            _ => Ok(None),
        }
    }
}

/// An integer of little-endian two's-complement bytes as `0x<hex>` or `-0x<hex>`, the hex of
/// its magnitude without leading zeros.
fn long_hex(le: &[u8]) -> String {
    let negative = le.last().is_some_and(|x| x & 0x80 != 0);
    let mut magnitude = le.to_vec();
    if negative {
        // Two's complement negation: invert, then add one.
        let mut carry = true;
        for b in &mut magnitude {
            let (v, c) = (!*b).overflowing_add(u8::from(carry));
            *b = v;
            carry = c;
        }
    }
    magnitude.reverse();
    let digits = document::hex(&magnitude);
    let digits = digits.trim_start_matches('0');
    let digits = if digits.is_empty() { "0" } else { digits };
    format!("{}0x{digits}", if negative { "-" } else { "" })
}

#[cfg(test)]
mod tests;
