//! The worker token: who may use `/v1/*`.
//!
//! A worker listening on a LAN address would serve anyone who can reach it,
//! so with a token configured every `/v1/*` request (chat, models, the load
//! report) must carry `Authorization: Bearer <token>`, as the gateway sends
//! it; `/healthz`, `/readyz` and `/metrics` stay open for probes and
//! scrapers. Without a token the worker starts only on a loopback address,
//! or when told `--insecure-no-token`.
//!
//! The token comes from `EDGE_WORKER_TOKEN` or from the file named by
//! `--worker-token-file`, never from a flag's value (which `ps` and shell
//! history would show). Only its SHA-256 digest is kept, and a presented
//! token is compared by digest in constant time, so neither the
//! comparison's timing nor the process's memory gives the token away.

use std::env::VarError;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::ApiError;
use crate::AppState;

/// The environment variable holding the token itself.
pub const TOKEN_ENV: &str = "EDGE_WORKER_TOKEN";

/// A configured worker token, kept as its SHA-256 digest only.
pub struct WorkerToken {
    digest: [u8; 32],
}

impl WorkerToken {
    fn new(token: &str) -> Self {
        Self {
            digest: Sha256::digest(token.as_bytes()).into(),
        }
    }

    /// Whether `presented` is the token. Both sides are hashed to the same
    /// length and every byte is compared whatever the earlier ones were, so
    /// the time taken says nothing about how much of the token was right.
    pub fn matches(&self, presented: &str) -> bool {
        let presented: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        presented
            .iter()
            .zip(&self.digest)
            .fold(0u8, |diff, (a, b)| diff | (a ^ b))
            == 0
    }
}

impl fmt::Debug for WorkerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WorkerToken(..)")
    }
}

/// Why the worker will not start with this token configuration. No variant
/// carries the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the worker token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the worker token from {0} is empty")]
    Empty(String),
    #[error("the worker token from {0} must be printable ASCII without spaces")]
    Malformed(String),
    #[error("both EDGE_WORKER_TOKEN and --worker-token-file give a worker token; use one")]
    Ambiguous,
    #[error(
        "refusing to listen on {0} without a worker token: set EDGE_WORKER_TOKEN or \
         --worker-token-file, listen on a loopback address, or pass --insecure-no-token"
    )]
    Exposed(SocketAddr),
}

/// Reads the configured token, if any, and refuses a non-loopback listen
/// address without one unless `--insecure-no-token` says so.
pub fn configure(config: &Config) -> Result<Option<WorkerToken>, TokenError> {
    let token = read(config)?.map(|text| WorkerToken::new(&text));
    let exposed = !config.listen.ip().is_loopback();
    if token.is_none() && exposed {
        if !config.insecure_no_token {
            return Err(TokenError::Exposed(config.listen));
        }
        tracing::warn!(listen = %config.listen, "no worker token: /v1 is open to anyone who can reach this address");
    }
    Ok(token)
}

/// The token itself, from `EDGE_WORKER_TOKEN` or the token file, checked
/// and trimmed. Besides [`configure`], only the registration with the
/// gateways ([`crate::register`]) uses it, to present it to them.
pub fn read(config: &Config) -> Result<Option<String>, TokenError> {
    let from_env = match std::env::var(TOKEN_ENV) {
        // Set but empty counts as unset, as `${EDGE_WORKER_TOKEN:-}` in a
        // compose file leaves it; the loopback rule still applies.
        Ok(v) if v.trim().is_empty() => None,
        Ok(v) => Some(v),
        Err(VarError::NotPresent) => None,
        Err(VarError::NotUnicode(_)) => return Err(TokenError::Malformed(TOKEN_ENV.into())),
    };
    match (from_env, &config.worker_token_file) {
        (Some(_), Some(_)) => Err(TokenError::Ambiguous),
        (Some(text), None) => Ok(Some(parse(TOKEN_ENV, &text)?)),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
                path: path.clone(),
                source,
            })?;
            Ok(Some(parse(&path.display().to_string(), &text)?))
        }
        (None, None) => Ok(None),
    }
}

/// One line of text (a file's trailing newline is not part of the token).
fn parse(source: &str, text: &str) -> Result<String, TokenError> {
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty(source.into()));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Malformed(source.into()));
    }
    Ok(token.to_owned())
}

/// `Bearer <token>`, the scheme in any case.
fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// Middleware: with a token configured, `/v1/*` requests without it get 401
/// `invalid_worker_token` (with `WWW-Authenticate: Bearer`).
pub async fn require_token(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = &state.token else {
        return next.run(req).await;
    };
    let path = req.uri().path();
    if path != "/v1" && !path.starts_with("/v1/") {
        return next.run(req).await;
    }
    let allowed = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .is_some_and(|t| token.matches(t));
    if allowed {
        next.run(req).await
    } else {
        tracing::debug!(path, "refused: no valid worker token");
        ApiError::InvalidWorkerToken.into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_themselves() {
        let token = WorkerToken::new(&parse("test", "s3cret-token\n").unwrap());
        assert!(token.matches("s3cret-token"));
        for wrong in [
            "",
            "s3cret-toke",
            "s3cret-token ",
            "S3CRET-TOKEN",
            "s3cret-tokenx",
        ] {
            assert!(!token.matches(wrong), "{wrong:?}");
        }
        assert_eq!(format!("{token:?}"), "WorkerToken(..)");
    }

    #[test]
    fn bad_tokens_are_refused_without_echoing_them() {
        assert!(matches!(parse("f", " \n"), Err(TokenError::Empty(_))));
        let err = parse("f", "two words").err().unwrap();
        assert!(matches!(err, TokenError::Malformed(_)));
        assert!(!err.to_string().contains("words"));
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer"), None);
    }
}
