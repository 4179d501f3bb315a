//! Authorization of the HTTP API (§6.8): bearer JWTs, admin scopes, a static ACL, 404 on failure.

mod common;

use auth::{JwtKey, Secret};
use common::*;

const SECRET: &str = "integration-secret";

fn token(scopes: &[&str], user: &str) -> String {
    hs256_token(SECRET, scopes, user)
}

async fn start_with_auth() -> (Running, std::path::PathBuf) {
    // One file per call: tests run in parallel and each removes its own file when done.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let acl = std::env::temp_dir().join(format!("log-cache-acl-{}-{n}.toml", std::process::id()));
    std::fs::write(&acl, "[sources]\nalice = [\"app-a\"]\n").expect("writes acl");
    let mut config = test_config();
    config.auth.enabled = true;
    config.auth.jwt_keys = vec![JwtKey { algorithm: "HS256".into(), key: Secret(SECRET.into()) }];
    config.auth.acl_file = Some(acl.clone());
    (start(config).await, acl)
}

#[tokio::test]
async fn reads_need_a_token_allowed_for_the_source() {
    let (cache, acl) = start_with_auth().await;
    cache.send(vec![log_envelope("app-a", 1, "a"), log_envelope("app-b", 2, "b")]).await;
    let alice = token(&["openid"], "alice");
    let admin = token(&["logs.admin"], "root");

    let read = |source: &str| cache.http_url(&format!("/api/v1/read/{source}?start_time=0"));
    assert_eq!(get(&read("app-a"), &[]).await.0, 404, "no token");
    assert_eq!(get(&read("app-a"), &[("authorization", "bearer nonsense")]).await.0, 404);
    let (status, _, body) = get(&read("app-b"), &[("authorization", alice.as_str())]).await;
    assert_eq!((status, body.as_str()), (404, ""), "not in alice's ACL");
    let (status, _, body) = get(&read("app-a"), &[("authorization", alice.as_str())]).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"source_id\":\"app-a\""), "{body}");
    assert_eq!(get(&read("app-b"), &[("authorization", admin.as_str())]).await.0, 200);

    // Info needs no token.
    assert_eq!(get(&cache.http_url("/api/v1/info"), &[]).await.0, 200);
    std::fs::remove_file(acl).ok();
}

#[tokio::test]
async fn wrong_methods_are_404_behind_auth_as_anything_else() {
    let (cache, acl) = start_with_auth().await;
    cache.send(vec![log_envelope("app-a", 1, "a")]).await;
    let admin = token(&["logs.admin"], "root");
    let auth = [("authorization", admin.as_str())];
    for (method, path) in [("POST", "/api/v1/read/app-a"), ("DELETE", "/api/v1/meta"), ("PUT", "/api/v1/info")] {
        let (status, _, body) = request(method, &cache.http_url(path), &auth, "").await;
        assert_eq!((status, body.as_str()), (404, ""), "{method} {path}");
    }
    // The same token and paths with the right method are served.
    assert_eq!(get(&cache.http_url("/api/v1/read/app-a?start_time=0"), &auth).await.0, 200);
    assert_eq!(get(&cache.http_url("/api/v1/meta"), &auth).await.0, 200);
    std::fs::remove_file(acl).ok();
}

#[tokio::test]
async fn meta_is_filtered_and_camel_cased_for_non_admins() {
    let (cache, acl) = start_with_auth().await;
    cache.send(vec![log_envelope("app-a", 5, "a"), log_envelope("app-b", 6, "b")]).await;
    let (status, _, body) =
        get(&cache.http_url("/api/v1/meta"), &[("authorization", token(&[], "alice").as_str())]).await;
    assert_eq!(status, 200);
    assert_eq!(body, "{\"meta\":{\"app-a\":{\"count\":\"1\",\"oldestTimestamp\":\"5\",\"newestTimestamp\":\"5\"}}}\n");
    let (_, _, body) =
        get(&cache.http_url("/api/v1/meta"), &[("authorization", token(&["doppler.firehose"], "x").as_str())]).await;
    assert!(body.contains("app-a") && body.contains("app-b"), "{body}");
    std::fs::remove_file(acl).ok();
}

#[tokio::test]
async fn queries_must_name_allowed_source_ids() {
    let (cache, acl) = start_with_auth().await;
    let alice = token(&[], "alice");
    let auth = [("authorization", alice.as_str())];
    let (status, _, body) = get(&cache.http_url("/api/v1/query?query=up"), &auth).await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        "{\"status\":\"error\",\"errorType\":\"bad_data\",\"error\":\"query does not request any source_ids\"}\n"
    );
    let (status, _, _) = get(&cache.http_url("/api/v1/query?query=up%7Bsource_id%3D%22app-b%22%7D"), &auth).await;
    assert_eq!(status, 404);
    let (status, _, body) = get(&cache.http_url("/api/v1/query?query=up%7Bsource_id%3D%22app-a%22%7D"), &auth).await;
    assert_eq!(status, 200, "{body}");
    std::fs::remove_file(acl).ok();
}

/// A Cloud-Controller-style API: a caller whose bearer token is forwarded may see app `cc-app` and
/// service instance `cc-si`; nothing else exists.
async fn fake_cloud_controller() -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use axum::extract::Path;
    use axum::http::{HeaderMap, StatusCode};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let allowed = |headers: &HeaderMap| {
        headers.get("authorization").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("bearer ey"))
    };
    let counter = calls.clone();
    let app = axum::Router::new()
        .route(
            "/v3/apps/{id}",
            axum::routing::get(move |Path(id): Path<String>, headers: HeaderMap| {
                counter.fetch_add(1, Ordering::Relaxed);
                async move {
                    if allowed(&headers) && id == "cc-app" {
                        StatusCode::OK
                    } else {
                        StatusCode::NOT_FOUND
                    }
                }
            }),
        )
        .route(
            "/v3/service_instances/{id}",
            axum::routing::get(move |Path(id): Path<String>, headers: HeaderMap| async move {
                if allowed(&headers) && id == "cc-si" {
                    StatusCode::OK
                } else {
                    StatusCode::NOT_FOUND
                }
            }),
        );
    let (listener, addr) = listener().await;
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, calls)
}

#[tokio::test]
async fn cloud_controller_decides_for_non_admins_and_is_cached() {
    let (cc, calls) = fake_cloud_controller().await;
    let mut config = test_config();
    config.auth.enabled = true;
    config.auth.jwt_keys = vec![JwtKey { algorithm: "HS256".into(), key: Secret(SECRET.into()) }];
    config.auth.cc_url = Some(format!("http://{cc}"));
    config.auth.allow_insecure_http = true;
    let cache = start(config).await;
    cache
        .send(vec![log_envelope("cc-app", 1, "a"), log_envelope("cc-si", 2, "b"), log_envelope("other", 3, "c")])
        .await;
    let user = token(&["cloud_controller.read"], "carol");
    let auth = [("authorization", user.as_str())];

    assert_eq!(get(&cache.http_url("/api/v1/read/cc-app?start_time=0"), &auth).await.0, 200);
    assert_eq!(get(&cache.http_url("/api/v1/read/cc-si?start_time=0"), &auth).await.0, 200);
    assert_eq!(get(&cache.http_url("/api/v1/read/other?start_time=0"), &auth).await.0, 404);
    let before = calls.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(get(&cache.http_url("/api/v1/read/cc-app?start_time=0"), &auth).await.0, 200);
    assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), before, "the answer was cached");
}
