//! The lifecycle reaper: a background task that runs
//! [`ControlPlane::reap`] every `sessions.reaper_interval_secs`. The decisions
//! themselves read the control plane's [`Clock`](crate::clock::Clock), so
//! tests call `reap` directly on a manual clock.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::control::ControlPlane;

pub fn spawn_reaper(
    cp: Arc<ControlPlane>,
    interval: Duration,
    stop: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tick.tick() => {
                    match cp.reap().await {
                        Ok(r) => {
                            let n = r.deleted_unactivated.len() + r.expired.len()
                                + r.expired_idle.len() + r.expired_evicted.len() + r.purged.len();
                            if n > 0 {
                                tracing::debug!(?r, "reaper pass");
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "reaper pass failed; retrying next interval"),
                    }
                }
            }
        }
    })
}
