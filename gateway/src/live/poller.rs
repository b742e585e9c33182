//! The load poller: every `poll_interval_ms`, asks each enabled edge backend
//! for `/v1/worker/load` and records the answer (or the failure) in the
//! [`LiveView`].
//!
//! Polls of one round run concurrently, each bounded by `poll_timeout_ms`,
//! so one slow worker delays no other. Cloud backends are not polled: they
//! have no load report, and their health is learnt passively from failed
//! requests. The task ends when its cancellation token fires.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use super::load::LoadTracker;
use super::LiveView;
use crate::catalog::Catalog;
use crate::routing::{Backend, BackendKind};
use crate::upstream::Upstreams;

/// What the poller needs.
pub struct Poller {
    pub catalog: Catalog,
    pub live: Arc<dyn LiveView>,
    /// Learns arrival and service rates from the same reports.
    pub tracker: Arc<LoadTracker>,
    pub upstreams: Upstreams,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Poller {
    /// Polls until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.round().await;
        }
    }

    /// One poll of every enabled edge backend.
    pub async fn round(&self) {
        let snapshot = match self.catalog.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "load poller cannot read backends");
                return;
            }
        };
        let edges = snapshot
            .backends
            .iter()
            .filter(|b| b.enabled && b.kind == BackendKind::Edge);
        join_all(edges.map(|b| self.poll(b))).await;
    }

    async fn poll(&self, backend: &Backend) {
        if let Some(load) = self.upstreams.load_report(backend, self.timeout).await {
            self.tracker
                .observe(&backend.id, &load, std::time::Instant::now());
            self.live.report(&backend.id, load);
        } else {
            metrics::counter!("gateway_load_poll_failures_total", "backend" => backend.name.clone())
                    .increment(1);
            self.live.failure(&backend.id);
        }
    }
}
