//! Which client a shared connection's reply bytes belong to.
//!
//! Commands of many clients go to one Redis connection in the order they were written;
//! Redis answers in that order. The [`Router`] keeps that order as **runs**: "the next `n`
//! replies belong to this owner", one run per batch a client submits (consecutive batches of
//! one owner merge), so the bookkeeping is a few bytes per batch, never an object per
//! command. As bytes arrive it finds where replies end ([`ReplyScanner`]) and hands each
//! owner the bytes of its replies, whole or, for a reply still arriving, its beginning: a
//! large reply streams through without being held.
//!
//! Pure: no sockets, no locks, no time; the lane ([`super::lane`]) drives it.

use std::collections::VecDeque;

use bytes::BytesMut;

use crate::scanner::reply::{ReplyKind, ReplyScanner, ReplyStep};

/// Who receives replies: compared by identity, so that consecutive runs of one owner merge.
pub(crate) trait Owner: Clone {
    /// True when `other` is the same receiver.
    fn same(&self, other: &Self) -> bool;
}

/// The next `replies` replies go to `to`.
#[derive(Debug)]
struct Run<T> {
    to: T,
    replies: u32,
}

/// Why the reply stream cannot be routed any more: the connection must be dropped (its
/// bytes could land with the wrong client otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RouteError {
    /// Bytes arrived while no reply was owed.
    Unexpected,
    /// The bytes are not RESP.
    Malformed(String),
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RouteError::Unexpected => f.write_str("Redis sent a reply no command asked for"),
            RouteError::Malformed(e) => write!(f, "malformed reply from Redis: {e}"),
        }
    }
}

/// The replies a shared connection owes, in order, and the scan of what has arrived.
#[derive(Debug)]
pub(crate) struct Router<T> {
    order: VecDeque<Run<T>>,
    scanner: ReplyScanner,
    /// Some bytes of the head run's current reply were handed over already.
    mid_reply: bool,
    /// Replies owed in all.
    owed: u64,
}

impl<T: Owner> Default for Router<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Owner> Router<T> {
    /// Nothing owed.
    pub fn new() -> Self {
        Router {
            order: VecDeque::new(),
            scanner: ReplyScanner::new(),
            mid_reply: false,
            owed: 0,
        }
    }

    /// The next `replies` replies after those already owed go to `to`.
    pub fn expect(&mut self, to: &T, replies: u32) {
        if replies == 0 {
            return;
        }
        self.owed += u64::from(replies);
        if let Some(last) = self.order.back_mut() {
            if last.to.same(to) {
                last.replies += replies;
                return;
            }
        }
        self.order.push_back(Run {
            to: to.clone(),
            replies,
        });
    }

    /// `replies` replies go to `to` before every one owed so far (a connection's own
    /// handshake, written before the commands already queued for it).
    pub fn expect_first(&mut self, to: &T, replies: u32) {
        debug_assert!(!self.mid_reply, "only before any reply arrived");
        self.owed += u64::from(replies);
        self.order.push_front(Run {
            to: to.clone(),
            replies,
        });
    }

    /// Replies owed.
    pub fn owed(&self) -> u64 {
        self.owed
    }

    /// Hand every whole reply in `input`, and the beginning of one still arriving, to its
    /// owner, in order; what is handed over leaves `input` without a copy. Consecutive
    /// replies of one run go out as one piece.
    pub fn route(
        &mut self,
        input: &mut BytesMut,
        mut deliver: impl FnMut(&T, BytesMut),
    ) -> Result<(), RouteError> {
        loop {
            if input.is_empty() {
                return Ok(());
            }
            let Some(head) = self.order.front_mut() else {
                return Err(RouteError::Unexpected);
            };
            let (step, plain) = match self.scanner.skip_plain_reply(input) {
                Some(end) => (ReplyStep::Done(end), true),
                None => (
                    self.scanner
                        .scan(input)
                        .map_err(|e| RouteError::Malformed(e.to_string()))?,
                    false,
                ),
            };
            match step {
                // A RESP3 push is no reply: on a shared connection (no subscription, no
                // tracking: those pin) only a command being answered sends one (DEBUG
                // PROTOCOL push), so it goes with the bytes of that command's reply.
                ReplyStep::Done(_) if !plain && self.scanner.info().kind == ReplyKind::Push => {
                    self.mid_reply = false;
                }
                ReplyStep::Done(end) => {
                    head.replies -= 1;
                    self.owed -= 1;
                    self.mid_reply = false;
                    if head.replies == 0 {
                        let run = self.order.pop_front().expect("the head run");
                        deliver(&run.to, self.take(input, end));
                    }
                }
                ReplyStep::Partial(upto) => {
                    if upto > 0 {
                        self.mid_reply = !self.scanner.between_replies();
                        self.scanner.rebase(upto);
                        deliver(&head.to, input.split_to(upto));
                    }
                    return Ok(());
                }
                ReplyStep::Header { .. } | ReplyStep::Element(_) => {
                    unreachable!("element reports are never asked for")
                }
            }
        }
    }

