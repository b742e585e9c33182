//! The admin API (`/admin/api`): its credential, every route's refusal of
//! a missing or tenant credential (enumerated from the OpenAPI document the
//! router is built from), what the CLI can do over HTTP, changes taking
//! effect on the next request, errors, and secrets kept out of answers and
//! logs. Run on SQLite (no change feed: the gateway must drop its own
//! caches) and on Postgres.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::doc_markdown,
    clippy::too_many_lines
)]

use crate::common;

use common::harness::{error_of, mock_cloud, test_config, Gateway};
use common::TestDb;
use gateway::config::Config;
use gateway::keys;
use secrecy::ExposeSecret;
use serde_json::{json, Value};

/// A gateway whose caches would hide a change for a minute: whatever is
/// seen at once was made visible by the admin API itself (or the change
/// feed), not by a TTL.
fn long_caches() -> Config {
    Config {
        key_cache_ms: 60_000,
        settings_cache_ms: 60_000,
        ..test_config()
    }
}

struct Admin<'a> {
    gw: &'a Gateway,
    token: String,
}

impl Admin<'_> {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .gw
            .client
            .request(method.parse().unwrap(), self.gw.url(path))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// A 4xx in OpenAI's shape with `code`.
    async fn refused(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        status: u16,
        code: &str,
    ) -> Value {
        let (got, v) = self.call(method, path, body).await;
        assert_eq!(got, status, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], code, "{method} {path}: {v}");
        for field in ["message", "type", "param"] {
            assert!(v["error"].get(field).is_some(), "{field} missing in {v}");
        }
        v
    }
}

async fn admin_token(gw: &Gateway) -> String {
    let created = gw.store().create_admin_token("ops").await.unwrap();
    created.plaintext.expose_secret().to_owned()
}

/// A dashboard session for admin `token`, and its cookie header value.
async fn dashboard_session(gw: &Gateway, token: &str) -> (gateway::store::CreatedSession, String) {
    let admin = gw
        .store()
        .active_admin_token(&keys::hash(token))
        .await
        .unwrap()
        .unwrap();
    let session = gw
        .store()
        .create_admin_session(&admin.id, 60_000)
        .await
        .unwrap();
    let cookie = format!(
        "{}={}",
        gateway::http::admin::dashboard::COOKIE,
        session.cookie.expose_secret()
    );
    (session, cookie)
}

/// Every path and method of the admin API, from `/openapi.json`, with
/// path parameters filled in.
async fn admin_routes(gw: &Gateway) -> Vec<(String, String)> {
    let doc: Value = gw
        .client
        .get(gw.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut routes = Vec::new();
    let param = regex::Regex::new(r"\{[^}]+\}").unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/admin/") {
            continue;
        }
        let filled = param.replace_all(path, "nothing-here").into_owned();
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                routes.push((method.to_uppercase(), filled.clone()));
            }
        }
    }
    routes
}

#[tokio::test]
async fn every_admin_route_refuses_a_missing_or_tenant_credential() {
    let gw = Gateway::start(common::sqlite().await, long_caches()).await;
    let (_, tenant_key) = common::harness::tenant_and_key(gw.store(), |_| {}).await;
    let token = admin_token(&gw).await;
    let revoked = gw.store().create_admin_token("old").await.unwrap();
    gw.store()
        .revoke_admin_token(&revoked.token.id)
        .await
        .unwrap();
    let revoked = revoked.plaintext.expose_secret().to_owned();

    let routes = admin_routes(&gw).await;
    // Tenants, keys (4), backends (5), aliases (3), policies (2), rules
    // (3), ledger (4): a document that lost its admin part fails here.
    assert!(
        routes.len() >= 22,
        "admin routes in the document: {routes:?}"
    );
    let credentials: [(&str, Option<String>); 5] = [
        ("none", None),
        ("tenant key", Some(format!("Bearer {tenant_key}"))),
        ("revoked admin token", Some(format!("Bearer {revoked}"))),
        ("admin token as basic", Some(format!("Basic {token}"))),
        ("garbage", Some("Bearer gwadmin-0000".to_owned())),
    ];
    for (method, path) in &routes {
        for (what, auth) in &credentials {
            let mut req = gw
                .client
                .request(method.parse().unwrap(), gw.url(path))
                .header("content-type", "application/json")
                .body("{}");
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.unwrap();
            assert_eq!(
                r.headers()
                    .get("www-authenticate")
                    .map(|v| v.to_str().unwrap()),
                Some("Bearer"),
                "{method} {path} with {what}"
            );
            let (status, body) = error_of(r).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (401, Some("invalid_admin_token")),
                "{method} {path} with {what}: {body}"
            );
        }
        // The route exists: with the token it answers for itself (a 404
        // here is the API's `not_found`, not the router's unknown URL).
        let r = gw
            .client
            .request(method.parse().unwrap(), gw.url(path))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        assert!(
            status != 401 && status != 405 && body["error"]["code"] != "unknown_url",
            "{method} {path} with the admin token: {status} {body}"
        );
    }
}

