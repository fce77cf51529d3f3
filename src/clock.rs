//! The wall clock, as an input. Code that asks "what time is it?" (a webhook's arrival, a
//! check's "now", the expiry sweep, a `since` that must not lie in the future) asks a
//! [`Clock`] it was given, never `Utc::now()` itself, so tests can run on paused time.
//!
//! - [`Clock::System`]: the host's clock (production).
//! - [`Clock::tokio`]: wall time that moves with `tokio::time`. It starts at the host's time
//!   and then advances exactly as much as tokio's clock does, so under
//!   `tokio::time::pause()` a test moves the consent clock with `tokio::time::advance` (or
//!   auto-advance), and the sweep's and checkpoints' timers move with it. Unpaused, it runs at
//!   real speed.

use chrono::{DateTime, TimeDelta, Utc};
use tokio::time::Instant;

/// Where the service reads the time. Cheap to copy.
#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    /// The host's clock.
    #[default]
    System,
    /// `wall` at tokio instant `at`, then moving with tokio's clock.
    Tokio { wall: DateTime<Utc>, at: Instant },
}

impl Clock {
    /// A clock that follows `tokio::time`, starting at the host's current time. Call it inside
    /// the runtime whose (possibly paused) time it should follow.
    pub fn tokio() -> Clock {
        Clock::tokio_at(Utc::now())
    }

    /// A clock that follows `tokio::time`, reading `wall` now.
    pub fn tokio_at(wall: DateTime<Utc>) -> Clock {
        Clock::Tokio {
            wall,
            at: Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> DateTime<Utc> {
        match self {
            Clock::System => Utc::now(),
            Clock::Tokio { wall, at } => {
                let elapsed = Instant::now().saturating_duration_since(*at);
                *wall + TimeDelta::from_std(elapsed).unwrap_or(TimeDelta::MAX)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_tokio_clock_moves_only_with_tokio_time() {
        let start: DateTime<Utc> = "2026-03-01T10:00:00Z".parse().unwrap();
        let clock = Clock::tokio_at(start);
        assert_eq!(clock.now(), start);
        tokio::time::advance(Duration::from_secs(7 * 24 * 3600)).await;
        assert_eq!(clock.now(), start + TimeDelta::days(7));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(
            clock.now(),
            start + TimeDelta::days(7) + TimeDelta::milliseconds(1500)
        );
    }

    #[test]
    fn the_system_clock_reads_the_host_time() {
        let before = Utc::now();
        let now = Clock::System.now();
        assert!(before <= now && now <= Utc::now());
    }
}
