//! A generic rule's scripted enqueues: a library the proxy has no preset for (an in-house
//! one, a less common one) that enqueues with its own Lua script or function, described by
//! the rule instead of read from the library's source.
//!
//! The rule says which script it is ([`ScriptMatch`]): its SHA1 digest (EVALSHA of it, and
//! EVAL of a body hashing to it, so both forms of one script are one script), text in its
//! body (EVAL of such a body; EVALSHA of a digest learned from such a body seen in EVAL or
//! SCRIPT LOAD), or a function's name (FCALL, FCALL_RO). A call of it is an enqueue when
//! its key at `key_index` (or any key) matches the rule's pattern and, for a script that
//! serves several operations, its `operation_arg` is the enqueue's `operation`. Its ARGV at
//! `payload_arg` is the payload, read by the rule's [`PayloadSpec`] like a pushed one; the
//! queue is the matched key.
//!
//! A dropped call cannot be answered with what the script would have returned, so the rule
//! says what ([`dropped_command`]): the command it is rewritten to is encoded once, when
//! the rule is built, and Redis writes the reply (a constant script for nil, `+OK` and
//! integers, ECHO for text), so its type is what a script's would be in RESP2 and RESP3.
//!
//! This module is the rule, built from the configuration; judging a call under it is
//! `scripted.rs`'s. It never reads a command.

use bytes::BytesMut;

use super::super::script_catalog::parse_digest;
use super::payload::PayloadSpec;
use crate::config::{ConfigError, DroppedReply, RawEnqueueRule, RawScriptMatch};
use crate::resp;

/// A configuration error in `[[guards.enqueue.rules]]`.
fn invalid(reason: impl Into<String>) -> ConfigError {
    ConfigError::enqueue_rule(reason)
}

/// The largest `key_index`, `payload_arg` or `operation_arg` a rule takes.
pub const MAX_ARG_INDEX: u32 = 255;

/// The largest integer a dropped reply may be: Lua's numbers are doubles, exact to 2^53.
const MAX_DROPPED_INTEGER: i64 = 1 << 53;

/// How a generic rule recognises its script's calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptMatch {
    /// By the script's SHA1 digest, as bytes (an EVAL body's digest) and in lower-case hex
    /// (compared with EVALSHA's argument in any case, without parsing it).
    Digest {
        /// The digest.
        bytes: [u8; 20],
        /// The digest in lower-case hex.
        hex: [u8; 40],
    },
    /// By text in its body (digests learned from bodies seen).
    BodyContains(Box<[u8]>),
    /// By a function's name (in any case, as Redis finds it).
    Function(Box<[u8]>),
}

/// A generic rule reading enqueues made by a script.
#[derive(Debug, Clone)]
pub struct ScriptRule {
    /// Which script.
    pub script: ScriptMatch,
    /// The key (from 1) the pattern is matched against; any key when `None`.
    pub key_index: Option<usize>,
    /// The ARGV (from 1) holding the payload.
    pub payload_arg: usize,
    /// The ARGV (from 1) naming the operation, and the value that enqueues.
    pub operation: Option<(usize, Box<[u8]>)>,
    /// How the payload is read.
    pub spec: PayloadSpec,
    /// The command a dropped call is replaced by, encoded.
    pub dropped: Box<[u8]>,
}

impl ScriptRule {
    /// The settings of a generic rule with `script`, whose payloads `spec` reads.
    pub fn build(
        r: &RawEnqueueRule,
        script: &RawScriptMatch,
        spec: PayloadSpec,
    ) -> Result<ScriptRule, ConfigError> {
        let script = script_match(script)?;
        let payload_arg = r.payload_arg.ok_or_else(|| {
            invalid("a script rule needs `payload_arg`, the ARGV index (from 1) of the payload")
        })?;
        let payload_arg = arg_index("payload_arg", payload_arg)?;
        let key_index = r.key_index.map(|i| arg_index("key_index", i)).transpose()?;
        let operation = match (r.operation_arg, &r.operation) {
            (None, None) => None,
            (Some(i), Some(op)) if !op.is_empty() => {
                let i = arg_index("operation_arg", i)?;
                if i == payload_arg {
                    return Err(invalid(
                        "operation_arg and payload_arg must be different arguments",
                    ));
                }
                Some((i, op.as_bytes().into()))
            }
            (Some(_), Some(_)) => return Err(invalid("operation must not be empty")),
            _ => {
                return Err(invalid(
                    "operation_arg and operation go together: the argument naming the operation, and the value that enqueues",
                ))
            }
        };
        let dropped = dropped_command(r.dropped_reply.as_ref())?;
        let rule = ScriptRule {
            script,
            key_index,
            payload_arg,
            operation,
            spec,
            dropped,
        };
        Ok(rule)
    }

