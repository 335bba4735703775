//! The command table: what each Redis command is (write or read, grows memory or not,
//! blocks or not) and where its keys are.
//!
//! It is read from the upstream's own `COMMAND` reply at start, so it matches the Redis or
//! Valkey version behind the proxy, modules included. When `COMMAND` is refused (ACLs, an old
//! server) the table falls back to a `COMMAND` reply recorded from Redis 7.0 and shipped in
//! the binary (`data/command-reply-redis-7.0.resp`): both go through the same parser, so the
//! fallback is never a second, less tested path.
//!
//! Keys are found with Redis's key specifications (`begin_search` by index or keyword,
//! `find_keys` by range or key count), which also cover movable-key commands such as EVAL
//! and XREAD. A command the table does not know is treated as a write with no known keys.
//!
//! Parsing happens once, off the hot path, with `scanner::tree` (redis-protocol's decoder
//! behind a bounded walk). Looking a
//! command up on the hot path packs its name into two words and probes a fixed table
//! ([`names`]): no allocation, no copy.

mod names;
pub mod shebang;

pub use names::LastName;
use names::NameIndex;
use redis_protocol::resp2::types::OwnedFrame;

/// The recorded `COMMAND` reply used when the upstream's cannot be read.
pub const BUILTIN_COMMAND_REPLY: &[u8] = include_bytes!("../../data/command-reply-redis-7.0.resp");

/// Command flags, as Redis names them in `COMMAND`; only the ones the proxy uses are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(u32);

impl Flags {
    /// Modifies data.
    pub const WRITE: Flags = Flags(1);
    /// Only reads data.
    pub const READONLY: Flags = Flags(1 << 1);
    /// May grow memory; Redis refuses it under OOM.
    pub const DENYOOM: Flags = Flags(1 << 2);
    /// May block the connection (BLPOP, XREAD BLOCK, ...).
    pub const BLOCKING: Flags = Flags(1 << 3);
    /// A pub/sub command.
    pub const PUBSUB: Flags = Flags(1 << 4);
    /// An administrative command.
    pub const ADMIN: Flags = Flags(1 << 5);
    /// Keys can only be found by looking at the arguments.
    pub const MOVABLEKEYS: Flags = Flags(1 << 6);
    /// Not allowed from scripts.
    pub const NOSCRIPT: Flags = Flags(1 << 7);
    /// In the `@list` ACL category.
    pub const LIST: Flags = Flags(1 << 8);
    /// In the `@sortedset` ACL category.
    pub const SORTEDSET: Flags = Flags(1 << 9);
    /// In the `@stream` ACL category.
    pub const STREAM: Flags = Flags(1 << 10);

    /// True when every flag of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    fn from_name(name: &[u8]) -> Flags {
        match name {
            b"write" => Flags::WRITE,
            b"readonly" => Flags::READONLY,
            b"denyoom" => Flags::DENYOOM,
            b"blocking" => Flags::BLOCKING,
            b"pubsub" => Flags::PUBSUB,
            b"admin" => Flags::ADMIN,
            b"movablekeys" => Flags::MOVABLEKEYS,
            b"noscript" => Flags::NOSCRIPT,
            b"@list" => Flags::LIST,
            b"@sortedset" => Flags::SORTEDSET,
            b"@stream" => Flags::STREAM,
            _ => Flags(0),
        }
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// Where a key specification starts looking for keys.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BeginSearch {
    /// At this argument index.
    Index(usize),
    /// After the first occurrence of this (lower-case) keyword, searching from `start_from`
    /// (negative: from the end, backwards).
    Keyword { keyword: Box<[u8]>, start_from: i64 },
    /// Keys cannot be found from the arguments.
    Unknown,
}

/// How a key specification finds keys once it has a starting point.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FindKeys {
    /// Keys from the start to `last_key` (negative: counted from the end), every `step`;
    /// with `limit` > 1, only the first 1/limit of the remaining arguments.
    Range {
        last_key: i64,
        step: usize,
        limit: usize,
    },
    /// The argument at `keynum_idx` (relative) holds the number of keys, which begin at
    /// `first_key` (relative), every `step`.
    KeyNum {
        keynum_idx: usize,
        first_key: usize,
        step: usize,
    },
    /// Keys cannot be found from the arguments.
    Unknown,
}

/// One key specification, as in Redis's `COMMAND` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KeySpec {
    begin: BeginSearch,
    find: FindKeys,
    /// The keys it finds are written: Redis flags them `OW` (overwritten), or `RW` with
    /// `INSERT` or `UPDATE`. Keys a command only reads (`RO`) or only deletes (`RM`) are not.
    writes: bool,
    /// Elements of the keys it finds are removed: Redis flags them `DELETE` (LPOP's, ZREM's,
    /// LMOVE's source).
    deletes: bool,
}

