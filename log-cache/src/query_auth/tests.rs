//! The query authorization steps, with an in-memory Cloud Controller that knows app names.

use std::collections::{HashMap, HashSet};

use auth::{async_trait, Authorizer, Caller, JwtKey, Secret, SourceAccess};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

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

/// App names known to a fake CC, and which GUIDs each user may read.
struct FakeApps {
    apps: Vec<(&'static str, &'static str)>,
    readable: HashMap<&'static str, Vec<&'static str>>,
}

#[async_trait]
impl SourceAccess for FakeApps {
    async fn may_read(&self, caller: &Caller, source_id: &str) -> bool {
        caller.identities.iter().any(|id| self.readable.get(id.as_str()).is_some_and(|ids| ids.contains(&source_id)))
    }

    async fn readable_sources(&self, _caller: &Caller) -> HashSet<String> {
        HashSet::new()
    }

    async fn app_guids_by_name(&self, _caller: &Caller, names: &[String]) -> HashMap<String, Vec<String>> {
        let mut guids: HashMap<String, Vec<String>> = HashMap::new();
        for (guid, name) in &self.apps {
            if names.iter().any(|n| n == name) {
                guids.entry(name.to_string()).or_default().push(guid.to_string());
            }
        }
        guids
    }
}

fn fake_cc_authorizer() -> Authorizer {
    let fake = FakeApps {
        apps: vec![("g-web-1", "web"), ("g-web-2", "web"), ("g-api", "api")],
        readable: [("alice", vec!["g-web-1", "g-api"]), ("bob", vec!["sys"])].into_iter().collect(),
    };
    Authorizer::new(&[key()], vec![Box::new(fake)]).expect("valid key")
}

fn bearer(scopes: &[&str], user: &str) -> String {
    format!("bearer {}", token(scopes, user, 60))
}

