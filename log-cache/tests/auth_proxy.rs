//! The cf-auth-proxy rules of §6.8 over real sockets: a log-cache with auth on, and a Cloud Controller
//! stub (plain HTTP or HTTPS with rcgen certificates) on 127.0.0.1:0 that records what it is asked.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use auth::{JwtKey, Secret};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get as get_route;
use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use log_cache::{Config, StartError};
use parking_lot::Mutex;
use plumbing::test_support::TestPki;
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "auth-proxy-secret";

/// `bearer <jwt>` signed with [`SECRET`], valid for ten minutes.
fn token(scopes: &[&str], user: &str) -> String {
    hs256_token(SECRET, scopes, user)
}

fn auth_config(cc_url: Option<String>) -> Config {
    let mut config = test_config();
    config.syslog.enabled = false;
    config.auth.enabled = true;
    config.auth.jwt_keys = vec![JwtKey { algorithm: "HS256".into(), key: Secret(SECRET.into()) }];
    config.auth.cc_url = cc_url;
    // The CC stub of most tests is plain HTTP.
    config.auth.allow_insecure_http = true;
    config
}

// === Cloud Controller stub ===

/// What one token may see: apps as (guid, name), and service instance guids.
#[derive(Clone, Default)]
struct Visible {
    apps: Vec<(String, String)>,
    service_instances: Vec<String>,
}

#[derive(Default)]
struct CcState {
    /// `Authorization` header → what it sees.
    tokens: Mutex<HashMap<String, Visible>>,
    /// Every request, as `path?query`.
    requests: Mutex<Vec<String>>,
    /// Resources per listing page (pagination through `pagination.next.href`); 0 = one page.
    page_size: Mutex<usize>,
    /// The body of UAA's `/token_keys` (this stub plays UAA too).
    token_keys: Mutex<serde_json::Value>,
}

