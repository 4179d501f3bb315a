//! A bound on how deeply a query can nest, checked on the raw text before parsing.
//!
//! The parser, the planner and the evaluator all recurse over the syntax tree, so a query such as
//! `1+1+1+…` or `abs(abs(…))` thousands of levels deep would overflow a 2 MiB blocking-thread stack and
//! abort the process. Every inner node of the tree needs an operator or an opening parenthesis in the
//! text, so their count bounds the tree's depth. Quoted strings (such as long `source_id` lists) and
//! comments do not count.

use super::PromQLError;

/// The most distinct source ids a query may name (a dashboard over every app of an org names
/// hundreds). Each is one read of the store or its owner; what is read is charged to the budget.
pub const MAX_SOURCES_PER_QUERY: usize = 2000;

/// The most source ids a caller without an admin scope may have checked in one query: each is a
/// round trip to Cloud Controller (cached afterwards).
pub const MAX_CHECKED_SOURCES_PER_QUERY: usize = 100;

/// The most operators plus opening parentheses a query may hold.
/// At this bound every kind of nesting (functions, aggregations, subqueries, label functions) fits
/// a 2 MiB blocking thread in a debug build, which `every_kind_of_nesting_fits_a_test_thread_stack_at_the_bound`
/// checks; the planner and evaluator keep their recursive frames small for it. Release frames are
/// several times smaller.
pub(crate) const MAX_QUERY_NESTING: usize = 200;

/// Rejects a query whose operators and opening parentheses exceed [`MAX_QUERY_NESTING`].
pub(crate) fn check_nesting(query: &str) -> Result<(), PromQLError> {
    let count = count_inner_nodes(query);
    if count > MAX_QUERY_NESTING {
        return Err(PromQLError::BadQuery(format!(
            "query is too complex: {count} operators and parentheses, at most {MAX_QUERY_NESTING} allowed"
        )));
    }
    Ok(())
}

/// Counts opening parentheses, operator characters and the word operators outside strings and
/// comments: an upper bound on the depth of the query's syntax tree.
pub(crate) fn count_inner_nodes(query: &str) -> usize {
    let mut count = 0;
    let mut chars = query.chars();
    let mut word = String::new();
    // Inside `{…}` (label matchers) and `[…]` (ranges) operator characters do not nest anything.
    let mut in_matchers_or_range = false;
    while let Some(c) = chars.next() {
        // Each character, not each operator: `----x` nests four unary minuses.
        if "+-*/%^=!<>".contains(c) && !in_matchers_or_range {
            count += 1;
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            word.push(c.to_ascii_lowercase());
            continue;
        }
        if matches!(word.as_str(), "and" | "or" | "unless" | "atan2") {
            count += 1;
        }
        word.clear();
        match c {
            '(' => count += 1,
            '{' | '[' => in_matchers_or_range = true,
            '}' | ']' => in_matchers_or_range = false,
            '#' => {
                // A comment runs to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            quote @ ('"' | '\'' | '`') => {
                // A string runs to the same quote; only backquoted strings have no escapes.
                while let Some(c) = chars.next() {
                    if c == '\\' && quote != '`' {
                        chars.next();
                    } else if c == quote {
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    count
}