    /// Whether the rule reads FCALL (a function), not EVAL and EVALSHA (a script).
    pub fn reads_functions(&self) -> bool {
        matches!(self.script, ScriptMatch::Function(_))
    }
}

/// The script of a rule's `script = { ... }`: exactly one way of recognising it.
fn script_match(s: &RawScriptMatch) -> Result<ScriptMatch, ConfigError> {
    let m = match (&s.sha1, &s.body_contains, &s.function) {
        (Some(sha), None, None) => {
            let bytes = parse_digest(sha.as_bytes()).ok_or_else(|| {
                invalid(format!(
                    "script.sha1 `{sha}` is not a SHA1 digest (40 hex digits)"
                ))
            })?;
            let mut hex = [0u8; 40];
            hex.copy_from_slice(sha.to_ascii_lowercase().as_bytes());
            ScriptMatch::Digest { bytes, hex }
        }

        (None, Some(text), None) if !text.is_empty() => {
            ScriptMatch::BodyContains(text.as_bytes().into())
        }
        (None, None, Some(name)) if !name.is_empty() => {
            ScriptMatch::Function(name.as_bytes().into())
        }
        (None, Some(_), None) | (None, None, Some(_)) => {
            return Err(invalid(
                "script.body_contains and script.function must not be empty",
            ))
        }
        _ => {
            return Err(invalid(
                "script takes exactly one of sha1, body_contains and function",
            ))
        }
    };
    Ok(m)
}

/// An argument index of the configuration, checked: from 1, at most [`MAX_ARG_INDEX`].
fn arg_index(name: &str, i: u32) -> Result<usize, ConfigError> {
    if i == 0 || i > MAX_ARG_INDEX {
        return Err(invalid(format!(
            "{name} = {i}: counts from 1 (as KEYS and ARGV in Lua), up to {MAX_ARG_INDEX}"
        )));
    }
    Ok(i as usize)
}

