//! The watched integer replies of one pass of the session's plain-reply loop, each
//! watch handed the last of its run (see [`WatchedRun`]).

use crate::guard::ReplyWatch;
use crate::scanner::reply::integer_reply_info;

/// The watched integer replies of one pass of the plain-reply loop: a run of replies one
/// watch asked for (a producer's pushes onto one queue, each answered by the queue's new
/// length) is handed to it once, as its last reply, the newest length; the replies before
/// it are forwarded without their integers read. A reply watched by another watch hands
/// the run over first, so each watch sees its replies' last value in the order they came.
/// What a watch records is a value the newest reply replaces (a depth), never a count of
/// replies: see [`crate::guard::ReplyWatcher`].
#[derive(Default)]
pub(super) struct WatchedRun {
    /// The run's watch, and where the last reply of its run starts in the reply input.
    last: Option<(ReplyWatch, usize)>,
}

impl WatchedRun {
    /// Whether a reply is noted and not yet handed over.
    #[inline]
    pub(super) fn is_open(&self) -> bool {
        self.last.is_some()
    }

    /// A reply watched by `watch` starts at `at` of `input` (whole there, an integer).
    #[inline]
    pub(super) fn note(&mut self, watch: ReplyWatch, at: usize, input: &[u8]) {
        match &mut self.last {
            Some((same, start)) if *same == watch => *start = at,
            _ => {
                self.hand_over(input);
                self.last = Some((watch, at));
            }
        }
    }

    /// Hand the run's last reply (still in `input`, where it was noted) to its watch.
    #[inline]
    pub(super) fn hand_over(&mut self, input: &[u8]) {
        if let Some((watch, at)) = self.last.take() {
            watch.on_reply(&integer_reply_info(input, at));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::guard::ReplyWatcher;
    use crate::scanner::reply::ReplyInfo;

    /// Every value handed to it, in order.
    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<Option<i64>>>);

    impl ReplyWatcher for Seen {
        fn on_reply(&self, reply: &ReplyInfo) {
            self.0.lock().unwrap().push(reply.last_int);
        }
    }

    #[test]
    fn a_watched_run_hands_each_watch_the_last_reply_of_its_run() {
        let input = b":1\r\n:2\r\n:30\r\n:4\r\n:5\r\n:-6\r\n";
        let starts = [0, 4, 8, 13, 17, 21];
        let (a, b) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
        let (wa, wb) = (ReplyWatch::new(a.clone()), ReplyWatch::new(b.clone()));
        let mut run = WatchedRun::default();
        // a a b b a a: three runs, each handed over as the next begins or at the end.
        for (at, watch) in starts.into_iter().zip([&wa, &wa, &wb, &wb, &wa, &wa]) {
            run.note(watch.clone(), at, input);
        }
        assert!(run.is_open());
        assert_eq!(*b.0.lock().unwrap(), vec![Some(4)]);
        run.hand_over(input);
        assert!(!run.is_open());
        assert_eq!(*a.0.lock().unwrap(), vec![Some(2), Some(-6)]);
        assert_eq!(*b.0.lock().unwrap(), vec![Some(4)]);
        // Nothing noted: nothing handed over.
        run.hand_over(input);
        assert_eq!(a.0.lock().unwrap().len(), 2);
    }
}
