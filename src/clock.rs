//! The monotonic clock the proxy's time-bounded memory reads: the enqueue guard's windows,
//! token buckets and expiring tables, and the queue guard's idle times.
//!
//! A [`Clock`] is the instant it was started; it tells the time elapsed since, in whole
//! milliseconds or seconds. It reads [`tokio::time::Instant`], which is the operating
//! system's monotonic clock (exactly `std::time::Instant`) unless tokio's `test-util`
//! feature is on. Tests turn it on, so `tokio::time::pause()` and `advance()` move every
//! clock started on a paused runtime: a test checks a one-minute window without waiting a
//! minute. Once some runtime of the process has paused its time, reading the clock costs a
//! thread-local lookup besides; never in a build without `test-util`.
//!
//! A session judges the commands of one read at one instant: while it does
//! ([`ReadTime::enter`]), every clock on that thread reads the instant the first of them
//! asked for, so a pipeline of 32 guarded commands reads the system's clock once, not once
//! or twice per command (about 75 instructions each). The instant is set and cleared
//! around synchronous code only (no `.await` inside), so a task moving to another thread
//! can never leave it behind; outside such a section a clock reads the system's. Instants
//! are held as nanoseconds since one origin, so a clock's elapsed time is a subtraction.
//!
//! It never sleeps, schedules or reads wall-clock time (dates, such as a stream entry's id,
//! are not its concern).

use std::cell::Cell;
use std::sync::LazyLock;
use std::time::Duration;

use tokio::time::Instant;

/// Where clocks count instants from: the system's time (never a paused runtime's) a day
/// before the first clock was read, so every instant read later, a paused test runtime's
/// included (it starts at the system's time when it is built), falls after it.
static ORIGIN: LazyLock<Instant> = LazyLock::new(|| {
    let now = Instant::from_std(std::time::Instant::now());
    now.checked_sub(Duration::from_secs(86_400)).unwrap_or(now)
});

/// `at` in nanoseconds since [`ORIGIN`]: how clocks and the read time hold instants, so
/// that a clock's elapsed time is one subtraction (a difference of two `Instant`s costs
/// about 38 instructions, and a guarded push asks two or three clocks).
fn ticks(at: Instant) -> u64 {
    at.saturating_duration_since(*ORIGIN).as_nanos() as u64
}

/// What a thread's clocks read.
#[derive(Debug, Clone, Copy)]
enum ReadState {
    /// The system's clock: no read is being judged.
    System,
    /// A read is being judged and no clock has asked the time yet: the first to ask reads
    /// the system's clock, and every later one that instant. A read whose commands never
    /// ask (no guard with a memory of time) costs no clock read.
    Unread,
    /// The instant the read's judging first asked for, in [`ticks`].
    At(u64),
}

thread_local! {
    static READ_TIME: Cell<ReadState> = const { Cell::new(ReadState::System) };
}

/// Now, in [`ticks`]: the instant of the read being judged on this thread, if one is, or
/// else the system's.
#[inline]
fn now() -> u64 {
    READ_TIME.with(|t| match t.get() {
        ReadState::At(at) => at,
        ReadState::System => ticks(Instant::now()),
        ReadState::Unread => {
            let at = ticks(Instant::now());
            t.set(ReadState::At(at));
            at
        }
    })
}

/// While alive, clocks on this thread read one instant: the first time asked while the read
/// is judged. Dropping the outermost one (at the end of the synchronous section that judged
/// the read) gives the thread's clocks back to the system's; a nested section shares the
/// outer one's instant.
#[must_use = "the read time lasts only while the value lives"]
pub struct ReadTime {
    outer: ReadState,
}

impl ReadTime {
    /// Fix the time of this thread's clocks until the value is dropped. Must not be held
    /// across an `.await`: the task could resume on another thread.
    #[inline]
    pub fn enter() -> Self {
        let outer = READ_TIME.with(|t| {
            let outer = t.get();
            if let ReadState::System = outer {
                t.set(ReadState::Unread);
            }
            outer
        });
        ReadTime { outer }
    }
}

