//! The source ids a PromQL query asks for, and the rewrite of its `source_id` matchers after app-name
//! expansion and authorization (§6.8).
//!
//! Every vector and matrix selector counts: `source_id="x"` names `x`, `source_id=~"a|b"` names `a`
//! and `b` (a literal list, not a regular expression, §6.6); `!=` and `!~` name nothing. The rewrite
//! replaces each named id by the ids it stands for, as the original's `ReplaceSourceIdSets` does:
//! `=` stays `=` when one id remains and becomes `=~"a|b"` when several do.
//!
//! The query is parsed here, on the request path, before the engine sees it, so the engine's bound on
//! nesting is applied here too: the parser, the walks below and the printer all recurse over the tree.

use std::collections::{BTreeSet, HashMap};
use std::sync::LazyLock;

use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{self, Expr, VectorSelector};

/// The most operators plus opening parentheses a query may hold (the engine's bound, `promql::guard`).
pub const MAX_QUERY_NESTING: usize = 200;

/// Why a query cannot be authorized; answered 400 `bad_data` with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    #[error("parse error: {0}")]
    Parse(String),
    #[error("query is too complex: {count} operators and parentheses, at most {MAX_QUERY_NESTING} allowed")]
    TooComplex { count: usize },
    #[error("query does not request any source_ids")]
    NoSourceIds,
    #[error("query names {count} source ids, at most {} allowed", crate::promql::MAX_SOURCES_PER_QUERY)]
    TooManySources { count: usize },
    #[error(
        "query needs access checks of {count} source ids, at most {} allowed without an admin scope",
        crate::promql::MAX_CHECKED_SOURCES_PER_QUERY
    )]
    TooManyToCheck { count: usize },
}

/// Why a rewritten query was refused: printing and re-parsing it did not name exactly the ids that
/// were put in. Never expected; the request is refused rather than evaluated with other ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rewritten query `{query}` does not round-trip: {reason}")]
pub struct RewriteError {
    pub query: String,
    pub reason: String,
}

/// A parsed query that names at least one source id.
#[derive(Debug)]
pub struct SourceIdQuery {
    expr: Expr,
    /// Sorted, deduplicated, none empty.
    ids: Vec<String>,
}

impl SourceIdQuery {
    /// Parses `query` and collects its source ids.
    pub fn parse(query: &str) -> Result<Self, QueryError> {
        let mut expr = parse_bounded(query)?;
        let ids = source_ids(&mut expr);
        if ids.is_empty() {
            return Err(QueryError::NoSourceIds);
        }
        if ids.len() > crate::promql::MAX_SOURCES_PER_QUERY {
            return Err(QueryError::TooManySources { count: ids.len() });
        }
        Ok(Self { expr, ids: ids.into_iter().collect() })
    }

    /// The source ids the query names, sorted.
    pub fn source_ids(&self) -> &[String] {
        &self.ids
    }

    /// The query with each named id replaced by `expansions[id]` (ids missing from `expansions` are
    /// dropped from `=~` lists and left alone in `=` matchers, as the original does).
    pub fn rewrite(mut self, expansions: &HashMap<String, Vec<String>>) -> Result<String, RewriteError> {
        let mut written = BTreeSet::new();
        for_each_source_id_matcher(&mut self.expr, &mut |matcher| {
            let ids = expanded(matcher, expansions);
            written.extend(ids.iter().filter(|id| !id.is_empty()).cloned());
            set_ids(matcher, &ids);
        });
        let query = self.expr.to_string();
        // The engine parses the printed text again: check that it names exactly the ids put in.
        let mut reparsed =
            parse_bounded(&query).map_err(|e| RewriteError { query: query.clone(), reason: e.to_string() })?;
        let named = source_ids(&mut reparsed);
        if named != written {
            let reason = format!("names {named:?} instead of {written:?}");
            return Err(RewriteError { query, reason });
        }
        Ok(query)
    }
}

