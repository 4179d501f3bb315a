//! Token verification, scopes, the static ACL, and UAA key fetching against a stub on 127.0.0.1:0.

use jsonwebtoken::{encode, EncodingKey, Header};

use super::*;

const SECRET: &str = "test-secret";

fn token(scopes: &[&str], user: &str, exp_offset: i64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after epoch");
    let exp = now.as_secs() as i64 + exp_offset;
    let claims = serde_json::json!({ "scope": scopes, "user_id": user, "exp": exp });
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).expect("encodes")
}

fn key() -> JwtKey {
    JwtKey { algorithm: "HS256".into(), key: Secret(SECRET.into()) }
}

fn authorizer(acl: &str) -> Authorizer {
    Authorizer::new(&[key()], vec![Box::new(StaticAcl::parse(acl).expect("valid acl"))]).expect("valid key")
}

#[tokio::test]
async fn admin_scopes_read_everything() {
    let auth = authorizer("");
    for scope in ADMIN_SCOPES {
        let caller = auth.authenticate(Some(&format!("Bearer {}", token(&[scope], "u", 60)))).await.expect("valid");
        assert!(caller.admin);
        assert!(auth.may_read(&caller, "anything").await);
        assert_eq!(auth.readable_sources(&caller).await, None);
    }
}

#[tokio::test]
async fn a_caller_prints_without_its_token() {
    let auth = authorizer("");
    let raw = token(&["openid"], "someone", 60);
    let caller = auth.authenticate(Some(&raw)).await.expect("valid");
    let printed = format!("{caller:?}");
    assert!(!printed.contains(&raw), "{printed}");
    // Not even a fragment of the signature.
    assert!(!printed.contains(raw.rsplit('.').next().unwrap()), "{printed}");
    assert!(printed.contains("someone"), "identities still show: {printed}");
}

#[tokio::test]
async fn scopes_are_kept_and_asked_for_exactly() {
    let auth = authorizer("");
    let caller = auth.authenticate(Some(&token(&["doppler.firehose", "openid"], "u", 60))).await.expect("valid");
    assert_eq!(caller.scopes, ["doppler.firehose", "openid"]);
    assert!(caller.has_scope("doppler.firehose"));
    assert!(!caller.has_scope("doppler"));
    assert!(!caller.has_scope("logs.admin"));
    let user = auth.authenticate(Some(&token(&["openid"], "u", 60))).await.expect("valid");
    assert!(!user.admin && !user.has_scope("doppler.firehose"));
}

#[tokio::test]
async fn bearer_prefix_is_case_insensitive_and_optional() {
    let auth = authorizer("");
    let t = token(&["logs.admin"], "u", 60);
    for header in
        [format!("bearer {t}"), format!("BEARER {t}"), format!("BeArEr \t {t}"), format!("  bearer {t}  "), t.clone()]
    {
        let caller = auth.authenticate(Some(&header)).await.expect(&header);
        assert_eq!(caller.token, t);
    }
    assert_eq!(bearer_token("bearer"), "bearer");
    assert_eq!(bearer_token("bearerx"), "bearerx");
    // A lone prefix is a (bad) token, as in the original, whose header values arrive trimmed.
    assert_eq!(bearer_token("Bearer "), "Bearer");
    assert_eq!(auth.authenticate(Some("Bearer ")).await.unwrap_err(), Denied::InvalidToken);
    assert_eq!(auth.authenticate(Some("  ")).await.unwrap_err(), Denied::NoToken);
    assert_eq!(bearer_token("bé"), "bé");
}

#[tokio::test]
async fn expired_or_forged_tokens_are_refused() {
    let auth = authorizer("");
    assert_eq!(auth.authenticate(None).await.unwrap_err(), Denied::NoToken);
    let expired = token(&["logs.admin"], "u", -5);
    assert_eq!(auth.authenticate(Some(&expired)).await.unwrap_err(), Denied::InvalidToken);
    let mut forged = token(&["logs.admin"], "u", 60);
    forged.push('x');
    assert_eq!(auth.authenticate(Some(&forged)).await.unwrap_err(), Denied::InvalidToken);
}

#[tokio::test]
async fn non_admins_read_what_the_acl_allows() {
    let auth = authorizer("[sources]\nalice = [\"app-1\", \"app-2\"]\n");
    let alice = auth.authenticate(Some(&token(&["cloud_controller.read"], "alice", 60))).await.expect("valid");
    assert!(!alice.admin);
    assert!(auth.may_read(&alice, "app-1").await);
    assert!(!auth.may_read(&alice, "app-3").await);
    let bob = auth.authenticate(Some(&token(&[], "bob", 60))).await.expect("valid");
    assert!(!auth.may_read(&bob, "app-1").await);
    let visible = auth.readable_sources(&alice).await.expect("not admin");
    assert_eq!(visible, ["app-1", "app-2"].iter().map(|s| s.to_string()).collect());
}