/// The three families of pub/sub subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubKind {
    /// SUBSCRIBE / UNSUBSCRIBE.
    Channel,
    /// PSUBSCRIBE / PUNSUBSCRIBE.
    Pattern,
    /// SSUBSCRIBE / SUNSUBSCRIBE.
    Shard,
}

/// Commands whose replies or effects the session follows; resolved once when the table is
/// built, so the hot path matches an enum rather than comparing names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Special {
    /// An ordinary command: one reply, no effect on the connection the proxy tracks.
    None,
    /// SUBSCRIBE, PSUBSCRIBE, SSUBSCRIBE.
    Subscribe(SubKind),
    /// UNSUBSCRIBE, PUNSUBSCRIBE, SUNSUBSCRIBE.
    Unsubscribe(SubKind),
    /// HELLO.
    Hello,
    /// AUTH.
    Auth,
    /// CLIENT SETNAME.
    ClientSetName,
    /// CLIENT SETINFO.
    ClientSetInfo,
    /// CLIENT GETNAME.
    ClientGetName,
    /// CLIENT REPLY.
    ClientReply,
    /// CLIENT KILL: Redis closes the calling connection after the reply when it kills it.
    ClientKill,
    /// MONITOR.
    Monitor,
    /// RESET.
    Reset,
    /// QUIT.
    Quit,
    /// MULTI.
    Multi,
    /// EXEC.
    Exec,
    /// DISCARD.
    Discard,
    /// WATCH (refused, not queued, inside MULTI).
    Watch,
    /// UNWATCH: outside MULTI, the client watches no key any more.
    Unwatch,
    /// A command after which Redis's memory reading may have changed: CONFIG SET
    /// (`maxmemory`, `maxmemory-policy`), CONFIG RESETSTAT, FLUSHALL, FLUSHDB, FAILOVER,
    /// REPLICAOF, SLAVEOF. The session marks the memory reading stale.
    MemoryEvent,
    /// SYNC and PSYNC: unless Redis refuses, the connection turns into a replication link.
    Sync,
    /// WAIT and WAITAOF: Redis answers once replicas (or the AOF) catch up, so a long
    /// silence is expected rather than a sign that Redis stopped answering.
    Wait,
}

impl Special {
    fn from_name(name: &[u8]) -> Special {
        match name {
            b"subscribe" => Special::Subscribe(SubKind::Channel),
            b"psubscribe" => Special::Subscribe(SubKind::Pattern),
            b"ssubscribe" => Special::Subscribe(SubKind::Shard),
            b"unsubscribe" => Special::Unsubscribe(SubKind::Channel),
            b"punsubscribe" => Special::Unsubscribe(SubKind::Pattern),
            b"sunsubscribe" => Special::Unsubscribe(SubKind::Shard),
            b"hello" => Special::Hello,
            b"auth" => Special::Auth,
            b"client|setname" => Special::ClientSetName,
            b"client|setinfo" => Special::ClientSetInfo,
            b"client|getname" => Special::ClientGetName,
            b"client|reply" => Special::ClientReply,
            b"client|kill" => Special::ClientKill,
            b"monitor" => Special::Monitor,
            b"reset" => Special::Reset,
            b"quit" => Special::Quit,
            b"multi" => Special::Multi,
            b"exec" => Special::Exec,
            b"discard" => Special::Discard,
            b"watch" => Special::Watch,
            b"unwatch" => Special::Unwatch,
            b"config|set" | b"config|resetstat" | b"flushall" | b"flushdb" | b"failover"
            | b"replicaof" | b"slaveof" => Special::MemoryEvent,
            b"sync" | b"psync" => Special::Sync,
            b"wait" | b"waitaof" => Special::Wait,
            _ => Special::None,
        }
    }
}

/// Whether a command leaves state on its Redis connection (or waits on it), so that under
/// multiplexing (`upstream.connections = "multiplexed"`) the client sending it needs a
/// connection of its own: a shared one would carry that state over to other clients, or
/// block them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinning {
    /// Stateless: one reply, nothing kept on the connection.
    Never,
    /// State that ends, and the session can tell when: MULTI and WATCH (until EXEC, DISCARD
    /// or UNWATCH), blocking commands and WAIT (until answered), subscriptions (until none
    /// is left); and SCRIPT KILL, FUNCTION KILL, SHUTDOWN, which must not wait behind the
    /// script they stop. The client goes back to a shared connection afterwards.
    WhileInUse,
    /// State kept for the rest of the connection's life: SELECT, AUTH, HELLO, RESET, QUIT,
    /// MONITOR, every CLIENT subcommand Redis knows, SYNC, the cluster connection flags.
    ForLife,
    /// XREAD and XREADGROUP: like [`Pinning::WhileInUse`], only with a `BLOCK` argument.
    WhenBlocking,
}

