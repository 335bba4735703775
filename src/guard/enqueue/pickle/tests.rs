//! The pickle reader against pickles Python wrote and against hostile ones.
//!
//! The fixtures were made by Python 3.11's `pickle` with this program:
//!
//! ```python
//! import pickle, uuid, collections
//! Job = collections.namedtuple("Job", "name args")
//! class Ex:
//!     def __init__(self, a, k=0): self.a = a; self.k = k
//!     def __getnewargs_ex__(self): return ((self.a,), {"k": self.k})
//! class Bag(list): pass
//! def common():
//!     shared = [7]
//!     return {"task": "tasks.add", "args": (1, -2, 300, 70000, -70000, 3.5),
//!             "kwargs": {"flag": True, "off": False, "none": None},
//!             "big": 2**70, "neg": -2**70, "u64": 2**64-1, "b": b"\x00\xff",
//!             "set": {1, 2}, "fs": frozenset({3}),
//!             "t": (), "t1": (1,), "t2": (1, 2), "t3": (1, 2, 3), "t4": (1, 2, 3, 4),
//!             "list": [1, [2]], "u": "\u00e9", "shared": [shared, shared],
//!             "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
//!             "job": Job("j", (1,)), "od": collections.OrderedDict([("a", 1)]),
//!             "bag": Bag([1, 2])}
//! ```
//!
//! and the expression above each constant, printed with `.hex()`.

use proptest::prelude::*;
use serde_json::json;

use super::*;

/// `pickle.dumps(common(), protocol=2)`
const COMMON_P2: &[&str] = &[
    "80027d71002858040000007461736b710158090000007461736b732e61646471025804000000617267737103",
    "284b014afeffffff4d2c014a701101004a90eefeff47400c00000000000074710458060000006b7761726773",
    "71057d7106285804000000666c616771078858030000006f666671088958040000006e6f6e6571094e755803",
    "000000626967710a8a0900000000000000004058030000006e6567710b8a090000000000000000c058030000",
    "00753634710c8a09ffffffffffffffff00580100000062710d635f636f646563730a656e636f64650a710e58",
    "0300000000c3bf710f58060000006c6174696e31711086711152711258030000007365747113635f5f627569",
    "6c74696e5f5f0a7365740a71145d7115284b014b0265857116527117580200000066737118635f5f6275696c",
    "74696e5f5f0a66726f7a656e7365740a71195d711a4b036185711b52711c580100000074711d295802000000",
    "7431711e4b0185711f5802000000743271204b014b028671215802000000743371224b014b024b0387712358",
    "0200000074347124284b014b024b034b0474712558040000006c69737471265d7127284b015d71284b026165",
    "58010000007571295802000000c3a9712a5806000000736861726564712b5d712c285d712d4b0761682d6558",
    "0400000075756964712e63757569640a555549440a712f298171307d71315803000000696e7471328a107856",
    "3412785634127856341278563412736258030000006a6f627133635f5f6d61696e5f5f0a4a6f620a71345801",
    "0000006a7135681f86713681713758020000006f64713863636f6c6c656374696f6e730a4f72646572656444",
    "6963740a71392952713a580100000061713b4b01735803000000626167713c635f5f6d61696e5f5f0a426167",
    "0a713d2981713e284b014b0265752e",
];

/// `pickle.dumps(common(), protocol=3)`
const COMMON_P3: &[&str] = &[
    "80037d71002858040000007461736b710158090000007461736b732e61646471025804000000617267737103",
    "284b014afeffffff4d2c014a701101004a90eefeff47400c00000000000074710458060000006b7761726773",
    "71057d7106285804000000666c616771078858030000006f666671088958040000006e6f6e6571094e755803",
    "000000626967710a8a0900000000000000004058030000006e6567710b8a090000000000000000c058030000",
    "00753634710c8a09ffffffffffffffff00580100000062710d430200ff710e5803000000736574710f636275",
    "696c74696e730a7365740a71105d7111284b014b0265857112527113580200000066737114636275696c7469",
    "6e730a66726f7a656e7365740a71155d71164b03618571175271185801000000747119295802000000743171",
    "1a4b0185711b58020000007432711c4b014b0286711d58020000007433711e4b014b024b0387711f58020000",
    "0074347120284b014b024b034b0474712158040000006c69737471225d7123284b015d71244b026165580100",
    "00007571255802000000c3a97126580600000073686172656471275d7128285d71294b076168296558040000",
    "0075756964712a63757569640a555549440a712b2981712c7d712d5803000000696e74712e8a107856341278",
    "5634127856341278563412736258030000006a6f62712f635f5f6d61696e5f5f0a4a6f620a71305801000000",
    "6a7131681b86713281713358020000006f64713463636f6c6c656374696f6e730a4f72646572656444696374",
    "0a71352952713658010000006171374b017358030000006261677138635f5f6d61696e5f5f0a4261670a7139",
    "2981713a284b014b0265752e",
];

