//! The OpenAPI document of the public API, served at `GET /openapi.json`.
//!
//! The schemas describe what the gateway itself checks and returns; the
//! chat request stays open (`additionalProperties`), since fields the
//! gateway does not know pass through to the upstream. The test suite runs
//! schemathesis against this document: every answer must match it.

#![allow(dead_code)]

use axum::response::IntoResponse;
use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cloud-edge inference gateway",
        description = "OpenAI-compatible chat completions, routed per request between on-premises \
                       edge workers and a cloud by a cost model over latency, energy, money and \
                       privacy. Confidential requests never leave the premises."
    ),
    paths(chat_completions, models, model, healthz, readyz, metrics, worker_heartbeat),
    modifiers(&BearerKey),
)]
pub struct ApiDoc;

struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for scheme in ["api_key", "worker_token"] {
            components.add_security_scheme(
                scheme,
                SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
            );
        }
    }
}

/// `GET /openapi.json`: the public API and the admin API.
pub async fn document() -> impl IntoResponse {
    Json(full())
}

/// The whole document (the admin API's part comes from its router).
#[must_use]
pub fn full() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(super::admin::api_doc());
    doc
}

/// A chat completion request. Only the fields the gateway reads are
/// described; any other field is passed to the upstream as sent, except
/// the ones that would steer it (`api_base`, `api_key`, ...), which are
/// removed.
#[derive(ToSchema)]
#[schema(as = ChatCompletionRequest)]
struct ChatRequest {
    /// A model id or alias (`auto`).
    #[schema(min_length = 1, max_length = 256, example = "auto")]
    model: String,
    #[schema(min_items = 1, example = json!([{"role": "user", "content": "Say hello."}]))]
    messages: Vec<Message>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    #[schema(minimum = 1)]
    max_tokens: Option<u32>,
    #[schema(minimum = 1)]
    max_completion_tokens: Option<u32>,
    /// Raises the request's privacy class (`metadata.privacy_class` too).
    metadata: Option<Metadata>,
}

#[derive(ToSchema)]
struct Message {
    role: String,
    /// A string or an array of content parts.
    #[schema(value_type = Object)]
    content: Option<serde_json::Value>,
}

#[derive(ToSchema)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(ToSchema)]
struct Metadata {
    privacy_class: Option<PrivacyClass>,
}

#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
enum PrivacyClass {
    Public,
    Internal,
    Confidential,
}

/// A whole answer, as the upstream sent it.
#[derive(ToSchema)]
struct ChatCompletion {
    id: String,
    object: String,
    model: String,
    choices: Vec<serde_json::Value>,
    usage: Option<serde_json::Value>,
}

#[derive(ToSchema)]
struct ModelList {
    object: String,
    data: Vec<Model>,
}

#[derive(ToSchema)]
struct Model {
    id: String,
    object: String,
    owned_by: String,
}

/// `{"error":{"message","type","param","code"}}`.
#[derive(ToSchema)]
pub(crate) struct Error {
    error: ErrorObject,
}

#[derive(ToSchema)]
pub(crate) struct ErrorObject {
    message: String,
    #[schema(rename = "type")]
    kind: String,
    param: Option<String>,
    code: Option<String>,
}

/// Create a chat completion: authenticated, classified, routed, proxied.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    request_body = ChatRequest,
    security(("api_key" = [])),
    responses(
        (status = 200, description = "The answer: JSON, or an SSE stream with `stream: true`",
            content(
                (ChatCompletion = "application/json"),
                (String = "text/event-stream"),
            )),
        (status = 400, description = "Malformed request, context too long, unsupported capability, or the upstream's own 400-class answer", body = Error),
        (status = 401, description = "Missing, unknown, revoked or expired key", body = Error),
        (status = 403, description = "The key lacks the `chat` scope", body = Error),
        (status = 404, description = "No backend serves the model", body = Error),
        (status = 408, description = "The body did not arrive in time", body = Error),
        (status = 413, description = "The body is too large", body = Error),
        (status = 415, description = "The upstream refused the media type", body = Error),
        (status = 422, description = "The upstream refused the request", body = Error),
        (status = 429, description = "Rate limit or budget, or too many unknown keys from this address", body = Error),
        (status = 502, description = "Every candidate backend failed", body = Error),
        (status = 503, description = "No private route, no backend available, or the gateway is at capacity", body = Error),
    )
)]
fn chat_completions() {}

/// The model ids and aliases the key may use.
#[utoipa::path(
    get,
    path = "/v1/models",
    security(("api_key" = [])),
    responses(
        (status = 200, body = ModelList),
        (status = 401, body = Error),
        (status = 403, body = Error),
        (status = 429, description = "Too many unknown keys from this address", body = Error),
        (status = 503, body = Error),
    )
)]
fn models() {}

