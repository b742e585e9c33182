//! Registration with the gateway fleet: with `--gateway-url` the worker
//! announces itself instead of waiting for an admin's `backend add`. Every
//! `--heartbeat-ms` it posts a [`wire::Heartbeat`] (its advertised URL and
//! its current load report) to `<gateway-url>/fleet/workers`, presenting the
//! fleet's worker token. The first heartbeat registers it; the gateways list
//! it while heartbeats keep coming and drop it a few seconds after they
//! stop. A loading worker beats too (with `ready: false`), and a draining
//! one says so, so the gateways stop routing to it before it exits.
//!
//! Heartbeats go through whatever is at the fleet's address (a load
//! balancer spreads them over the gateways, which share what they learn),
//! and a failed one is simply tried again at the next beat: the gateways,
//! not this loop, decide when the worker counts as gone.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION};
use wire::{Heartbeat, HeartbeatAck, LoadReport};

use crate::config::Config;
use crate::AppState;

/// Longest one heartbeat may take before it counts as failed.
const BEAT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why registration cannot be set up. Never carries the token.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error(
        "--gateway-url needs a worker token (EDGE_WORKER_TOKEN or --worker-token-file) to \
         present to the gateways"
    )]
    NoToken,
    #[error("--gateway-url must be an http:// or https:// URL")]
    BadGatewayUrl,
    #[error(
        "listening on {0}, an unspecified address: set --advertise-url to where the gateways \
         reach this worker"
    )]
    NoAdvertiseUrl(SocketAddr),
    #[error("--advertise-url must be http://host:port or https://host:port, with no path")]
    BadAdvertiseUrl,
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// Why one heartbeat failed.
#[derive(Debug, thiserror::Error)]
pub enum BeatError {
    #[error("no answer from the gateways")]
    Unreachable,
    #[error("the gateways answered {status} ({code})")]
    Refused { status: u16, code: String },
}

/// Sends this worker's heartbeats.
pub struct Registrar {
    client: reqwest::Client,
    endpoint: String,
    advertise: String,
    credential: HeaderValue,
    interval: Duration,
}

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrar")
            .field("endpoint", &self.endpoint)
            .field("advertise", &self.advertise)
            .finish_non_exhaustive()
    }
}

