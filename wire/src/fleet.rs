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
    /// Where gateways reach the worker: `http://host:port`, no path (see
    /// [`plain_base_url`]).
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

/// The one written form of a worker's address, `scheme://host[:port]`, or
/// `None` for a URL that is not only that (not http(s), credentials, a path
/// other than `/`, a query or a fragment). The worker sends this form and
/// the gateway keys registrations by it, so every notation of one address
/// (`HTTP://Host:80/`, `http://[::1]:8081`) is listed once.
pub fn plain_base_url(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let plain = matches!(parsed.scheme(), "http" | "https")
        && parsed.username().is_empty()
        && parsed.password().is_none()
        && parsed.path() == "/"
        && parsed.query().is_none()
        && parsed.fragment().is_none();
    if !plain {
        return None;
    }
    // IPv6 hosts come bracketed.
    let host = parsed.host_str()?;
    Some(match parsed.port() {
        Some(port) => format!("{}://{host}:{port}", parsed.scheme()),
        None => format!("{}://{host}", parsed.scheme()),
    })
}

#[cfg(test)]
mod tests {
    use super::plain_base_url;

    #[test]
    fn plain_base_urls() {
        let cases = [
            ("http://10.0.0.5:8081", Some("http://10.0.0.5:8081")),
            ("HTTP://Edge-1:8081/", Some("http://edge-1:8081")),
            ("http://edge:80", Some("http://edge")),
            ("https://[::1]:8443", Some("https://[::1]:8443")),
            ("http://u:p@edge:8081", None),
            ("http://edge:8081/v1", None),
            ("http://edge:8081/?q", None),
            ("http://edge:8081/#f", None),
            ("ftp://edge", None),
            ("edge:8081", None),
            ("", None),
        ];
        for (url, want) in cases {
            assert_eq!(plain_base_url(url).as_deref(), want, "{url}");
        }
    }
}
