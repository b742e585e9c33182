//! An edge worker's registration with the gateways, `POST /fleet/workers`.

use serde::{Deserialize, Serialize};

use crate::LoadReport;

/// What a worker sends to register itself and then, about once a second, to
/// say it is still there. The same body does both: the first heartbeat
/// registers. The zone is not part of it: a self-registered worker is
/// always on-prem, and the gateway checks that its URL is a private or
/// loopback address before listing it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Where gateways reach the worker: `http://host:port`, no path.
    pub url: String,
    /// The worker's load report as `GET /v1/worker/load` would give it now:
    /// model, context length, capabilities, measured rates.
    pub load: LoadReport,
}

/// The gateway's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The backend name the worker is listed under.
    pub backend: String,
    /// How long the listing lasts without another heartbeat, in ms.
    pub ttl_ms: u64,
}
