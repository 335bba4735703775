//! A generic rule for libraries that write a job in two steps, as arq does (`PSETEX
//! arq:job:<id> <ms> <pickle>` then `ZADD arq:queue <score> <id>`, in one MULTI): the
//! payload is the value of a job key (SET, SETEX, PSETEX, SETNX) or a field of a job hash
//! (HSET, HMSET, HSETNX), and only the id is pushed onto the queue.
//!
//! The job is judged at its key's write. A dropped one is replaced by a command that
//! changes nothing and answers what the write would have answered for a new job (`+OK`,
//! or the count of fields), and its id is remembered for a few seconds, so the push of that
//! id onto a queue matching `id_queues` is dropped too ([`check_pushed_ids`], which RQ's
//! preset shares): no orphan job key, no queue entry without a job, and the transaction's
//! replies keep their number, order and types.
//!
//! The key must be written before its id is pushed (arq, and RQ's own preset, do so).

use bytes::BytesMut;

use super::super::rule::Rule;
use super::super::verdict::{CommandView, Verdict};
use super::job_key_rule::{JobKeyRule, Reply};
use super::memory::EnqueueMemory;
use super::rewrite::{drop_payloads, push_layout};
use super::rules::{Cmd, EnqueueLimits};
use super::script_add::judge_print;
use crate::identity::ClientIdentity;
use crate::resp;

impl JobKeyRule {
    /// Judge the write `cmd` of a job key under `rule`: passed, refused, or on a drop
    /// replaced by a no-op with the write's reply, its id remembered as dropped.
    pub fn check(
        &self,
        memory: &EnqueueMemory,
        rule: &Rule<EnqueueLimits>,
        cmd: &CommandView<'_>,
        client: &ClientIdentity,
        out: &mut BytesMut,
    ) -> Verdict {
        let Some(write) = self.read(cmd) else {
            return Verdict::Forward;
        };
        let key = cmd.arg(1).unwrap_or_default();
        let id = &key[self.id_at.min(key.len())..];
        let context = memory.job_hasher(&rule.limits, client, &[]);
        let Some(mut job) = self.spec.print(write.payload, &context, memory.hasher()) else {
            rule.limits.unread.increment(1);
            return Verdict::Forward;
        };
        job.id = Some(memory.hash(&[id]));
        judge_print(memory, rule, &job, key, cmd, client, out, |out| {
            memory.remember_dropped(id);
            no_op(out, write.reply);
        })
    }
}

/// Write a command that changes nothing and answers `reply`: a script returning it, so it
/// keeps its place in a pipeline and in EXEC's reply.
fn no_op(out: &mut BytesMut, reply: Reply) {
    match reply {
        Reply::Ok => resp::command(out, &[b"EVAL", b"return redis.status_reply('OK')", b"0"]),
        Reply::Integer(n) => {
            let body = format!("return {n}");
            resp::command(out, &[b"EVAL", body.as_bytes(), b"0"]);
        }
    }
}

