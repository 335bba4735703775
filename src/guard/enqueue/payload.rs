//! What makes two job payloads the same work: a fingerprint of the fields that identify a
//! job, leaving out what changes on every enqueue (job ids, timestamps, retry counters).
//!
//! A JSON payload is parsed, the fields named by `exclude` are taken out, and the fields
//! named by `include` (the whole document when there are none) are hashed in a canonical
//! form: object keys in sorted order, numbers and strings as JSON writes them. Fields are
//! named with JSON pointers (RFC 6901: `/class`, `/headers/task`, `/args/0/job_id`). A raw
//! payload is hashed as it is.
//!
//! The job id, when the payload carries one, is hashed apart: it tells a re-push of the same
//! job (a retry, a scheduled job moving to its queue) from a new job with the same content.

use std::hash::{BuildHasher, Hasher};

use serde_json::Value;

use crate::config::ConfigError;

/// How a payload is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A JSON document; fields are chosen with JSON pointers.
    Json,
    /// Opaque bytes, fingerprinted whole.
    Raw,
}

/// How to fingerprint one kind of payload.
#[derive(Debug, Clone)]
pub struct PayloadSpec {
    /// JSON or raw.
    pub format: Format,
    /// Fields that identify the job; empty means the whole document.
    pub include: Vec<String>,
    /// Fields left out of the fingerprint, inside what `include` names.
    pub exclude: Vec<String>,
    /// More fields left out when the first one is present (Sidekiq's ActiveJob wrapper
    /// carries its own job id and timestamps inside `args`).
    pub exclude_if: Option<(String, Vec<String>)>,
    /// Where the job id is.
    pub job_id: Option<String>,
    /// A field naming the job for logs and errors (its class or task name).
    pub label: Option<String>,
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
    /// Check the pointers are well formed (each empty or starting with `/`).
    pub fn validate(&self, key: &'static str) -> Result<(), ConfigError> {
        let all = self
            .include
            .iter()
            .chain(&self.exclude)
            .chain(self.job_id.iter())
            .chain(self.label.iter());
        for p in all {
            if !p.is_empty() && !p.starts_with('/') {
                return Err(ConfigError::Invalid {
                    key,
                    reason: format!("`{p}` is not a JSON pointer: it must start with `/`"),
                });
            }
        }
        if self.format == Format::Raw
            && (!self.include.is_empty() || !self.exclude.is_empty() || self.job_id.is_some())
        {
            return Err(ConfigError::Invalid {
                key,
                reason: "include, exclude and job_id need format = \"json\"".into(),
            });
        }
        Ok(())
    }

