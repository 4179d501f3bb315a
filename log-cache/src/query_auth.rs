//! Authorization of PromQL queries on the HTTP API (`/api/v1/query`, `/api/v1/query_range`, §6.8).
//! Token verification and the per-source access checks are the `auth` crate's; what is
//! log-cache's own is the query: it must name source ids ([`source_ids`]); each is also taken as an
//! app name and expanded to the GUIDs of the apps of that name, for admins too; non-admins keep only
//! the ids they may read, and the query is rewritten to name them. Every refusal is answered 404
//! with an empty body, except a query that names no source id or does not parse (400, Prometheus
//! shape).

pub mod source_ids;

use std::collections::{HashMap, HashSet};

use auth::{bearer_token, Authorizer, Denied};

pub use source_ids::{QueryError, SourceIdQuery};

/// Access checks of one query in flight at once.
pub const MAX_CONCURRENT_CHECKS: usize = 16;

/// Why a PromQL query is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryRejection {
    /// 404 with an empty body.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// 400 `{"status":"error","errorType":"bad_data","error":"<message>"}`.
    #[error(transparent)]
    BadQuery(#[from] QueryError),
    /// The rewritten query did not round-trip (never expected); 404 with an empty body.
    #[error("query could not be rewritten")]
    Rewrite,
}

/// Authorizes a PromQL query and returns the query to evaluate: its source ids expanded from app
/// names and, for non-admins, cut down to those the caller may read.
///
/// The steps are the original's, in its order: a missing header is refused first, then a query that
/// does not parse or names no source id (400), then an invalid token.
pub async fn authorize_query(
    authorizer: &Authorizer,
    authorization: Option<&str>,
    query: &str,
) -> Result<String, QueryRejection> {
    if authorization.is_none_or(|header| bearer_token(header).is_empty()) {
        return Err(Denied::NoToken.into());
    }
    let parsed = SourceIdQuery::parse(query)?;
    let caller = authorizer.authenticate(authorization).await?;
    let mut guids_by_name = authorizer.app_guids_by_name(&caller, parsed.source_ids()).await;
    let mut expansions: HashMap<String, Vec<String>> = HashMap::with_capacity(parsed.source_ids().len());
    for id in parsed.source_ids() {
        // The GUIDs of the apps named `id`, then `id` itself (it may be a GUID, or a system
        // component's source id).
        let mut ids = guids_by_name.remove(id).unwrap_or_default();
        ids.push(id.clone());
        let mut seen = HashSet::new();
        ids.retain(|candidate| seen.insert(candidate.clone()));
        expansions.insert(id.clone(), ids);
    }
    // Expansion may multiply the ids; the query evaluated is bounded as the query asked is.
    let candidates: HashSet<&String> = expansions.values().flatten().collect();
    if candidates.len() > crate::promql::MAX_SOURCES_PER_QUERY {
        return Err(QueryError::TooManySources { count: candidates.len() }.into());
    }
    if !caller.admin {
        if candidates.len() > crate::promql::MAX_CHECKED_SOURCES_PER_QUERY {
            return Err(QueryError::TooManyToCheck { count: candidates.len() }.into());
        }
        // Each distinct id is checked once, several at a time: a CC round trip each.
        let candidates: Vec<String> = candidates.into_iter().cloned().collect();
        let mut allowed = HashSet::with_capacity(candidates.len());
        for chunk in candidates.chunks(MAX_CONCURRENT_CHECKS) {
            let answers = futures::future::join_all(chunk.iter().map(|id| authorizer.may_read(&caller, id))).await;
            allowed.extend(chunk.iter().zip(answers).filter(|(_, yes)| *yes).map(|(id, _)| id.clone()));
        }
        for ids in expansions.values_mut() {
            ids.retain(|candidate| allowed.contains(candidate));
            if ids.is_empty() {
                return Err(Denied::NotAllowed.into());
            }
        }
    }
    if expansions.iter().all(|(id, ids)| matches!(ids.as_slice(), [only] if only == id)) {
        return Ok(query.to_string());
    }
    parsed.rewrite(&expansions).map_err(|error| {
        tracing::warn!(%error, "promql source id rewrite refused");
        QueryRejection::Rewrite
    })
}

#[cfg(test)]
mod tests;