impl Pinning {
    /// The pinning of the command `name` (lower case, `container|sub` for a subcommand).
    fn of(name: &[u8], special: Special, flags: Flags) -> Pinning {
        match name {
            b"xread" | b"xreadgroup" => Pinning::WhenBlocking,
            // Meant for a Redis busy with a script: a shared connection may be the one
            // running it, where they would wait behind it.
            b"script|kill" | b"function|kill" | b"shutdown" => Pinning::WhileInUse,
            // `client` itself only for a subcommand the table does not know: Redis answers
            // it with an error, changing nothing.
            b"select" | b"asking" | b"readonly" | b"readwrite" | b"replconf" => Pinning::ForLife,
            n if n.starts_with(b"client|") => Pinning::ForLife,
            _ if flags.contains(Flags::BLOCKING) => Pinning::WhileInUse,
            _ => match special {
                Special::None
                | Special::Exec
                | Special::Discard
                | Special::Unwatch
                | Special::MemoryEvent => Pinning::Never,
                Special::Multi
                | Special::Watch
                | Special::Wait
                | Special::Subscribe(_)
                | Special::Unsubscribe(_) => Pinning::WhileInUse,
                _ => Pinning::ForLife,
            },
        }
    }
}

/// Everything the proxy knows about one command (or subcommand, named `container|sub`).
#[derive(Debug, Clone)]
pub struct CommandInfo {
    /// Lower-case name, e.g. `set` or `config|set`.
    pub name: Box<str>,
    /// Dense index of this command in its table, for per-command metrics.
    pub id: u16,
    /// Redis's arity: positive is exact, negative is a minimum.
    pub arity: i64,
    /// The command's flags.
    pub flags: Flags,
    /// How the session must follow it.
    pub special: Special,
    /// Whether it needs a connection of its own under multiplexing.
    pub pinning: Pinning,
    /// No [`Special`] kind and no pinning: the session forwards it without a second look
    /// unless a guard wants it.
    pub plain: bool,
    key_specs: Vec<KeySpec>,
    /// The one key's index, when the key specifications say only "the argument at this
    /// index" (GET, SET, HSET, LPUSH …): found without walking them.
    one_key: Option<usize>,
    has_subcommands: bool,
}

impl CommandInfo {
    /// True when the command is known to write (an unknown command counts as one).
    pub fn is_write(&self) -> bool {
        self.flags.contains(Flags::WRITE)
    }

    /// True when Redis would accept `argc` arguments (the name included) for this command;
    /// a command Redis rejects for its arity must reach Redis unchanged, so it answers with
    /// its own error.
    pub fn arity_accepts(&self, argc: usize) -> bool {
        let argc = argc as i64;
        if self.arity >= 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }

    /// Push the indices of the keys this command writes into `out`: those of key
    /// specifications flagged as writing (see [`KeySpec::writes`]), and SORT's `STORE`
    /// destination, which Redis describes only as "unknown" because the keyword may stand
    /// anywhere.
    pub fn written_key_positions_by<'a>(
        &self,
        argc: usize,
        arg: impl Fn(usize) -> Option<&'a [u8]>,
        out: &mut Vec<usize>,
    ) {
        for spec in self.key_specs.iter().filter(|s| s.writes) {
            spec.find_keys(argc, &arg, out);
        }
        if &*self.name == "sort" {
            if let Some(i) =
                (2..argc).find(|&i| arg(i).is_some_and(|a| a.eq_ignore_ascii_case(b"store")))
            {
                if i + 1 < argc {
                    out.push(i + 1);
                }
            }
        }
    }

    /// Push the indices of the keys whose elements this command removes into `out` (key
    /// specifications flagged `DELETE`: a pop, a removal, a trim, a move's source).
    pub fn deleted_key_positions_by<'a>(
        &self,
        argc: usize,
        arg: impl Fn(usize) -> Option<&'a [u8]>,
        out: &mut Vec<usize>,
    ) {
        for spec in self.key_specs.iter().filter(|s| s.deletes) {
            spec.find_keys(argc, &arg, out);
        }
    }

    /// Whether a key specification of this command removes elements (see
    /// [`Self::deleted_key_positions_by`]).
    pub fn deletes_elements(&self) -> bool {
        self.key_specs.iter().any(|s| s.deletes)
    }

    /// Whether every key the command names is one it writes, so its written keys are all
    /// its keys (true of most writes: SET, HSET, LPUSH; not of SORT … STORE, BITOP, COPY).
    pub fn writes_every_key(&self) -> bool {
        !self.key_specs.is_empty()
            && self.key_specs.iter().all(|s| s.writes)
            && &*self.name != "sort"
    }

    /// Push the argument indices of this command's keys into `out`.
    pub fn key_positions<A: AsRef<[u8]>>(&self, args: &[A], out: &mut Vec<usize>) {
        self.key_positions_by(args.len(), |i| args.get(i).map(|a| a.as_ref()), out);
    }

    /// Push the indices of this command's keys into `out`, for a command of `argc`
    /// arguments of which `arg(i)` gives those available (a streamed command's later
    /// arguments are not). Positions past the available arguments may be pushed when the
    /// key specification places them by count.
    pub fn key_positions_by<'a>(
        &self,
        argc: usize,
        arg: impl Fn(usize) -> Option<&'a [u8]>,
        out: &mut Vec<usize>,
    ) {
        if let Some(i) = self.one_key {
            if i < argc {
                out.push(i);
            }
            return;
        }
        for spec in &self.key_specs {
            spec.find_keys(argc, &arg, out);
        }
    }
}