    /// Like [`Self::route`], for an owner that matches each reply to a command of its own
    /// (a cluster router): every whole reply handed over alone, with whether it is a RESP3
    /// push (handed to the owner of the reply it precedes, counted as no reply); a reply
    /// still arriving stays in `input` until whole.
    pub fn route_each(
        &mut self,
        input: &mut BytesMut,
        mut deliver: impl FnMut(&T, BytesMut, bool),
    ) -> Result<(), RouteError> {
        loop {
            if input.is_empty() {
                return Ok(());
            }
            if self.order.is_empty() {
                return Err(RouteError::Unexpected);
            }
            let (end, push) = match self.scanner.skip_plain_reply(input) {
                Some(end) => (end, false),
                None => match self.scanner.scan(input) {
                    Ok(ReplyStep::Done(end)) => (end, self.scanner.info().kind == ReplyKind::Push),
                    Ok(_) => return Ok(()),
                    Err(e) => return Err(RouteError::Malformed(e.to_string())),
                },
            };
            let reply = self.take(input, end);
            let head = self.order.front_mut().expect("a reply is owed");
            if push {
                deliver(&head.to, reply, true);
                continue;
            }
            head.replies -= 1;
            self.owed -= 1;
            if head.replies == 0 {
                let run = self.order.pop_front().expect("the head run");
                deliver(&run.to, reply, false);
            } else {
                deliver(&head.to, reply, false);
            }
        }
    }

    /// The first `n` bytes of `input`, taken out and the scan moved along.
    fn take(&mut self, input: &mut BytesMut, n: usize) -> BytesMut {
        self.scanner.rebase(n);
        input.split_to(n)
    }