/// A push (list push or ZADD) onto a queue of dropped jobs' ids: the ids dropped in the last
/// seconds are left out of it, the rest pass.
pub fn check_pushed_ids(
    memory: &EnqueueMemory,
    cmd: &CommandView<'_>,
    kind: Cmd,
    out: &mut BytesMut,
) -> Verdict {
    let Some(layout) = push_layout(cmd, kind, None) else {
        return Verdict::Forward;
    };
    let now = memory.now();
    let dropped = |&i: &usize| memory.was_dropped(cmd.arg(i).unwrap_or_default(), now);
    if !layout.payloads.clone().any(|i| dropped(&i)) {
        return Verdict::Forward;
    }
    let gone: Vec<usize> = layout.payloads.clone().filter(dropped).collect();
    drop_payloads(out, cmd, kind, &layout, &gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawEnqueueGuard;
    use crate::guard::enqueue::preset::Shape;
    use crate::guard::enqueue::rules::build_rules;
    use crate::guard::rule::Mode;
    use crate::guard::verdict::with_view;

    /// The rules of `[guards.enqueue]` with one rule written in TOML, or the error.
    fn build(rule: &str) -> Result<Vec<Rule<EnqueueLimits>>, String> {
        let text = format!("[[rules]]\n{rule}");
        let raw: RawEnqueueGuard = toml::from_str(&text).map_err(|e| e.to_string())?;
        build_rules(&raw, Mode::Enforce, 0).map_err(|e| e.to_string())
    }

    /// A generic rule's settings.
    const GENERIC: &str = "preset = 'generic'\n";

    fn job_key_rule(rule: &str) -> (JobKeyRule, u16) {
        let mut rules = build(&format!("{GENERIC}{rule}")).expect("builds");
        let rule = rules.remove(0);
        match rule.limits.shape {
            Shape::JobKey(j) => (*j, rule.limits.commands),
            other => panic!("not a job key rule: {other:?}"),
        }
    }

    /// The payload `rule` reads from the command `args`, and its reply on a drop.
    fn read(rule: &JobKeyRule, args: &[&[u8]]) -> Option<(Vec<u8>, String)> {
        with_view(args, &[1], |cmd| {
            rule.read(cmd)
                .map(|w| (w.payload.to_vec(), format!("{:?}", w.reply)))
        })
    }

    #[test]
    fn a_job_key_is_read_from_the_write_that_creates_it() {
        let (keys, commands) = job_key_rule("pattern = 'arq:job:*'\nid_queues = 'arq:queue'");
        assert_eq!(commands, Cmd::KeySet.bit());
        let queues = keys.id_queues();
        assert!(queues.matches(b"arq:queue") && !queues.matches(b"arq:queue2"));
        let ok = |p: &str| Some((p.as_bytes().to_vec(), "Ok".to_string()));
        assert_eq!(read(&keys, &[b"PSETEX", b"arq:job:1", b"9", b"p"]), ok("p"));
        assert_eq!(read(&keys, &[b"SETEX", b"arq:job:1", b"9", b"p"]), ok("p"));
        assert_eq!(
            read(&keys, &[b"SET", b"arq:job:1", b"p", b"PX", b"9"]),
            ok("p")
        );
        assert_eq!(read(&keys, &[b"set", b"arq:job:1", b"p", b"nx"]), ok("p"));
        assert_eq!(
            read(&keys, &[b"SETNX", b"arq:job:1", b"p"]),
            Some((b"p".to_vec(), "Integer(1)".into()))
        );
        assert_eq!(read(&keys, &[b"SET", b"arq:job:1", b"p", b"xx"]), None);
        assert_eq!(read(&keys, &[b"SET", b"arq:job:1", b"p", b"GET"]), None);
        assert_eq!(read(&keys, &[b"HSET", b"arq:job:1", b"f", b"p"]), None);

        let (hash, commands) = job_key_rule("pattern = 'job:*'\nid_queues = 'q:*'\nfield = 'data'");
        assert_eq!(commands, Cmd::Hset.bit());
        assert_eq!(
            read(
                &hash,
                &[b"HSET", b"job:7", b"status", b"new", b"data", b"p"]
            ),
            Some((b"p".to_vec(), "Integer(2)".into())),
            "HSET on a new key answers the fields it wrote"
        );
        assert_eq!(
            read(&hash, &[b"HMSET", b"job:7", b"data", b"p"]),
            Some((b"p".to_vec(), "Ok".into()))
        );
        assert_eq!(read(&hash, &[b"HSET", b"job:7", b"status", b"done"]), None);
        assert_eq!(
            read(&hash, &[b"HSET", b"job:7", b"data", b"p", b"odd"]),
            None,
            "Redis's arity error is left to Redis"
        );
        assert_eq!(read(&hash, &[b"SET", b"job:7", b"p"]), None);
    }

    #[test]
    fn check_config_names_what_is_wrong_with_a_job_key_rule() {
        let cases = [
            ("pattern = 'job:*:data'\nid_queues = 'q'", "must end in `*`"),
            (
                "pattern = 'job:[ab]*'\nid_queues = 'q'",
                "its only wildcard",
            ),
            ("pattern = 'job:*'\nid_queues = ''", "an empty pattern"),
            (
                "pattern = 'job:*'\nid_queues = 'q'\ncommands = ['RPUSH']",
                "commands are for pushes",
            ),
            (
                "pattern = 'job:*'\nid_queues = 'q'\nscript = { function = 'f' }",
                "not both",
            ),
        ];
        for (settings, want) in cases {
            let e = build(&format!("{GENERIC}{settings}")).expect_err("refused");
            assert!(e.contains(want), "{settings}: {e}");
        }
        let e = build("preset = 'rq'\nid_queues = 'q'").expect_err("refused");
        assert!(e.contains("id_queues"), "{e}");
    }

    #[test]
    fn a_dropped_write_becomes_a_script_answering_as_the_write() {
        let mut out = BytesMut::new();
        no_op(&mut out, Reply::Ok);
        let mut want = BytesMut::new();
        resp::command(
            &mut want,
            &[b"EVAL", b"return redis.status_reply('OK')", b"0"],
        );
        assert_eq!(out, want);
        out.clear();
        want.clear();
        no_op(&mut out, Reply::Integer(3));
        resp::command(&mut want, &[b"EVAL", b"return 3", b"0"]);
        assert_eq!(out, want);
    }
}
