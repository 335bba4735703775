//! The connection state without sockets: commands scanned from real bytes, the reply
//! queue's entries checked after each.

use super::*;
use crate::command::{CommandTable, SubKind};
use crate::pipeline::Span;
use crate::scanner::request::{Limits, RequestScanner, Step};

struct Conn {
    table: CommandTable,
    state: ConnectionState,
}

impl Conn {
    fn new() -> Self {
        let table = CommandTable::builtin();
        let state = ConnectionState::new(1024, table.unknown().id);
        Conn { table, state }
    }

    /// Record one inline command, as sent to Redis.
    fn send(&mut self, line: &str) -> Recorded {
        let input = format!("{line}\r\n");
        let mut scanner = RequestScanner::new(Limits::default());
        let span = match scanner.scan(input.as_bytes()) {
            Step::Command { start, end, inline } => {
                Span::whole(start, end, inline, scanner.args().len())
            }
            other => panic!("{line}: {other:?}"),
        };
        let cmd = Scanned::new(&scanner, input.as_bytes(), span);
        let facts = CommandFacts::of(cmd.classify(&self.table));
        self.state.push_for(|| cmd, facts, None)
    }

    fn entries(&self) -> Vec<Pending> {
        self.state.queue().iter().cloned().collect()
    }

    fn dispositions(&self) -> Vec<Disposition> {
        self.entries().into_iter().map(|p| p.disposition).collect()
    }
}

#[test]
fn exec_leaves_out_the_commands_the_proxy_added_inside_multi() {
    let mut c = Conn::new();
    c.send("MULTI");
    c.send("SET a 1");
    c.state.expect_hidden(1);
    c.send("GET a");
    c.state.expect_hidden(2);
    c.send("EXEC");
    assert!(!c.state.in_multi());
    let d = c.dispositions();
    assert_eq!(d.len(), 7);
    assert_eq!(
        &d[..3],
        &[
            Disposition::Forward,
            Disposition::Forward,
            Disposition::Hide
        ]
    );
    assert_eq!(
        d[6],
        Disposition::FilterExec(vec![1, 3, 4].into_boxed_slice())
    );

    // The EXEC reply: the header loses three elements, and elements 1, 3 and 4 are dropped.
    for _ in 0..6 {
        c.state.queue_mut().pop_front();
    }
    assert_eq!(c.state.begin_reply(b'*'), (true, true));
    assert!(
        c.state.keeps_current_element(),
        "the header is rewritten, not dropped"
    );
    assert_eq!(c.state.exec_header(5), 2);
    let kept: Vec<bool> = (0..5)
        .map(|_| {
            let keep = c.state.keeps_current_element();
            c.state.element_done();
            keep
        })
        .collect();
    assert_eq!(kept, [true, false, true, false, false]);
    c.state.end_reply();
    assert!(c.state.keeps_current_element());
}

#[test]
fn exec_without_hidden_commands_is_not_filtered_and_discard_forgets_them() {
    let mut c = Conn::new();
    c.send("MULTI");
    c.send("SET a 1");
    c.send("EXEC");
    assert_eq!(c.dispositions()[2], Disposition::Forward);
    c.send("MULTI");
    c.state.expect_hidden(1);
    c.send("DISCARD");
    c.send("MULTI");
    c.send("EXEC");
    assert_eq!(c.dispositions().last(), Some(&Disposition::Forward));
}

#[test]
fn a_refusal_inside_multi_sends_a_command_redis_rejects_and_hides_its_error() {
    let mut c = Conn::new();
    c.send("MULTI");
    assert_eq!(c.state.abort_transaction(), REFUSED_IN_TRANSACTION);
    assert_eq!(c.dispositions(), [Disposition::Forward, Disposition::Hide]);
    c.send("CLIENT REPLY OFF");
    assert_eq!(
        c.entries().len(),
        3,
        "CLIENT REPLY is only queued inside MULTI"
    );

    let mut c = Conn::new();
    c.send("CLIENT REPLY OFF");
    c.send("MULTI");
    c.state.abort_transaction();
    assert!(
        c.entries().is_empty(),
        "no reply comes under CLIENT REPLY OFF"
    );
}