    /// The connection is gone: every reply still owed is lost. Calls `lost` once per run,
    /// in order, with its owner, how many replies it loses, and whether the first of them
    /// was cut after some of its bytes were handed over. Afterwards nothing is owed.
    pub fn lose_all(&mut self, mut lost: impl FnMut(&T, u32, bool)) {
        let mut cut = self.mid_reply;
        for run in self.order.drain(..) {
            lost(&run.to, run.replies, cut);
            cut = false;
        }
        self.scanner = ReplyScanner::new();
        self.mid_reply = false;
        self.owed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Owner for u32 {
        fn same(&self, other: &Self) -> bool {
            self == other
        }
    }

    /// A deterministic generator (xorshift), so a failure replays.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A reply of one of several shapes, tagged with its owner and index, so a reply that
    /// lands with the wrong owner is seen.
    fn reply(owner: u32, i: u32, shape: u64) -> Vec<u8> {
        let tag = format!("o{owner}-r{i}");
        match shape {
            0 => format!("+{tag}\r\n").into_bytes(),
            1 => format!("${}\r\n{tag}\r\n", tag.len()).into_bytes(),
            2 => format!("*2\r\n${}\r\n{tag}\r\n:{i}\r\n", tag.len()).into_bytes(),
            3 => {
                let big = tag.repeat(300);
                format!("${}\r\n{big}\r\n", big.len()).into_bytes()
            }
            4 => format!("-ERR {tag}\r\n").into_bytes(),
            _ => format!("*1\r\n*1\r\n%1\r\n+k\r\n${}\r\n{tag}\r\n", tag.len()).into_bytes(),
        }
    }

    #[test]
    fn each_owner_receives_exactly_its_replies_in_order_at_any_read_split() {
        for seed in 1..200u64 {
            let mut rng = Rng(seed * 7919);
            let mut router = Router::<u32>::new();
            let mut stream = Vec::new();
            let mut want: Vec<Vec<u8>> = vec![Vec::new(); 4];
            let mut counts = [0u32; 4];
            for _ in 0..30 {
                let owner = rng.below(4) as u32;
                let n = 1 + rng.below(5) as u32;
                router.expect(&owner, n);
                for _ in 0..n {
                    let r = reply(owner, counts[owner as usize], rng.below(6));
                    counts[owner as usize] += 1;
                    want[owner as usize].extend_from_slice(&r);
                    stream.extend_from_slice(&r);
                }
            }
            let mut got: Vec<Vec<u8>> = vec![Vec::new(); 4];
            let mut input = BytesMut::new();
            let mut at = 0;
            while at < stream.len() {
                let step = 1 + rng.below(700) as usize;
                let end = (at + step).min(stream.len());
                input.extend_from_slice(&stream[at..end]);
                at = end;
                router
                    .route(&mut input, |o, b| got[*o as usize].extend_from_slice(&b))
                    .unwrap();
            }
            assert!(input.is_empty(), "seed {seed}: everything routed");
            assert_eq!(router.owed(), 0, "seed {seed}");
            assert_eq!(got, want, "seed {seed}");
        }
    }

    /// `route_each` hands each owner its replies one whole reply at a time, at any read
    /// split, a reply never cut.
    #[test]
    fn each_whole_reply_reaches_its_owner_alone() {
        for seed in 1..100u64 {
            let mut rng = Rng(seed * 104_729);
            let mut router = Router::<u32>::new();
            let mut stream = Vec::new();
            let mut want: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
            let mut counts = [0u32; 3];
            for _ in 0..20 {
                let owner = rng.below(3) as u32;
                let n = 1 + rng.below(4) as u32;
                router.expect(&owner, n);
                for _ in 0..n {
                    let r = reply(owner, counts[owner as usize], rng.below(6));
                    counts[owner as usize] += 1;
                    want[owner as usize].push(r.clone());
                    stream.extend_from_slice(&r);
                }
            }
            let mut got: Vec<Vec<Vec<u8>>> = vec![Vec::new(); 3];
            let mut input = BytesMut::new();
            let mut at = 0;
            while at < stream.len() {
                let end = (at + 1 + rng.below(500) as usize).min(stream.len());
                input.extend_from_slice(&stream[at..end]);
                at = end;
                router
                    .route_each(&mut input, |o, b, push| {
                        assert!(!push);
                        got[*o as usize].push(b.to_vec());
                    })
                    .unwrap();
            }
            assert!(input.is_empty(), "seed {seed}");
            assert_eq!(router.owed(), 0, "seed {seed}");
            assert_eq!(got, want, "seed {seed}");
        }
    }

    #[test]
    fn bytes_nobody_asked_for_stop_the_routing() {
        let mut router = Router::<u32>::new();
        router.expect(&1, 1);
        let mut input = BytesMut::from(&b"+OK\r\n+EXTRA\r\n"[..]);
        let mut got = Vec::new();
        let r = router.route(&mut input, |o, b| got.push((*o, b.to_vec())));
        assert_eq!(r, Err(RouteError::Unexpected));
        assert_eq!(got, vec![(1, b"+OK\r\n".to_vec())]);
    }

    /// A RESP3 push (DEBUG PROTOCOL push sends one before its reply) is no reply: it goes
    /// to the owner of the reply it precedes, at any read split, and counts for nothing; one
    /// arriving when nothing is owed stops the routing.
    #[test]
    fn a_push_goes_with_the_reply_it_precedes_and_counts_for_nothing() {
        let wire = b"+a\r\n>2\r\n$3\r\ncpu\r\n:42\r\n$4\r\nreal\r\n:7\r\n";
        for split in 0..=wire.len() {
            let mut router = Router::<u32>::new();
            router.expect(&1, 1);
            router.expect(&2, 1);
            router.expect(&3, 1);
            let mut got: Vec<(u32, Vec<u8>)> = Vec::new();
            let mut input = BytesMut::new();
            for piece in [&wire[..split], &wire[split..]] {
                input.extend_from_slice(piece);
                router
                    .route(&mut input, |o, b| match got.last_mut() {
                        Some((last, bytes)) if last == o => bytes.extend_from_slice(&b),
                        _ => got.push((*o, b.to_vec())),
                    })
                    .unwrap();
            }
            assert!(input.is_empty(), "split at {split}");
            let want: Vec<(u32, Vec<u8>)> = vec![
                (1, b"+a\r\n".to_vec()),
                (2, b">2\r\n$3\r\ncpu\r\n:42\r\n$4\r\nreal\r\n".to_vec()),
                (3, b":7\r\n".to_vec()),
            ];
            assert_eq!(got, want, "split at {split}");
            assert_eq!(router.owed(), 0);
        }
        let mut router = Router::<u32>::new();
        let mut input = BytesMut::from(&b">1\r\n:1\r\n"[..]);
        assert_eq!(
            router.route(&mut input, |_, _| {}),
            Err(RouteError::Unexpected)
        );
    }

    #[test]
    fn malformed_bytes_stop_the_routing() {
        let mut router = Router::<u32>::new();
        router.expect(&1, 2);
        let mut input = BytesMut::from(&b"?what\r\n"[..]);
        assert!(matches!(
            router.route(&mut input, |_, _| {}),
            Err(RouteError::Malformed(_))
        ));
    }

    #[test]
    fn a_lost_connection_loses_every_run_and_says_which_reply_was_cut() {
        let mut router = Router::<u32>::new();
        router.expect(&1, 2);
        router.expect(&2, 1);
        router.expect(&1, 1);
        let mut input = BytesMut::from(&b"+a\r\n$10\r\nabc"[..]);
        let mut got = Vec::new();
        router
            .route(&mut input, |o, b| got.push((*o, b.to_vec())))
            .unwrap();
        assert_eq!(got, vec![(1, b"+a\r\n$10\r\nabc".to_vec())]);
        let mut lost = Vec::new();
        router.lose_all(|o, n, cut| lost.push((*o, n, cut)));
        assert_eq!(lost, vec![(1, 1, true), (2, 1, false), (1, 1, false)]);
        assert_eq!(router.owed(), 0);
        router.expect(&3, 1);
        let mut input = BytesMut::from(&b"+fresh\r\n"[..]);
        let mut got = Vec::new();
        router
            .route(&mut input, |o, b| got.push((*o, b.to_vec())))
            .unwrap();
        assert_eq!(
            got,
            vec![(3, b"+fresh\r\n".to_vec())],
            "a new stream after a loss"
        );
    }

    #[test]
    fn a_loss_between_replies_cuts_nothing() {
        let mut router = Router::<u32>::new();
        router.expect(&1, 3);
        let mut input = BytesMut::from(&b"+a\r\n+b\r\n"[..]);
        router.route(&mut input, |_, _| {}).unwrap();
        let mut lost = Vec::new();
        router.lose_all(|o, n, cut| lost.push((*o, n, cut)));
        assert_eq!(lost, vec![(1, 1, false)]);
    }

    #[test]
    fn consecutive_runs_of_one_owner_merge_and_a_handshake_goes_first() {
        let mut router = Router::<u32>::new();
        router.expect(&1, 1);
        router.expect(&1, 2);
        router.expect_first(&0, 1);
        assert_eq!(router.order.len(), 2);
        assert_eq!(router.owed(), 4);
        let mut input = BytesMut::from(&b"+hs\r\n+1\r\n+2\r\n+3\r\n"[..]);
        let mut got = Vec::new();
        router
            .route(&mut input, |o, b| got.push((*o, b.to_vec())))
            .unwrap();
        assert_eq!(
            got,
            vec![
                (0, b"+hs\r\n".to_vec()),
                (1, b"+1\r\n+2\r\n+3\r\n".to_vec())
            ]
        );
    }
}
