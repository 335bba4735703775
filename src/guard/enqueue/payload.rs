//! What makes two job payloads the same work: a fingerprint of the fields that identify a
//! job, leaving out what changes on every enqueue (job ids, timestamps, retry counters).
//!
//! A JSON payload is parsed, the fields named by `exclude` are taken out, and the fields
//! named by `include` (the whole document when there are none) are hashed in a canonical
//! form: object keys in sorted order, numbers and strings as JSON writes them. Fields are
//! named with JSON pointers (RFC 6901: `/class`, `/headers/task`, `/args/0/job_id`). A
//! MessagePack or pickle payload is read into the same document ([`msgpack`](super::msgpack),
//! [`pickle`](super::pickle)) and fingerprinted the same way. A raw payload is hashed as it
//! is.
//!
//! The job id, when the payload carries one, is hashed apart: it tells a re-push of the same
//! job (a retry, a scheduled job moving to its queue) from a new job with the same content.

use std::hash::{BuildHasher, Hasher};

use serde_json::Value;

use super::fingerprint::JobHasher;
use super::{msgpack, pickle};

/// How a payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A JSON document; fields are chosen with JSON pointers.
    Json,
    /// Opaque bytes, fingerprinted whole.
    Raw,
    /// A MessagePack value, read into the JSON document model.
    Msgpack,
    /// A Python pickle, read into the JSON document model without executing anything.
    Pickle,
}

impl Format {
    /// The document `payload` reads as in this format: `None` for a raw payload (it has
    /// none) and for one that does not read (not JSON, not MessagePack, not a pickle the
    /// reader runs, or past one of the readers' bounds).
    pub fn document(self, payload: &[u8]) -> Option<Value> {
        match self {
            Format::Raw => None,
            Format::Json => serde_json::from_slice(payload).ok(),
            Format::Msgpack => msgpack::decode(payload).ok(),
            Format::Pickle => pickle::read(payload).ok(),
        }
    }
}

/// A JSON pointer split into its unescaped tokens once, when the rule is built, so that
/// following it on the hot path allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pointer {
    source: String,
    tokens: Vec<String>,
}

impl Pointer {
    /// Parse `/a/b~1c/0` (RFC 6901); the empty string names the whole document.
    pub fn parse(source: &str) -> Result<Self, String> {
        if !source.is_empty() && !source.starts_with('/') {
            return Err(format!(
                "`{source}` is not a JSON pointer: it must start with `/`"
            ));
        }
        let tokens = source
            .split('/')
            .skip(1)
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        Ok(Pointer {
            source: source.to_string(),
            tokens,
        })
    }

    /// The pointer as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// The value it names in `doc`.
    pub fn get<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        self.tokens.iter().try_fold(doc, |v, t| match v {
            Value::Object(m) => m.get(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        })
    }

    /// Take the value it names out of `doc`: an object member is removed, an array element
    /// becomes null (so later indices keep their meaning).
    pub fn remove(&self, doc: &mut Value) {
        let Some((last, parents)) = self.tokens.split_last() else {
            return;
        };
        let parent = parents.iter().try_fold(doc, |v, t| match v {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        });
        match parent {
            Some(Value::Object(m)) => {
                m.remove(last);
            }
            Some(Value::Array(a)) => {
                if let Some(v) = last.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                    *v = Value::Null;
                }
            }
            _ => {}
        }
    }
}

/// How to fingerprint one kind of payload.
#[derive(Debug, Clone)]
pub struct PayloadSpec {
    /// JSON, MessagePack, pickle or raw.
    pub format: Format,
    /// Fields that identify the job; empty means the whole document.
    pub include: Vec<Pointer>,
    /// Fields left out of the fingerprint, inside what `include` names.
    pub exclude: Vec<Pointer>,
    /// More fields left out when the first one is present (Sidekiq's ActiveJob wrapper
    /// carries its own job id and timestamps inside `args`).
    pub exclude_if: Option<(Pointer, Vec<Pointer>)>,
    /// Where the job id is.
    pub job_id: Option<Pointer>,
    /// A field naming the job for logs and errors (its class or task name).
    pub label: Option<Pointer>,
}

