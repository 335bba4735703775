//! How fast the audit may go: a ceiling on commands per second, and a pause whenever a
//! round trip shows Redis answering slowly.
//!
//! The audit runs against a Redis that is serving its applications. Each pipelined round
//! trip is timed; one slower than `slow_round_trip` means Redis (or its host) is busy, so
//! the audit waits before the next one, twice as long after each further slow round trip
//! (up to `max_pause`), and goes back to its pace once a round trip is fast again. The
//! rate ceiling spreads commands evenly: the next batch starts no earlier than the commands
//! sent so far allow. Pure: [`Pace`] only says how long to wait; the caller sleeps.

use std::time::Duration;

/// The pacing settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PaceSettings {
    /// Commands per second at most; 0 for no ceiling.
    pub max_commands_per_second: u32,
    /// A round trip slower than this pauses the audit.
    pub slow_round_trip: Duration,
    /// The first pause after a slow round trip.
    pub pause: Duration,
    /// The longest pause.
    pub max_pause: Duration,
}

/// The pacing state of one audit.
#[derive(Debug, Clone)]
pub struct Pace {
    settings: PaceSettings,
    /// When, since the start, the commands sent so far are due at the ceiling's rate.
    due: Duration,
    slow_in_a_row: u32,
    /// Pauses taken.
    pub pauses: u64,
    /// Time paused.
    pub paused: Duration,
}

impl Pace {
    /// A pace with nothing sent yet.
    pub fn new(settings: PaceSettings) -> Self {
        Pace {
            settings,
            due: Duration::ZERO,
            slow_in_a_row: 0,
            pauses: 0,
            paused: Duration::ZERO,
        }
    }

    /// Record a round trip of `commands` commands that took `round_trip` and ended
    /// `elapsed` after the audit started; returns how long to wait before the next one.
    /// Time spent idle (a pause, a slow Redis) earns no credit: the audit never sends
    /// faster than the ceiling to catch up.
    pub fn after(&mut self, commands: u64, round_trip: Duration, elapsed: Duration) -> Duration {
        let rate_wait = match self.settings.max_commands_per_second {
            0 => Duration::ZERO,
            rate => {
                let sent_at = elapsed.saturating_sub(round_trip);
                let spread = Duration::from_secs_f64(commands as f64 / f64::from(rate));
                self.due = self.due.max(sent_at) + spread;
                self.due.saturating_sub(elapsed)
            }
        };
        if round_trip <= self.settings.slow_round_trip {
            self.slow_in_a_row = 0;
            return rate_wait;
        }
        self.slow_in_a_row += 1;
        let doubling = 1u32 << (self.slow_in_a_row - 1).min(16);
        let pause = self
            .settings
            .pause
            .saturating_mul(doubling)
            .min(self.settings.max_pause);
        self.pauses += 1;
        self.paused += pause;
        pause.max(rate_wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(rate: u32) -> PaceSettings {
        PaceSettings {
            max_commands_per_second: rate,
            slow_round_trip: Duration::from_millis(50),
            pause: Duration::from_millis(100),
            max_pause: Duration::from_millis(350),
        }
    }

    #[test]
    fn the_rate_ceiling_spreads_commands_over_time() {
        let mut pace = Pace::new(settings(1_000));
        let fast = Duration::from_millis(1);
        // 500 commands sent at 9 ms, back at 10 ms: the next may go at 509 ms.
        let wait = pace.after(500, fast, Duration::from_millis(10));
        assert_eq!(wait, Duration::from_millis(499));
        // 500 more sent at 509 ms: the next at 1,009 ms.
        let wait = pace.after(500, fast, Duration::from_millis(510));
        assert_eq!(wait, Duration::from_millis(499));
        // After an idle second, no burst to catch up: 500 commands still take 500 ms.
        let wait = pace.after(500, fast, Duration::from_millis(2_001));
        assert_eq!(wait, Duration::from_millis(499));
        assert_eq!(pace.pauses, 0);
    }

    #[test]
    fn no_ceiling_never_waits_while_fast() {
        let mut pace = Pace::new(settings(0));
        let wait = pace.after(1_000_000, Duration::from_millis(1), Duration::ZERO);
        assert_eq!(wait, Duration::ZERO);
    }

    #[test]
    fn slow_round_trips_pause_longer_each_time_up_to_the_maximum_then_recover() {
        let mut pace = Pace::new(settings(0));
        let slow = Duration::from_millis(80);
        let waits: Vec<_> = (0..4)
            .map(|_| pace.after(10, slow, Duration::ZERO).as_millis())
            .collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        assert_eq!(pace.pauses, 4);
        assert_eq!(pace.paused, Duration::from_millis(1_000));
        assert_eq!(
            pace.after(10, Duration::from_millis(2), Duration::ZERO),
            Duration::ZERO
        );
        assert_eq!(pace.after(10, slow, Duration::ZERO).as_millis(), 100);
    }
}
