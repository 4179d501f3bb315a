//! The aggregation operators over an instant vector: `sum`, `avg`, `min`, `max`, `count`, `group`,
//! `stddev`, `stdvar`, `quantile`, `count_values`, `topk` and `bottomk`, each by or without labels.
//!
//! The arithmetic is Prometheus 2's `aggregation`: `avg` is an incremental mean (so large values do
//! not overflow), `stddev` and `stdvar` are Welford's online variance, NaN wins `min` and `max` only
//! when every value of the group is NaN. Every operator is one pass over its input (plus a sort per
//! group for `quantile`, `topk` and `bottomk`), so its work is linear in the input, up to a log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::eval::Sample;
use super::functions::quantile;
use super::json::format_value;
use super::plan::{is_label_name, AggOp, Grouping};
use super::PromQLError;

/// The parameter of an aggregation, evaluated.
pub(crate) enum AggParam<'p> {
    None,
    Scalar(f64),
    String(&'p str),
}

/// The labels of `labels` that identify its group.
fn group_labels(labels: &BTreeMap<String, String>, grouping: &Grouping) -> BTreeMap<String, String> {
    match grouping {
        Grouping::By(names) => {
            labels.iter().filter(|(name, _)| names.contains(name)).map(|(k, v)| (k.clone(), v.clone())).collect()
        }
        Grouping::Without(names) => labels
            .iter()
            .filter(|(name, _)| !names.contains(name) && name.as_str() != "__name__")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

/// Running state of one group.
struct Group {
    labels: BTreeMap<String, String>,
    /// Sum for `sum`, minimum or maximum for `min` and `max`, Welford's sum of squared differences
    /// for `stddev` and `stdvar`.
    value: f64,
    mean: f64,
    count: usize,
    /// The values, for `quantile`.
    values: Vec<f64>,
}

/// Evaluates `op` over `samples`; groups come out in order of first appearance.
pub(crate) fn aggregate(
    op: AggOp,
    param: AggParam<'_>,
    samples: Vec<Sample>,
    grouping: &Grouping,
) -> Result<Vec<Sample>, PromQLError> {
    match op {
        AggOp::Topk | AggOp::Bottomk => {
            let AggParam::Scalar(k) = param else {
                return Err(PromQLError::Execution("topk/bottomk expects a scalar parameter".to_owned()));
            };
            return top_k(samples, k, grouping, op == AggOp::Topk);
        }
        AggOp::CountValues => {
            let AggParam::String(label) = param else {
                return Err(PromQLError::Execution("count_values expects a string parameter".to_owned()));
            };
            return count_values(samples, label, grouping);
        }
        _ => {}
    }
    let q = match (op, param) {
        (AggOp::Quantile, AggParam::Scalar(q)) => q,
        (AggOp::Quantile, _) => {
            return Err(PromQLError::Execution("quantile expects a scalar parameter".to_owned()));
        }
        _ => f64::NAN,
    };

    let mut index: HashMap<BTreeMap<String, String>, usize> = HashMap::new();
    let mut groups: Vec<Group> = Vec::new();
    for sample in samples {
        let key = group_labels(&sample.labels, grouping);
        let v = sample.v;
        let slot = match index.get(&key) {
            Some(&slot) => slot,
            None => {
                index.insert(key.clone(), groups.len());
                let value = match op {
                    AggOp::Stddev | AggOp::Stdvar => 0.0,
                    _ => v,
                };
                let values = if op == AggOp::Quantile { vec![v] } else { Vec::new() };
                groups.push(Group { labels: key, value, mean: v, count: 1, values });
                continue;
            }
        };
        let Some(group) = groups.get_mut(slot) else {
            continue;
        };
        group.count += 1;
        let count = group.count as f64;
        match op {
            AggOp::Sum => group.value += v,
            AggOp::Avg => {
                // An infinite mean stays unless an opposite infinity or a NaN arrives.
                let keep_infinite = group.mean.is_infinite()
                    && ((v.is_infinite() && (group.mean > 0.0) == (v > 0.0)) || (!v.is_infinite() && !v.is_nan()));
                if !keep_infinite {
                    group.mean += v / count - group.mean / count;
                }
            }
            AggOp::Min => {
                if group.value > v || group.value.is_nan() {
                    group.value = v;
                }
            }
            AggOp::Max => {
                if group.value < v || group.value.is_nan() {
                    group.value = v;
                }
            }
            AggOp::Stddev | AggOp::Stdvar => {
                let delta = v - group.mean;
                group.mean += delta / count;
                group.value += delta * (v - group.mean);
            }
            AggOp::Quantile => group.values.push(v),
            AggOp::Count | AggOp::Group | AggOp::CountValues | AggOp::Topk | AggOp::Bottomk => {}
        }
    }
    Ok(groups
        .into_iter()
        .map(|mut group| {
            let count = group.count as f64;
            let v = match op {
                AggOp::Sum | AggOp::Min | AggOp::Max => group.value,
                AggOp::Avg => group.mean,
                AggOp::Count => count,
                AggOp::Group => 1.0,
                AggOp::Stdvar => group.value / count,
                AggOp::Stddev => (group.value / count).sqrt(),
                AggOp::Quantile => quantile(q, &mut group.values),
                // Handled above.
                AggOp::CountValues | AggOp::Topk | AggOp::Bottomk => f64::NAN,
            };
            Sample { labels: Arc::new(group.labels), v }
        })
        .collect())
}

/// `count_values("label", v)`: per group and distinct value, how many samples have it, the value
/// (formatted as Prometheus formats sample values) in `label`.
fn count_values(samples: Vec<Sample>, label: &str, grouping: &Grouping) -> Result<Vec<Sample>, PromQLError> {
    if !is_label_name(label) {
        return Err(PromQLError::Execution(format!("invalid label name {label:?}")));
    }
    // `by` groups by the value label too; `without` keeps it unless it is listed.
    let grouping = match grouping {
        Grouping::By(names) => Grouping::By(names.iter().cloned().chain([label.to_owned()]).collect()),
        Grouping::Without(names) => Grouping::Without(names.clone()),
    };
    let mut index: HashMap<BTreeMap<String, String>, usize> = HashMap::new();
    let mut groups: Vec<(BTreeMap<String, String>, usize)> = Vec::new();
    for sample in samples {
        let mut labels = (*sample.labels).clone();
        labels.insert(label.to_owned(), format_value(sample.v));
        let key = group_labels(&labels, &grouping);
        match index.get(&key) {
            Some(&slot) => {
                if let Some((_, count)) = groups.get_mut(slot) {
                    *count += 1;
                }
            }
            None => {
                index.insert(key.clone(), groups.len());
                groups.push((key, 1));
            }
        }
    }
    Ok(groups.into_iter().map(|(labels, count)| Sample { labels: Arc::new(labels), v: count as f64 }).collect())
}

/// `topk` (`largest`) and `bottomk`: per group, the `k` samples with the largest (smallest) values,
/// in that order, with their own labels. NaN sorts last either way; `k < 1` selects nothing.
fn top_k(samples: Vec<Sample>, k: f64, grouping: &Grouping, largest: bool) -> Result<Vec<Sample>, PromQLError> {
    if k.is_nan() {
        return Err(PromQLError::Execution("parameter value is NaN".to_owned()));
    }
    if k < 1.0 {
        return Ok(Vec::new());
    }
    // Saturating float-to-int conversion; `k` is positive and no group is larger than `usize::MAX`.
    let k = k as usize;
    let mut index: HashMap<BTreeMap<String, String>, usize> = HashMap::new();
    let mut groups: Vec<Vec<Sample>> = Vec::new();
    for sample in samples {
        let key = group_labels(&sample.labels, grouping);
        let slot = *index.entry(key).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        if let Some(group) = groups.get_mut(slot) {
            group.push(sample);
        }
    }
    let mut out = Vec::new();
    for mut group in groups {
        group.sort_by(|a, b| {
            let order = match (a.v.is_nan(), b.v.is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => return std::cmp::Ordering::Greater,
                (false, true) => return std::cmp::Ordering::Less,
                (false, false) => a.v.total_cmp(&b.v),
            };
            if largest {
                order.reverse()
            } else {
                order
            }
        });
        group.truncate(k);
        out.extend(group);
    }
    Ok(out)
}