#[test]
fn client_reply_off_skip_and_on_decide_which_replies_come() {
    let mut c = Conn::new();
    c.send("CLIENT REPLY OFF");
    c.send("GET a");
    c.state.expect_hidden(1);
    assert!(c.entries().is_empty());
    assert_eq!(
        c.state.answer_locally(0, Bytes::from_static(b"+OK\r\n")),
        LocalAnswer::Unsent
    );
    c.send("CLIENT REPLY SKIP");
    c.send("GET a");
    assert!(c.entries().is_empty(), "SKIP under OFF stays OFF");
    c.send("CLIENT REPLY ON");
    assert_eq!(c.entries().len(), 1, "ON is answered");

    c.send("CLIENT REPLY SKIP");
    c.send("GET a");
    assert_eq!(
        c.entries().len(),
        1,
        "SKIP and the skipped command get nothing"
    );
    c.send("GET b");
    assert_eq!(c.entries().len(), 2);

    c.send("CLIENT REPLY SKIP");
    assert_eq!(
        c.state.answer_locally(0, Bytes::from_static(b"+OK\r\n")),
        LocalAnswer::SkipPing
    );
    assert_eq!(
        c.state.answer_locally(0, Bytes::from_static(b"+OK\r\n")),
        LocalAnswer::Queued
    );
    c.send("CLIENT REPLY BOGUS");
    assert_eq!(c.entries().len(), 4, "an unknown mode gets Redis's error");
}

#[test]
fn subscriptions_expect_one_confirmation_per_channel() {
    let mut c = Conn::new();
    c.send("SUBSCRIBE a b c");
    c.send("PUNSUBSCRIBE");
    c.send("SUNSUBSCRIBE x y");
    c.send("SUBSCRIBE");
    let expects: Vec<Expect> = c.entries().into_iter().map(|p| p.expect).collect();
    assert_eq!(
        expects,
        [
            Expect::Confirmations(3),
            Expect::UnsubscribeAll(SubKind::Pattern),
            Expect::Confirmations(2),
            Expect::One,
        ]
    );
}

#[test]
fn reset_ends_multi_and_client_reply_off_and_holds_the_next_command() {
    let mut c = Conn::new();
    c.send("MULTI");
    c.state.expect_hidden(1);
    c.send("CLIENT REPLY OFF");
    c.send("RESET");
    assert!(!c.state.in_multi());
    assert_eq!(
        c.entries().last().map(|p| p.effect.clone()),
        Some(Effect::Reset)
    );
    assert!(c.state.holds_for_identity());
    c.send("EXEC");
    assert_eq!(c.dispositions().last(), Some(&Disposition::Forward));
    assert!(c.state.can_probe());
    while c.state.queue_mut().pop_front().is_some() {}
    assert!(!c.state.holds_for_identity(), "its reply is in");
    assert!(!c.state.identity_pending());
}

#[test]
fn recording_reports_quit_and_memory_events_exec_only_once_it_runs() {
    let mut c = Conn::new();
    assert!(c.send("QUIT").quit);
    assert!(c.send("FLUSHALL").memory_event);
    c.send("MULTI");
    assert_eq!(c.send("FLUSHDB"), Recorded::default(), "only queued");
    assert!(!c.state.can_probe(), "no probe inside MULTI");
    let exec = c.send("EXEC");
    assert!(exec.memory_event);
    assert_eq!(
        c.entries().last().map(|p| p.effect.clone()),
        Some(Effect::MemoryEvent)
    );
    c.send("MULTI");
    c.send("FLUSHDB");
    c.send("DISCARD");
    c.send("MULTI");
    assert!(!c.send("EXEC").memory_event, "DISCARD forgot it");
}

#[test]
fn auth_and_setname_record_who_the_client_becomes() {
    let mut c = Conn::new();
    c.send("AUTH pw");
    c.send("AUTH app pw");
    c.send("CLIENT SETNAME n");
    let effects: Vec<Effect> = c.entries().into_iter().map(|p| p.effect).collect();
    assert_eq!(
        effects,
        [
            Effect::Auth(b"default"[..].into()),
            Effect::Auth(b"app"[..].into()),
            Effect::SetName(b"n"[..].into()),
        ]
    );
    assert!(c.state.identity_pending());
}

fn effect(args: &[&str]) -> Effect {
    let arg = |i: usize| args.get(i).map(|s| s.as_bytes());
    hello_effect(args.len(), &arg)
}

#[test]
fn hello_gives_protocol_and_user() {
    assert_eq!(
        effect(&["HELLO", "3", "AUTH", "app", "pw", "SETNAME", "n"]),
        Effect::Hello(Box::new(HelloEffect {
            protocol: Some(3),
            user: Some(Bytes::from_static(b"app")),
            name: Some(Bytes::from_static(b"n")),
        }))
    );
    assert_eq!(
        effect(&["HELLO"]),
        Effect::Hello(Box::new(HelloEffect {
            protocol: None,
            user: None,
            name: None,
        }))
    );
    assert_eq!(
        effect(&["hello", "2", "setname", "x"]),
        Effect::Hello(Box::new(HelloEffect {
            protocol: Some(2),
            user: None,
            name: Some(Bytes::from_static(b"x")),
        }))
    );
}