/// A job as the guard sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPrint {
    /// Hash of what makes it the same work.
    pub fingerprint: u64,
    /// Hash of its id, when it has one.
    pub id: Option<u64>,
    /// Its class or task name, when known.
    pub label: Option<String>,
}

impl PayloadSpec {
    /// A spec from pointers as written; an invalid pointer is an error naming it.
    pub fn new(
        format: Format,
        include: &[String],
        exclude: &[String],
        job_id: Option<&str>,
        label: Option<&str>,
    ) -> Result<Self, String> {
        let all = |v: &[String]| {
            v.iter()
                .map(|p| Pointer::parse(p))
                .collect::<Result<Vec<_>, _>>()
        };
        let spec = PayloadSpec {
            format,
            include: all(include)?,
            exclude: all(exclude)?,
            exclude_if: None,
            job_id: job_id.map(Pointer::parse).transpose()?,
            label: label.map(Pointer::parse).transpose()?,
        };
        if format == Format::Raw
            && (!spec.include.is_empty() || !spec.exclude.is_empty() || spec.job_id.is_some())
        {
            return Err(
                "include, exclude and job_id need a format that is read: json, msgpack or pickle"
                    .into(),
            );
        }
        Ok(spec)
    }

    /// The job in `payload`, hashed after `context` (which has taken the rule, the scope and
    /// the queue); its id, if any, is hashed with `ids`. `None` when the payload does not
    /// read in its format (not JSON, not MessagePack, not a pickle this reader runs, or past
    /// one of its bounds): it is not a job this rule knows. A raw payload, hashed as it is,
    /// is printed inline; a document apart.
    #[inline(always)]
    pub fn print(
        &self,
        payload: &[u8],
        context: &JobHasher,
        ids: &impl BuildHasher,
    ) -> Option<JobPrint> {
        if self.format == Format::Raw {
            return Some(JobPrint {
                fingerprint: context.hash(payload),
                id: None,
                label: None,
            });
        }
        self.read_and_print(payload, context, ids)
    }

    /// [`PayloadSpec::print`] of a payload in a format that is read into a document.
    #[inline(never)]
    fn read_and_print(
        &self,
        payload: &[u8],
        context: &JobHasher,
        ids: &impl BuildHasher,
    ) -> Option<JobPrint> {
        let doc = self.format.document(payload)?;
        Some(self.print_document(doc, context, ids))
    }

    /// The job in a payload read into `doc`.
    fn print_document(
        &self,
        mut doc: Value,
        context: &JobHasher,
        ids: &impl BuildHasher,
    ) -> JobPrint {
        let id = self
            .job_id
            .as_ref()
            .and_then(|p| p.get(&doc))
            .filter(|v| !v.is_null())
            .map(|v| hash_id(v, ids));
        let label = self
            .label
            .as_ref()
            .and_then(|p| p.get(&doc))
            .and_then(Value::as_str)
            .map(str::to_string);
        for p in &self.exclude {
            p.remove(&mut doc);
        }
        if let Some((when, more)) = &self.exclude_if {
            if when.get(&doc).is_some() {
                for p in more {
                    p.remove(&mut doc);
                }
            }
        }
        let mut h = context.stream();
        if self.include.is_empty() {
            write_canonical(&doc, &mut h);
        } else {
            for p in &self.include {
                h.write(p.as_str().as_bytes());
                write_canonical(p.get(&doc).unwrap_or(&Value::Null), &mut h);
            }
        }
        JobPrint {
            fingerprint: h.finish(),
            id,
            label,
        }
    }
}

/// The hash of a job id: a string's bytes, anything else as JSON.
pub fn hash_id(v: &Value, hashes: &impl BuildHasher) -> u64 {
    let mut h = hashes.build_hasher();
    match v {
        Value::String(s) => h.write(s.as_bytes()),
        other => write_canonical(other, &mut h),
    }
    h.finish()
}

