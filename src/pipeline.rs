//! Classify and judge: from a command the request scanner found to what the command table
//! says of it and what the guards decide about it.
//!
//! A scanned command is a [`Span`] (where it lies in the buffer, whether it was inline, its
//! declared argument count and, for a command too large to hold, the length of the
//! argument now streaming) over the bytes its argument positions index: the client's
//! buffer, or the scanner's multibulk copy of an inline command ([`Scanned::new`] is the
//! one place that choice is made). [`Scanned::classify`] looks it up in the
//! [`CommandTable`]; [`judge`] finds its keys, builds the [`CommandView`] and runs the
//! guard chain.
//!
//! The session and [`crate::offline::judge`] (run by the guard-pipeline fuzz target) both
//! go through these functions, so the fuzz target exercises the session's own path.
//!
//! Never does I/O or allocates: keys and rewrites go into buffers whose capacity the
//! caller keeps.

use std::ops::Range;

use bytes::BytesMut;

use crate::command::{CommandInfo, CommandTable, Pinning, Special};
use crate::guard::{find_keys, wire_args, CommandView, Guards, ReplyWatch, ScriptAccess, Verdict};
use crate::identity::ClientIdentity;
use crate::keyspace::insight::{Insight, Outcome};
use crate::scanner::request::RequestScanner;

/// Where the command just scanned lies, without borrowing anything: the session keeps it
/// while it changes its own state, and reads the arguments again through [`Scanned`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Where the command starts in the client's buffer.
    pub start: usize,
    /// Where it ends (for a streamed command, where its head ends).
    pub end: usize,
    /// Sent in the inline form: its arguments index the scanner's multibulk copy.
    pub inline: bool,
    /// The declared argument count.
    pub argc: usize,
    /// For a command too large to hold: the declared length of the argument arriving now.
    pub streaming: Option<u64>,
    /// The command's size in bytes (for a streamed command, at least this many).
    pub size: u64,
}

impl Span {
    /// A command held whole in the buffer at `start..end`, with `argc` arguments.
    #[inline]
    pub fn whole(start: usize, end: usize, inline: bool, argc: usize) -> Self {
        Span {
            start,
            end,
            inline,
            argc,
            streaming: None,
            size: (end - start) as u64,
        }
    }

    /// The head (`start..head_end`) of a command too large to hold, whose next argument
    /// declares `next_len` bytes (`None` when its length line has not arrived).
    pub fn streamed_head(
        start: usize,
        head_end: usize,
        argc: usize,
        next_len: Option<u64>,
    ) -> Self {
        Span {
            start,
            end: head_end,
            inline: false,
            argc,
            streaming: Some(next_len.unwrap_or(0)),
            size: (head_end - start) as u64 + next_len.map_or(0, |n| n + 2),
        }
    }
}

/// The command just scanned: its span and the bytes its arguments index.
#[derive(Debug, Clone, Copy)]
pub struct Scanned<'a> {
    /// The bytes the argument ranges index.
    pub src: &'a [u8],
    /// Argument positions in `src` (argument 0 is the name).
    pub args: &'a [Range<usize>],
    /// Where the command lies.
    pub span: Span,
}

impl<'a> Scanned<'a> {
    /// The command `scanner` found last in `buffer`: an inline command's arguments index the
    /// scanner's own multibulk copy, any other's the buffer.
    #[inline]
    pub fn new(scanner: &'a RequestScanner, buffer: &'a [u8], span: Span) -> Self {
        let src = if span.inline {
            scanner.inline_bytes()
        } else {
            buffer
        };
        Scanned {
            src,
            args: scanner.args(),
            span,
        }
    }

    /// Argument `i`, if the command has it (and, for a streamed command, it has arrived).
    #[inline]
    pub fn arg(&self, i: usize) -> Option<&'a [u8]> {
        self.args.get(i).map(|r| &self.src[r.clone()])
    }

    /// What the command table says of it: by name, and by subcommand for a container.
    #[inline]
    pub fn classify<'t>(&self, table: &'t CommandTable) -> &'t CommandInfo {
        table.classify(self.arg(0).unwrap_or_default(), || self.arg(1))
    }

    /// Whether an argument (the name aside) is `word`, in any case.
    pub fn any_arg_is(&self, word: &[u8]) -> bool {
        self.args[1..]
            .iter()
            .any(|r| self.src[r.clone()].eq_ignore_ascii_case(word))
    }

    /// The arguments, copied (only for the proxy's own commands and authentication, never
    /// on the guarded path).
    pub fn to_vecs(&self) -> Vec<Vec<u8>> {
        self.args
            .iter()
            .map(|r| self.src[r.clone()].to_vec())
            .collect()
    }

    /// The guards' view of the command, its keys found into `keys`.
    pub fn view(
        &self,
        info: &'a CommandInfo,
        keys: &'a mut Vec<usize>,
        access: ScriptAccess,
    ) -> CommandView<'a> {
        find_keys(info, self.src, self.args, self.span.argc, keys);
        CommandView {
            src: self.src,
            args: self.args,
            keys,
            info,
            argc: self.span.argc,
            streaming: self.span.streaming,
            access,
            size: self.span.size,
            wire: if self.span.inline {
                None
            } else {
                wire_args(self.src, self.span.start, self.span.end, self.span.argc)
            },
            watch: Default::default(),
        }
    }
}

