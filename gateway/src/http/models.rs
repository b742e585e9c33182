//! `GET /v1/models`: the model ids and aliases this key may use, and
//! `GET /v1/models/{model}`: one of them (the SDKs' `models.retrieve`).
//! A model the key may not use is answered like one that does not exist,
//! 404 `model_not_found`, so a key cannot probe the catalog beyond its
//! reach.
//!
//! "May use" follows the same rules as routing, minus live health: enabled
//! backends, and cloud-zone ones only when the tenant's policy allows the
//! cloud and the key's floor class is below confidential. An alias is
//! listed when at least one of its targets is.

use std::collections::BTreeSet;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::json;

use super::ApiError;
use crate::auth::{require_scope, Peer};
use crate::privacy::Class;
use crate::routing::{AliasTarget, NoRoute, NoRouteCode, Zone};
use crate::state::AppState;

pub async fn list(
    State(app): State<AppState>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    match models(&app, peer.map(|p| p.0), &headers).await {
        Ok(ids) => {
            let data: Vec<_> = ids.iter().map(|id| model_object(id)).collect();
            Json(json!({"object": "list", "data": data})).into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// The id is the rest of the path (model ids may hold `/`), decoded; the
/// key is checked before the path is looked at.
pub async fn retrieve(
    State(app): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    peer: Option<Extension<Peer>>,
    headers: HeaderMap,
) -> Response {
    let ids = match models(&app, peer.map(|p| p.0), &headers).await {
        Ok(ids) => ids,
        Err(e) => return e.into_response(),
    };
    match id {
        Ok(Path(id)) if ids.contains(&id) => Json(model_object(&id)).into_response(),
        Ok(_) => ApiError::NoRoute(NoRoute {
            code: NoRouteCode::ModelNotFound,
            excluded: Vec::new(),
        })
        .into_response(),
        Err(e) => ApiError::BadRequest {
            message: format!("Invalid path: {}.", e.body_text()),
            code: "invalid_path",
            param: None,
        }
        .into_response(),
    }
}

fn model_object(id: &str) -> serde_json::Value {
    json!({"id": id, "object": "model", "created": 0, "owned_by": "gateway"})
}

async fn models(
    app: &AppState,
    peer: Option<Peer>,
    headers: &HeaderMap,
) -> Result<BTreeSet<String>, ApiError> {
    let key = app.keys.authenticate(headers, peer).await?;
    require_scope(&key, "models").or_else(|_| require_scope(&key, "chat"))?;
    let tenant = app.catalog.tenant(&key.tenant_id).await?;
    let snapshot = app.catalog.snapshot().await?;
    let floor = key.default_class.max(tenant.policy.default_class);
    let cloud_ok = tenant.policy.allow_cloud && floor < Class::Confidential;
    let mut ids: BTreeSet<String> = snapshot
        .backends
        .iter()
        .filter(|b| b.enabled && (b.zone == Zone::OnPrem || cloud_ok))
        .flat_map(|b| b.models.iter().map(|m| m.public.clone()))
        .collect();
    let usable_any = !ids.is_empty();
    let aliases: Vec<String> = snapshot
        .aliases
        .iter()
        .filter(|a| match &a.target {
            AliasTarget::Any => usable_any,
            AliasTarget::Models(list) => list.iter().any(|m| ids.contains(m)),
        })
        .map(|a| a.name.clone())
        .collect();
    ids.extend(aliases);
    Ok(ids)
}