/// `pickle.dumps(common(), protocol=4)`
const COMMON_P4: &[&str] = &[
    "800495b6010000000000007d94288c047461736b948c097461736b732e616464948c046172677394284b014a",
    "feffffff4d2c014a701101004a90eefeff47400c00000000000074948c066b7761726773947d94288c04666c",
    "616794888c036f666694898c046e6f6e65944e758c03626967948a090000000000000000408c036e6567948a",
    "090000000000000000c08c03753634948a09ffffffffffffffff008c016294430200ff948c03736574948f94",
    "284b014b02908c02667394284b0391948c017494298c027431944b0185948c027432944b014b0286948c0274",
    "33944b014b024b0387948c02743494284b014b024b034b0474948c046c697374945d94284b015d944b026165",
    "8c0175948c02c3a9948c06736861726564945d94285d944b07616823658c04757569649468248c0455554944",
    "9493942981947d948c03696e74948a107856341278563412785634127856341273628c036a6f62948c085f5f",
    "6d61696e5f5f948c034a6f629493948c016a946815869481948c026f64948c0b636f6c6c656374696f6e7394",
    "8c0b4f726465726564446963749493942952948c0161944b01738c0362616794682b8c034261679493942981",
    "94284b014b0265752e",
];

/// `pickle.dumps(common(), protocol=5)`
const COMMON_P5: &[&str] = &[
    "800595b6010000000000007d94288c047461736b948c097461736b732e616464948c046172677394284b014a",
    "feffffff4d2c014a701101004a90eefeff47400c00000000000074948c066b7761726773947d94288c04666c",
    "616794888c036f666694898c046e6f6e65944e758c03626967948a090000000000000000408c036e6567948a",
    "090000000000000000c08c03753634948a09ffffffffffffffff008c016294430200ff948c03736574948f94",
    "284b014b02908c02667394284b0391948c017494298c027431944b0185948c027432944b014b0286948c0274",
    "33944b014b024b0387948c02743494284b014b024b034b0474948c046c697374945d94284b015d944b026165",
    "8c0175948c02c3a9948c06736861726564945d94285d944b07616823658c04757569649468248c0455554944",
    "9493942981947d948c03696e74948a107856341278563412785634127856341273628c036a6f62948c085f5f",
    "6d61696e5f5f948c034a6f629493948c016a946815869481948c026f64948c0b636f6c6c656374696f6e7394",
    "8c0b4f726465726564446963749493942952948c0161944b01738c0362616794682b8c034261679493942981",
    "94284b014b0265752e",
];

/// `pickle.dumps(Ex(1, k=2), protocol=4)`
const NEWOBJ_EX_P4: &[&str] = &[
    "80049531000000000000008c085f5f6d61696e5f5f948c0245789493944b0185947d948c016b944b02739294",
    "7d94288c0161944b0168054b0275622e",
];

/// `pickle.dumps(bytearray(b"ab"), protocol=5)`
const BYTEARRAY_P5: &[&str] = &["8005950d000000000000009602000000000000006162942e"];