/// What a `source_id` matcher stands for after expansion, in order, without repeats.
fn expanded(matcher: &Matcher, expansions: &HashMap<String, Vec<String>>) -> Vec<String> {
    let mut ids: Vec<String> = match matcher.op {
        MatchOp::Equal => match expansions.get(&matcher.value) {
            Some(ids) => ids.clone(),
            None => vec![matcher.value.clone()],
        },
        MatchOp::Re(_) => matcher.value.split('|').filter_map(|id| expansions.get(id)).flatten().cloned().collect(),
        MatchOp::NotEqual | MatchOp::NotRe(_) => return Vec::new(),
    };
    let mut seen = BTreeSet::new();
    ids.retain(|id| seen.insert(id.clone()));
    ids
}

/// A regular expression to tag a matcher as `=~`. Only the operator is printed; the engine parses the
/// printed query again and reads the value as a literal list (§6.6), so this is never evaluated.
static LIST_MATCHER: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new("^$").expect("a constant regular expression compiles"));

fn set_ids(matcher: &mut Matcher, ids: &[String]) {
    if matches!(matcher.op, MatchOp::NotEqual | MatchOp::NotRe(_)) {
        return;
    }
    matcher.op = if ids.len() > 1 { MatchOp::Re(LIST_MATCHER.clone()) } else { MatchOp::Equal };
    matcher.value = ids.join("|");
}

/// The non-empty ids named by `=` and `=~` `source_id` matchers.
fn source_ids(expr: &mut Expr) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for_each_source_id_matcher(expr, &mut |matcher| match matcher.op {
        MatchOp::Equal => {
            ids.insert(matcher.value.clone());
        }
        MatchOp::Re(_) => ids.extend(matcher.value.split('|').map(str::to_string)),
        MatchOp::NotEqual | MatchOp::NotRe(_) => {}
    });
    ids.retain(|id| !id.is_empty());
    ids
}

