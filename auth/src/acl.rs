//! A static ACL file: which source ids each identity (`user_id`, `sub` or `client_id` of the token)
//! may read. For deployments without a Cloud Controller.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use serde::Deserialize;

use super::{async_trait, AuthError, Caller, SourceAccess};

/// A static ACL: identity → source ids.
///
/// File format (TOML):
/// ```toml
/// [sources]
/// "user-guid" = ["app-guid-1", "app-guid-2"]
/// "my-client" = ["system-component"]
/// ```
#[derive(Debug, Default)]
pub struct StaticAcl {
    sources: HashMap<String, HashSet<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    #[serde(default)]
    sources: HashMap<String, Vec<String>>,
}

impl StaticAcl {
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let error = |reason: String| AuthError::Acl { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        Self::parse(&text).map_err(error)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let file: AclFile = toml::from_str(text).map_err(|e| e.to_string())?;
        Ok(Self { sources: file.sources.into_iter().map(|(k, v)| (k, v.into_iter().collect())).collect() })
    }
}

#[async_trait]
impl SourceAccess for StaticAcl {
    async fn may_read(&self, caller: &Caller, source_id: &str) -> bool {
        caller.identities.iter().any(|id| self.sources.get(id).is_some_and(|s| s.contains(source_id)))
    }

    async fn readable_sources(&self, caller: &Caller) -> HashSet<String> {
        caller.identities.iter().filter_map(|id| self.sources.get(id)).flatten().cloned().collect()
    }
}