fn unhex(lines: &[&str]) -> Vec<u8> {
    let s: String = lines.concat();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// What `common()` reads as, whatever the protocol.
fn common_document() -> Value {
    json!({
        "task": "tasks.add",
        "args": [1, -2, 300, 70000, -70000, 3.5],
        "kwargs": {"flag": true, "off": false, "none": null},
        "big": {"$int": "0x400000000000000000"},
        "neg": {"$int": "-0x400000000000000000"},
        "u64": u64::MAX,
        "b": {"$bytes": "00ff"},
        "set": [1, 2],
        "fs": [3],
        "t": [], "t1": [1], "t2": [1, 2], "t3": [1, 2, 3], "t4": [1, 2, 3, 4],
        "list": [1, [2]],
        "u": "\u{e9}",
        "shared": [[7], [7]],
        "uuid": {
            "new": "uuid.UUID",
            "args": [],
            "state": {"int": {"$int": "0x12345678123456781234567812345678"}},
        },
        "job": {"new": "__main__.Job", "args": ["j", [1]]},
        "od": {"reduce": "collections.OrderedDict", "args": [], "dictitems": {"a": 1}},
        "bag": {"new": "__main__.Bag", "args": [], "listitems": [1, 2]},
    })
}

#[test]
fn protocols_2_to_5_read_alike() {
    for (protocol, fixture) in [
        (2, COMMON_P2),
        (3, COMMON_P3),
        (4, COMMON_P4),
        (5, COMMON_P5),
    ] {
        assert_eq!(
            read(&unhex(fixture)).unwrap(),
            common_document(),
            "protocol {protocol}"
        );
    }
}

#[test]
fn newobj_ex_keeps_its_keyword_arguments_and_bytearrays_are_bytes() {
    assert_eq!(
        read(&unhex(NEWOBJ_EX_P4)).unwrap(),
        json!({"new": "__main__.Ex", "args": [1], "kwargs": {"k": 2}, "state": {"a": 1, "k": 2}})
    );
    assert_eq!(
        read(&unhex(BYTEARRAY_P5)).unwrap(),
        json!({"$bytes": "6162"})
    );
}

#[test]
fn stack_and_memo_opcodes() {
    // MARK, EMPTY_LIST, LONG_BINPUT 256, BININT1 5, APPEND, LONG_BINGET 256, BININT1 7, DUP,
    // NONE, POP; MARK, POP (of the mark); MARK, BININT1 9, POP_MARK; TUPLE.
    let p = b"\x80\x02(]r\x00\x01\x00\x00K\x05aj\x00\x01\x00\x00K\x072N0(0(K\x091t.";
    assert_eq!(read(p).unwrap(), json!([[5], [5], 7, 7]));
    // PUT and GET of one list: the same list, appended to after it was memoized.
    let p = b"\x80\x02]q\x00(K\x01K\x02eh\x00\x86.";
    assert_eq!(read(p).unwrap(), json!([[1, 2], [1, 2]]));
    // GLOBAL as protocols 2 and 3 write it; REDUCE of a callable with arguments.
    let p = b"\x80\x02cbuiltins\nrange\nK\x00K\x03\x86R.";
    assert_eq!(
        read(p).unwrap(),
        json!({"reduce": "builtins.range", "args": [0, 3]})
    );
}

#[test]
fn strings_bytes_and_integers_of_every_width() {
    // MARK, BINUNICODE, BINUNICODE8, SHORT_BINBYTES, BINBYTES, BINBYTES8, SHORT_BINSTRING,
    // BINSTRING, LIST.
    let p = b"\x80\x04(X\x02\x00\x00\x00hi\x8d\x02\x00\x00\x00\x00\x00\x00\x00okC\x01aB\x01\x00\x00\x00b\
              \x8e\x01\x00\x00\x00\x00\x00\x00\x00cU\x01dT\x01\x00\x00\x00el.";
    assert_eq!(
        read(p).unwrap(),
        json!(["hi", "ok", {"$bytes": "61"}, {"$bytes": "62"}, {"$bytes": "63"},
               {"$bytes": "64"}, {"$bytes": "65"}])
    );
    // BININT -1, BININT2 65535, LONG1 of no bytes, LONG1 -1, LONG4 -32768, LONG1 2**64,
    // BINFLOAT 1.5, BINFLOAT nan.
    let p = b"\x80\x02(J\xff\xff\xff\xffM\xff\xff\x8a\x00\x8a\x01\xff\x8b\x02\x00\x00\x00\x00\x80\
              \x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x01G\x3f\xf8\x00\x00\x00\x00\x00\x00\
              G\x7f\xf8\x00\x00\x00\x00\x00\x00l.";
    assert_eq!(
        read(p).unwrap(),
        json!([-1, 65535, 0, -1, -32768, {"$int": "0x10000000000000000"}, 1.5,
               {"$float": "nan"}])
    );
}

#[test]
fn dicts_sets_and_extensions() {
    // DICT with an int key, a str key and a tuple key; SETITEM on an EMPTY_DICT.
    let p = b"\x80\x02(K\x01K\x02X\x01\x00\x00\x00kNK\x01K\x02\x86Nd.";
    assert_eq!(read(p).unwrap(), json!({"1": 2, "k": null, "[1,2]": null}));
    // EMPTY_SET, MARK, "b", "a", ADDITEMS: sorted, as Python's order is not stable.
    let p = b"\x80\x04\x8f(\x8c\x01b\x8c\x01a\x90.";
    assert_eq!(read(p).unwrap(), json!(["a", "b"]));
    // EXT1, EXT2, EXT4.
    let p = b"\x80\x02(\x82\x01\x83\x02\x01\x84\x03\x00\x00\x00l.";
    assert_eq!(
        read(p).unwrap(),
        json!([{"$ext": 1}, {"$ext": 258}, {"$ext": 3}])
    );
    // READONLY_BUFFER leaves the buffer as it is; NEXT_BUFFER's data is not in the payload.
    assert_eq!(
        read(b"\x80\x05C\x02ab\x98.").unwrap(),
        json!({"$bytes": "6162"})
    );
    assert_eq!(read(b"\x80\x05\x97."), Err(PickleError::Unsupported(0x97)));
}

#[test]
fn huey_message_fields_are_pointers_away() {
    // Huey 3.5.4's `add(1, 2)` for `@huey.task() def add(a, b)` in `__main__`, as
    // `redis-cli MONITOR` showed its LPUSH to `huey.redis.demo`.
    let p = b"\x80\x05\x95n\x00\x00\x00\x00\x00\x00\x00\x8c\rhuey.registry\x94\x8c\x07Message\x94\x93\x94\
              (\x8c$225db0bd-520a-4199-8d2c-dd7af0fae70e\x94\x8c\x0c__main__.add\x94NK\x00K\x00NK\x01K\x02\
              \x86\x94}\x94NNNNNNK\x00t\x94\x81\x94.";
    let doc = read(p).unwrap();
    assert_eq!(doc["new"], "huey.registry.Message");
    assert_eq!(doc["args"][0], "225db0bd-520a-4199-8d2c-dd7af0fae70e");
    assert_eq!(doc["args"][1], "__main__.add");
    assert_eq!(doc["args"].as_array().unwrap().len(), 15);
    assert_eq!(doc["args"][6], json!([1, 2]));
}

#[test]
fn malformed_input_is_refused() {
    let cases: &[(&[u8], PickleError)] = &[
        (b"", PickleError::Truncated),
        (b"N", PickleError::Truncated),
        (b"N.N", PickleError::Malformed("bytes after STOP")),
        (b".", PickleError::Malformed("stack not one value at STOP")),
        (
            b"NN.",
            PickleError::Malformed("stack not one value at STOP"),
        ),
        (
            b"(N.",
            PickleError::Malformed("stack not one value at STOP"),
        ),
        (b"\x80\x06N.", PickleError::Unsupported(0x80)),
        (b"I01\n.", PickleError::Unsupported(b'I')),
        (b"\x80\x02a.", PickleError::Malformed("stack underflow")),
        (b"0.", PickleError::Malformed("no mark")),
        (b"(t\x86.", PickleError::Malformed("stack underflow")),
        (b"h\x05.", PickleError::Malformed("memo entry missing")),
        (b"q\x00.", PickleError::Malformed("stack underflow")),
        (b"NNb.", PickleError::Malformed("BUILD of a non-object")),
        (b"NK\x01a.", PickleError::Malformed("append to a non-list")),
        (
            b"}(K\x01u.",
            PickleError::Malformed("odd number of dict items"),
        ),
        (
            b"K\x01K\x02\x93.",
            PickleError::Malformed("STACK_GLOBAL of non-strings"),
        ),
        (
            b"X\x02\x00\x00\x00\xc3(.",
            PickleError::Malformed("string not UTF-8"),
        ),
        (b"cuuid", PickleError::Truncated),
        (b"\x8b\xff\xff\xff\xff.", PickleError::Malformed("LONG4")),
        (b"X\xff\xff\xff\xffab.", PickleError::Truncated),
        (
            b"\x8e\xff\xff\xff\xff\xff\xff\xff\xffab.",
            PickleError::Truncated,
        ),
        (b"\x95\x01\x00", PickleError::Truncated),
    ];
    for (input, error) in cases {
        assert_eq!(read(input).as_ref(), Err(error), "{input:?}");
    }
    // Every prefix of a real pickle is refused, none panics.
    let whole = unhex(COMMON_P5);
    for cut in 0..whole.len() {
        assert!(read(&whole[..cut]).is_err(), "prefix of {cut} bytes");
    }
}

/// `n` empty lists, each appended into the one before: `n` levels deep.
fn nested(n: usize) -> Vec<u8> {
    [&b"\x80\x04"[..], &vec![b']'; n], &vec![b'a'; n - 1], b"."].concat()
}

#[test]
fn hostile_pickles_stop_at_their_bounds() {
    assert!(read(&nested(MAX_DEPTH + 1)).is_ok());
    assert_eq!(read(&nested(MAX_DEPTH + 2)), Err(PickleError::TooDeep));
    assert_eq!(
        read(&nested(MAX_VALUES + 1)),
        Err(PickleError::OverBound("values"))
    );
    // A list containing itself.
    assert_eq!(read(b"]q\x00h\x00a."), Err(PickleError::TooDeep));
    // A billion laughs: ten lists of ten references to the list before, 10^10 values
    // written if nothing stopped it.
    let mut bomb = b"\x80\x02]q\x000".to_vec();
    for level in 1..=10u8 {
        bomb.push(b'(');
        for _ in 0..10 {
            bomb.extend_from_slice(&[b'h', level - 1]);
        }
        bomb.extend_from_slice(&[b'l', b'q', level, b'0']);
    }
    bomb.extend_from_slice(b"h\x0a.");
    assert_eq!(read(&bomb), Err(PickleError::OverBound("values written")));
    // One 500 KB string written a hundred times: 50 MB of text if nothing stopped it.
    let mut text = b"\x80\x02X\x20\xa1\x07\x00".to_vec();
    text.extend(std::iter::repeat_n(b'x', 500_000));
    text.extend_from_slice(b"q\x000(");
    for _ in 0..100 {
        text.extend_from_slice(b"h\x00");
    }
    text.extend_from_slice(b"l.");
    assert_eq!(read(&text), Err(PickleError::OverBound("text")));
    // Dicts as keys of dicts, 100 deep, around a key `"`: each level escapes the text of the
    // one inside, which would double it a hundred times.
    let keys = [
        &b"\x80\x02"[..],
        &[b'('; 101],
        b"X\x01\x00\x00\x00\"Nd",
        &b"Nd".repeat(100),
        b".",
    ]
    .concat();
    assert_eq!(read(&keys), Err(PickleError::OverBound("text")));
    // The memo: more distinct entries than it holds.
    let mut memo = b"\x80\x02N".to_vec();
    for i in 0..=MAX_MEMO as u32 {
        memo.push(b'r');
        memo.extend_from_slice(&i.to_le_bytes());
    }
    memo.push(b'.');
    assert_eq!(read(&memo), Err(PickleError::OverBound("memo")));
    // One entry put again and again stays one entry.
    let mut again = b"\x80\x02N".to_vec();
    for _ in 0..=MAX_MEMO {
        again.extend_from_slice(b"q\x00");
    }
    again.push(b'.');
    assert_eq!(read(&again), Ok(Value::Null));
    assert_eq!(read(&vec![b'N'; MAX_INPUT + 1]), Err(PickleError::TooLong));
}

proptest! {
    #[test]
    fn any_bytes_are_read_or_refused(input in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = read(&input);
    }

    #[test]
    fn a_real_pickle_with_bytes_changed_is_read_or_refused(
        changes in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
    ) {
        let mut p = unhex(COMMON_P5);
        for (at, b) in changes {
            let i = at.index(p.len());
            p[i] = b;
        }
        let _ = read(&p);
    }
}
