//! Retry or not, and when: pure decisions (DESIGN §5). The only user of the `backoff` crate
//! (unmaintained upstream), so that swapping it for `backon` touches this file alone.
use std::time::Duration;

use backoff::backoff::Backoff;

use crate::scim::ErrorClass;

pub const BASE_DELAY: Duration = Duration::from_secs(1);
pub const MAX_DELAY: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Try again, not before this delay. `counts` is false for throttling (429): the target
    /// asked us to slow down, nothing failed, so the job's attempt budget is not spent.
    Retry { after: Duration, counts: bool },
    /// Stop: the job is a dead letter until someone retries it.
    DeadLetter,
    /// The app's credentials were refused: stop the whole app until a probe succeeds.
    Quarantine,
}

/// What to do after a failed attempt. `attempts` counts the one that just failed; `jitter` is a
/// uniform draw in `[0, 1)` (passed in so tests need no randomness).
#[must_use]
pub fn decide(
    class: ErrorClass,
    status: Option<u16>,
    attempts: u32,
    max_attempts: u32,
    retry_after: Option<Duration>,
    jitter: f64,
) -> Decision {
    match class {
        ErrorClass::Auth if status == Some(401) => Decision::Quarantine,
        // 403 is "you may not do this to this resource": permanent, like other 4xx.
        ErrorClass::Auth | ErrorClass::Permanent | ErrorClass::NotFound | ErrorClass::Conflict => {
            Decision::DeadLetter
        }
        ErrorClass::Transient if status == Some(429) => Decision::Retry {
            after: retry_after
                .unwrap_or(BASE_DELAY)
                .clamp(BASE_DELAY / 4, MAX_DELAY),
            counts: false,
        },
        ErrorClass::Transient if attempts >= max_attempts => Decision::DeadLetter,
        ErrorClass::Transient => {
            let backoff = full_jitter(ceiling(attempts), jitter);
            // The target's own word wins when it asks for longer.
            let after = retry_after.map_or(backoff, |ra| ra.max(backoff).min(MAX_DELAY.max(ra)));
            Decision::Retry {
                after,
                counts: true,
            }
        }
    }
}

/// The exponential ceiling for attempt `n` (1-based): 1 s, 2 s, 4 s, … capped at 15 min.
#[must_use]
pub fn ceiling(attempt: u32) -> Duration {
    let mut schedule = backoff::ExponentialBackoff {
        current_interval: BASE_DELAY,
        initial_interval: BASE_DELAY,
        randomization_factor: 0.0,
        multiplier: 2.0,
        max_interval: MAX_DELAY,
        max_elapsed_time: None,
        ..backoff::ExponentialBackoff::default()
    };
    let mut delay = BASE_DELAY;
    for _ in 0..attempt.clamp(1, 64) {
        delay = schedule.next_backoff().unwrap_or(MAX_DELAY);
    }
    delay.min(MAX_DELAY)
}

/// "Full jitter": uniform in `[0, ceiling]`, so that many jobs failing together do not retry
/// together.
#[must_use]
pub fn full_jitter(ceiling: Duration, unit: f64) -> Duration {
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_follow_the_delivery_table() {
        use Decision as D;
        use ErrorClass as C;
        let s = Duration::from_secs;
        let retry = |after, counts| D::Retry { after, counts };
        let cases = [
            (C::Transient, Some(503), 1, 8, None, 1.0, retry(s(1), true)),
            (C::Transient, None, 3, 8, None, 1.0, retry(s(4), true)),
            (C::Transient, None, 3, 8, None, 0.5, retry(s(2), true)),
            (
                C::Transient,
                Some(503),
                5,
                8,
                Some(s(30)),
                0.1,
                retry(s(30), true),
            ),
            (
                C::Transient,
                Some(503),
                5,
                8,
                Some(s(1)),
                1.0,
                retry(s(16), true),
            ),
            // Throttling waits as asked and never spends the attempt budget, even at the limit.
            (
                C::Transient,
                Some(429),
                1,
                8,
                Some(s(30)),
                1.0,
                retry(s(30), false),
            ),
            (
                C::Transient,
                Some(429),
                8,
                8,
                Some(s(2)),
                1.0,
                retry(s(2), false),
            ),
            (C::Transient, Some(429), 3, 8, None, 1.0, retry(s(1), false)),
            (C::Transient, Some(500), 8, 8, None, 1.0, D::DeadLetter),
            (C::Auth, Some(401), 1, 8, None, 1.0, D::Quarantine),
            (C::Auth, Some(403), 1, 8, None, 1.0, D::DeadLetter),
            (C::Permanent, Some(400), 1, 8, None, 1.0, D::DeadLetter),
            (C::NotFound, Some(404), 1, 8, None, 1.0, D::DeadLetter),
        ];
        for (class, status, attempts, max, ra, jitter, want) in cases {
            assert_eq!(
                decide(class, status, attempts, max, ra, jitter),
                want,
                "{class:?} {status:?} #{attempts}"
            );
        }
    }

    #[test]
    fn the_schedule_doubles_and_is_capped_at_fifteen_minutes() {
        let got: Vec<u64> = (1..=6).map(|n| ceiling(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32]);
        assert_eq!(ceiling(40), MAX_DELAY);
        assert_eq!(full_jitter(Duration::from_secs(10), 0.0), Duration::ZERO);
        assert_eq!(
            full_jitter(Duration::from_secs(10), 2.0),
            Duration::from_secs(10)
        );
    }
}
