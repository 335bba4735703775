//! What the proxy knows of scripts and functions: whether running one can grow Redis's
//! memory, judged from its source, so the shed guard at `hard` lets through the scripts that
//! cannot (a worker's read, a status check) instead of every script not in
//! `allowed_scripts`.
//!
//! Redis itself refuses a script under `maxmemory` only when it runs a memory-growing
//! (`denyoom`) command, or, for a script with a shebang (`#!lua flags=...`), up front unless
//! it is flagged `no-writes` or `allow-oom`. The proxy judges before Redis runs anything, so
//! it reads the source:
//! - a shebang's flags decide: `no-writes` cannot grow memory, `allow-oom` asks to run under
//!   pressure (Redis lets it, and so does the proxy), and any other shebang script is one
//!   Redis itself would refuse;
//! - without a shebang, every `redis.call`/`redis.pcall` (or `server.`) must name a command
//!   with a literal string that is not `denyoom`; a computed name, an aliased `redis.call`
//!   or a name the command table does not know makes the script one that may grow memory.
//!
//! A function library's functions are judged by their `flags` in `register_function`
//! (`no-writes`, `allow-oom`), and those without flags by the whole library's source as a
//! script without a shebang.
//!
//! Sources are seen in EVAL (judged there, no need to remember), and SCRIPT LOAD and
//! FUNCTION LOAD (remembered, by SHA1 digest and function name). The catalog is bounded
//! ([`MAX_SCRIPTS`], [`MAX_FUNCTIONS`]); past the bound the oldest entries are forgotten,
//! and a script not known is judged as one that may grow memory, as before this catalog.

use std::collections::VecDeque;
use std::sync::Mutex;

use rustc_hash::FxHashMap;

use rustc_hash::FxHashSet;

use crate::command::shebang::shebang_flags;
use crate::command::{CommandTable, Flags};

/// Most script digests remembered.
pub const MAX_SCRIPTS: usize = 4096;
/// Most function names remembered.
pub const MAX_FUNCTIONS: usize = 4096;

/// The commands a script may call without growing memory: those of the command table
/// without `denyoom`, a container only when none of its subcommands has it. Built with the
/// guards.
#[derive(Debug, Default)]
pub struct CommandGrowth {
    /// Lower-case names.
    safe: FxHashSet<Box<[u8]>>,
}

impl CommandGrowth {
    /// From the command table.
    pub fn of(table: &CommandTable) -> Self {
        let mut safe = FxHashSet::default();
        let mut unsafe_containers = FxHashSet::default();
        for info in table.all() {
            let grows = info.flags.contains(Flags::DENYOOM);
            match info.name.split_once('|') {
                Some((container, _)) if grows => {
                    unsafe_containers.insert(container.as_bytes().to_vec().into_boxed_slice());
                }
                Some(_) => {}
                None if !grows && info.id != table.unknown().id => {
                    safe.insert(info.name.as_bytes().to_vec().into_boxed_slice());
                }
                None => {}
            }
        }
        safe.retain(|name| !unsafe_containers.contains(name));
        CommandGrowth { safe }
    }

    /// Whether calling `name` (any letter case) cannot grow memory.
    fn is_safe(&self, name: &[u8]) -> bool {
        let mut lower = [0u8; 64];
        let Some(buf) = lower.get_mut(..name.len()) else {
            return false;
        };
        for (d, s) in buf.iter_mut().zip(name) {
            *d = s.to_ascii_lowercase();
        }
        self.safe.contains(&*buf)
    }
}

/// Whether running a script may grow Redis's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptNature {
    /// It calls only commands that do not grow memory, or is flagged `no-writes`.
    CannotGrow,
    /// It is flagged `allow-oom`: its author asks for it to run under memory pressure.
    AllowOom,
    /// It may grow memory (or the proxy cannot tell).
    MayGrow,
}

impl ScriptNature {
    /// Whether the shed guard lets it through at `hard`.
    pub fn passes_hard(self) -> bool {
        self != ScriptNature::MayGrow
    }