const CLOUD_KEY: &str = "sk-canary-cloud-0f1e2d3c4b5a69788796";

async fn round_trip(db: TestDb) {
    let captured = common::logs::capture();
    // The cloud backend's credential, named by `api_key_env` only.
    std::env::set_var("MOCK_CLOUD_KEY", CLOUD_KEY);
    let cloud = mock_cloud().await;
    let gw = Gateway::start(db, long_caches()).await;
    let token = admin_token(&gw).await;
    let admin = Admin {
        gw: &gw,
        token: token.clone(),
    };

    // Tenants: created, listed, a duplicate is a conflict, bad input a 400.
    admin
        .ok("POST", "/admin/api/tenants", Some(json!({"name": "acme"})))
        .await;
    admin
        .refused(
            "POST",
            "/admin/api/tenants",
            Some(json!({"name": "acme"})),
            409,
            "conflict",
        )
        .await;
    admin
        .refused(
            "POST",
            "/admin/api/tenants",
            Some(json!({"name": ""})),
            400,
            "invalid_request_body",
        )
        .await;
    admin
        .refused(
            "POST",
            "/admin/api/tenants",
            Some(json!({"nom": "x"})),
            400,
            "invalid_request_body",
        )
        .await;
    // A name shaped like a tenant id would stand for another tenant.
    let acme_id = admin.ok("GET", "/admin/api/tenants", None).await["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for name in [json!(acme_id), json!("a\u{0}b"), json!("x".repeat(129))] {
        admin
            .refused(
                "POST",
                "/admin/api/tenants",
                Some(json!({ "name": name })),
                400,
                "invalid_request_body",
            )
            .await;
    }
    let (status, v) = {
        let r = gw
            .client
            .post(gw.url("/admin/api/tenants"))
            .bearer_auth(&token)
            .body("{not json")
            .send()
            .await
            .unwrap();
        error_of(r).await
    };
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (400, Some("invalid_request_body"))
    );
    let tenants = admin.ok("GET", "/admin/api/tenants", None).await;
    assert_eq!(tenants["data"][0]["name"], "acme");

    // Backends: the CLI's checks, the same messages.
    let url = format!("http://{}", cloud.addr());
    let cloud_backend = json!({
        "name": "cloud", "kind": "cloud", "url": url, "models": ["m=cloud-model"],
        "price_in": 0.5, "price_out": 1.5, "api_key_env": "MOCK_CLOUD_KEY",
    });
    let mut bad = cloud_backend.clone();
    bad["api_key_env"] = json!("GATEWAY_DATABASE_URL");
    admin
        .refused(
            "POST",
            "/admin/api/backends",
            Some(bad),
            400,
            "invalid_request_body",
        )
        .await;
    let mut bad = cloud_backend.clone();
    bad["api_key_env"] = json!("sk-live-not-a-name");
    admin
        .refused(
            "POST",
            "/admin/api/backends",
            Some(bad),
            400,
            "invalid_request_body",
        )
        .await;
    // Whatever an admin token may store: only variables named as cloud
    // keys (not PATH, a database password or the worker token, which would
    // go out as a bearer key to a URL of the holder's choosing), URLs
    // without credentials, queries, line breaks or other schemes, finite
    // figures, names without control characters.
    let long_name = "n".repeat(200);
    for (field, value) in [
        ("api_key_env", json!("PATH")),
        ("api_key_env", json!("EDGE_WORKER_TOKEN")),
        ("api_key_env", json!("AWS_SECRET_ACCESS_KEY")),
        ("url", json!("file:///etc/passwd")),
        ("url", json!("gopher://127.0.0.1:6379/_FLUSHALL")),
        ("url", json!("https://user:pass@api.example.com/v1")),
        ("url", json!("https://api.example.com/v1?api_key=SECRET123")),
        ("url", json!("https://api.example.com/v1#x")),
        ("url", json!("https://api.example.com/v1\r\nX-Evil: 1")),
        ("price_in", json!(1e308)),
        ("rtt_ms", json!(2e9)),
        ("name", json!("nul\u{0}name")),
        ("name", json!("bidi\u{202e}name")),
        ("name", json!(long_name)),
    ] {
        let mut bad = cloud_backend.clone();
        bad[field] = value;
        admin
            .refused(
                "POST",
                "/admin/api/backends",
                Some(bad),
                400,
                "invalid_request_body",
            )
            .await;
    }
    let mut bad = cloud_backend.clone();
    bad["zone"] = json!("on-prem");
    let v = admin
        .refused(
            "POST",
            "/admin/api/backends",
            Some(bad),
            400,
            "invalid_request_body",
        )
        .await;
    assert!(
        v["error"]["message"].as_str().unwrap().contains("on-prem"),
        "{v}"
    );
    let mut bad = cloud_backend.clone();
    bad["name"] = json!("worker:10.0.0.1:80");
    admin
        .refused(
            "POST",
            "/admin/api/backends",
            Some(bad),
            400,
            "invalid_request_body",
        )
        .await;
    let mut bad = cloud_backend.clone();
    bad["models"] = json!(["=x"]);
    admin
        .refused(
            "POST",
            "/admin/api/backends",
            Some(bad),
            400,
            "invalid_request_body",
        )
        .await;
    let mut bad = cloud_backend.clone();
    bad["api_key"] = json!("sk-live-123");
    admin
        .refused(
            "POST",
            "/admin/api/backends",
            Some(bad),
            400,
            "invalid_request_body",
        )
        .await;
    let edge_public =
        json!({"name": "edge", "kind": "edge", "url": "http://203.0.113.9:8081", "models": ["m"]});
    admin
        .refused(
            "POST",
            "/admin/api/backends",
            Some(edge_public),
            400,
            "invalid_request_body",
        )
        .await;
    let stored = admin
        .ok("POST", "/admin/api/backends", Some(cloud_backend.clone()))
        .await;
    assert_eq!(
        (stored["rtt_ms"].as_f64(), stored["context_length"].as_u64()),
        (Some(1.0), Some(8192)),
        "the CLI's defaults: {stored}"
    );
    admin
        .refused(
            "POST",
            "/admin/api/backends",
            Some(cloud_backend),
            409,
            "conflict",
        )
        .await;
    admin
        .ok(
            "PUT",
            "/admin/api/aliases/auto",
            Some(json!({"models": ["m"]})),
        )
        .await;
    // Empty, pointing at itself, or hiding a model a backend serves.
    for (alias, models) in [
        ("auto", json!([])),
        ("loop", json!(["loop"])),
        ("m", json!(["cloud-model"])),
    ] {
        admin
            .refused(
                "PUT",
                &format!("/admin/api/aliases/{alias}"),
                Some(json!({ "models": models })),
                400,
                "invalid_request_body",
            )
            .await;
    }

    // Keys: the secret is in the creation's answer only.
    let made = admin
        .ok(
            "POST",
            "/admin/api/keys",
            Some(json!({"tenant": "acme", "rpm": 100})),
        )
        .await;
    let secret = made["api_key"].as_str().unwrap().to_owned();
    let key_id = made["key"]["id"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("gw-"));
    admin
        .refused(
            "POST",
            "/admin/api/keys",
            Some(json!({"tenant": "nobody"})),
            404,
            "not_found",
        )
        .await;
    admin
        .refused(
            "POST",
            "/admin/api/keys",
            Some(json!({"tenant": "acme", "budget": -1})),
            400,
            "invalid_request_body",
        )
        .await;
    admin
        .refused(
            "POST",
            "/admin/api/keys",
            Some(json!({"tenant": "acme", "class": "secret"})),
            400,
            "invalid_request_body",
        )
        .await;
    // A limit of 0 would read as none; scopes are the endpoints' own.
    for body in [
        json!({"tenant": "acme", "rpm": 0}),
        json!({"tenant": "acme", "tpm": 0}),
        json!({"tenant": "acme", "scopes": ["admin"]}),
    ] {
        admin
            .refused(
                "POST",
                "/admin/api/keys",
                Some(body),
                400,
                "invalid_request_body",
            )
            .await;
    }
    let chat =
        json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    let r = gw.chat(&secret, &chat).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // Limits: rpm 1 applies to the very next request (the key is cached
    // for a minute, so only the API's own invalidation can explain it).
    let updated = admin
        .ok(
            "PATCH",
            &format!("/admin/api/keys/{key_id}"),
            Some(json!({"rpm": 1, "budget": 5.0})),
        )
        .await;
    assert_eq!(
        (
            updated["requests_per_min"].as_u64(),
            updated["budget_usd"].as_f64()
        ),
        (Some(1), Some(5.0))
    );
    assert_eq!(gw.chat(&secret, &chat).await.status(), 200);
    let (status, v) = error_of(gw.chat(&secret, &chat).await).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (429, Some("rate_limit_exceeded"))
    );
    let cleared = admin
        .ok(
            "PATCH",
            &format!("/admin/api/keys/{key_id}"),
            Some(json!({"rpm": null})),
        )
        .await;
    assert_eq!(
        (
            cleared["requests_per_min"].clone(),
            cleared["budget_usd"].as_f64()
        ),
        (Value::Null, Some(5.0))
    );
    assert_eq!(gw.chat(&secret, &chat).await.status(), 200);
    admin
        .refused(
            "PATCH",
            &format!("/admin/api/keys/{key_id}"),
            Some(json!({})),
            400,
            "invalid_request_body",
        )
        .await;
    admin
        .refused(
            "PATCH",
            "/admin/api/keys/no-such-key",
            Some(json!({"rpm": 3})),
            404,
            "not_found",
        )
        .await;

    // Policies and privacy rules: validated as by the CLI.
    // Negative, or so large that every score would be infinite.
    for body in [
        json!({"w_cost": -1.0}),
        json!({"w_latency": 1e308}),
        json!({"latency_slo_ms": 1e300}),
    ] {
        admin
            .refused(
                "PATCH",
                "/admin/api/policies/acme",
                Some(body),
                400,
                "invalid_request_body",
            )
            .await;
    }
    admin
        .refused(
            "PATCH",
            "/admin/api/policies/nobody",
            Some(json!({"w_cost": 1.0})),
            404,
            "not_found",
        )
        .await;
    let p = admin
        .ok(
            "PATCH",
            "/admin/api/policies/acme",
            Some(json!({"w_cost": 2.0, "allow_cloud": false})),
        )
        .await;
    assert_eq!(
        (
            p["policy"]["w_cost"].as_f64(),
            p["policy"]["w_latency"].as_f64()
        ),
        (Some(2.0), Some(1.0))
    );
    // The cloud is now off for the tenant: its next request has no route.
    let (status, v) = error_of(gw.chat(&secret, &chat).await).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (503, Some("no_backend_available")),
        "{v}"
    );
    admin
        .ok(
            "PATCH",
            "/admin/api/policies/acme",
            Some(json!({"allow_cloud": true})),
        )
        .await;
    assert_eq!(gw.chat(&secret, &chat).await.status(), 200);
    admin
        .refused(
            "POST",
            "/admin/api/privacy-rules",
            Some(json!({"name": "x", "pattern": "(", "class": "internal"})),
            400,
            "invalid_request_body",
        )
        .await;
    admin
        .refused(
            "POST",
            "/admin/api/privacy-rules",
            Some(json!({"name": "x", "pattern": "a"})),
            400,
            "invalid_request_body",
        )
        .await;
    admin
        .refused(
            "POST",
            "/admin/api/privacy-rules",
            Some(json!({"name": "nope", "builtin": true})),
            400,
            "invalid_request_body",
        )
        .await;
    let rule = admin.ok("POST", "/admin/api/privacy-rules", Some(json!({"name": "project", "pattern": "BLUEBIRD", "class": "confidential", "tenant": "acme"}))).await;
    // The rule classifies the next request: confidential, and no on-prem
    // backend exists.
    let secret_chat = json!({"model": "auto", "messages": [{"role": "user", "content": "about BLUEBIRD"}], "max_tokens": 4});
    let (status, v) = error_of(gw.chat(&secret, &secret_chat).await).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (503, Some("privacy_route_unavailable"))
    );
    admin
        .ok(
            "DELETE",
            &format!("/admin/api/privacy-rules/{}", rule["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(gw.chat(&secret, &secret_chat).await.status(), 200);

    // Backends off and on, on the next request.
    admin
        .ok("POST", "/admin/api/backends/cloud/disable", None)
        .await;
    let (status, _) = error_of(gw.chat(&secret, &chat).await).await;
    assert_eq!(status, 503);
    admin
        .ok("POST", "/admin/api/backends/cloud/enable", None)
        .await;
    assert_eq!(gw.chat(&secret, &chat).await.status(), 200);
    admin
        .refused(
            "POST",
            "/admin/api/backends/nothing/enable",
            None,
            404,
            "not_found",
        )
        .await;

    // Ledger: rows, one by id, totals and series.
    gw.state.ledger.flush().await;
    let rows = admin
        .ok(
            "GET",
            "/admin/api/ledger?tenant=acme&status=ok&limit=3",
            None,
        )
        .await;
    let rows = rows["data"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(rows
        .iter()
        .all(|r| r["backend"] == "cloud" && r["status"] == "ok"));
    let id = rows[0]["id"].as_str().unwrap();
    let one = admin
        .ok("GET", &format!("/admin/api/ledger/rows/{id}"), None)
        .await;
    assert_eq!(one["decision"]["chosen"]["backend"], "cloud");
    let totals = admin
        .ok("GET", "/admin/api/ledger/totals?tenant=acme", None)
        .await;
    let ok = totals["by_status"]["ok"].as_u64().unwrap();
    assert_eq!(ok, 6, "{totals}");
    assert_eq!(
        totals["by_zone"]["cloud"]["requests"].as_u64(),
        Some(ok),
        "{totals}"
    );
    assert!(totals["usd"].as_f64().unwrap() > 0.0, "{totals}");
    let by_status: u64 = totals["by_status"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(totals["requests"].as_u64(), Some(by_status), "{totals}");
    let series = admin
        .ok("GET", "/admin/api/ledger/series?bucket_ms=3600000", None)
        .await;
    assert!(
        series["data"][0]["by_zone"]["cloud"]["requests"]
            .as_u64()
            .unwrap()
            >= ok
    );
    admin
        .refused(
            "GET",
            "/admin/api/ledger?class=secret",
            None,
            400,
            "invalid_query",
        )
        .await;
    admin
        .refused(
            "GET",
            "/admin/api/ledger?limit=many",
            None,
            400,
            "invalid_query",
        )
        .await;
    admin
        .refused(
            "GET",
            "/admin/api/ledger/series?bucket_ms=1",
            None,
            400,
            "invalid_query",
        )
        .await;
    admin
        .refused("GET", "/admin/api/ledger/rows/none", None, 404, "not_found")
        .await;
    // A path segment that is not UTF-8 once decoded: 400 in the API's shape.
    admin
        .refused(
            "POST",
            "/admin/api/keys/%FF/revoke",
            None,
            400,
            "invalid_path",
        )
        .await;

    // Revocation: refused from the next request on.
    admin
        .ok("POST", &format!("/admin/api/keys/{key_id}/revoke"), None)
        .await;
    let (status, _) = error_of(gw.chat(&secret, &chat).await).await;
    assert_eq!(status, 401);

    // Secrets: listings show neither the key nor its hash; no answer but
    // the creation showed the key; the admin token is in no answer and no
    // log line, nor is the key.
    let keys = admin
        .ok("GET", "/admin/api/keys?tenant=acme", None)
        .await
        .to_string();
    let backends = admin
        .ok("GET", "/admin/api/backends", None)
        .await
        .to_string();
    let ledger = admin
        .ok("GET", "/admin/api/ledger?limit=1000", None)
        .await
        .to_string();
    for listing in [&keys, &backends, &ledger] {
        assert!(!listing.contains(&secret[3..]), "key in {listing}");
        assert!(
            !listing.contains(&keys::hash(&secret)),
            "key hash in {listing}"
        );
        assert!(!listing.contains(&token[8..]), "admin token in {listing}");
        assert!(!listing.contains(CLOUD_KEY), "cloud key in {listing}");
    }
    gw.state.ledger.flush().await;
    let logged = captured.text();
    assert!(
        logged.contains("admin change"),
        "the audit lines are logged"
    );
    for (what, secret) in [
        ("admin token", &token[8..]),
        ("key", &secret[3..]),
        ("cloud key", CLOUD_KEY),
    ] {
        assert!(!logged.contains(secret), "{what} in the logs");
    }
}

#[tokio::test]
async fn round_trip_on_sqlite() {
    round_trip(common::sqlite().await).await;
}

#[tokio::test]
async fn round_trip_on_postgres() {
    round_trip(common::postgres().await).await;
}

#[tokio::test]
async fn admin_tokens_come_from_the_cli_and_revoking_one_ends_it() {
    let gw = Gateway::start(common::sqlite().await, test_config()).await;
    let mut out = Vec::new();
    gateway::admin_cli::run(
        gw.store(),
        gateway::admin_cli::AdminCommand::AdminToken(
            gateway::admin_cli::AdminTokenCommand::Create { name: "ci".into() },
        ),
        &mut out,
    )
    .await
    .unwrap();
    let printed: Value = serde_json::from_slice(&out).unwrap();
    let token = printed["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with(keys::ADMIN_TOKEN_PREFIX));
    let id = printed["admin_token"]["id"].as_str().unwrap().to_owned();
    let listed = serde_json::to_string(&gw.store().list_admin_tokens().await.unwrap()).unwrap();
    assert!(!listed.contains(&token[8..]) && !listed.contains(&keys::hash(&token)));

    let get = || {
        gw.client
            .get(gw.url("/admin/api/tenants"))
            .bearer_auth(&token)
            .send()
    };
    assert_eq!(get().await.unwrap().status(), 200);
    gateway::admin_cli::run(
        gw.store(),
        gateway::admin_cli::AdminCommand::AdminToken(
            gateway::admin_cli::AdminTokenCommand::Revoke { id },
        ),
        &mut Vec::new(),
    )
    .await
    .unwrap();
    assert_eq!(get().await.unwrap().status(), 401);
}

/// Every dashboard page and action, from the table the dashboard's router
/// is built from: without a session a page sends the browser to the
/// sign-in form and an action is refused, whatever else is presented (a
/// tenant key as bearer or as the cookie, an admin token as bearer: the
/// dashboard takes only its session). With a session every page renders,
/// and an action without the session's CSRF token, or from another origin,
/// is refused.
#[tokio::test]
async fn every_dashboard_route_needs_a_session_and_forms_need_its_csrf_token() {
    use gateway::http::admin::dashboard::{protected_routes, COOKIE};
    let gw = Gateway::start(common::sqlite().await, long_caches()).await;
    let (_, tenant_key) = common::harness::tenant_and_key(gw.store(), |_| {}).await;
    let token = admin_token(&gw).await;
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let routes = protected_routes();
    assert!(routes.len() >= 20, "{routes:?}");
    let param = regex::Regex::new(r"\{[^}]+\}").unwrap();
    let presented: [(&str, &str, String); 4] = [
        ("nothing", "x-nothing", String::new()),
        (
            "a tenant key",
            "authorization",
            format!("Bearer {tenant_key}"),
        ),
        (
            "an admin token as bearer",
            "authorization",
            format!("Bearer {token}"),
        ),
        (
            "a tenant key as the cookie",
            "cookie",
            format!("{COOKIE}={tenant_key}"),
        ),
    ];
    for (method, path) in &routes {
        let url = gw.url(&param.replace_all(path, "nothing-here"));
        for (what, header, value) in &presented {
            let r = no_redirects
                .request(method.clone(), &url)
                .header(*header, value)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("csrf=x")
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            if method == reqwest::Method::GET {
                assert_eq!(status, 303, "{method} {path} with {what}");
                assert_eq!(r.headers()["location"], "/admin/login");
            } else {
                let (status, body) = error_of(r).await;
                assert_eq!(
                    (status, body["error"]["code"].as_str()),
                    (401, Some("invalid_admin_token")),
                    "{method} {path} with {what}"
                );
            }
        }
    }

    // With a session: every page renders; actions need the CSRF token.
    let (session, cookie) = dashboard_session(&gw, &token).await;
    for (method, path) in routes
        .iter()
        .filter(|(m, p)| m == reqwest::Method::GET && *p != "/admin")
    {
        let r = no_redirects
            .get(gw.url(path))
            .header("cookie", &cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{method} {path}");
        let csp = r.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe"),
            "{csp}"
        );
        let html = r.text().await.unwrap();
        assert!(
            html.contains(&session.csrf),
            "{path}: forms carry the CSRF token"
        );
        assert!(
            !html.contains(&token[8..]),
            "{path}: the admin token is shown"
        );
    }
    let post = |body: String, origin: Option<&'static str>| {
        let mut req = no_redirects
            .post(gw.url("/admin/tenants"))
            .header("cookie", &cookie)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(o) = origin {
            req = req.header("origin", o);
        }
        req.send()
    };
    for (what, body, origin) in [
        ("no token", "name=a".to_owned(), None),
        ("a wrong token", "name=a&csrf=nope".to_owned(), None),
        (
            "another origin",
            format!("name=a&csrf={}", session.csrf),
            Some("http://evil.example"),
        ),
    ] {
        let (status, v) = error_of(post(body, origin).await.unwrap()).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (403, Some("csrf_check_failed")),
            "{what}"
        );
    }
    assert!(gw.store().find_tenant("a").await.unwrap().is_none());
    let r = post(format!("name=a&csrf={}", session.csrf), None)
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    assert!(gw.store().find_tenant("a").await.unwrap().is_some());

    // Revoking the token ends its sessions.
    let admin = gw
        .store()
        .active_admin_token(&keys::hash(&token))
        .await
        .unwrap()
        .unwrap();
    gw.store().revoke_admin_token(&admin.id).await.unwrap();
    let r = no_redirects
        .get(gw.url("/admin/keys"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
}

/// Every route that reads a body (the admin API, the dashboard's forms and
/// sign-in, worker heartbeats) refuses a declared length over its limit
/// with 413 before reading any of it, and before answering
/// `Expect: 100-continue`; a body that does not arrive gets 408.
#[tokio::test]
async fn every_body_is_bounded_in_size_and_time_before_it_is_read() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const WORKER_TOKEN: &str = "worker-token-for-body-limits";
    let gw = Gateway::start(
        common::sqlite().await,
        Config {
            worker_token: Some(secrecy::SecretString::from(WORKER_TOKEN)),
            body_read_timeout_ms: 300,
            ..long_caches()
        },
    )
    .await;
    let token = admin_token(&gw).await;
    let (_, cookie) = dashboard_session(&gw, &token).await;
    let addr = gw
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let routes: [(&str, String, &str); 4] = [
        (
            "/admin/api/tenants",
            format!("Authorization: Bearer {token}\r\n"),
            "application/json",
        ),
        (
            "/admin/tenants",
            format!("Cookie: {cookie}\r\n"),
            "application/x-www-form-urlencoded",
        ),
        (
            "/admin/login",
            String::new(),
            "application/x-www-form-urlencoded",
        ),
        (
            "/fleet/workers",
            format!("Authorization: Bearer {WORKER_TOKEN}\r\n"),
            "application/json",
        ),
    ];
    for (path, credential, content_type) in &routes {
        // Headers only, the body never sent: the answer comes at once and
        // the connection closes.
        let mut raw = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{credential}Content-Type: {content_type}\r\n\
             Expect: 100-continue\r\nContent-Length: 10485760\r\n\r\n"
        );
        raw.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("{path}: not answered and closed within 5 s"))
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 413"), "{path}: {answer}");
        assert!(!answer.contains("100 Continue"), "{path}: {answer}");
        assert!(answer.contains("request_too_large"), "{path}: {answer}");

        // A short body declared, a part of it sent, then nothing: 408.
        let mut raw = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{credential}Content-Type: {content_type}\r\n\
             Content-Length: 100\r\n\r\n{{\"na"
        );
        raw.write_all(head.as_bytes()).await.unwrap();
        let mut status = [0u8; 12];
        tokio::time::timeout(Duration::from_secs(5), raw.read_exact(&mut status))
            .await
            .unwrap_or_else(|_| panic!("{path}: a stalled body not answered within 5 s"))
            .unwrap();
        assert_eq!(&status, b"HTTP/1.1 408", "{path}");
    }
    gw.shutdown().await;
}