impl KeySpec {
    fn find_keys<'a>(
        &self,
        argc: usize,
        args: &impl Fn(usize) -> Option<&'a [u8]>,
        out: &mut Vec<usize>,
    ) {
        let is_keyword = |i: usize, k: &[u8]| args(i).is_some_and(|a| a.eq_ignore_ascii_case(k));
        let start = match &self.begin {
            BeginSearch::Index(i) => *i,
            BeginSearch::Keyword {
                keyword,
                start_from,
            } => {
                let found = if *start_from >= 0 {
                    (*start_from as usize..argc).find(|&i| is_keyword(i, keyword))
                } else {
                    let from = argc as i64 + start_from;
                    (1..=from.max(0) as usize)
                        .rev()
                        .find(|&i| i < argc && is_keyword(i, keyword))
                };
                match found {
                    Some(i) => i + 1,
                    None => return,
                }
            }
            BeginSearch::Unknown => return,
        };
        if start >= argc {
            return;
        }
        match self.find {
            FindKeys::Range {
                last_key,
                step,
                limit,
            } => {
                let last = if last_key >= 0 {
                    (start + last_key as usize).min(argc - 1)
                } else if limit > 1 {
                    let remaining = argc - start;
                    start + (remaining / limit).max(1) - 1
                } else {
                    let l = argc as i64 + last_key;
                    if l < start as i64 {
                        return;
                    }
                    l as usize
                };
                let mut i = start;
                while i <= last && i < argc {
                    out.push(i);
                    i += step.max(1);
                }
            }
            FindKeys::KeyNum {
                keynum_idx,
                first_key,
                step,
            } => {
                let idx = start + keynum_idx;
                let Some(n) = args(idx).and_then(crate::scanner::request::parse_int) else {
                    return;
                };
                let mut i = start + first_key;
                for _ in 0..n.max(0) {
                    if i >= argc {
                        break;
                    }
                    out.push(i);
                    i += step.max(1);
                }
            }
            FindKeys::Unknown => {}
        }
    }
}

/// Why a `COMMAND` reply could not be turned into a table.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("COMMAND reply is not valid RESP: {0}")]
    Decode(String),
    #[error("COMMAND reply is incomplete")]
    Incomplete,
    #[error("COMMAND reply has an unexpected shape: {0}")]
    Shape(&'static str),
    #[error("COMMAND was refused: {0}")]
    Refused(String),
}

/// Where a table came from, for logs and `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableSource {
    /// The upstream's own `COMMAND` reply.
    Upstream,
    /// The recorded Redis 7.0 reply shipped with the binary.
    Builtin,
}

/// All known commands, looked up by name.
#[derive(Debug)]
pub struct CommandTable {
    commands: Vec<CommandInfo>,
    /// Ids by name (and `container|sub`), built once the commands are read.
    by_name: NameIndex,
    unknown: CommandInfo,
    source: TableSource,
}

impl CommandTable {
    /// Parse a RESP2 `COMMAND` reply.
    pub fn from_command_reply(reply: &[u8], source: TableSource) -> Result<Self, TableError> {
        let (frame, _) =
            crate::scanner::tree::decode(reply, &crate::scanner::tree::Bounds::SERVER_REPLY)
                .map_err(|e| TableError::Decode(e.to_string()))?
                .ok_or(TableError::Incomplete)?;
        let entries = match frame {
            OwnedFrame::Array(a) => a,
            OwnedFrame::Error(e) => return Err(TableError::Refused(e)),
            _ => return Err(TableError::Shape("top level is not an array")),
        };
        let mut table = CommandTable {
            commands: Vec::with_capacity(entries.len() * 2),
            by_name: NameIndex::build(std::iter::empty()),
            unknown: CommandInfo {
                name: "other".into(),
                id: 0,
                arity: -1,
                flags: Flags::WRITE,
                special: Special::None,
                pinning: Pinning::Never,
                plain: true,
                key_specs: Vec::new(),
                one_key: None,
                has_subcommands: false,
            },
            source,
        };
        for entry in &entries {
            table.add(entry)?;
        }
        if table.commands.is_empty() {
            return Err(TableError::Shape("no commands"));
        }
        table.unknown.id = table.commands.len() as u16;
        let names = table.commands.iter().map(|c| (c.name.as_bytes(), c.id));
        table.by_name = NameIndex::build(names);
        Ok(table)
    }

    /// The table recorded from Redis 7.0 and shipped in the binary.
    pub fn builtin() -> Self {
        Self::from_command_reply(BUILTIN_COMMAND_REPLY, TableSource::Builtin)
            .expect("the built-in COMMAND reply parses")
    }