    /// The job in `payload`, hashed with `hashes`; `context` (the queue, the rule) is hashed
    /// first. `None` when a JSON payload does not parse: it is not a job this rule knows.
    pub fn print(
        &self,
        payload: &[u8],
        context: &[&[u8]],
        hashes: &impl BuildHasher,
    ) -> Option<JobPrint> {
        let mut h = hashes.build_hasher();
        for c in context {
            h.write(c);
            h.write_u8(0xff);
        }
        match self.format {
            Format::Raw => {
                h.write(payload);
                Some(JobPrint {
                    fingerprint: h.finish(),
                    id: None,
                    label: None,
                })
            }
            Format::Json => {
                let mut doc: Value = serde_json::from_slice(payload).ok()?;
                let id = self
                    .job_id
                    .as_deref()
                    .and_then(|p| doc.pointer(p))
                    .filter(|v| !v.is_null())
                    .map(|v| hash_id(v, hashes));
                let label = self
                    .label
                    .as_deref()
                    .and_then(|p| doc.pointer(p))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                for p in &self.exclude {
                    remove(&mut doc, p);
                }
                if let Some((when, more)) = &self.exclude_if {
                    if doc.pointer(when).is_some() {
                        for p in more {
                            remove(&mut doc, p);
                        }
                    }
                }
                if self.include.is_empty() {
                    write_canonical(&doc, &mut h);
                } else {
                    for p in &self.include {
                        h.write(p.as_bytes());
                        write_canonical(doc.pointer(p).unwrap_or(&Value::Null), &mut h);
                    }
                }
                Some(JobPrint {
                    fingerprint: h.finish(),
                    id,
                    label,
                })
            }
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

/// Take the field at `pointer` out of `doc`: an object member is removed, an array element
/// becomes null (so later indices keep their meaning).
fn remove(doc: &mut Value, pointer: &str) {
    let Some((parent, last)) = pointer.rsplit_once('/') else {
        return;
    };
    let last = last.replace("~1", "/").replace("~0", "~");
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.remove(&last);
        }
        Some(Value::Array(a)) => {
            if let Some(v) = last.parse::<usize>().ok().and_then(|i| a.get_mut(i)) {
                *v = Value::Null;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::RandomState;

    fn spec(include: &[&str], exclude: &[&str], id: Option<&str>) -> PayloadSpec {
        PayloadSpec {
            format: Format::Json,
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
            exclude_if: None,
            job_id: id.map(str::to_string),
            label: Some("/class".into()),
        }
    }

    #[test]
    fn excluded_fields_do_not_change_the_fingerprint_and_the_rest_does() {
        let h = RandomState::new();
        let s = spec(&[], &["/jid", "/enqueued_at"], Some("/jid"));
        let a = s
            .print(
                br#"{"class":"A","args":[1],"jid":"x","enqueued_at":1.5}"#,
                &[b"q"],
                &h,
            )
            .unwrap();
        let b = s
            .print(
                br#"{"enqueued_at":9,"jid":"y","args":[1],"class":"A"}"#,
                &[b"q"],
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
            .print(br#"{"class":"A","args":[2],"jid":"x"}"#, &[b"q"], &h)
            .unwrap();
        assert_ne!(a.fingerprint, c.fingerprint, "other arguments");
        assert_eq!(a.id, c.id);
        let d = s
            .print(br#"{"class":"A","args":[1],"jid":"x"}"#, &[b"q2"], &h)
            .unwrap();
        assert_ne!(a.fingerprint, d.fingerprint, "another queue");
    }

    #[test]
    fn included_fields_alone_make_the_fingerprint() {
        let h = RandomState::new();
        let s = spec(&["/headers/task", "/body"], &[], Some("/headers/id"));
        let a = s
            .print(
                br#"{"body":"W10=","headers":{"task":"t.add","id":"1","retries":0}}"#,
                &[],
                &h,
            )
            .unwrap();
        let b = s
            .print(
                br#"{"body":"W10=","headers":{"task":"t.add","id":"2","retries":3},"x":1}"#,
                &[],
                &h,
            )
            .unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
        let c = s
            .print(
                br#"{"body":"W10=","headers":{"task":"t.mul","id":"1"}}"#,
                &[],
                &h,
            )
            .unwrap();
        assert_ne!(a.fingerprint, c.fingerprint);
    }

    #[test]
    fn exclusions_inside_arrays_and_conditional_ones() {
        let h = RandomState::new();
        let mut s = spec(&["/args"], &[], None);
        s.exclude_if = Some(("/wrapped".into(), vec!["/args/0/job_id".into()]));
        let wrapped =
            |id: &str| format!(r#"{{"wrapped":"J","args":[{{"job_id":"{id}","arguments":[1]}}]}}"#);
        let a = s.print(wrapped("a").as_bytes(), &[], &h).unwrap();
        let b = s.print(wrapped("b").as_bytes(), &[], &h).unwrap();
        assert_eq!(a.fingerprint, b.fingerprint, "ActiveJob's id is left out");
        let plain = |id: &str| format!(r#"{{"args":[{{"job_id":"{id}"}}]}}"#);
        let c = s.print(plain("a").as_bytes(), &[], &h).unwrap();
        let d = s.print(plain("b").as_bytes(), &[], &h).unwrap();
        assert_ne!(
            c.fingerprint, d.fingerprint,
            "a plain job's argument is kept"
        );
    }

    #[test]
    fn invalid_json_is_not_a_job_and_raw_payloads_hash_whole() {
        let h = RandomState::new();
        assert!(spec(&[], &[], None).print(b"not json", &[], &h).is_none());
        let raw = PayloadSpec {
            format: Format::Raw,
            include: vec![],
            exclude: vec![],
            exclude_if: None,
            job_id: None,
            label: None,
        };
        assert_eq!(
            raw.print(b"abc", &[], &h).unwrap().fingerprint,
            raw.print(b"abc", &[], &h).unwrap().fingerprint
        );
        assert_ne!(
            raw.print(b"abc", &[], &h).unwrap().fingerprint,
            raw.print(b"abd", &[], &h).unwrap().fingerprint
        );
        assert!(raw.validate("k").is_ok());
        assert!(spec(&["class"], &[], None).validate("k").is_err());
    }
}