impl Drop for ReadTime {
    #[inline]
    fn drop(&mut self) {
        // A nested section leaves the outer one's instant (or the one it first read) alone.
        if let ReadState::System = self.outer {
            READ_TIME.with(|t| t.set(ReadState::System));
        }
    }
}

/// An instant read once ([`Now::read`]) and handed to every clock a command asks, so that
/// a command whose guard counts in a memory and rate-limits a log line reads the time
/// once; each clock tells its own elapsed time at it ([`Clock::secs_at`]).
#[derive(Debug, Clone, Copy)]
pub struct Now(u64);

impl Now {
    /// Now: the read being judged on this thread, if one is, else the system's clock.
    #[inline]
    pub fn read() -> Self {
        Now(now())
    }
}

/// Time since a fixed start, for memories that expire entries.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// The start, in [`ticks`].
    start: u64,
}

impl Clock {
    /// A clock starting now (on a paused runtime: the runtime's paused now).
    pub fn start() -> Self {
        Clock {
            start: ticks(Instant::now()),
        }
    }

    /// Nanoseconds since the clock started ([`now`]: the read being judged, if one is).
    #[inline]
    fn nanos(&self) -> u64 {
        self.nanos_at(Now::read())
    }

    /// Nanoseconds from the clock's start to `at`.
    #[inline]
    fn nanos_at(&self, at: Now) -> u64 {
        at.0.saturating_sub(self.start)
    }

    /// Time since the clock started.
    #[inline]
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.nanos())
    }

    /// Whole milliseconds since the clock started.
    #[inline]
    pub fn millis(&self) -> u64 {
        self.millis_at(Now::read())
    }

    /// Whole seconds since the clock started.
    #[inline]
    pub fn secs(&self) -> u64 {
        self.secs_at(Now::read())
    }

    /// Whole milliseconds from the clock's start to `at`.
    #[inline]
    pub fn millis_at(&self, at: Now) -> u64 {
        self.nanos_at(at) / 1_000_000
    }

    /// Whole seconds from the clock's start to `at`.
    #[inline]
    pub fn secs_at(&self, at: Now) -> u64 {
        self.nanos_at(at) / 1_000_000_000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn paused_time_moves_only_when_advanced() {
        let clock = Clock::start();
        assert_eq!(clock.millis(), 0);
        tokio::time::advance(Duration::from_millis(1_500)).await;
        assert_eq!(clock.millis(), 1_500);
        assert_eq!(clock.elapsed().as_secs(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn inside_a_read_time_clocks_read_the_first_instant_asked_and_after_it_the_system() {
        let clock = Clock::start();
        tokio::time::advance(Duration::from_millis(300)).await;
        {
            let _read = ReadTime::enter();
            tokio::time::advance(Duration::from_millis(200)).await;
            {
                let _nested = ReadTime::enter();
                assert_eq!(
                    clock.millis(),
                    500,
                    "the first ask reads the system's clock"
                );
            }
            tokio::time::advance(Duration::from_millis(700)).await;
            assert_eq!(clock.millis(), 500, "later asks read the same instant");
        }
        assert_eq!(clock.millis(), 1_200, "outside a read: the system's clock");
    }

    #[tokio::test(start_paused = true)]
    async fn a_now_read_once_is_what_each_clock_tells_at_it() {
        let first = Clock::start();
        tokio::time::advance(Duration::from_millis(2_500)).await;
        let second = Clock::start();
        tokio::time::advance(Duration::from_millis(1_250)).await;
        let at = Now::read();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!((first.secs_at(at), first.millis_at(at)), (3, 3_750));
        assert_eq!((second.secs_at(at), second.millis_at(at)), (1, 1_250));
        assert_eq!(
            first.secs(),
            8,
            "the clock itself reads the time of its ask"
        );
    }

    #[test]
    fn a_clock_started_after_the_read_time_reads_zero_not_a_panic() {
        let _read = ReadTime::enter();
        let read_at = now();
        let later = Clock {
            start: read_at + 1_000_000_000,
        };
        assert_eq!(later.elapsed(), Duration::ZERO);
    }
}