    /// Where this table came from.
    pub fn source(&self) -> TableSource {
        self.source
    }

    /// Number of commands and subcommands known.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// True when no command is known (never, for a table that was built).
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// All entries, indexed by [`CommandInfo::id`]; the unknown command comes last.
    pub fn all(&self) -> impl Iterator<Item = &CommandInfo> {
        self.commands.iter().chain(std::iter::once(&self.unknown))
    }

    /// The entry with this id.
    pub fn by_id(&self, id: u16) -> &CommandInfo {
        self.commands.get(id as usize).unwrap_or(&self.unknown)
    }

    /// The entry used for commands the table does not know.
    pub fn unknown(&self) -> &CommandInfo {
        &self.unknown
    }

    fn add(&mut self, entry: &OwnedFrame) -> Result<(), TableError> {
        let OwnedFrame::Array(fields) = entry else {
            return Err(TableError::Shape("command entry is not an array"));
        };
        if fields.len() < 6 {
            return Err(TableError::Shape("command entry has fewer than 6 fields"));
        }
        let name = text(&fields[0])
            .ok_or(TableError::Shape("command name"))?
            .to_ascii_lowercase();
        let arity = match fields[1] {
            OwnedFrame::Integer(n) => n,
            _ => return Err(TableError::Shape("arity")),
        };
        let mut flags = Flags::default();
        // Field 2: the flags; field 6 (Redis 6 and later): the ACL categories.
        for field in [fields.get(2), fields.get(6)].into_iter().flatten() {
            if let OwnedFrame::Array(fl) = field {
                for f in fl {
                    if let Some(t) = text(f) {
                        flags = flags | Flags::from_name(&t.to_ascii_lowercase());
                    }
                }
            }
        }
        let mut key_specs = Vec::new();
        if let Some(OwnedFrame::Array(specs)) = fields.get(8) {
            for spec in specs {
                key_specs.push(parse_key_spec(spec));
            }
        }
        if key_specs.is_empty() {
            // Servers before 7.0 give only first/last/step.
            let int = |f: &OwnedFrame| match f {
                OwnedFrame::Integer(n) => *n,
                _ => 0,
            };
            let (first, last, step) = (int(&fields[3]), int(&fields[4]), int(&fields[5]));
            if first > 0 {
                key_specs.push(KeySpec {
                    begin: BeginSearch::Index(first as usize),
                    find: FindKeys::Range {
                        last_key: if last < 0 { last + 1 } else { last - first },
                        step: step.max(1) as usize,
                        limit: 0,
                    },
                    // Without key specifications, a write command's keys count as written.
                    writes: flags.contains(Flags::WRITE),
                    deletes: false,
                });
            }
        }
        let subcommands = match fields.get(9) {
            Some(OwnedFrame::Array(subs)) if !subs.is_empty() => Some(subs),
            _ => None,
        };
        let id = self.commands.len() as u16;
        let one_key = match &key_specs[..] {
            [KeySpec {
                begin: BeginSearch::Index(i),
                find: FindKeys::Range { last_key: 0, .. },
                ..
            }] => Some(*i),
            _ => None,
        };
        let special = Special::from_name(&name);
        let pinning = Pinning::of(&name, special, flags);
        self.commands.push(CommandInfo {
            name: String::from_utf8_lossy(&name).into(),
            id,
            arity,
            flags,
            special,
            pinning,
            plain: special == Special::None && pinning == Pinning::Never,
            key_specs,
            one_key,
            has_subcommands: subcommands.is_some(),
        });
        if let Some(subs) = subcommands {
            for sub in subs {
                self.add(sub)?;
            }
        }
        Ok(())
    }

    /// The error Redis answers for `argv` before it looks at anything else, authentication
    /// included: an unknown command or subcommand, or a wrong number of arguments. Its
    /// words are Redis 7.0's (`processCommand`): names and arguments cut at 128 bytes, line
    /// breaks made spaces. `None` when Redis would go on to run (or refuse) the command.
    pub fn rejection(&self, argv: &[Vec<u8>]) -> Option<String> {
        let name = argv.first()?;
        let info = self.lookup(argv);
        let cut = |b: &[u8], n: usize| {
            String::from_utf8_lossy(&b[..b.len().min(n)]).replace(['\r', '\n'], " ")
        };
        if info.id == self.unknown.id {
            let mut args = String::new();
            for a in &argv[1..] {
                if args.len() >= 128 {
                    break;
                }
                args.push_str(&format!("'{}' ", cut(a, 128 - args.len())));
            }
            return Some(format!(
                "ERR unknown command '{}', with args beginning with: {args}",
                cut(name, 128)
            ));
        }
        if info.has_subcommands && argv.len() > 1 {
            return Some(format!(
                "ERR unknown subcommand '{}'. Try {} HELP.",
                cut(&argv[1], 128),
                info.name.to_ascii_uppercase()
            ));
        }
        (!info.arity_accepts(argv.len()))
            .then(|| format!("ERR wrong number of arguments for '{}' command", info.name))
    }