#[tokio::test]
async fn query_steps_run_in_the_original_order() {
    let auth = fake_cc_authorizer();
    let no_header = authorize_query(&auth, None, "up").await.unwrap_err();
    assert_eq!(no_header, QueryRejection::Denied(Denied::NoToken));
    let bad = authorize_query(&auth, Some("bearer nonsense"), "up").await.unwrap_err();
    assert_eq!(bad, QueryRejection::BadQuery(QueryError::NoSourceIds), "the query is checked before the token");
    let bad_token = authorize_query(&auth, Some("bearer nonsense"), r#"up{source_id="a"}"#).await.unwrap_err();
    assert_eq!(bad_token, QueryRejection::Denied(Denied::InvalidToken));
}

#[tokio::test]
async fn admins_get_app_names_expanded_and_keep_the_name() {
    let auth = fake_cc_authorizer();
    let admin = bearer(&["logs.admin"], "root");
    let query = authorize_query(&auth, Some(&admin), r#"cpu{source_id="web"}"#).await.expect("allowed");
    assert_eq!(query, r#"cpu{source_id=~"g-web-1|g-web-2|web"}"#);
    let untouched = r#"cpu{source_id="g-api"}  +  1"#;
    assert_eq!(authorize_query(&auth, Some(&admin), untouched).await.expect("allowed"), untouched);
}

#[tokio::test]
async fn non_admins_keep_only_what_they_may_read() {
    let auth = fake_cc_authorizer();
    let alice = bearer(&[], "alice");
    let query = authorize_query(&auth, Some(&alice), r#"cpu{source_id="web"}"#).await.expect("allowed");
    assert_eq!(query, r#"cpu{source_id="g-web-1"}"#);
    let query = authorize_query(&auth, Some(&alice), r#"cpu{source_id=~"web|api"}"#).await.expect("allowed");
    assert_eq!(query, r#"cpu{source_id=~"g-web-1|g-api"}"#);
    let denied = authorize_query(&auth, Some(&alice), r#"cpu{source_id=~"web|sys"}"#).await.unwrap_err();
    assert_eq!(denied, QueryRejection::Denied(Denied::NotAllowed), "every named id must leave something");
    let bob = bearer(&[], "bob");
    assert_eq!(
        authorize_query(&auth, Some(&bob), r#"cpu{source_id="sys"}"#).await.expect("allowed"),
        r#"cpu{source_id="sys"}"#
    );
}

/// Lets every check through once `wanted` of them are in flight together (or after a deadline),
/// recording the most seen at once.
struct Gate {
    wanted: usize,
    in_flight: tokio::sync::watch::Sender<usize>,
    most: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl SourceAccess for Gate {
    async fn may_read(&self, _caller: &Caller, _source_id: &str) -> bool {
        self.in_flight.send_modify(|n| *n += 1);
        let now = *self.in_flight.borrow();
        self.most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
        let mut rx = self.in_flight.subscribe();
        let wanted = self.wanted;
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), rx.wait_for(|n| *n >= wanted)).await;
        true
    }

    async fn readable_sources(&self, _caller: &Caller) -> HashSet<String> {
        HashSet::new()
    }
}

#[tokio::test]
async fn a_query_checks_its_sources_concurrently() {
    let gate = std::sync::Arc::new(Gate {
        wanted: 8,
        in_flight: tokio::sync::watch::channel(0).0,
        most: std::sync::atomic::AtomicUsize::new(0),
    });
    struct Shared(std::sync::Arc<Gate>);
    #[async_trait]
    impl SourceAccess for Shared {
        async fn may_read(&self, caller: &Caller, source_id: &str) -> bool {
            self.0.may_read(caller, source_id).await
        }
        async fn readable_sources(&self, caller: &Caller) -> HashSet<String> {
            self.0.readable_sources(caller).await
        }
    }
    let auth = Authorizer::new(&[key()], vec![Box::new(Shared(gate.clone()))]).expect("valid key");
    let ids: Vec<String> = (0..8).map(|i| format!("app-{i}")).collect();
    assert!(ids.len() <= crate::promql::MAX_CHECKED_SOURCES_PER_QUERY);
    let query = format!(r#"cpu{{source_id=~"{}"}}"#, ids.join("|"));
    let started = std::time::Instant::now();
    authorize_query(&auth, Some(&bearer(&[], "carol")), &query).await.expect("allowed");
    assert_eq!(gate.most.load(std::sync::atomic::Ordering::SeqCst), 8, "all eight checks were in flight at once");
    assert!(started.elapsed() < std::time::Duration::from_secs(3), "no check waited for the deadline");
}

#[tokio::test]
async fn a_query_names_a_bounded_number_of_sources_and_checks_fewer() {
    use crate::promql::{MAX_CHECKED_SOURCES_PER_QUERY, MAX_SOURCES_PER_QUERY};
    let auth = fake_cc_authorizer();
    let list = |n: usize| {
        let ids: Vec<String> = (0..n).map(|i| format!("app-{i}")).collect();
        format!(r#"cpu{{source_id=~"{}"}}"#, ids.join("|"))
    };
    let admin = bearer(&["logs.admin"], "root");
    let refused = authorize_query(&auth, Some(&admin), &list(MAX_SOURCES_PER_QUERY + 1)).await.unwrap_err();
    assert_eq!(refused, QueryRejection::BadQuery(QueryError::TooManySources { count: MAX_SOURCES_PER_QUERY + 1 }));
    authorize_query(&auth, Some(&admin), &list(MAX_SOURCES_PER_QUERY)).await.expect("admins: at the bound");
    // Without an admin scope every id is a Cloud Controller check: fewer are allowed.
    let user = bearer(&[], "alice");
    let refused = authorize_query(&auth, Some(&user), &list(MAX_CHECKED_SOURCES_PER_QUERY + 1)).await.unwrap_err();
    assert_eq!(
        refused,
        QueryRejection::BadQuery(QueryError::TooManyToCheck { count: MAX_CHECKED_SOURCES_PER_QUERY + 1 })
    );
}
