//! Reads what a plan's selectors need from the [`MetricSource`] and builds their series.
//!
//! Each source id is read once per query, over the union of the windows of the selectors that name
//! it: from the earliest instant a selector can look at (its reference time minus its range, or minus
//! the lookback delta for an instant selector, minus one more second as Log Cache does, §6.6) to the
//! end of the last second it can see (samples are stamped with the truncated second).

use bytes::Bytes;
use std::collections::HashMap;

use super::eval::{Deadline, SampleBudget};
use super::plan::{Plan, Selector};
use super::series::{build_series, SeriesFilter};
use super::{MetricSource, PromQLError, MAX_SOURCES_PER_QUERY};

/// What a query's selectors see besides their own windows (planned in `Selector::eval_window_ms`).
pub(crate) struct QueryWindow {
    /// How far back an instant selector looks, in ms.
    pub lookback_ms: i64,
}

/// Fills the `series` of every selector of `plan`.
pub(crate) fn load_series(
    plan: &mut Plan,
    source: &dyn MetricSource,
    window: &QueryWindow,
    deadline: Deadline,
    budget: &mut SampleBudget,
) -> Result<(), PromQLError> {
    let windows: Vec<(i64, i64)> = plan.selectors.iter().map(|selector| selector_window_ns(selector, window)).collect();

    // The union of the windows of each source id, in first-mention order.
    let mut reads: Vec<(&str, i64, i64)> = Vec::new();
    let mut read_index: HashMap<&str, usize> = HashMap::new();
    for (selector, &(start_ns, end_ns)) in plan.selectors.iter().zip(&windows) {
        for id in &selector.source_ids {
            match read_index.get(id.as_str()).and_then(|&i| reads.get_mut(i)) {
                Some((_, start, end)) => {
                    *start = (*start).min(start_ns);
                    *end = (*end).max(end_ns);
                }
                None => {
                    read_index.insert(id, reads.len());
                    reads.push((id, start_ns, end_ns));
                }
            }
        }
    }

    if reads.len() > MAX_SOURCES_PER_QUERY {
        return Err(PromQLError::BadQuery(format!(
            "query names {} source ids, at most {MAX_SOURCES_PER_QUERY} allowed",
            reads.len()
        )));
    }

    // Every envelope read is charged as a sample before any is decoded: a query over more than its
    // budget fails having decoded nothing, and what it holds meanwhile are slices of the store.
    let mut envelopes: HashMap<String, Vec<Bytes>> = HashMap::with_capacity(reads.len());
    let mut credit = 0usize;
    for (id, start_ns, end_ns) in reads {
        deadline.check()?;
        let read = source.read_metric_envelopes(id, start_ns, end_ns, budget.remaining());
        budget.charge(read.len())?;
        credit += read.len();
        envelopes.insert(id.to_owned(), read);
    }
    deadline.check()?;
    // The samples built are charged too, less what their envelopes already paid: a gauge yields a
    // sample per key, so a query pays for whichever is larger.

    for (selector, (start_ns, end_ns)) in plan.selectors.iter_mut().zip(windows) {
        let sources: Vec<&[Bytes]> =
            selector.source_ids.iter().filter_map(|id| envelopes.get(id).map(Vec::as_slice)).collect();
        let filter = SeriesFilter { name: selector.name.as_deref(), labels: &selector.labels, start_ns, end_ns };
        let series = build_series(&sources, &filter);
        let points: usize = series.iter().map(|s| s.points.len()).sum();
        budget.charge(points.saturating_sub(credit))?;
        credit = credit.saturating_sub(points);
        selector.series = series;
    }
    Ok(())
}

/// The envelope timestamps `[start_ns, end_ns]` a selector can see during the query.
fn selector_window_ns(selector: &Selector, window: &QueryWindow) -> (i64, i64) {
    // The query's instants, or inside a subquery the instants of its steps.
    let (first_eval, last_eval) = selector.eval_window_ms;
    let first_ref = selector.reference_time(first_eval);
    let last_ref = selector.reference_time(last_eval);
    let reach_ms = selector.range_ms.unwrap_or(window.lookback_ms);
    let start_ms = first_ref.saturating_sub(reach_ms).saturating_sub(1000);
    // Every envelope whose truncated second is at or before `last_ref`.
    let end_ns = last_ref.div_euclid(1000).saturating_add(1).saturating_mul(1_000_000_000).saturating_sub(1);
    (start_ms.saturating_mul(1_000_000), end_ns)
}