    /// The entry for a command given its arguments (argument 0 is the name). Container
    /// commands (`CONFIG`, `CLIENT`, ...) resolve to their subcommand when it is known.
    pub fn lookup<A: AsRef<[u8]>>(&self, args: &[A]) -> &CommandInfo {
        let Some(name) = args.first() else {
            return &self.unknown;
        };
        self.classify(name.as_ref(), || args.get(1).map(|s| s.as_ref()))
    }

    /// The entry for the command named `name` (in any letter case), resolved to its
    /// subcommand when it is a container and `subcommand` (read only then) is known.
    #[inline]
    pub fn classify<'s>(
        &self,
        name: &[u8],
        subcommand: impl FnOnce() -> Option<&'s [u8]>,
    ) -> &CommandInfo {
        let Some(info) = self
            .by_name
            .get(name)
            .and_then(|id| self.commands.get(id as usize))
        else {
            return &self.unknown;
        };
        if info.has_subcommands {
            let sub = subcommand().and_then(|sub| self.by_name.get_pair(name, sub));
            if let Some(sub) = sub.and_then(|id| self.commands.get(id as usize)) {
                return sub;
            }
        }
        info
    }

    /// The entry of the command named `name` (in any letter case) when its name alone says
    /// which it is: a known command, not a container of subcommands. `None` for any other.
    #[inline]
    pub fn by_own_name(&self, name: &[u8]) -> Option<&CommandInfo> {
        let info = self.commands.get(self.by_name.get(name)? as usize)?;
        (!info.has_subcommands).then_some(info)
    }

    /// [`Self::by_own_name`] for a run of commands: `last` remembers the name found, so
    /// the next command of the same name is known by comparing its bytes
    /// ([`NameIndex::get_remembered`]).
    #[inline(always)]
    pub fn by_own_name_remembered(&self, name: &[u8], last: &mut LastName) -> Option<&CommandInfo> {
        let info = self
            .commands
            .get(self.by_name.get_remembered(name, last)? as usize)?;
        (!info.has_subcommands).then_some(info)
    }

    /// The id of the command (or `container|sub`) named `name`, in any letter case.
    pub fn lookup_name(&self, name: &[u8]) -> Option<u16> {
        self.by_name.get(name)
    }
}

fn text(f: &OwnedFrame) -> Option<Vec<u8>> {
    match f {
        OwnedFrame::SimpleString(s) | OwnedFrame::BulkString(s) => Some(s.clone()),
        _ => None,
    }
}