// === UAA token keys ===

/// A UAA stub on 127.0.0.1:0 serving `keys` (shared, so a test can rotate them) on `/token_keys`,
/// counting the fetches.
async fn uaa_stub(
    keys: serde_json::Value,
) -> (
    String,
    std::sync::Arc<parking_lot::Mutex<serde_json::Value>>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    tokio::task::JoinHandle<()>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let keys = Arc::new(parking_lot::Mutex::new(keys));
    let fetches = Arc::new(AtomicUsize::new(0));
    let (served, counted) = (keys.clone(), fetches.clone());
    let app = axum::Router::new().route(
        "/token_keys",
        axum::routing::get(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let body = served.lock().to_string();
            async move { body }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, keys, fetches, task)
}

fn hs256_keys(keys: &[(&str, &str)]) -> serde_json::Value {
    let keys: Vec<_> =
        keys.iter().map(|(kid, secret)| serde_json::json!({ "kid": kid, "alg": "HS256", "value": secret })).collect();
    serde_json::json!({ "keys": keys })
}

fn token_with_kid(kid: &str, secret: &str, user: &str) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() + 60;
    let claims = serde_json::json!({ "scope": ["openid"], "user_id": user, "exp": exp });
    let header = Header { kid: Some(kid.to_string()), ..Header::new(Algorithm::HS256) };
    encode(&header, &claims, &EncodingKey::from_secret(secret.as_bytes())).expect("encodes")
}

#[tokio::test]
async fn uaa_keys_are_fetched_once_then_again_when_rotated() {
    use std::sync::atomic::Ordering;
    let (url, keys, fetches, task) = uaa_stub(hs256_keys(&[("k1", "secret-1")])).await;
    let uaa = UaaKeys::new(&url, None, std::time::Duration::ZERO).expect("valid url");
    let auth = Authorizer::new(&[], Vec::new()).expect("no keys").with_uaa(uaa);

    let caller = auth.authenticate(Some(&token_with_kid("k1", "secret-1", "u1"))).await.expect("k1 verifies");
    assert_eq!(caller.identities, vec!["u1"]);
    auth.authenticate(Some(&token_with_kid("k1", "secret-1", "u2"))).await.expect("k1 verifies");
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "keys are held between tokens");

    // UAA rotates to k2: an unknown kid fetches again; k1 is dropped.
    *keys.lock() = hs256_keys(&[("k2", "secret-2")]);
    auth.authenticate(Some(&token_with_kid("k2", "secret-2", "u3"))).await.expect("k2 verifies");
    assert_eq!(fetches.load(Ordering::SeqCst), 2);
    let old = auth.authenticate(Some(&token_with_kid("k1", "secret-1", "u4"))).await;
    assert_eq!(old.unwrap_err(), Denied::InvalidToken);

    // Same kid, new secret: a bad signature fetches again too.
    *keys.lock() = hs256_keys(&[("k2", "secret-3")]);
    auth.authenticate(Some(&token_with_kid("k2", "secret-3", "u5"))).await.expect("re-keyed k2 verifies");
    task.abort();
}

#[tokio::test]
async fn uaa_fetches_are_throttled_and_forged_tokens_refused() {
    use std::sync::atomic::Ordering;
    let (url, _keys, fetches, task) = uaa_stub(hs256_keys(&[("k1", "secret-1")])).await;
    let uaa = UaaKeys::new(&url, None, std::time::Duration::from_secs(3600)).expect("valid url");
    let auth = Authorizer::new(&[], Vec::new()).expect("no keys").with_uaa(uaa);
    auth.authenticate(Some(&token_with_kid("k1", "secret-1", "u"))).await.expect("k1 verifies");
    for kid in ["k9", "k1"] {
        let forged = auth.authenticate(Some(&token_with_kid(kid, "guessed", "u"))).await;
        assert_eq!(forged.unwrap_err(), Denied::InvalidToken, "{kid}");
    }
    assert_eq!(fetches.load(Ordering::SeqCst), 1, "misses within the interval do not reach UAA");
    task.abort();
}

#[test]
fn uaa_url_must_be_http_or_https_with_tls() {
    assert!(matches!(UaaKeys::new("ftp://uaa", None, std::time::Duration::ZERO), Err(AuthError::UaaUrl { .. })));
    assert!(matches!(UaaKeys::new("https://uaa", None, std::time::Duration::ZERO), Err(AuthError::UaaUrl { .. })));
    assert!(UaaKeys::new("http://uaa:8080/", None, std::time::Duration::ZERO).is_ok());
}

#[test]
fn from_config_refuses_an_invalid_section() {
    let config = AuthConfig { enabled: true, ..AuthConfig::default() };
    let error = Authorizer::from_config(&config).unwrap_err();
    assert!(matches!(&error, AuthError::Config(config::ConfigError { field: "jwt_keys", .. })), "{error}");
}
