//! The guards over a byte stream, without sockets: every command the request scanner finds
//! is classified and judged by the session's own code ([`crate::pipeline`]), and what the guards produce is checked
//! against what the session relies on to keep replies matched to requests:
//!
//! - a rewrite is whole commands, exactly one replacing the client's (when it replaces it)
//!   plus exactly `hidden` extra ones, so the client gets one reply per command it sent;
//! - a local answer or refusal is exactly one whole RESP reply;
//! - what a guard writes stays within a bound of the command's own size.
//!
//! The guard-pipeline fuzz target (`fuzz/fuzz_targets/guard_pipeline.rs`) runs arbitrary
//! bytes through it.

use bytes::BytesMut;

use crate::command::CommandTable;
use crate::guard::{Guards, ScriptAccess, Verdict};
use crate::identity::ClientIdentity;
use crate::keyspace::insight::Insight;
use crate::pipeline::{self, Judge, Scanned, Span};
use crate::scanner::reply::{ReplyScanner, ReplyStep};
use crate::scanner::request::{Limits, RequestScanner, Step, StreamStep};

/// What the guards did with a stream.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Commands found.
    pub commands: usize,
    /// Forwarded unchanged.
    pub forwarded: usize,
    /// Rewritten or followed by extra commands.
    pub rewritten: usize,
    /// Answered or refused by the proxy.
    pub answered: usize,
}

/// Judge every command of `input` with `guards` as `client`, and check each verdict.
/// Stops at the end of the input, at a command cut off by it, or at malformed input (where
/// a session answers the protocol error and closes). An `Err` names the broken rule.
pub fn judge(
    guards: &Guards,
    table: &CommandTable,
    limits: Limits,
    client: &ClientIdentity,
    input: &[u8],
) -> Result<Outcome, String> {
    judge_observed(guards, table, limits, client, input, None)
}

/// [`judge`], with the keyspace insight observing the commands it samples
/// ([`Insight::due`]), as a session's would.
pub fn judge_observed(
    guards: &Guards,
    table: &CommandTable,
    limits: Limits,
    client: &ClientIdentity,
    input: &[u8],
    insight: Option<&Insight>,
) -> Result<Outcome, String> {
    let mut scanner = RequestScanner::new(limits);
    let mut keys = Vec::new();
    let mut scratch = BytesMut::new();
    // A streamed command's rewritten head, checked with the rest once it has passed.
    let mut new_head: Option<Vec<u8>> = None;
    let mut out = Outcome::default();
    let mut pos = 0;
    loop {
        let buf = &input[pos..];
        let span = match scanner.scan(buf) {
            Step::Incomplete | Step::Error(_) => return Ok(out),
            Step::Empty { end } => {
                pos += end;
                scanner.rebase(end);
                continue;
            }
            Step::Command { start, end, inline } => {
                Span::whole(start, end, inline, scanner.args().len())
            }
            Step::Streaming {
                start,
                head_end,
                argc,
                next_len,
            } => Span::streamed_head(start, head_end, argc as usize, next_len),
        };
        let (inline, start, end, streaming) = (span.inline, span.start, span.end, span.streaming);
        out.commands += 1;
        let cmd = Scanned::new(&scanner, buf, span);
        let src = cmd.src;
        let info = cmd.classify(table);
        scratch.clear();
        let with = Judge {
            guards,
            access: ScriptAccess::Allowed,
            client,
            keys: &mut keys,
            scratch: &mut scratch,
            watch: &mut None,
            observe: insight.filter(|i| i.due()),
        };
        let verdict = pipeline::judge(&cmd, info, with, || true);
        match verdict {
            Verdict::Forward => out.forwarded += 1,
            Verdict::Rewrite {
                replacement,
                hidden,
            } => {
                out.rewritten += 1;
                if streaming.is_some() {
                    new_head = replacement.map(|len| scratch[..len].to_vec());
                }
                check_rewrite(&scratch, replacement, hidden, streaming.is_some())
                    .map_err(|e| format!("{} rewritten: {e}", info.name))?;
                // An inline command is sent as its multibulk form, which can be larger; a
                // wrapped one carries the TTL guard's script.
                let sent = if inline { src.len() } else { end - start };
                let bound = 2 * sent
                    + 1024
                    + (crate::guard::ttl::SCRIPT.len())
                        .max(crate::guard::ttl::SET_SCRIPT.len())
                        .max(crate::guard::ttl::PAIRS_SCRIPT.len());
                if scratch.len() > bound {
                    return Err(format!(
                        "{} rewritten to {} bytes from {}",
                        info.name,
                        scratch.len(),
                        end - start
                    ));
                }
            }
            Verdict::Append { args, len } => {
                out.rewritten += 1;
                // What the session sends: a new `*N` line, the client's arguments, the added.
                let wire = crate::guard::wire_args(src, start, end, span.argc)
                    .filter(|_| !inline && streaming.is_none())
                    .ok_or_else(|| format!("{} appended to without its own encoding", info.name))?;
                let mut sent = Vec::new();
                crate::resp::array_header(&mut sent, span.argc + args as usize);
                sent.extend_from_slice(&src[wire]);
                sent.extend_from_slice(&scratch[..len]);
                check_rewrite(&sent, Some(sent.len()), 0, false)
                    .map_err(|e| format!("{} appended to: {e}", info.name))?;
                if len != scratch.len() {
                    return Err(format!("{} appended to, with bytes left over", info.name));
                }
            }
            Verdict::Prepend { args, fixed, len } => {
                out.rewritten += 1;
                // What the session sends: a new `*N` line, the added, the client's arguments.
                let wire = crate::guard::wire_args(src, start, end, span.argc)
                    .filter(|_| !inline && streaming.is_none())
                    .ok_or_else(|| {
                        format!("{} prepended to without its own encoding", info.name)
                    })?;
                let mut sent = Vec::new();
                crate::resp::array_header(&mut sent, span.argc + args as usize);
                sent.extend_from_slice(fixed);
                sent.extend_from_slice(&scratch[..len]);
                sent.extend_from_slice(&src[wire]);
                check_rewrite(&sent, Some(sent.len()), 0, false)
                    .map_err(|e| format!("{} prepended to: {e}", info.name))?;
                if len != scratch.len() {
                    return Err(format!("{} prepended to, with bytes left over", info.name));
                }
            }
            Verdict::Answer(reply) | Verdict::Refuse(reply) => {
                out.answered += 1;
                check_one_reply(&reply).map_err(|e| format!("{} answered: {e}", info.name))?;
            }
        }
        pos += end;
        scanner.rebase(end);
        if streaming.is_some() {
            // The rest of a streamed command passes by; a rewritten head must make one
            // whole command with it.
            let rest_from = pos;
            loop {
                match scanner.stream(&input[pos..], 0) {
                    StreamStep::More(n) => {
                        pos += n;
                        scanner.rebase(n);
                        if pos == input.len() {
                            return Ok(out);
                        }
                    }
                    StreamStep::Done(n) => {
                        pos += n;
                        scanner.rebase(n);
                        if let Some(mut head) = new_head.take() {
                            head.extend_from_slice(&input[rest_from..pos]);
                            if count_commands(&head)? != 1 {
                                return Err(format!(
                                    "{}: a rewritten head is not one command",
                                    info.name
                                ));
                            }
                        }
                        break;
                    }
                    StreamStep::Error(_) => return Ok(out),
                }
            }
        }
    }
}