    /// Judge a script's source (see the module's doc).
    pub fn of_script(body: &[u8], growth: &CommandGrowth) -> ScriptNature {
        if let Some(flags) = shebang_flags(body) {
            return nature_of_flags(&flags).unwrap_or(ScriptNature::MayGrow);
        }
        Self::of_calls(body, growth)
    }

    /// Judge source without flags by the commands it calls.
    fn of_calls(body: &[u8], growth: &CommandGrowth) -> ScriptNature {
        let calls = CallSites { body, at: 0 };
        for name in calls {
            if !name.is_some_and(|name| growth.is_safe(name)) {
                return ScriptNature::MayGrow;
            }
        }
        ScriptNature::CannotGrow
    }
}

/// The nature its flags give a script or function: `None` when they give neither
/// `no-writes` nor `allow-oom`.
fn nature_of_flags(flags: &[&[u8]]) -> Option<ScriptNature> {
    if flags.contains(&&b"no-writes"[..]) {
        Some(ScriptNature::CannotGrow)
    } else if flags.contains(&&b"allow-oom"[..]) {
        Some(ScriptNature::AllowOom)
    } else {
        None
    }
}

/// The command names of a source's `redis.call(`/`pcall(` sites, in order: `Some(name)` for
/// a literal string, `None` for anything the proxy cannot read (a computed name, the
/// function taken as a value).
struct CallSites<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Iterator for CallSites<'a> {
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let rest = &self.body[self.at..];
            let found = memchr::memmem::find(rest, b"call")?;
            let start = self.at + found;
            self.at = start + 4;
            let before = &self.body[..start];
            let is_call = before.ends_with(b"redis.")
                || before.ends_with(b"server.")
                || before.ends_with(b"redis.p")
                || before.ends_with(b"server.p");
            if !is_call {
                continue;
            }
            return Some(self.literal_argument());
        }
    }
}

impl<'a> CallSites<'a> {
    /// After `call`: `(` then a quoted name without escapes, or `None`.
    fn literal_argument(&mut self) -> Option<&'a [u8]> {
        let rest = &self.body[self.at..];
        let rest = rest
            .trim_ascii_start()
            .strip_prefix(b"(")?
            .trim_ascii_start();
        let quote = *rest.first().filter(|q| matches!(q, b'\'' | b'"'))?;
        let name = &rest[1..];
        let end = name.iter().position(|&b| b == quote || b == b'\\')?;
        (name.get(end) == Some(&quote)).then_some(&name[..end])
    }
}

/// The functions a `FUNCTION LOAD` source registers, each with its nature.
fn functions_of(body: &[u8], growth: &CommandGrowth) -> Vec<(Box<[u8]>, ScriptNature)> {
    let library = ScriptNature::of_calls(body, growth);
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(found) = memchr::memmem::find(&body[at..], b"register_function") {
        at += found + b"register_function".len();
        let rest = body[at..].trim_ascii_start();
        let (name, flags) = match rest.first() {
            Some(b'{') => table_form(rest),
            Some(b'(') => (positional_name(rest), None),
            _ => (None, None),
        };
        if let Some(name) = name {
            let nature = flags.and_then(|f| nature_of_flags(&f)).unwrap_or(library);
            out.push((name.into(), nature));
        }
    }
    out
}

/// `('name', callback)`: the name.
fn positional_name(rest: &[u8]) -> Option<&[u8]> {
    quoted(rest.strip_prefix(b"(")?.trim_ascii_start())
}

/// `{function_name='name', callback=..., flags={'no-writes'}}`: the name and the flags, read
/// within the table's braces.
fn table_form(rest: &[u8]) -> (Option<&[u8]>, Option<Vec<&[u8]>>) {
    let end = balanced_end(rest).unwrap_or(rest.len());
    let table = &rest[..end];
    let value_of = |field: &[u8]| {
        let at = memchr::memmem::find(table, field)? + field.len();
        table[at..]
            .trim_ascii_start()
            .strip_prefix(b"=")
            .map(<[u8]>::trim_ascii_start)
    };
    let name = value_of(b"function_name").and_then(quoted);
    let flags = value_of(b"flags").and_then(|v| {
        let list = v.strip_prefix(b"{")?;
        let list = &list[..list.iter().position(|&b| b == b'}')?];
        Some(
            list.split(|&b| b == b',')
                .filter_map(|item| quoted(item.trim_ascii()))
                .collect(),
        )
    });
    (name, flags)
}