impl Registrar {
    /// The registrar `config` asks for (`None` without `--gateway-url`).
    /// `bound` is the address the listener got (its port may have been 0);
    /// `token` is the worker token itself.
    pub fn from_config(
        config: &Config,
        bound: SocketAddr,
        token: Option<&str>,
    ) -> Result<Option<Registrar>, RegisterError> {
        let Some(gateway) = &config.gateway_url else {
            return Ok(None);
        };
        let token = token.ok_or(RegisterError::NoToken)?;
        let gateway = reqwest::Url::parse(gateway).map_err(|_| RegisterError::BadGatewayUrl)?;
        if !matches!(gateway.scheme(), "http" | "https") || gateway.host_str().is_none() {
            return Err(RegisterError::BadGatewayUrl);
        }
        let endpoint = format!("{}/fleet/workers", gateway.as_str().trim_end_matches('/'));
        let advertise = match &config.advertise_url {
            Some(url) => wire::plain_base_url(url).ok_or(RegisterError::BadAdvertiseUrl)?,
            None if bound.ip().is_unspecified() => {
                return Err(RegisterError::NoAdvertiseUrl(bound));
            }
            None => format!("http://{bound}"),
        };
        let mut credential = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| RegisterError::NoToken)?;
        credential.set_sensitive(true);
        let client = reqwest::Client::builder()
            .timeout(BEAT_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| RegisterError::Client(e.to_string()))?;
        Ok(Some(Registrar {
            client,
            endpoint,
            advertise,
            credential,
            interval: Duration::from_millis(config.heartbeat_ms.max(50)),
        }))
    }

    /// The URL this worker advertises.
    pub fn advertised(&self) -> &str {
        &self.advertise
    }

    /// Sends one heartbeat carrying `load`.
    pub async fn beat(&self, load: LoadReport) -> Result<HeartbeatAck, BeatError> {
        let body = Heartbeat {
            url: self.advertise.clone(),
            load,
        };
        let response = self
            .client
            .post(&self.endpoint)
            .header(AUTHORIZATION, self.credential.clone())
            .json(&body)
            .send()
            .await
            .map_err(|_| BeatError::Unreachable)?;
        let status = response.status();
        if status.is_success() {
            return response
                .json::<HeartbeatAck>()
                .await
                .map_err(|_| BeatError::Unreachable);
        }
        let code = response
            .json::<wire::ErrorBody>()
            .await
            .ok()
            .and_then(|b| b.error.code)
            .unwrap_or_default();
        Err(BeatError::Refused {
            status: status.as_u16(),
            code,
        })
    }

    /// Beats every interval for as long as the process lives, logging only
    /// when the registration starts, fails or comes back.
    pub async fn run(self, state: AppState) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut registered = false;
        loop {
            tick.tick().await;
            match self.beat(crate::routes::load_report(&state)).await {
                Ok(ack) => {
                    if !registered {
                        tracing::info!(backend = %ack.backend, url = %self.advertise, "registered with the gateways");
                    }
                    registered = true;
                }
                Err(e) => {
                    if registered {
                        tracing::warn!(error = %e, "registration heartbeat failed; retrying");
                    } else {
                        tracing::debug!(error = %e, "registration heartbeat failed; retrying");
                    }
                    metrics::counter!("edge_heartbeat_failures_total").increment(1);
                    registered = false;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use axum::{Json, Router};
    use clap::Parser;

    use super::*;

    fn config(extra: &[&str]) -> Config {
        let mut args = vec!["edge-worker", "--model-path", "m.gguf"];
        args.extend_from_slice(extra);
        Config::parse_from(args)
    }

    fn bound() -> SocketAddr {
        "127.0.0.1:8181".parse().unwrap()
    }

    fn report() -> LoadReport {
        serde_json::from_value(serde_json::json!({
            "model": "m", "context_length": 2048,
            "active_sequences": 1, "waiting_sequences": 0,
            "max_running_sequences": 4, "max_waiting_sequences": 16,
            "prefill_tokens_per_s": null, "decode_tokens_per_s": null,
            "joules_per_prompt_token": null, "joules_per_output_token": null,
            "ready": true, "draining": false
        }))
        .unwrap()
    }

    #[test]
    fn settings_are_checked_before_anything_is_sent() {
        let none = Registrar::from_config(&config(&[]), bound(), Some("t")).unwrap();
        assert!(none.is_none(), "no --gateway-url, no registration");
        let gw = ["--gateway-url", "http://gateway:8080"];
        assert!(matches!(
            Registrar::from_config(&config(&gw), bound(), None),
            Err(RegisterError::NoToken)
        ));
        let r = Registrar::from_config(&config(&gw), bound(), Some("t"))
            .unwrap()
            .unwrap();
        assert_eq!(r.advertised(), "http://127.0.0.1:8181");
        assert_eq!(r.endpoint, "http://gateway:8080/fleet/workers");
        assert!(!format!("{r:?}").contains("Bearer"));
        let any: SocketAddr = "0.0.0.0:8181".parse().unwrap();
        assert!(matches!(
            Registrar::from_config(&config(&gw), any, Some("t")),
            Err(RegisterError::NoAdvertiseUrl(_))
        ));
        let advertised = [
            "--gateway-url",
            "http://gateway:8080/",
            "--advertise-url",
            "http://edge-1:8081/",
        ];
        let r = Registrar::from_config(&config(&advertised), any, Some("t"))
            .unwrap()
            .unwrap();
        assert_eq!(r.advertised(), "http://edge-1:8081");
        assert_eq!(r.endpoint, "http://gateway:8080/fleet/workers");
        for bad in ["http://edge-1:8081/v1", "ftp://edge-1", "http://u:p@edge-1"] {
            let args = ["--gateway-url", "http://gw", "--advertise-url", bad];
            assert!(
                matches!(
                    Registrar::from_config(&config(&args), any, Some("t")),
                    Err(RegisterError::BadAdvertiseUrl)
                ),
                "{bad}"
            );
        }
        let args = ["--gateway-url", "gateway:8080"];
        assert!(matches!(
            Registrar::from_config(&config(&args), bound(), Some("t")),
            Err(RegisterError::BadGatewayUrl)
        ));
    }

    type Seen = Arc<Mutex<Vec<(Option<String>, Heartbeat)>>>;

    /// A stand-in gateway that records heartbeats and accepts only `token`.
    async fn stand_in(token: &'static str) -> (String, Seen) {
        async fn take(
            State((seen, token)): State<(Seen, &'static str)>,
            headers: HeaderMap,
            Json(beat): Json<Heartbeat>,
        ) -> Result<Json<HeartbeatAck>, (StatusCode, Json<wire::ErrorBody>)> {
            let auth = headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_owned());
            let ok = auth.as_deref() == Some(format!("Bearer {token}").as_str());
            seen.lock().unwrap().push((auth, beat));
            if !ok {
                let body = wire::ErrorBody::new(
                    "no",
                    "authentication_error",
                    None,
                    "invalid_worker_token",
                );
                return Err((StatusCode::UNAUTHORIZED, Json(body)));
            }
            Ok(Json(HeartbeatAck {
                backend: "worker:x".into(),
                ttl_ms: 3000,
            }))
        }
        let seen = Seen::default();
        let app = Router::new()
            .route("/fleet/workers", post(take))
            .with_state((Arc::clone(&seen), token));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}"), seen)
    }

    #[tokio::test]
    async fn a_heartbeat_carries_the_url_the_load_and_the_token() {
        let (gw, seen) = stand_in("fleet-token").await;
        let r = Registrar::from_config(
            &config(&["--gateway-url", gw.as_str()]),
            bound(),
            Some("fleet-token"),
        )
        .unwrap()
        .unwrap();
        let ack = r.beat(report()).await.unwrap();
        assert_eq!(ack.backend, "worker:x");
        let seen = seen.lock().unwrap();
        let (auth, beat) = &seen[0];
        assert_eq!(auth.as_deref(), Some("Bearer fleet-token"));
        assert_eq!(beat.url, "http://127.0.0.1:8181");
        assert_eq!(beat.load, report());
    }

    #[tokio::test]
    async fn a_refused_or_missing_gateway_is_an_error_not_a_panic() {
        let (gw, _seen) = stand_in("fleet-token").await;
        let wrong =
            Registrar::from_config(&config(&["--gateway-url", gw.as_str()]), bound(), Some("x"))
                .unwrap()
                .unwrap();
        match wrong.beat(report()).await {
            Err(BeatError::Refused { status, code }) => {
                assert_eq!((status, code.as_str()), (401, "invalid_worker_token"));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Nothing listens on port 9 of loopback.
        let gone = Registrar::from_config(
            &config(&["--gateway-url", "http://127.0.0.1:9"]),
            bound(),
            Some("t"),
        )
        .unwrap()
        .unwrap();
        assert!(matches!(
            gone.beat(report()).await,
            Err(BeatError::Unreachable)
        ));
    }
}