/// Read a flat RESP2 map (`[k1, v1, k2, v2, ...]`) into (key, value) pairs.
fn pairs(f: &OwnedFrame) -> Vec<(Vec<u8>, &OwnedFrame)> {
    match f {
        OwnedFrame::Array(items) => items
            .chunks(2)
            .filter_map(|kv| match kv {
                [k, v] => text(k).map(|k| (k, v)),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn get<'a>(pairs: &'a [(Vec<u8>, &'a OwnedFrame)], key: &[u8]) -> Option<&'a OwnedFrame> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

fn int_of(pairs: &[(Vec<u8>, &OwnedFrame)], key: &[u8]) -> i64 {
    match get(pairs, key) {
        Some(OwnedFrame::Integer(n)) => *n,
        _ => 0,
    }
}

fn parse_key_spec(spec: &OwnedFrame) -> KeySpec {
    let fields = pairs(spec);
    let begin = match get(&fields, b"begin_search").map(pairs) {
        Some(bs) => {
            let ty = get(&bs, b"type").and_then(text);
            let sp = get(&bs, b"spec").map(pairs).unwrap_or_default();
            match ty.as_deref() {
                Some(b"index") => BeginSearch::Index(int_of(&sp, b"index").max(0) as usize),
                Some(b"keyword") => BeginSearch::Keyword {
                    keyword: get(&sp, b"keyword")
                        .and_then(text)
                        .unwrap_or_default()
                        .to_ascii_lowercase()
                        .into_boxed_slice(),
                    start_from: int_of(&sp, b"startfrom"),
                },
                _ => BeginSearch::Unknown,
            }
        }
        None => BeginSearch::Unknown,
    };
    let find = match get(&fields, b"find_keys").map(pairs) {
        Some(fk) => {
            let ty = get(&fk, b"type").and_then(text);
            let sp = get(&fk, b"spec").map(pairs).unwrap_or_default();
            match ty.as_deref() {
                Some(b"range") => FindKeys::Range {
                    last_key: int_of(&sp, b"lastkey"),
                    step: int_of(&sp, b"keystep").max(int_of(&sp, b"step")).max(1) as usize,
                    limit: int_of(&sp, b"limit").max(0) as usize,
                },
                Some(b"keynum") => FindKeys::KeyNum {
                    keynum_idx: int_of(&sp, b"keynumidx").max(0) as usize,
                    first_key: int_of(&sp, b"firstkey").max(0) as usize,
                    step: int_of(&sp, b"keystep").max(int_of(&sp, b"step")).max(1) as usize,
                },
                _ => FindKeys::Unknown,
            }
        }
        None => FindKeys::Unknown,
    };
    let flag = |name: &[u8]| match get(&fields, b"flags") {
        Some(OwnedFrame::Array(fl)) => fl
            .iter()
            .any(|f| text(f).is_some_and(|t| t.eq_ignore_ascii_case(name))),
        _ => false,
    };
    let writes = flag(b"OW") || (flag(b"RW") && (flag(b"INSERT") || flag(b"UPDATE")));
    KeySpec {
        begin,
        find,
        writes,
        deletes: flag(b"DELETE"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(table: &CommandTable, cmd: &str) -> (String, Vec<String>) {
        let args: Vec<&[u8]> = cmd.split(' ').map(|s| s.as_bytes()).collect();
        let info = table.lookup(&args);
        let mut out = Vec::new();
        info.key_positions(&args, &mut out);
        (
            info.name.to_string(),
            out.iter()
                .map(|&i| String::from_utf8_lossy(args[i]).into_owned())
                .collect(),
        )
    }

    #[test]
    fn wait_and_waitaof_are_known_as_waits() {
        let t = CommandTable::builtin();
        assert_eq!(t.lookup(&[b"WaIt".as_slice()]).special, Special::Wait);
        // WAITAOF came with Redis 7.2, after the recorded table.
        assert_eq!(Special::from_name(b"waitaof"), Special::Wait);
        assert_eq!(Special::from_name(b"waits"), Special::None);
    }

    #[test]
    fn commands_that_keep_state_on_the_connection_pin_it() {
        let t = CommandTable::builtin();
        let pinning = |args: &[&str]| {
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
            t.lookup(&args).pinning
        };
        for while_in_use in [
            &["MULTI"][..],
            &["WATCH", "k"],
            &["BLPOP", "k", "0"],
            &["BRPOPLPUSH", "a", "b", "0"],
            &["BLMOVE", "a", "b", "LEFT", "LEFT", "0"],
            &["BZPOPMIN", "k", "0"],
            &["SUBSCRIBE", "c"],
            &["UNSUBSCRIBE"],
            &["PSUBSCRIBE", "c*"],
            &["SSUBSCRIBE", "c"],
            &["WAIT", "1", "0"],
            &["SCRIPT", "KILL"],
            &["FUNCTION", "KILL"],
            &["SHUTDOWN", "NOSAVE"],
        ] {
            assert_eq!(
                pinning(while_in_use),
                Pinning::WhileInUse,
                "{while_in_use:?}"
            );
        }
        for for_life in [
            &["MONITOR"][..],
            &["SELECT", "1"],
            &["AUTH", "p"],
            &["HELLO", "3"],
            &["RESET"],
            &["QUIT"],
            &["CLIENT", "ID"],
            &["CLIENT", "SETNAME", "n"],
            &["CLIENT", "TRACKING", "on"],
            &["CLIENT", "REPLY", "OFF"],
            &["READONLY"],
            &["PSYNC", "?", "-1"],
        ] {
            assert_eq!(pinning(for_life), Pinning::ForLife, "{for_life:?}");
        }
        for never in [
            &["GET", "k"][..],
            &["SET", "k", "v"],
            &["EXEC"],
            &["DISCARD"],
            &["UNWATCH"],
            &["EVAL", "return 1", "0"],
            &["FLUSHALL"],
            &["PUBLISH", "c", "m"],
            &["LPOP", "k"],
            &["NOSUCHCOMMAND"],
            &["CLIENT", "NOSUCHSUB"],
        ] {
            assert_eq!(pinning(never), Pinning::Never, "{never:?}");
        }
        assert!(t.lookup(&[b"get".as_slice()]).plain);
        assert_eq!(
            pinning(&["XREAD", "STREAMS", "s", "0"]),
            Pinning::WhenBlocking
        );
        assert_eq!(
            pinning(&["XREADGROUP", "GROUP", "g", "c"]),
            Pinning::WhenBlocking
        );
        assert!(
            !t.lookup(&[b"blpop".as_slice()]).plain,
            "pinning is not plain"
        );
    }

    #[test]
    fn a_one_key_command_finds_the_keys_its_specifications_give() {
        let table = CommandTable::builtin();
        let args: Vec<Vec<u8>> = (0..8).map(|i| format!("a{i}").into_bytes()).collect();
        let mut shortcuts = 0;
        for info in table.all() {
            shortcuts += usize::from(info.one_key.is_some());
            for argc in 0..args.len() {
                let arg = |i: usize| args[..argc].get(i).map(Vec::as_slice);
                let (mut quick, mut walked) = (Vec::new(), Vec::new());
                info.key_positions_by(argc, arg, &mut quick);
                for spec in &info.key_specs {
                    spec.find_keys(argc, &arg, &mut walked);
                }
                assert_eq!(quick, walked, "{} with {argc} arguments", info.name);
            }
        }
        assert!(
            shortcuts > 100,
            "most commands have one key at a fixed place"
        );
        for name in ["get", "set", "hset", "lpush"] {
            assert_eq!(table.lookup(&[name]).one_key, Some(1), "{name}");
        }
    }

    #[test]
    fn builtin_table_knows_flags_and_keys() {
        let t = CommandTable::builtin();
        assert!(t.len() > 200);
        let set = t.lookup(&[b"SeT".as_slice()]);
        assert!(set.flags.contains(Flags::WRITE | Flags::DENYOOM));
        assert!(t
            .lookup(&[b"get".as_slice()])
            .flags
            .contains(Flags::READONLY));
        assert!(t
            .lookup(&[b"blpop".as_slice()])
            .flags
            .contains(Flags::BLOCKING));
        assert_eq!(keys(&t, "SET k v EX 10"), ("set".into(), vec!["k".into()]));
        assert_eq!(
            keys(&t, "MSET a 1 b 2"),
            ("mset".into(), vec!["a".into(), "b".into()])
        );
        assert_eq!(
            keys(&t, "EVAL s 2 k1 k2 a1"),
            ("eval".into(), vec!["k1".into(), "k2".into()])
        );
        assert_eq!(
            keys(&t, "XREAD COUNT 2 STREAMS s1 s2 0 0"),
            ("xread".into(), vec!["s1".into(), "s2".into()])
        );
        assert_eq!(
            keys(&t, "BLPOP l1 l2 0"),
            ("blpop".into(), vec!["l1".into(), "l2".into()])
        );
        assert_eq!(keys(&t, "CONFIG SET maxmemory 1").0, "config|set");
        assert_eq!(keys(&t, "NOSUCHCMD x").0, "other");
        assert!(t.lookup(&[b"nosuchcmd".as_slice()]).is_write());
    }

    fn written(table: &CommandTable, cmd: &str) -> Vec<String> {
        let args: Vec<&[u8]> = cmd.split(' ').map(|s| s.as_bytes()).collect();
        let mut out = Vec::new();
        table.lookup(&args).written_key_positions_by(
            args.len(),
            |i| args.get(i).copied(),
            &mut out,
        );
        out.iter()
            .map(|&i| String::from_utf8_lossy(args[i]).into_owned())
            .collect()
    }

    #[test]
    fn only_the_keys_a_command_writes_count_as_written() {
        let t = CommandTable::builtin();
        assert_eq!(written(&t, "COPY src dst"), ["dst"]);
        assert_eq!(written(&t, "SUNIONSTORE dst s1 s2"), ["dst"]);
        assert_eq!(written(&t, "SORT l BY w STORE dst"), ["dst"]);
        assert!(written(&t, "SORT l").is_empty());
        assert!(written(&t, "GET k").is_empty());
        assert_eq!(written(&t, "HSET h f v"), ["h"]);
        assert_eq!(written(&t, "MSET a 1 b 2"), ["a", "b"]);
        assert_eq!(written(&t, "LMOVE src dst LEFT RIGHT"), ["dst"]);
    }

    #[test]
    fn rejections_use_redis_words() {
        let t = CommandTable::builtin();
        let argv = |s: &str| {
            s.split(' ')
                .map(|a| a.as_bytes().to_vec())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            t.rejection(&argv("FOO a b")).unwrap(),
            "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
        );
        assert_eq!(
            t.rejection(&argv("GET")).unwrap(),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            t.rejection(&argv("CLIENT FOO")).unwrap(),
            "ERR unknown subcommand 'FOO'. Try CLIENT HELP."
        );
        assert_eq!(
            t.rejection(&argv("CONFIG")).unwrap(),
            "ERR wrong number of arguments for 'config' command"
        );
        assert_eq!(t.rejection(&argv("GET k")), None);
        assert_eq!(t.rejection(&argv("CLIENT LIST")), None);
    }

    #[test]
    fn arity_follows_redis() {
        let t = CommandTable::builtin();
        let set = t.lookup(&[b"set".as_slice()]);
        assert!(!set.arity_accepts(2));
        assert!(set.arity_accepts(3) && set.arity_accepts(6));
        let getset = t.lookup(&[b"getset".as_slice()]);
        assert!(getset.arity_accepts(3) && !getset.arity_accepts(4));
    }

    #[test]
    fn a_refused_command_reply_is_reported() {
        let err = CommandTable::from_command_reply(
            b"-NOPERM this user has no permissions to run the 'command' command\r\n",
            TableSource::Upstream,
        )
        .unwrap_err();
        assert!(matches!(err, TableError::Refused(_)), "{err}");
    }
}