/// The offset just past the `}` closing the `{` at the start of `text`.
fn balanced_end(text: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    for (i, &b) in text.iter().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
    }
    None
}

/// A quoted string at the start of `text`, without escapes.
fn quoted(text: &[u8]) -> Option<&[u8]> {
    let quote = *text.first().filter(|q| matches!(q, b'\'' | b'"'))?;
    let end = text[1..].iter().position(|&b| b == quote)?;
    Some(&text[1..1 + end])
}

/// Scripts and functions seen, with their nature; shared by every session, kept across
/// reloads.
#[derive(Debug, Default)]
pub struct ScriptCatalog {
    scripts: Mutex<Remembered<[u8; 20]>>,
    functions: Mutex<Remembered<Box<[u8]>>>,
}

/// A bounded map that forgets its oldest entries.
#[derive(Debug)]
struct Remembered<K> {
    map: FxHashMap<K, ScriptNature>,
    order: VecDeque<K>,
}

impl<K> Default for Remembered<K> {
    fn default() -> Self {
        Remembered {
            map: FxHashMap::default(),
            order: VecDeque::new(),
        }
    }
}

impl<K: std::hash::Hash + Eq + Clone> Remembered<K> {
    fn insert(&mut self, key: K, nature: ScriptNature, max: usize) {
        if self.map.insert(key.clone(), nature).is_some() {
            return;
        }
        self.order.push_back(key);
        while self.order.len() > max {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

impl ScriptCatalog {
    /// An empty catalog.
    pub fn new() -> Self {
        ScriptCatalog::default()
    }

    /// Judge and remember a script seen in SCRIPT LOAD (or EVAL).
    pub fn learn_script(&self, body: &[u8], growth: &CommandGrowth) -> ScriptNature {
        let nature = ScriptNature::of_script(body, growth);
        let digest = sha1_smol::Sha1::from(body).digest().bytes();
        let mut scripts = self.scripts.lock().expect("not poisoned");
        scripts.insert(digest, nature, MAX_SCRIPTS);
        nature
    }

    /// Judge and remember the functions of a library seen in FUNCTION LOAD.
    pub fn learn_library(&self, body: &[u8], growth: &CommandGrowth) {
        let learned = functions_of(body, growth);
        let mut functions = self.functions.lock().expect("not poisoned");
        for (name, nature) in learned {
            functions.insert(name, nature, MAX_FUNCTIONS);
        }
    }

    /// The nature of the script with this hex SHA1 digest, if seen.
    pub fn script(&self, sha_hex: &[u8]) -> Option<ScriptNature> {
        let digest = parse_digest(sha_hex)?;
        let scripts = self.scripts.lock().expect("not poisoned");
        scripts.map.get(&digest).copied()
    }

    /// The nature of the function with this name, if seen.
    pub fn function(&self, name: &[u8]) -> Option<ScriptNature> {
        let functions = self.functions.lock().expect("not poisoned");
        functions.map.get(name).copied()
    }

    /// Scripts and functions remembered now.
    pub fn len(&self) -> (usize, usize) {
        let scripts = self.scripts.lock().expect("not poisoned").map.len();
        (
            scripts,
            self.functions.lock().expect("not poisoned").map.len(),
        )
    }
}

/// A 40-digit hex digest, in either case, as bytes.
/// A SHA1 digest written in hex (either case), as bytes; `None` when it is not 40 hex digits.
pub(crate) fn parse_digest(hex: &[u8]) -> Option<[u8; 20]> {
    if hex.len() != 40 {
        return None;
    }
    let mut out = [0u8; 20];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        let digit = |c: u8| (c as char).to_digit(16);
        *byte = (digit(pair[0])? * 16 + digit(pair[1])?) as u8;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> CommandGrowth {
        CommandGrowth::of(&CommandTable::builtin())
    }

    fn nature(body: &str) -> ScriptNature {
        ScriptNature::of_script(body.as_bytes(), &table())
    }

    #[test]
    fn scripts_that_only_read_or_delete_cannot_grow_memory() {
        use ScriptNature::*;
        let cases = [
            ("return redis.call('GET', KEYS[1])", CannotGrow),
            (
                "local n = redis.pcall(\"llen\", KEYS[1]) redis.call('DEL', KEYS[2]) return n",
                CannotGrow,
            ),
            ("return 1", CannotGrow),
            ("return server.call('ZRANGE', KEYS[1], 0, -1)", CannotGrow),
            ("return redis.call('SET', KEYS[1], ARGV[1])", MayGrow),
            (
                "redis.call('GET', KEYS[1]) return redis.call('rpush', KEYS[2], 'x')",
                MayGrow,
            ),
            ("return redis.call(ARGV[1], KEYS[1])", MayGrow),
            ("local c = redis.call return c('GET', KEYS[1])", MayGrow),
            ("return redis.call('NOSUCHCOMMAND')", MayGrow),
            (
                "return redis.call('XGROUP', 'CREATE', KEYS[1], 'g', '$')",
                MayGrow,
            ),
            (
                "return redis.call('OBJECT', 'ENCODING', KEYS[1])",
                CannotGrow,
            ),
            ("return redis.call('GE\\T', KEYS[1])", MayGrow),
            (
                "#!lua flags=no-writes\nreturn redis.call('GET', KEYS[1])",
                CannotGrow,
            ),
            (
                "#!lua flags=allow-oom,no-cluster\nreturn redis.call('SET', KEYS[1], 1)",
                AllowOom,
            ),
            ("#!lua\nreturn redis.call('GET', KEYS[1])", MayGrow),
        ];
        for (body, want) in cases {
            assert_eq!(nature(body), want, "{body}");
        }
    }

    #[test]
    fn functions_are_judged_by_their_flags_then_by_their_library() {
        let body = "#!lua name=lib\n\
            redis.register_function('plain', function(keys) return redis.call('GET', keys[1]) end)\n\
            redis.register_function{function_name='ro', callback=function(keys) return 1 end, flags={'no-writes'}}\n\
            redis.register_function{function_name = \"oom\", callback = function(keys) return 1 end, flags = { 'allow-oom' }}";
        let got = functions_of(body.as_bytes(), &table());
        let names: Vec<_> = got.iter().map(|(n, k)| (n.as_ref(), *k)).collect();
        assert_eq!(
            names,
            vec![
                (&b"plain"[..], ScriptNature::CannotGrow),
                (&b"ro"[..], ScriptNature::CannotGrow),
                (&b"oom"[..], ScriptNature::AllowOom),
            ]
        );
        let writer = "#!lua name=w\nredis.register_function('w', function(keys) return redis.call('SET', keys[1], 1) end)";
        assert_eq!(
            functions_of(writer.as_bytes(), &table()),
            vec![(Box::from(&b"w"[..]), ScriptNature::MayGrow)]
        );
    }

    #[test]
    fn the_catalog_finds_scripts_by_digest_in_any_case_and_stays_bounded() {
        let catalog = ScriptCatalog::new();
        let table = table();
        let body = b"return redis.call('GET', KEYS[1])";
        catalog.learn_script(body, &table);
        let hex = sha1_smol::Sha1::from(&body[..]).digest().to_string();
        assert_eq!(
            catalog.script(hex.as_bytes()),
            Some(ScriptNature::CannotGrow)
        );
        assert_eq!(
            catalog.script(hex.to_uppercase().as_bytes()),
            Some(ScriptNature::CannotGrow)
        );
        assert_eq!(catalog.script(b"not-a-digest"), None);
        for i in 0..MAX_SCRIPTS + 10 {
            catalog.learn_script(format!("return {i}").as_bytes(), &table);
        }
        assert_eq!(catalog.len().0, MAX_SCRIPTS);
        // The oldest, the first script, was forgotten.
        assert_eq!(catalog.script(hex.as_bytes()), None);
    }
}
