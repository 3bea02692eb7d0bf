//! The heartbeat sweep: one task pings every session on schedule
//! (`gateway.ping_interval_ms`) and closes the ones that sent nothing for
//! `gateway.idle_timeout_ms` with 4003.
//!
//! One sweep over the sessions instead of a timer in each session's task: an
//! idle session keeps three integers
//! ([`Liveness`](crate::realtime::liveness::Liveness)) rather than a timer
//! entry and its deadlines in its future, and no session task wakes up just
//! to learn it has nothing to do. The sweep runs ten times per shorter
//! interval (at most once per second, at least every 10 ms), so a deadline is
//! met within a tenth of that interval, or two tenths for the idle timeout
//! (inbound traffic is known to the sweep's period); changed timers take
//! effect at the next sweep after a config reload.

use std::sync::Arc;
use std::time::Duration;

use crate::error::CloseCode;
use crate::realtime::liveness::Due;
use crate::session::Hub;

/// Sweeps per shorter timer interval.
const SWEEPS_PER_INTERVAL: u64 = 10;
/// Bounds of the sweep period, in ms.
const PERIOD_MS: (u64, u64) = (10, 1_000);

/// How often to sweep for these timers (ms).
fn period_ms(idle_ms: u64, ping_ms: u64) -> u64 {
    (idle_ms.min(ping_ms) / SWEEPS_PER_INTERVAL).clamp(PERIOD_MS.0, PERIOD_MS.1)
}

/// Runs the sweep until the gateway stops (in `hub.tasks`).
pub(crate) fn spawn(hub: &Arc<Hub>) {
    let hub2 = Arc::clone(hub);
    let stop = hub.shutdown.clone();
    hub.tasks.spawn(async move {
        // The sweep's clock: ms since it started, plus one (0 is "unset").
        let origin = tokio::time::Instant::now();
        loop {
            let (idle_ms, ping_ms) = {
                let cfg = hub2.config();
                (cfg.gateway.idle_timeout_ms, cfg.gateway.ping_interval_ms)
            };
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(Duration::from_millis(period_ms(idle_ms, ping_ms))) => {}
            }
            let now = u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
            hub2.each_session(|s| match s.liveness.check(now, idle_ms, ping_ms) {
                Due::Nothing => {}
                Due::Ping => s.outbox.request_ping(),
                Due::Idle => s.outbox.close(
                    CloseCode::IdleTimeout,
                    CloseCode::IdleTimeout.label(),
                    false,
                ),
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_ten_times_per_shorter_interval_within_bounds() {
        assert_eq!(period_ms(60_000, 20_000), 1_000);
        assert_eq!(period_ms(600, 200), 20);
        assert_eq!(period_ms(3_000, 1_000), 100);
        assert_eq!(period_ms(50, 20), 10);
    }
}
