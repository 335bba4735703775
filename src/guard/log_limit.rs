//! The log limit of a rule: at most so many lines a second, the rest counted and reported
//! with the next line written. Never formats or writes a line itself.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::clock::{Clock, Now};

/// At most `per_second` log lines per second; a storm of decisions is counted, not logged.
///
/// Lock-free, because every session of a storm asks at once: the current second (since the
/// limiter was made) and the lines written in it share one `AtomicU64` (second in the high
/// half, lines in the low half), and lines refused are added to a second atomic, reported
/// and reset with the next line written.
#[derive(Debug)]
pub struct LogLimiter {
    per_second: u32,
    epoch: Clock,
    window: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// A limiter allowing `per_second` lines each second.
    pub fn new(per_second: u32) -> Self {
        LogLimiter {
            per_second,
            epoch: Clock::start(),
            window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed)` when a line may be written at `now`.
    #[inline]
    pub fn allow(&self, now: Now) -> Option<u64> {
        self.allow_at(self.epoch.secs_at(now) as u32)
    }

    /// [`LogLimiter::allow`] in second `second` since the limiter was made.
    #[inline]
    fn allow_at(&self, second: u32) -> Option<u64> {
        if self.per_second == 0 {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (at, lines) = ((current >> 32) as u32, current as u32);
            let next = if at != second {
                u64::from(second) << 32 | 1
            } else if lines < self.per_second {
                current + 1
            } else {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                return None;
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(self.suppressed.swap(0, Ordering::Relaxed)),
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_limiter_allows_n_lines_a_second_and_counts_the_rest() {
        let l = LogLimiter::new(2);
        assert_eq!(l.allow_at(0), Some(0));
        assert_eq!(l.allow_at(0), Some(0));
        assert_eq!(l.allow_at(0), None);
        assert_eq!(l.allow_at(0), None);
        // A new second reports the two suppressed lines.
        assert_eq!(l.allow_at(1), Some(2));
        assert_eq!(l.allow_at(1), Some(0));
        assert_eq!(l.allow_at(1), None);
        assert_eq!(LogLimiter::new(0).allow_at(0), None);
    }

    #[test]
    fn the_log_limiter_holds_its_limit_across_threads() {
        let l = LogLimiter::new(5);
        let allowed = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        if l.allow_at(7).is_some() {
                            allowed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(allowed.load(Ordering::Relaxed), 5);
        assert_eq!(l.allow_at(8), Some(8000 - 5));
    }
}