/// The facts about a command the session acts on, copied out of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommandFacts {
    /// The command's id in the table.
    pub id: u16,
    /// How the session follows it.
    pub special: Special,
    /// Whether it needs a connection of its own under multiplexing.
    pub pinning: Pinning,
    /// No special kind, no pinning ([`CommandInfo::plain`]).
    pub plain: bool,
}

impl CommandFacts {
    /// The facts of `info`.
    #[inline]
    pub fn of(info: &CommandInfo) -> Self {
        CommandFacts {
            id: info.id,
            special: info.special,
            pinning: info.pinning,
            plain: info.plain,
        }
    }
}

/// What judging a command needs besides the command: the guards, what the client's Redis
/// user may run, who the client is, and the buffers whose capacity is kept between
/// commands.
pub struct Judge<'j> {
    /// The guard chain in force.
    pub guards: &'j Guards,
    /// What the Redis user may run for the guards.
    pub access: ScriptAccess,
    /// Who sent the command.
    pub client: &'j ClientIdentity,
    /// Argument indices of the command's keys.
    pub keys: &'j mut Vec<usize>,
    /// Where guards write rewritten and extra commands.
    pub scratch: &'j mut BytesMut,
    /// The watch on the command's reply a guard asked for, if any.
    pub watch: &'j mut Option<ReplyWatch>,
    /// The keyspace insight, when this command is one it observes ([`Insight::due`]).
    pub observe: Option<&'j Insight>,
}

/// The guards' verdict on `command`: `Forward` unless a guard wants it, the connection lets
/// guards act (`connection_allows`, asked only for a command a guard wants) and one that
/// wants it is engaged at the command's size (the shed guard only under pressure); only the
/// engaged ones are asked. A command
/// the keyspace insight observes has its keys found whatever the guards want, and the
/// insight sees it with the verdict.
#[inline]
pub fn judge(
    command: &Scanned<'_>,
    info: &CommandInfo,
    with: Judge<'_>,
    connection_allows: impl FnOnce() -> bool,
) -> Verdict {
    let engaged = engaged_now(with.guards, info.id, command.span.size, connection_allows);
    judge_engaged(command, info, with, engaged)
}

/// The guards engaged now for the command with id `command`, of `size` bytes: 0 unless a
/// guard wants it and the connection lets guards act ([`Guards::engaged`], which counts a
/// memory-growing write towards the pressure estimate: asked once per command).
#[inline]
pub fn engaged_now(
    guards: &Guards,
    command: u16,
    size: u64,
    connection_allows: impl FnOnce() -> bool,
) -> u8 {
    let wanted = guards.wanted(command);
    if wanted != 0 && connection_allows() {
        guards.engaged(command, wanted, size)
    } else {
        0
    }
}

/// [`judge`] once the `engaged` guards are known ([`engaged_now`]): the session asks first,
/// and forwards a command no guard is engaged for without building its view; a write is
/// counted towards the pressure estimate once.
#[inline(always)]
pub fn judge_engaged(
    command: &Scanned<'_>,
    info: &CommandInfo,
    with: Judge<'_>,
    engaged: u8,
) -> Verdict {
    let guards = with.guards;
    if engaged == 0 && with.observe.is_none() {
        return Verdict::Forward;
    }
    let view = command.view(info, with.keys, with.access);
    let (verdict, by) = guards.check_deciding(&view, with.client, with.scratch, engaged);
    if let Some(insight) = with.observe {
        insight.observe(&view, outcome(guards, &verdict, by));
    }
    *with.watch = view.watch.take();
    verdict
}

/// What the insight learns from a verdict: whether Redis sees the command, and whether the
/// TTL guard gave its keys their default expiry.
fn outcome(guards: &Guards, verdict: &Verdict, by: u8) -> Outcome {
    let refused = matches!(verdict, Verdict::Answer(_) | Verdict::Refuse(_));
    Outcome {
        refused,
        ttl_added: !refused && guards.ttl_decided(by),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scanner::request::{Limits, Step};

    fn scan(input: &[u8]) -> (RequestScanner, Span) {
        let mut scanner = RequestScanner::new(Limits::default());
        let span = match scanner.scan(input) {
            Step::Command { start, end, inline } => {
                Span::whole(start, end, inline, scanner.args().len())
            }
            other => panic!("not a command: {other:?}"),
        };
        (scanner, span)
    }

    #[test]
    fn inline_and_multibulk_commands_classify_alike() {
        let table = CommandTable::builtin();
        for input in [
            &b"client setname x\r\n"[..],
            b"*3\r\n$6\r\nCLIENT\r\n$7\r\nsetname\r\n$1\r\nx\r\n",
        ] {
            let (scanner, span) = scan(input);
            let cmd = Scanned::new(&scanner, input, span);
            assert_eq!(&*cmd.classify(&table).name, "client|setname");
            assert_eq!(cmd.arg(2), Some(&b"x"[..]));
            assert!(cmd.any_arg_is(b"SETNAME"));
            assert!(!cmd.any_arg_is(b"client"));
        }
    }

    #[test]
    fn a_streamed_head_counts_the_argument_arriving() {
        let span = Span::streamed_head(0, 20, 3, Some(100));
        assert_eq!((span.size, span.streaming), (122, Some(100)));
        let span = Span::streamed_head(0, 20, 3, None);
        assert_eq!((span.size, span.streaming), (20, Some(0)));
    }
}