fn for_each_source_id_matcher(expr: &mut Expr, f: &mut impl FnMut(&mut Matcher)) {
    fn selector(vs: &mut VectorSelector, f: &mut impl FnMut(&mut Matcher)) {
        let matchers = &mut vs.matchers;
        let all = matchers.matchers.iter_mut().chain(matchers.or_matchers.iter_mut().flatten());
        for matcher in all.filter(|m| m.name == "source_id") {
            f(matcher);
        }
    }
    match expr {
        Expr::Aggregate(e) => {
            for_each_source_id_matcher(&mut e.expr, f);
            if let Some(param) = &mut e.param {
                for_each_source_id_matcher(param, f);
            }
        }
        Expr::Unary(e) => for_each_source_id_matcher(&mut e.expr, f),
        Expr::Binary(e) => {
            for_each_source_id_matcher(&mut e.lhs, f);
            for_each_source_id_matcher(&mut e.rhs, f);
        }
        Expr::Paren(e) => for_each_source_id_matcher(&mut e.expr, f),
        Expr::Subquery(e) => for_each_source_id_matcher(&mut e.expr, f),
        Expr::VectorSelector(vs) => selector(vs, f),
        Expr::MatrixSelector(ms) => selector(&mut ms.vs, f),
        Expr::Call(call) => call.args.args.iter_mut().for_each(|arg| for_each_source_id_matcher(arg, f)),
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// Parses a query after bounding its nesting; a parser panic (it has some on out-of-range numbers,
/// `x[1e400]`) is reported as the parse error it is.
fn parse_bounded(query: &str) -> Result<Expr, QueryError> {
    let count = crate::promql::guard::count_inner_nodes(query);
    if count > MAX_QUERY_NESTING {
        return Err(QueryError::TooComplex { count });
    }
    match std::panic::catch_unwind(|| parser::parse(query)) {
        Ok(Ok(expr)) => Ok(expr),
        Ok(Err(message)) => Err(QueryError::Parse(message)),
        Err(_) => Err(QueryError::Parse("number or duration out of range".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(query: &str) -> Vec<String> {
        SourceIdQuery::parse(query).expect("parses").source_ids().to_vec()
    }

    fn expansions(pairs: &[(&str, &[&str])]) -> HashMap<String, Vec<String>> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect())).collect()
    }

    #[test]
    fn source_ids_come_from_every_selector() {
        let query = r#"sum(rate(cpu{source_id="a"}[1m])) / on() memory{source_id=~"b|c"} + disk{source_id!="d"}"#;
        assert_eq!(ids(query), vec!["a", "b", "c"]);
        assert_eq!(ids(r#"max_over_time(cpu{source_id="s"}[5m:1m])"#), vec!["s"]);
        assert_eq!(ids(r#"topk(2, cpu{source_id="x"}) or -memory{source_id="x"}"#), vec!["x"]);
    }

    #[test]
    fn queries_without_source_ids_or_unparsable_are_errors() {
        assert_eq!(SourceIdQuery::parse("up").unwrap_err(), QueryError::NoSourceIds);
        assert_eq!(SourceIdQuery::parse(r#"up{source_id!="a"}"#).unwrap_err(), QueryError::NoSourceIds);
        assert_eq!(SourceIdQuery::parse(r#"up{source_id=""}"#).unwrap_err(), QueryError::NoSourceIds);
        assert!(matches!(SourceIdQuery::parse("sum("), Err(QueryError::Parse(_))));
        assert!(SourceIdQuery::parse("sum(").unwrap_err().to_string().starts_with("parse error: "));
    }

    #[test]
    fn deep_or_huge_queries_are_refused_without_overflowing_the_stack() {
        let deep = format!("{}up{{source_id=\"a\"}}{}", "(".repeat(5000), ")".repeat(5000));
        assert!(matches!(SourceIdQuery::parse(&deep), Err(QueryError::TooComplex { .. })));
        let long = vec![r#"up{source_id="a"}"#; 1000].join(" + ");
        assert!(matches!(SourceIdQuery::parse(&long), Err(QueryError::TooComplex { .. })));
        assert!(matches!(SourceIdQuery::parse(r#"up{source_id="a"}[1e400s]"#), Err(QueryError::Parse(_))));
    }

    #[test]
    fn equal_becomes_a_list_only_when_several_ids_remain() {
        let query = SourceIdQuery::parse(r#"cpu{source_id="app"} + memory{source_id="solo"}"#).expect("parses");
        let rewritten = query.rewrite(&expansions(&[("app", &["g1", "g2"]), ("solo", &["g3"])])).expect("rewrites");
        assert_eq!(rewritten, r#"cpu{source_id=~"g1|g2"} + memory{source_id="g3"}"#);
        assert_eq!(ids(&rewritten), vec!["g1", "g2", "g3"]);
    }

    #[test]
    fn list_members_are_expanded_in_place_and_deduplicated() {
        let query = SourceIdQuery::parse(r#"sum by (source_id) (cpu{source_id=~"a|b|a", job="x"})"#).expect("parses");
        let rewritten = query.rewrite(&expansions(&[("a", &["g1", "a"]), ("b", &["g1"])])).expect("rewrites");
        assert_eq!(ids(&rewritten), vec!["a", "g1"]);
        assert!(rewritten.contains(r#"source_id=~"g1|a""#), "{rewritten}");
        assert!(rewritten.contains(r#"job="x""#), "{rewritten}");
        let single = SourceIdQuery::parse(r#"cpu{source_id=~"a|b"}"#).expect("parses");
        assert_eq!(
            single.rewrite(&expansions(&[("a", &["g"]), ("b", &[])])).expect("rewrites"),
            r#"cpu{source_id="g"}"#
        );
    }

    #[test]
    fn the_rest_of_the_query_survives_the_rewrite() {
        let query =
            r#"histogram_quantile(0.9, sum by (le) (rate(http{source_id="a", path!~"/x.*"}[5m] offset 1m))) > bool 3"#;
        let rewritten = SourceIdQuery::parse(query)
            .expect("parses")
            .rewrite(&expansions(&[("a", &["g1", "g2"])]))
            .expect("rewrites");
        let reparsed = parser::parse(&rewritten).expect("reparses");
        let expected = parser::parse(&query.replace(r#"source_id="a""#, r#"source_id=~"g1|g2""#)).expect("parses");
        assert_eq!(reparsed.to_string(), expected.to_string());
    }

    #[test]
    fn nesting_count_ignores_strings_and_matchers() {
        assert_eq!(crate::promql::guard::count_inner_nodes(r#"up{source_id=~"a|b-c"}"#), 0);
        assert_eq!(crate::promql::guard::count_inner_nodes(r#"sum(up{a="("}) + 1 and 2"#), 3);
        assert_eq!(crate::promql::guard::count_inner_nodes("# (((\nup"), 0);
    }
}