/// One model id or alias the key may use; any other is 404
/// `model_not_found`, whether it exists or not.
#[utoipa::path(
    get,
    path = "/v1/models/{model}",
    params(("model" = String, Path, description = "A model id or alias; it may contain `/`.")),
    security(("api_key" = [])),
    responses(
        (status = 200, body = Model),
        (status = 400, body = Error),
        (status = 401, body = Error),
        (status = 403, body = Error),
        (status = 404, body = Error),
        (status = 429, description = "Too many unknown keys from this address", body = Error),
        (status = 503, body = Error),
    )
)]
fn model() {}

/// The process is up.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = String, content_type = "text/plain")))]
fn healthz() {}

/// The settings can be read and the ledger's backlog is not full; the
/// body says which, with the backlog (rows in memory and in the spill
/// file, the oldest row's age).
#[utoipa::path(
    get,
    path = "/readyz",
    responses(
        (status = 200, body = Object, content_type = "application/json"),
        (status = 503, body = Object, content_type = "application/json"),
    )
)]
fn readyz() {}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, body = String, content_type = "text/plain")))]
fn metrics() {}

/// An edge worker's heartbeat, by which it registers itself: its URL (an
/// on-premises host), models and load. Open only with the fleet's worker
/// token, and only where the gateway has one (404 otherwise); the answer
/// names the backend it is listed as and how long the listing lasts.
#[utoipa::path(
    post,
    path = "/fleet/workers",
    tag = "fleet",
    security(("worker_token" = [])),
    request_body(content = Object, content_type = "application/json"),
    responses(
        (status = 200, description = "Listed: `backend` and `ttl_ms`", body = Object),
        (status = 400, description = "Not a heartbeat", body = Error),
        (status = 401, description = "No valid worker token", body = Error),
        (status = 403, description = "A URL or model the fleet will not list", body = Error),
        (status = 404, description = "Registration is off (no worker token configured)", body = Error),
        (status = 408, description = "The body did not arrive in time", body = Error),
        (status = 413, description = "The body is too large", body = Error),
        (status = 429, description = "Too many unknown credentials from this address", body = Error),
        (status = 503, description = "The worker registry cannot be written", body = Error),
    )
)]
fn worker_heartbeat() {}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_document_lists_every_public_route_and_its_errors() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        for path in [
            "/v1/chat/completions",
            "/v1/models",
            "/v1/models/{model}",
            "/healthz",
            "/readyz",
            "/metrics",
            "/fleet/workers",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} missing");
        }
        let chat = &doc["paths"]["/v1/chat/completions"]["post"];
        for status in ["200", "400", "401", "404", "413", "429", "502", "503"] {
            assert!(chat["responses"][status].is_object(), "{status} missing");
        }
        let error = &doc["components"]["schemas"]["Error"];
        assert_eq!(
            error["properties"]["error"]["$ref"],
            "#/components/schemas/ErrorObject"
        );
        assert!(doc["components"]["schemas"]["ErrorObject"]["properties"]["type"].is_object());
        assert_eq!(
            doc["components"]["securitySchemes"]["api_key"]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn the_served_document_includes_the_admin_api_behind_its_own_token() {
        let doc = serde_json::to_value(full()).unwrap();
        let create = &doc["paths"]["/admin/api/keys"]["post"];
        assert_eq!(create["security"][0]["admin_token"], serde_json::json!([]));
        assert!(create["responses"]["401"].is_object());
        assert_eq!(
            doc["components"]["securitySchemes"]["admin_token"]["scheme"],
            "bearer"
        );
        assert!(doc["components"]["schemas"]["BackendAddArgs"].is_object());
        // Every admin operation may answer 429 to an address guessing.
        let mut operations = 0;
        for (path, item) in doc["paths"].as_object().unwrap() {
            if !path.starts_with("/admin/api") {
                continue;
            }
            for (method, operation) in item.as_object().unwrap() {
                operations += 1;
                assert_eq!(
                    operation["responses"]["429"]["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/Error",
                    "{method} {path}"
                );
            }
        }
        assert!(operations >= 20, "{operations} admin operations");
        let fleet = &doc["paths"]["/fleet/workers"]["post"];
        assert_eq!(fleet["security"][0]["worker_token"], serde_json::json!([]));
        for status in ["200", "401", "403", "404", "413"] {
            assert!(fleet["responses"][status].is_object(), "{status} missing");
        }
    }
}