/// `bytes` is whole commands: one replacing the client's when `replacement` says where it
/// ends, then exactly `hidden` more.
fn check_rewrite(
    bytes: &[u8],
    replacement: Option<usize>,
    hidden: u32,
    streamed: bool,
) -> Result<(), String> {
    // A streamed command's replacement is a new head, checked once the rest has passed.
    if let Some(len) = replacement.filter(|_| !streamed) {
        if len > bytes.len() || count_commands(&bytes[..len])? != 1 {
            return Err(format!(
                "the replacement (first {len} bytes) is not one command"
            ));
        }
    }
    let extra = count_commands(&bytes[replacement.unwrap_or(0)..])?;
    if extra != hidden as usize {
        return Err(format!("{extra} extra commands, {hidden} announced"));
    }
    if replacement.is_none() && hidden == 0 {
        return Err("a rewrite that changes nothing".into());
    }
    Ok(())
}

/// How many whole commands `bytes` holds; an error unless it is exactly whole commands.
fn count_commands(bytes: &[u8]) -> Result<usize, String> {
    let mut scanner = RequestScanner::new(Limits::default());
    let mut pos = 0;
    let mut n = 0;
    while pos < bytes.len() {
        match scanner.scan(&bytes[pos..]) {
            Step::Command { end, inline, .. } if !inline => {
                n += 1;
                pos += end;
                scanner.rebase(end);
            }
            other => return Err(format!("not a whole command at byte {pos}: {other:?}")),
        }
    }
    Ok(n)
}