/// Hash a value as compact JSON (serde_json keeps object keys sorted).
fn write_canonical(v: &Value, h: &mut impl Hasher) {
    struct Sink<'a, H>(&'a mut H);
    impl<H: Hasher> std::io::Write for Sink<'_, H> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.write(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    // Writing a Value cannot fail, and the sink never does.
    let _ = serde_json::to_writer(Sink(h), v);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::enqueue::fingerprint::{ContextHasher, FingerprintKey};

    /// The hasher after the context `parts`.
    fn ctx(key: &FingerprintKey, parts: &[&[u8]]) -> JobHasher {
        let mut c = ContextHasher::new(key);
        for p in parts {
            c.part(p);
        }
        c.finish()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn spec(include: &[&str], exclude: &[&str], id: Option<&str>) -> PayloadSpec {
        PayloadSpec::new(
            Format::Json,
            &strings(include),
            &strings(exclude),
            id,
            Some("/class"),
        )
        .unwrap()
    }

    #[test]
    fn excluded_fields_do_not_change_the_fingerprint_and_the_rest_does() {
        let h = FingerprintKey::random();
        let s = spec(&[], &["/jid", "/enqueued_at"], Some("/jid"));
        let a = s
            .print(
                br#"{"class":"A","args":[1],"jid":"x","enqueued_at":1.5}"#,
                &ctx(&h, &[b"q"]),
                &h,
            )
            .unwrap();
        let b = s
            .print(
                br#"{"enqueued_at":9,"jid":"y","args":[1],"class":"A"}"#,
                &ctx(&h, &[b"q"]),
                &h,
            )
            .unwrap();
        assert_eq!(
            a.fingerprint, b.fingerprint,
            "order and excluded fields ignored"
        );
        assert_ne!(a.id, b.id);
        assert_eq!(a.label.as_deref(), Some("A"));
        let c = s
            .print(
                br#"{"class":"A","args":[2],"jid":"x"}"#,
                &ctx(&h, &[b"q"]),
                &h,
            )
            .unwrap();
        assert_ne!(a.fingerprint, c.fingerprint, "other arguments");
        assert_eq!(a.id, c.id);
        let d = s
            .print(
                br#"{"class":"A","args":[1],"jid":"x"}"#,
                &ctx(&h, &[b"q2"]),
                &h,
            )
            .unwrap();
        assert_ne!(a.fingerprint, d.fingerprint, "another queue");
    }

    #[test]
    fn included_fields_alone_make_the_fingerprint() {
        let h = FingerprintKey::random();
        let s = spec(&["/headers/task", "/body"], &[], Some("/headers/id"));
        let a = s
            .print(
                br#"{"body":"W10=","headers":{"task":"t.add","id":"1","retries":0}}"#,
                &ctx(&h, &[]),
                &h,
            )
            .unwrap();
        let b = s
            .print(
                br#"{"body":"W10=","headers":{"task":"t.add","id":"2","retries":3},"x":1}"#,
                &ctx(&h, &[]),
                &h,
            )
            .unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        let c = s
            .print(
                br#"{"body":"W10=","headers":{"task":"t.mul","id":"1"}}"#,
                &ctx(&h, &[]),
                &h,
            )
            .unwrap();
        assert_ne!(a.fingerprint, c.fingerprint);
    }

    #[test]
    fn exclusions_inside_arrays_and_conditional_ones() {
        let h = FingerprintKey::random();
        let mut s = spec(&["/args"], &[], None);
        s.exclude_if = Some((
            Pointer::parse("/wrapped").unwrap(),
            vec![Pointer::parse("/args/0/job_id").unwrap()],
        ));
        let wrapped =
            |id: &str| format!(r#"{{"wrapped":"J","args":[{{"job_id":"{id}","arguments":[1]}}]}}"#);
        let a = s.print(wrapped("a").as_bytes(), &ctx(&h, &[]), &h).unwrap();
        let b = s.print(wrapped("b").as_bytes(), &ctx(&h, &[]), &h).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint, "ActiveJob's id is left out");
        let plain = |id: &str| format!(r#"{{"args":[{{"job_id":"{id}"}}]}}"#);
        let c = s.print(plain("a").as_bytes(), &ctx(&h, &[]), &h).unwrap();
        let d = s.print(plain("b").as_bytes(), &ctx(&h, &[]), &h).unwrap();
        assert_ne!(
            c.fingerprint, d.fingerprint,
            "a plain job's argument is kept"
        );
    }

    #[test]
    fn invalid_json_is_not_a_job_and_raw_payloads_hash_whole() {
        let h = FingerprintKey::random();
        assert!(spec(&[], &[], None)
            .print(b"not json", &ctx(&h, &[]), &h)
            .is_none());
        let raw = PayloadSpec::new(Format::Raw, &[], &[], None, None).unwrap();
        assert_eq!(
            raw.print(b"abc", &ctx(&h, &[]), &h).unwrap().fingerprint,
            raw.print(b"abc", &ctx(&h, &[]), &h).unwrap().fingerprint
        );
        assert_ne!(
            raw.print(b"abc", &ctx(&h, &[]), &h).unwrap().fingerprint,
            raw.print(b"abd", &ctx(&h, &[]), &h).unwrap().fingerprint
        );
        assert!(PayloadSpec::new(Format::Json, &strings(&["class"]), &[], None, None).is_err());
        assert!(PayloadSpec::new(Format::Raw, &[], &[], Some("/id"), None).is_err());
        let p = Pointer::parse("/a~1b/1").unwrap();
        let doc: Value = serde_json::from_str(r#"{"a/b":[0,{"c":2}]}"#).unwrap();
        assert_eq!(p.get(&doc), Some(&serde_json::json!({"c": 2})));
    }

    /// A pickled tuple `(id, "tasks.add", arg)`, as protocol 4 writes it.
    fn pickled(id: &str, arg: u8) -> Vec<u8> {
        let mut p = b"\x80\x04(\x8c".to_vec();
        p.push(id.len() as u8);
        p.extend_from_slice(id.as_bytes());
        p.extend_from_slice(b"\x8c\x09tasks.addK");
        p.extend_from_slice(&[arg, b't', b'.']);
        p
    }

    /// A MessagePack map `{"id": id, "task": "tasks.add", "args": [arg]}`.
    fn packed(id: &str, arg: u8) -> Vec<u8> {
        use rmp::encode::*;
        let mut b = Vec::new();
        write_map_len(&mut b, 3).unwrap();
        write_str(&mut b, "id").unwrap();
        write_str(&mut b, id).unwrap();
        write_str(&mut b, "task").unwrap();
        write_str(&mut b, "tasks.add").unwrap();
        write_str(&mut b, "args").unwrap();
        write_array_len(&mut b, 1).unwrap();
        write_uint(&mut b, arg.into()).unwrap();
        b
    }

    #[test]
    fn pickle_and_msgpack_payloads_are_read_with_the_same_pointers() {
        let h = FingerprintKey::random();
        type Maker = fn(&str, u8) -> Vec<u8>;
        let cases: [(Format, &str, &str, Maker); 2] = [
            (Format::Pickle, "/0", "/1", pickled),
            (Format::Msgpack, "/id", "/task", packed),
        ];
        for (format, id, label, make) in cases {
            let s = PayloadSpec::new(format, &[], &strings(&[id]), Some(id), Some(label)).unwrap();
            let print = |payload: Vec<u8>| s.print(&payload, &ctx(&h, &[b"q"]), &h).unwrap();
            let a = print(make("a", 1));
            let b = print(make("b", 1));
            assert_eq!(a.fingerprint, b.fingerprint, "{format:?}: the id left out");
            assert_ne!(a.id, b.id, "{format:?}");
            assert_eq!(a.label.as_deref(), Some("tasks.add"), "{format:?}");
            assert_ne!(a.fingerprint, print(make("a", 2)).fingerprint, "{format:?}");
            // Without the exclusion the id makes every job different.
            let all = PayloadSpec::new(format, &[], &[], None, None).unwrap();
            let print = |payload: Vec<u8>| all.print(&payload, &ctx(&h, &[b"q"]), &h).unwrap();
            assert_ne!(
                print(make("a", 1)).fingerprint,
                print(make("b", 1)).fingerprint
            );
            // Unreadable in the format: not a job.
            assert!(s.print(b"{}", &ctx(&h, &[]), &h).is_none(), "{format:?}");
        }
        assert!(
            PayloadSpec::new(Format::Raw, &[], &strings(&["/0"]), None, None)
                .unwrap_err()
                .contains("json, msgpack or pickle")
        );
    }
}