struct CcStub {
    addr: SocketAddr,
    state: Arc<CcState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for CcStub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl CcStub {
    fn allow(&self, token: &str, visible: Visible) {
        self.state.tokens.lock().insert(token.to_string(), visible);
    }

    fn requests(&self) -> Vec<String> {
        self.state.requests.lock().clone()
    }

    fn count(&self, prefix: &str) -> usize {
        self.requests().iter().filter(|r| r.starts_with(prefix)).count()
    }
}

fn visible(apps: &[(&str, &str)], service_instances: &[&str]) -> Visible {
    Visible {
        apps: apps.iter().map(|(g, n)| (g.to_string(), n.to_string())).collect(),
        service_instances: service_instances.iter().map(|s| s.to_string()).collect(),
    }
}

fn record(state: &CcState, path: &str, query: &Option<String>) {
    let line = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    state.requests.lock().push(line);
}

fn seen_by(state: &CcState, headers: &HeaderMap) -> Option<Visible> {
    let header = headers.get("authorization")?.to_str().ok()?;
    state.tokens.lock().get(header).cloned()
}

async fn cc_app(
    State(state): State<Arc<CcState>>,
    Path(guid): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> StatusCode {
    record(&state, &format!("/v3/apps/{guid}"), &query);
    match seen_by(&state, &headers) {
        Some(v) if v.apps.iter().any(|(g, _)| *g == guid) => StatusCode::OK,
        Some(_) => StatusCode::NOT_FOUND,
        None => StatusCode::UNAUTHORIZED,
    }
}

async fn cc_service_instance(
    State(state): State<Arc<CcState>>,
    Path(guid): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> StatusCode {
    record(&state, &format!("/v3/service_instances/{guid}"), &query);
    match seen_by(&state, &headers) {
        Some(v) if v.service_instances.contains(&guid) => StatusCode::OK,
        Some(_) => StatusCode::NOT_FOUND,
        None => StatusCode::UNAUTHORIZED,
    }
}

/// One page of a listing, as CC v3 writes it (`pagination.next` null on the last page).
fn page(state: &CcState, path: &str, params: &[(String, String)], resources: Vec<(String, String)>) -> Response {
    let page_size = *state.page_size.lock();
    let number: usize = params.iter().find(|(k, _)| k == "page").and_then(|(_, v)| v.parse().ok()).unwrap_or(1);
    let (items, next) = if page_size == 0 {
        (resources, None)
    } else {
        let start = (number - 1) * page_size;
        let items: Vec<_> = resources.iter().skip(start).take(page_size).cloned().collect();
        let more = resources.len() > start + page_size;
        let mut query: Vec<_> = params.iter().filter(|(k, _)| k != "page").cloned().collect();
        query.push(("page".into(), (number + 1).to_string()));
        let query = form_urlencoded::Serializer::new(String::new()).extend_pairs(query).finish();
        (items, more.then(|| format!("https://api.example.com{path}?{query}")))
    };
    let resources: Vec<_> =
        items.into_iter().map(|(guid, name)| serde_json::json!({ "guid": guid, "name": name })).collect();
    let body = serde_json::json!({ "pagination": { "next": next.map(|href| serde_json::json!({ "href": href })) }, "resources": resources });
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn cc_apps(State(state): State<Arc<CcState>>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    record(&state, "/v3/apps", &query);
    let Some(v) = seen_by(&state, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let params: Vec<(String, String)> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
    let names: Option<BTreeSet<String>> =
        params.iter().find(|(k, _)| k == "names").map(|(_, v)| v.split(',').map(str::to_string).collect());
    let apps = v.apps.into_iter().filter(|(_, name)| names.as_ref().is_none_or(|n| n.contains(name))).collect();
    page(&state, "/v3/apps", &params, apps)
}

async fn cc_service_instances(
    State(state): State<Arc<CcState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    record(&state, "/v3/service_instances", &query);
    let Some(v) = seen_by(&state, &headers) else {
        return StatusCode::UNAUTHORIZED.into_response();
    };
    let params: Vec<(String, String)> =
        form_urlencoded::parse(query.unwrap_or_default().as_bytes()).into_owned().collect();
    let instances = v.service_instances.into_iter().map(|g| (g, "si".to_string())).collect();
    page(&state, "/v3/service_instances", &params, instances)
}

async fn uaa_token_keys(State(state): State<Arc<CcState>>) -> Response {
    record(&state, "/token_keys", &None);
    let body = state.token_keys.lock().to_string();
    ([(axum::http::header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn cc_router(state: Arc<CcState>) -> axum::Router {
    axum::Router::new()
        .route("/token_keys", get_route(uaa_token_keys))
        .route("/v3/apps", get_route(cc_apps))
        .route("/v3/apps/{guid}", get_route(cc_app))
        .route("/v3/service_instances", get_route(cc_service_instances))
        .route("/v3/service_instances/{guid}", get_route(cc_service_instance))
        .with_state(state)
}

async fn cc_stub_http() -> CcStub {
    let state = Arc::new(CcState::default());
    let (listener, addr) = listener().await;
    let app = cc_router(state.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    CcStub { addr, state, task }
}

/// A TLS listener for axum: the handshake runs in `accept`; failed handshakes are skipped.
struct TlsListener {
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else { continue };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// An HTTPS CC stub presenting the server certificate of `pki` (no client certificate asked).
async fn cc_stub_https(pki: &TestPki) -> CcStub {
    let files = pki.server_files();
    let certs: Vec<_> = rustls_pemfile::certs(&mut &std::fs::read(&files.cert_file).expect("cert")[..])
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = rustls_pemfile::private_key(&mut &std::fs::read(&files.key_file).expect("key")[..])
        .expect("pem")
        .expect("a key");
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server config");
    let (tcp, addr) = listener().await;
    let listener = TlsListener { tcp, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(server)) };
    let state = Arc::new(CcState::default());
    let app = cc_router(state.clone());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    CcStub { addr, state, task }
}

// === HTTPS Cloud Controller ===

#[tokio::test]
async fn https_cloud_controller_verified_against_the_configured_ca() {
    let pki = TestPki::new(&["cloud-controller"]);
    let cc = cc_stub_https(&pki).await;
    let user = token(&["cloud_controller.read"], "carol");
    cc.allow(&user, visible(&[("app-guid", "web")], &["si-guid"]));
    let mut config = auth_config(Some(format!("https://127.0.0.1:{}", cc.addr.port())));
    config.auth.cc_ca_file = Some(pki.client_files().ca_file);
    let cache = start(config).await;
    cache.send(vec![log_envelope("app-guid", 1, "a"), log_envelope("si-guid", 2, "b")]).await;

    let auth = [("authorization", user.as_str())];
    let (status, _, body) = get(&cache.http_url("/api/v1/read/app-guid?start_time=0"), &auth).await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""source_id":"app-guid""#), "{body}");
    assert_eq!(get(&cache.http_url("/api/v1/read/si-guid?start_time=0"), &auth).await.0, 200);
    assert_eq!(
        get(&cache.http_url("/api/v1/read/other?start_time=0"), &auth).await,
        (404, String::new(), String::new())
    );
    assert_eq!(cc.count("/v3/apps/app-guid"), 1, "{:?}", cc.requests());
    assert_eq!(cc.count("/v3/service_instances/si-guid"), 1, "{:?}", cc.requests());

    // By host name too: the certificate is checked against the URL's name.
    let mut config = auth_config(Some(format!("https://localhost:{}", cc.addr.port())));
    config.auth.cc_ca_file = Some(pki.client_files().ca_file);
    let by_name = start(config).await;
    by_name.send(vec![log_envelope("app-guid", 1, "a")]).await;
    assert_eq!(get(&by_name.http_url("/api/v1/read/app-guid?start_time=0"), &auth).await.0, 200);
    cache.stop().await;
    by_name.stop().await;
}

#[tokio::test]
async fn https_cloud_controller_with_an_untrusted_certificate_allows_nothing() {
    let cc_pki = TestPki::new(&["cloud-controller"]);
    let other_pki = TestPki::new(&["cloud-controller"]);
    let cc = cc_stub_https(&cc_pki).await;
    let user = token(&[], "carol");
    cc.allow(&user, visible(&[("app-guid", "web")], &[]));
    let mut config = auth_config(Some(format!("https://127.0.0.1:{}", cc.addr.port())));
    config.auth.cc_ca_file = Some(other_pki.client_files().ca_file);
    let cache = start(config).await;
    cache.send(vec![log_envelope("app-guid", 1, "a")]).await;

    let auth = [("authorization", user.as_str())];
    assert_eq!(
        get(&cache.http_url("/api/v1/read/app-guid?start_time=0"), &auth).await,
        (404, String::new(), String::new())
    );
    assert!(cc.requests().is_empty(), "no request passed the handshake: {:?}", cc.requests());
    // Not cached: the same request asks again (and fails again).
    assert_eq!(get(&cache.http_url("/api/v1/read/app-guid?start_time=0"), &auth).await.0, 404);
    cache.stop().await;
}

#[tokio::test]
async fn skip_cert_verify_accepts_any_certificate_when_configured() {
    let pki = TestPki::new(&["cloud-controller"]);
    let cc = cc_stub_https(&pki).await;
    let user = token(&[], "carol");
    cc.allow(&user, visible(&[("app-guid", "web")], &[]));
    let mut config = auth_config(Some(format!("https://127.0.0.1:{}", cc.addr.port())));
    config.auth.cc_skip_cert_verify = true;
    let cache = start(config).await;
    cache.send(vec![log_envelope("app-guid", 1, "a")]).await;
    let auth = [("authorization", user.as_str())];
    assert_eq!(get(&cache.http_url("/api/v1/read/app-guid?start_time=0"), &auth).await.0, 200);
    cache.stop().await;
}

#[tokio::test]
async fn https_cloud_controller_config_is_checked_at_bind() {
    let registry = plumbing::Registry::new();
    let no_ca = auth_config(Some("https://127.0.0.1:1".into()));
    let error = log_cache::LogCache::bind(no_ca, &registry).await.err().expect("refused");
    assert!(matches!(error, StartError::Config(_)), "{error}");
    assert!(error.to_string().contains("cc_ca_file"), "{error}");

    let mut missing_ca = auth_config(Some("https://127.0.0.1:1".into()));
    missing_ca.auth.cc_ca_file = Some("/nonexistent/ca.pem".into());
    let error = log_cache::LogCache::bind(missing_ca, &registry).await.err().expect("refused");
    assert!(matches!(error, StartError::Auth(_)), "{error}");
    assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
}

// === routes, tokens, failures ===

#[tokio::test]
async fn only_info_is_open_and_every_failure_is_an_empty_404() {
    let cc = cc_stub_http().await;
    let cache = start(auth_config(Some(format!("http://{}", cc.addr)))).await;
    cache.send(vec![log_envelope("app-a", 1, "a")]).await;
    let admin = token(&["doppler.firehose"], "root");
    let jwt = admin.trim_start_matches("bearer ").to_string();

    let (status, _, body) = get(&cache.http_url("/api/v1/info"), &[]).await;
    assert_eq!(status, 200);
    assert!(body.starts_with(r#"{"version":"#), "{body}");

    let empty_404 = (404, String::new(), String::new());
    for path in ["/api/v1/read/app-a", "/api/v1/meta", "/api/v1/query?query=up%7Bsource_id%3D%22app-a%22%7D"] {
        assert_eq!(get(&cache.http_url(path), &[]).await, empty_404, "no token: {path}");
        assert_eq!(get(&cache.http_url(path), &[("authorization", "bearer x.y.z")]).await, empty_404, "{path}");
    }
    for path in ["/", "/api/v1/nothing", "/v1/read/app-a", "/api/v2/info"] {
        assert_eq!(get(&cache.http_url(path), &[("authorization", admin.as_str())]).await, empty_404, "{path}");
    }
    // The proxy routes one path segment only.
    let nested = get(&cache.http_url("/api/v1/read/app-a/more"), &[("authorization", admin.as_str())]).await;
    assert_eq!(nested, empty_404);

    for header in [format!("Bearer {jwt}"), format!("BEARER {jwt}"), format!("bearer\t{jwt}"), jwt.clone()] {
        let (status, _, _) =
            get(&cache.http_url("/api/v1/read/app-a?start_time=0"), &[("authorization", &header)]).await;
        assert_eq!(status, 200, "{header}");
    }
    cache.stop().await;
}

// === PromQL ===

fn query_url(cache: &Running, path: &str, query: &str, extra: &str) -> String {
    let encoded = form_urlencoded::Serializer::new(String::new()).append_pair("query", query).finish();
    cache.http_url(&format!("{path}?{encoded}{extra}"))
}

/// The `source_id` labels of a Prometheus-style result.
fn result_source_ids(body: &str) -> BTreeSet<String> {
    let json: serde_json::Value = serde_json::from_str(body).expect("json body");
    assert_eq!(json["status"], "success", "{body}");
    let result = json["data"]["result"].as_array().expect("result array");
    result.iter().map(|r| r["metric"]["source_id"].as_str().expect("source_id label").to_string()).collect()
}

fn ids(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// A log-cache holding a `cpu` gauge for apps `guid-1`, `guid-2` (both named `web`), `guid-3` (named
/// `api`), and a source literally called `web`; a CC where `user` sees `guid-1` and `guid-3` and an
/// admin token sees every app.
async fn promql_setup() -> (CcStub, Running, String, String, i64) {
    let cc = cc_stub_http().await;
    let user = token(&["cloud_controller.read"], "dora");
    let admin = token(&["logs.admin"], "root");
    cc.allow(&user, visible(&[("guid-1", "web"), ("guid-3", "api")], &[]));
    cc.allow(&admin, visible(&[("guid-1", "web"), ("guid-2", "web"), ("guid-3", "api")], &[]));
    let cache = start(auth_config(Some(format!("http://{}", cc.addr)))).await;
    let now = log_cache::service::now_nanos();
    let at = now - 10_000_000_000;
    let sources = ["guid-1", "guid-2", "guid-3", "web"];
    cache.send(sources.iter().map(|s| gauge_envelope(s, at, "cpu", 1.0)).collect()).await;
    (cc, cache, user, admin, now / 1_000_000_000)
}

#[tokio::test]
async fn queries_without_source_ids_or_unparsable_are_bad_data() {
    let (_cc, cache, user, _, _) = promql_setup().await;
    let auth = [("authorization", user.as_str())];
    for path in ["/api/v1/query", "/api/v1/query_range"] {
        let (status, content_type, body) = get(&query_url(&cache, path, "cpu", ""), &auth).await;
        assert_eq!((status, content_type.as_str()), (400, "application/json"), "{path}");
        assert_eq!(
            body,
            "{\"status\":\"error\",\"errorType\":\"bad_data\",\"error\":\"query does not request any source_ids\"}\n"
        );
        let (status, _, body) = get(&query_url(&cache, path, "sum(cpu{source_id=\"a\"}", ""), &auth).await;
        assert_eq!(status, 400, "{path}");
        let json: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!((json["status"].as_str(), json["errorType"].as_str()), (Some("error"), Some("bad_data")));
        assert!(json["error"].as_str().expect("message").starts_with("parse error: "), "{body}");
    }
    // As the original: the query is checked before the token (a missing header is still a 404).
    let (status, _, _) = get(&query_url(&cache, "/api/v1/query", "cpu", ""), &[("authorization", "bearer x")]).await;
    assert_eq!(status, 400);
    assert_eq!(get(&query_url(&cache, "/api/v1/query", "cpu", ""), &[]).await, (404, String::new(), String::new()));
    cache.stop().await;
}

#[tokio::test]
async fn non_admins_get_app_names_expanded_to_the_guids_they_may_read() {
    let (cc, cache, user, _, now) = promql_setup().await;
    let auth = [("authorization", user.as_str())];
    let time = format!("&time={now}");

    let (status, _, body) = get(&query_url(&cache, "/api/v1/query", r#"cpu{source_id="web"}"#, &time), &auth).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(result_source_ids(&body), ids(&["guid-1"]), "not guid-2 (other user's), not the source named `web`");
    assert!(cc.requests().contains(&"/v3/apps?names=web&per_page=5000".to_string()), "{:?}", cc.requests());

    let list = r#"cpu{source_id=~"web|api"}"#;
    let (status, _, body) = get(&query_url(&cache, "/api/v1/query", list, &time), &auth).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(result_source_ids(&body), ids(&["guid-1", "guid-3"]));
    assert!(cc.requests().contains(&"/v3/apps?names=api%2Cweb&per_page=5000".to_string()), "{:?}", cc.requests());

    let range = format!("&start={}&end={now}&step=5", now - 60);
    let (status, _, body) =
        get(&query_url(&cache, "/api/v1/query_range", r#"cpu{source_id="web"}"#, &range), &auth).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(result_source_ids(&body), ids(&["guid-1"]));

    // GUIDs work as themselves; the GUIDs CC listed for the token are not asked about one by one.
    let (status, _, body) = get(&query_url(&cache, "/api/v1/query", r#"cpu{source_id="guid-3"}"#, &time), &auth).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(result_source_ids(&body), ids(&["guid-3"]));
    assert_eq!(cc.count("/v3/apps/guid-1") + cc.count("/v3/apps/guid-3"), 0, "{:?}", cc.requests());
    cache.stop().await;
}

#[tokio::test]
async fn post_form_queries_are_authorized_and_rewritten_too() {
    let (_cc, cache, user, _, now) = promql_setup().await;
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("query", r#"cpu{source_id="web"}"#)
        .append_pair("time", &now.to_string())
        .finish();
    let headers = [("authorization", user.as_str()), ("content-type", "application/x-www-form-urlencoded")];
    let (status, _, body) = request("POST", &cache.http_url("/api/v1/query"), &headers, &form).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(result_source_ids(&body), ids(&["guid-1"]));
    cache.stop().await;
}

#[tokio::test]
async fn non_admins_are_refused_when_a_named_id_leaves_nothing_readable() {
    let (_cc, cache, user, _, now) = promql_setup().await;
    let auth = [("authorization", user.as_str())];
    let time = format!("&time={now}");
    for query in [
        r#"cpu{source_id="guid-2"}"#,
        r#"cpu{source_id=~"web|guid-2"}"#,
        r#"cpu{source_id="web"} + cpu{source_id="nope"}"#,
    ] {
        let response = get(&query_url(&cache, "/api/v1/query", query, &time), &auth).await;
        assert_eq!(response, (404, String::new(), String::new()), "{query}");
    }
    cache.stop().await;
}

#[tokio::test]
async fn admins_get_app_names_expanded_and_keep_the_name_itself() {
    let (cc, cache, _, admin, now) = promql_setup().await;
    let auth = [("authorization", admin.as_str())];
    let time = format!("&time={now}");
    let (status, _, body) = get(&query_url(&cache, "/api/v1/query", r#"cpu{source_id="web"}"#, &time), &auth).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(result_source_ids(&body), ids(&["guid-1", "guid-2", "web"]));
    assert_eq!(cc.count("/v3/apps/"), 0, "admins are not checked per id: {:?}", cc.requests());

    // Names CC does not know stay as they are.
    let (status, _, body) = get(&query_url(&cache, "/api/v1/query", r#"cpu{source_id="guid-2"}"#, &time), &auth).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(result_source_ids(&body), ids(&["guid-2"]));
    cache.stop().await;
}

#[tokio::test]
async fn app_name_lookups_follow_cc_pagination() {
    let (cc, cache, _, admin, now) = promql_setup().await;
    *cc.state.page_size.lock() = 1;
    let auth = [("authorization", admin.as_str())];
    let (status, _, body) =
        get(&query_url(&cache, "/api/v1/query", r#"cpu{source_id="web"}"#, &format!("&time={now}")), &auth).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(result_source_ids(&body), ids(&["guid-1", "guid-2", "web"]));
    assert_eq!(cc.count("/v3/apps?"), 2, "two pages of one app: {:?}", cc.requests());
    assert!(cc.requests().contains(&"/v3/apps?names=web&per_page=5000&page=2".to_string()), "{:?}", cc.requests());
    cache.stop().await;
}

// === Meta ===

#[tokio::test]
async fn meta_for_non_admins_lists_their_cc_apps_and_service_instances_only() {
    let cc = cc_stub_http().await;
    *cc.state.page_size.lock() = 1;
    let user = token(&[], "erin");
    cc.allow(&user, visible(&[("guid-a", "a"), ("guid-b", "b")], &["si-1"]));
    let cache = start(auth_config(Some(format!("http://{}", cc.addr)))).await;
    cache
        .send(vec![
            log_envelope("guid-a", 5, "x"),
            log_envelope("guid-b", 6, "x"),
            log_envelope("si-1", 7, "x"),
            log_envelope("hidden", 8, "x"),
        ])
        .await;

    let (status, content_type, body) = get(&cache.http_url("/api/v1/meta"), &[("authorization", user.as_str())]).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
    let meta = loggregator_proto::json::meta_response_from_json(body.trim_end()).expect("meta json");
    let seen: BTreeSet<String> = meta.meta.keys().cloned().collect();
    assert_eq!(seen, ids(&["guid-a", "guid-b", "si-1"]));
    assert!(body.contains(r#""si-1":{"count":"1","oldestTimestamp":"7","newestTimestamp":"7"}"#), "{body}");
    assert!(!body.contains("expired"), "zero fields are omitted: {body}");
    assert_eq!(cc.count("/v3/apps?"), 2, "followed the pages: {:?}", cc.requests());
    let (_, _, again) = get(&cache.http_url("/api/v1/meta"), &[("authorization", user.as_str())]).await;
    assert_eq!(again, body, "the same answer");
    assert_eq!(cc.count("/v3/apps?"), 2, "the listing is cached for the token: {:?}", cc.requests());
    assert_eq!(cc.count("/v3/service_instances?"), 1, "{:?}", cc.requests());

    let admin = token(&["doppler.firehose"], "root");
    let (_, _, body) = get(&cache.http_url("/api/v1/meta"), &[("authorization", admin.as_str())]).await;
    let meta = loggregator_proto::json::meta_response_from_json(body.trim_end()).expect("meta json");
    assert_eq!(meta.meta.len(), 4, "{body}");
    assert!(body.contains(r#""hidden":{"count":"1","oldestTimestamp":"8","newestTimestamp":"8"}"#), "{body}");

    let stranger = token(&[], "nobody");
    let (status, _, body) = get(&cache.http_url("/api/v1/meta"), &[("authorization", stranger.as_str())]).await;
    assert_eq!((status, body.as_str()), (200, "{}\n"), "CC refused the token: nothing visible");
    cache.stop().await;
}

// === UAA token keys ===

/// A 2048-bit RSA key pair for test tokens only (the private half signs, UAA publishes the public).
const UAA_TEST_RSA_PRIVATE_KEY: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCXEt715Yqd2/m3
SmcB1XuK0sDooHl5Dus4TebIwAHvagM7RfrvBLsOOKHFiBIhM82zp2R7/PIauWba
7dL6oQxAfKnkb2PtfigXUFXlgxXXZvuOIEiBY51VUK3IH1wjxCfKZchQK9ZA7xIw
nrfh9f/jReRsbbDYNZ71JSR73p8aicgS4YhNy6IFjpR7Y3fMWjGipd/AxNieStak
X+mQagKAFQpWL4K3muF/MMzxkxSNL621hFxkM8dweiLQkMwRYs6siMeba8wFqfI1
FUT92+R8oLi6KfxBvu9VWGOwkqAnFEwSRxPw7pJLwudHkw5zSPnNq85Tn7mM8C2f
Vn3Eo6uDAgMBAAECggEABUrr9MFt8cnbHcjFgxLvmRV5HK1ClDMpmndgNnhDmRel
tVXmTKllxEHHqRvzRqaB9mFO6+kYskb8i375fT5XJ4s2iII+hft9fBOcbsYA5eL9
vST0ZVQQFwUUkYZHvBkLK9QVCHoAr5WwlXN6DbiIlnXEYugU4f4+62e5t309JbjQ
Lo2c4TkqAmgcmE2inJwsVUR2fhPscq7d5THsed+3r7hY49BpX7vAPOYyLwhQM30V
MVF3OFRIs/on89E4Evl47svgIrqcHsPdZjWWcOI8vuZ8O8Szb2XNatAr1B275MtE
TS0VZZva0YP9iIbxgkiM/LFu/hpInp+buGey+hk+wQKBgQDVK4TxJEWwNCVTNkSc
JkKjY4gs7WOJw5hywsCYYAabNulma98u/3u2MP/xWInQVZ+RdJzCer76xePjx2g0
8fkIudbJEPf3WI9jTZURcWTv2Dewmt/yclfoLGzX8UbeMiz88TSSMrhk9ji/U69a
sw7NE6gtBuQTriQVkJt3XvvMzQKBgQC1bWfNs//JR88NfREnN58ISbspLTOI/R1d
Lz7L3BLzY+0iHQMJqxACM5sbPOIawwP+GrLp/ZTLvsimu2zW4M09cbaSxCAcxhS9
8sN5S0YpJH77YhV//MF5Q/LVTdboB7qWcE37pRixpCrR0X6uQx6av4rNDwstWd2s
IDBj2u1ZjwKBgBov7XX+Qb1iuo8dZJJWNOuDh7AVPZwn9itq92QAr+8TcNrPN6y7
YARCwr5wZQW97wtcawGNOLbv5o4N6iRO8Yv74IH03rF5JKxLVJu+9WptgnHkpMxQ
9bGk+34PuugC+/na291186cbhF8kta8Lvi69UnStmwk75Fzt1dt1RLOlAoGAAnSb
ng4cnSXKqJ0TuVsoXN1amiERfH4ogpVcHTg6TW8By59m5h+ZlN4L8F9vk/slt6+2
0jHrbKKFZrRMsc/TF0zNssjSwnDv4O5DNQYOygnDajWWoufR2olP5REronJQVS7p
70j5v5XAOpzCQSuJY4DKKSJV/WQk+uponUFeSwMCgYEAoH0qvlTdbvAsZVCEBmRj
6FGRloJh885biBj+M16Ac9ZZ6yTzJmuTmZKFHUwWKadd6GOQ8L+8PhHibQYLIOSf
1xSXW0bLMlJa3e6yEcV+Y8kYEC1OFHAzb4fUQTcgst0oSlm56kRagiz5jOymRCn2
60TgnpTl+zGc/IzLXOnq2v4=
-----END PRIVATE KEY-----
";
const UAA_TEST_RSA_PUBLIC_KEY: &str = "\
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAlxLe9eWKndv5t0pnAdV7
itLA6KB5eQ7rOE3myMAB72oDO0X67wS7DjihxYgSITPNs6dke/zyGrlm2u3S+qEM
QHyp5G9j7X4oF1BV5YMV12b7jiBIgWOdVVCtyB9cI8QnymXIUCvWQO8SMJ634fX/
40XkbG2w2DWe9SUke96fGonIEuGITcuiBY6Ue2N3zFoxoqXfwMTYnkrWpF/pkGoC
gBUKVi+Ct5rhfzDM8ZMUjS+ttYRcZDPHcHoi0JDMEWLOrIjHm2vMBanyNRVE/dvk
fKC4uin8Qb7vVVhjsJKgJxRMEkcT8O6SS8LnR5MOc0j5zavOU5+5jPAtn1Z9xKOr
gwIDAQAB
-----END PUBLIC KEY-----
";

fn uaa_token(kid: &str, algorithm: Algorithm, key: &EncodingKey, scopes: &[&str], exp_offset: i64) -> String {
    let exp = log_cache::service::now_nanos() / 1_000_000_000 + exp_offset;
    let claims = serde_json::json!({ "scope": scopes, "user_id": "uaa-user", "exp": exp });
    let header = Header { kid: Some(kid.to_string()), ..Header::new(algorithm) };
    format!("Bearer {}", encode(&header, &claims, key).expect("encodes"))
}

#[tokio::test]
async fn tokens_are_verified_against_uaa_token_keys_over_https() {
    let pki = TestPki::new(&["uaa"]);
    let uaa = cc_stub_https(&pki).await;
    *uaa.state.token_keys.lock() = serde_json::json!({ "keys": [
        { "kid": "key-rsa", "alg": "RS256", "value": UAA_TEST_RSA_PUBLIC_KEY },
        { "kid": "key-hs", "alg": "HS256", "value": "uaa-shared-secret" },
    ]});
    let mut config = auth_config(None);
    config.auth.jwt_keys = Vec::new();
    config.auth.uaa_url = Some(format!("https://localhost:{}", uaa.addr.port()));
    config.auth.uaa_ca_file = Some(pki.client_files().ca_file);
    let cache = start(config).await;
    cache.send(vec![log_envelope("app-a", 1, "a")]).await;
    let read = cache.http_url("/api/v1/read/app-a?start_time=0");

    let rsa = EncodingKey::from_rsa_pem(UAA_TEST_RSA_PRIVATE_KEY.as_bytes()).expect("test key");
    let hs = EncodingKey::from_secret(b"uaa-shared-secret");
    let admin_rs256 = uaa_token("key-rsa", Algorithm::RS256, &rsa, &["logs.admin"], 600);
    let admin_hs256 = uaa_token("key-hs", Algorithm::HS256, &hs, &["doppler.firehose"], 600);
    assert_eq!(get(&read, &[("authorization", admin_rs256.as_str())]).await.0, 200);
    assert_eq!(get(&read, &[("authorization", admin_hs256.as_str())]).await.0, 200);
    assert_eq!(uaa.count("/token_keys"), 1, "fetched once, then held");

    let empty_404 = (404, String::new(), String::new());
    let refused = [
        ("expired", uaa_token("key-rsa", Algorithm::RS256, &rsa, &["logs.admin"], -5)),
        ("wrong algorithm for the kid", uaa_token("key-rsa", Algorithm::HS256, &hs, &["logs.admin"], 600)),
        ("unknown kid", uaa_token("key-other", Algorithm::HS256, &hs, &["logs.admin"], 600)),
        ("not admin, no source access", uaa_token("key-hs", Algorithm::HS256, &hs, &["openid"], 600)),
    ];
    for (what, token) in refused {
        assert_eq!(get(&read, &[("authorization", token.as_str())]).await, empty_404, "{what}");
    }
    cache.stop().await;
}