/// `reply` is exactly one whole RESP reply.
fn check_one_reply(reply: &[u8]) -> Result<(), String> {
    let mut scanner = ReplyScanner::new();
    loop {
        match scanner.scan(reply).map_err(|e| e.to_string())? {
            ReplyStep::Done(end) if end == reply.len() => return Ok(()),
            ReplyStep::Done(end) => {
                return Err(format!("one reply ends at {end} of {} bytes", reply.len()))
            }
            ReplyStep::Partial(_) => return Err("an incomplete reply".into()),
            ReplyStep::Header { .. } | ReplyStep::Element(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;
    use crate::guard::{guards_of as guards, GuardContext};

    #[test]
    fn every_verdict_of_a_mixed_stream_keeps_replies_matched() {
        let (guards, table) = guards(
            r#"
            [[guards.ttl.rules]]
            pattern = "*"
            ttl = "1h"
            [[guards.size.rules]]
            pattern = "*"
            max_value = "8B"
            "#,
        );
        let client = ClientIdentity::new("127.0.0.1:1".parse().unwrap());
        let input = b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n\
*4\r\n$4\r\nHSET\r\n$1\r\nh\r\n$1\r\nf\r\n$1\r\nv\r\n\
*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$20\r\n01234567890123456789\r\n\
GET a\r\n\
*2\r\n$3\r\nGET\r\n$1\r\na";
        let out = judge(&guards, &table, Limits::default(), &client, input).unwrap();
        assert_eq!(
            out,
            Outcome {
                commands: 4,
                forwarded: 1,
                rewritten: 2,
                answered: 1
            }
        );
    }

    /// An MSET of `keys` keys, as a client sends it.
    fn mset(keys: usize) -> Vec<u8> {
        let mut cmd = Vec::new();
        crate::resp::array_header(&mut cmd, 1 + 2 * keys);
        crate::resp::bulk(&mut cmd, b"MSET");
        for i in 0..keys {
            crate::resp::bulk(&mut cmd, format!("k{i}").as_bytes());
            crate::resp::bulk(&mut cmd, b"v");
        }
        cmd
    }

    /// The arguments the guards examine judging `input`, and what they did with it.
    fn examined(guards: &Guards, table: &CommandTable, input: &[u8]) -> (usize, Outcome) {
        let client = ClientIdentity::new("127.0.0.1:1".parse().unwrap());
        let limits = Limits {
            max_buffered_command: 4 << 20,
            stream_threshold: 4 << 20,
            ..Limits::default()
        };
        let before = crate::guard::examined();
        let out = judge(guards, table, limits, &client, input).unwrap();
        (crate::guard::examined() - before, out)
    }

    #[test]
    fn a_write_of_many_keys_is_checked_in_linear_time() {
        // Every guard that wants MSET, with rules for every key: ten times the keys must
        // mean at most about ten times the arguments examined (a check comparing every
        // value with every key would examine a hundred times as many). A count, not a
        // clock, so a quadratic check fails here on any machine.
        // Memory at the soft level, so the shed guard looks at every key too (none is low
        // priority, so none is refused).
        let raw = RawConfig::from_toml(
            r#"
            [[guards.size.rules]]
            pattern = "*"
            max_value = "1KiB"
            max_elements = 4
            [[guards.ttl.rules]]
            pattern = "*"
            ttl = "1h"
            [[guards.shed.rules]]
            pattern = "low:*"
            priority = "low"
            "#,
        )
        .unwrap();
        let table = CommandTable::builtin();
        let context = GuardContext::new(&raw.guards);
        let soft = (raw.guards.shed.soft_enter + raw.guards.shed.hard_enter) / 2.0;
        let poll = crate::pressure::LimitSource::MaxMemory;
        context
            .pressure
            .record_poll((soft * 1e12) as u64, 1_000_000_000_000, poll, true, 0);
        let guards = Guards::build(&raw.guards, &table, &context).unwrap();
        let whole = Outcome {
            commands: 1,
            forwarded: 0,
            rewritten: 1,
            answered: 0,
        };
        let (small, out) = examined(&guards, &table, &mset(4_000));
        assert_eq!(out, whole);
        let (large, out) = examined(&guards, &table, &mset(40_000));
        assert_eq!(out, whole);
        assert!(small >= 4_000, "every key is examined: {small}");
        assert!(
            large <= 12 * small,
            "{small} arguments for 4,000 keys, {large} for 40,000"
        );
    }

    #[test]
    fn a_rewrite_announcing_the_wrong_count_is_caught() {
        let one = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n";
        assert!(check_rewrite(one, Some(one.len()), 0, false).is_ok());
        assert!(check_rewrite(one, None, 1, false).is_ok());
        assert!(check_rewrite(one, None, 2, false).is_err());
        assert!(check_rewrite(&one[..10], Some(10), 0, false).is_err());
        assert!(check_one_reply(b"+OK\r\n").is_ok());
        assert!(check_one_reply(b"+OK\r\n+OK\r\n").is_err());
        assert!(check_one_reply(b"*2\r\n:1\r\n").is_err());
    }
}