/// The command a dropped call is rewritten to, so that Redis answers what `reply` says:
/// a constant script for nil, `+OK` and integers (the very replies a script gives, in
/// either protocol), ECHO for text.
pub fn dropped_command(reply: Option<&DroppedReply>) -> Result<Box<[u8]>, ConfigError> {
    let script = |body: &str| {
        let mut out = BytesMut::new();
        resp::command(&mut out, &[b"EVAL", body.as_bytes(), b"0"]);
        out
    };
    let out = match reply {
        None => script("return nil"),
        Some(DroppedReply::Text(t)) if t == "nil" => script("return nil"),
        Some(DroppedReply::Text(t)) if t == "ok" => script("return redis.status_reply('OK')"),
        Some(DroppedReply::Text(t)) => {
            let mut out = BytesMut::new();
            resp::command(&mut out, &[b"ECHO", t.as_bytes()]);
            out
        }
        Some(DroppedReply::Integer(n)) if n.unsigned_abs() <= MAX_DROPPED_INTEGER as u64 => {
            script(&format!("return {n}"))
        }
        Some(DroppedReply::Integer(n)) => {
            return Err(invalid(format!(
                "dropped_reply = {n}: a script's integer is exact only up to 2^53"
            )))
        }
    };
    Ok(out.to_vec().into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawEnqueueGuard;
    use crate::guard::enqueue::memory::EnqueueMemory;
    use crate::guard::enqueue::preset::Shape;
    use crate::guard::enqueue::rules::build_rules;
    use crate::guard::enqueue::rules::{Cmd, EnqueueLimits};
    use crate::guard::enqueue::scripted::CallDigest;
    use crate::guard::rule::Mode;
    use crate::guard::rule::Rule;
    use crate::guard::verdict::with_view;

    const BODY: &[u8] = b"redis.call('RPUSH', KEYS[1], ARGV[2]) -- my-lib enqueue";

    /// The rules of `[guards.enqueue]` with one rule written in TOML, or the error.
    fn build(rule: &str) -> Result<Vec<Rule<EnqueueLimits>>, String> {
        let text = format!("[[rules]]\n{rule}");
        let raw: RawEnqueueGuard = toml::from_str(&text).map_err(|e| e.to_string())?;
        build_rules(&raw, Mode::Enforce, 0).map_err(|e| e.to_string())
    }

    fn error(rule: &str) -> String {
        build(rule).expect_err("refused")
    }

    fn script_rule(rule: &str) -> ScriptRule {
        let mut rules = build(rule).expect("builds");
        match rules.remove(0).limits.shape {
            Shape::Script(s) => *s,
            other => panic!("not a script rule: {other:?}"),
        }
    }

    const SHA: &str = "preset = 'generic'\npattern = 'q'\npayload_arg = 1\n";

    #[test]
    fn a_script_rule_is_built_from_any_one_way_of_knowing_its_script() {
        let hex = sha1_smol::Sha1::from(BODY).digest().to_string();
        let by_digest = script_rule(&format!(
            "{SHA}script = {{ sha1 = '{}' }}",
            hex.to_uppercase()
        ));
        let mut lower = [0u8; 40];
        lower.copy_from_slice(hex.as_bytes());
        assert_eq!(
            by_digest.script,
            ScriptMatch::Digest {
                bytes: sha1_smol::Sha1::from(BODY).digest().bytes(),
                hex: lower,
            }
        );
        assert_eq!(by_digest.payload_arg, 1);
        assert_eq!(by_digest.key_index, None);
        let f = script_rule(&format!(
            "{SHA}script = {{ function = 'enq' }}\nkey_index = 2\noperation_arg = 3\noperation = 'add'"
        ));
        assert_eq!(f.script, ScriptMatch::Function(b"enq"[..].into()));
        assert_eq!(f.key_index, Some(2));
        assert_eq!(f.operation, Some((3, b"add"[..].into())));
        let rules = build(&format!("{SHA}script = {{ function = 'enq' }}")).unwrap();
        assert_eq!(rules[0].limits.commands, Cmd::Fcall.bit());
        let rules = build(&format!("{SHA}script = {{ body_contains = 'my-lib' }}")).unwrap();
        assert_eq!(
            rules[0].limits.commands,
            Cmd::Eval.bit() | Cmd::EvalSha.bit()
        );
    }

    #[test]
    fn check_config_names_what_is_wrong_with_a_script_rule() {
        let cases = [
            (
                "script = { sha1 = 'abc' }",
                "script.sha1 `abc` is not a SHA1 digest",
            ),
            (
                "script = { sha1 = 'zz00000000000000000000000000000000000000' }",
                "not a SHA1 digest (40 hex digits)",
            ),
            (
                "script = { sha1 = '0000000000000000000000000000000000000000', function = 'f' }",
                "exactly one of sha1, body_contains and function",
            ),
            (
                "script = {}",
                "exactly one of sha1, body_contains and function",
            ),
            ("script = { function = '' }", "must not be empty"),
            (
                "script = { function = 'f', sha256 = 'x' }",
                "unknown field `sha256`",
            ),
            (
                "script = { function = 'f' }\npayload_arg = 0",
                "payload_arg = 0: counts from 1",
            ),
            (
                "script = { function = 'f' }\npayload_arg = 256",
                "payload_arg = 256: counts from 1 (as KEYS and ARGV in Lua), up to 255",
            ),
            (
                "script = { function = 'f' }\npayload_arg = 1\nkey_index = 0",
                "key_index = 0",
            ),
            (
                "script = { function = 'f' }\npayload_arg = 2\noperation = 'enqueue'",
                "operation_arg and operation go together",
            ),
            (
                "script = { function = 'f' }\npayload_arg = 2\noperation_arg = 1",
                "operation_arg and operation go together",
            ),
            (
                "script = { function = 'f' }\npayload_arg = 2\noperation_arg = 2\noperation = 'e'",
                "must be different arguments",
            ),
            (
                "script = { function = 'f' }\npayload_arg = 2\noperation_arg = 1\noperation = ''",
                "operation must not be empty",
            ),
            (
                "script = { function = 'f' }\npayload_arg = 1\ncommands = ['EVALSHA']",
                "commands and field are for pushes",
            ),
            ("payload_arg = 2", "need `script`"),
            ("dropped_reply = 'ok'", "need `script`"),
            (
                "script = { function = 'f' }\npayload_arg = 1\ndropped_reply = 9007199254740993",
                "exact only up to 2^53",
            ),
            (
                "script = { function = 'f' }\npayload_arg = 1\ninclude = ['no-slash']",
                "no-slash",
            ),
        ];
        for (settings, want) in cases {
            let e = error(&format!("preset = 'generic'\npattern = 'q'\n{settings}"));
            assert!(e.contains(want), "{settings}: {e}");
        }
        let e = error("preset = 'generic'\npattern = 'q'\nscript = { function = 'f' }");
        assert!(e.contains("needs `payload_arg`"), "{e}");
        let e = error("preset = 'dramatiq'\nscript = { function = 'f' }");
        assert!(e.contains("are for `generic`"), "{e}");
        let e = error("preset = 'dramatiq'\noperation_arg = 1");
        assert!(e.contains("are for `generic`"), "{e}");
    }

    #[test]
    fn dropped_replies_are_commands_whose_reply_redis_writes() {
        let encoded = |reply: Option<DroppedReply>| {
            let cmd = dropped_command(reply.as_ref()).expect("valid");
            String::from_utf8(cmd.to_vec()).unwrap()
        };
        let eval = |body: &str| {
            format!(
                "*3\r\n$4\r\nEVAL\r\n${}\r\n{body}\r\n$1\r\n0\r\n",
                body.len()
            )
        };
        assert_eq!(encoded(None), eval("return nil"));
        assert_eq!(
            encoded(Some(DroppedReply::Text("nil".into()))),
            eval("return nil")
        );
        assert_eq!(
            encoded(Some(DroppedReply::Text("ok".into()))),
            eval("return redis.status_reply('OK')")
        );
        assert_eq!(encoded(Some(DroppedReply::Integer(-7))), eval("return -7"));
        assert_eq!(
            encoded(Some(DroppedReply::Text("queued".into()))),
            "*2\r\n$4\r\nECHO\r\n$6\r\nqueued\r\n"
        );
    }

    #[test]
    fn an_eval_and_an_evalsha_of_one_script_have_one_digest() {
        let hex = sha1_smol::Sha1::from(BODY).digest().to_string();
        let by_eval = with_view(&[b"EVAL", BODY, b"1", b"q", b"e", b"p"], &[3], |cmd| {
            CallDigest::default().get(cmd, Cmd::Eval)
        });
        let by_sha = with_view(
            &[b"EVALSHA", hex.to_uppercase().as_bytes(), b"1", b"q"],
            &[3],
            |cmd| CallDigest::default().get(cmd, Cmd::EvalSha),
        );
        assert!(by_eval.is_some());
        assert_eq!(by_eval, by_sha);
        let malformed = with_view(&[b"EVALSHA", b"not-hex", b"0"], &[], |cmd| {
            CallDigest::default().get(cmd, Cmd::EvalSha)
        });
        assert_eq!(malformed, None);
    }

    #[test]
    fn a_body_is_learned_only_by_the_rule_whose_text_it_contains() {
        let rule = script_rule(&format!("{SHA}script = {{ body_contains = 'my-lib' }}"));
        let raw = RawEnqueueGuard::default();
        let memory = EnqueueMemory::new(&raw);
        let digest = sha1_smol::Sha1::from(BODY).digest().bytes();
        assert!(!rule.learn(&memory, 0, b"return 1"));
        assert!(!memory.rule_script_known(0, &digest));
        assert!(rule.learn(&memory, 0, BODY));
        assert!(memory.rule_script_known(0, &digest));
        assert!(!memory.rule_script_known(1, &digest), "another rule's");
    }
}
