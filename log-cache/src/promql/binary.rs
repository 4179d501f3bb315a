//! Binary operators: arithmetic, comparisons (filtering or `bool`), `atan2` and the set operators
//! `and`, `or`, `unless`, between scalars and instant vectors, with Prometheus' vector matching
//! (`on`, `ignoring`, `group_left`, `group_right`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::eval::{type_error, Sample, Value};
use super::functions::apply_binop;
use super::plan::{BinOp, Cardinality, Matching};
use super::PromQLError;

pub(crate) fn binary<'a>(
    op: BinOp,
    lhs: Value<'a>,
    rhs: Value<'a>,
    return_bool: bool,
    matching: &Matching,
) -> Result<Value<'a>, PromQLError> {
    let to_bool = |keep: bool| if keep { 1.0 } else { 0.0 };
    Ok(match (lhs, rhs) {
        (Value::Scalar(l), Value::Scalar(r)) => {
            let (v, keep) = apply_binop(op, l, r);
            // The parser only accepts comparisons of scalars with `bool`.
            Value::Scalar(if op.is_comparison() { to_bool(keep) } else { v })
        }
        (Value::Vector(l), Value::Scalar(r)) => Value::Vector(vector_scalar(op, l, r, false, return_bool)),
        (Value::Scalar(l), Value::Vector(r)) => Value::Vector(vector_scalar(op, r, l, true, return_bool)),
        (Value::Vector(l), Value::Vector(r)) => Value::Vector(match op {
            BinOp::And => vector_and(l, r, matching),
            BinOp::Or => vector_or(l, r, matching),
            BinOp::Unless => vector_unless(l, r, matching),
            _ => vector_vector(op, l, r, return_bool, matching)?,
        }),
        _ => return Err(type_error("a binary operator", "scalars or instant vectors on both sides")),
    })
}

/// A vector and a scalar; `scalar_on_left` when the query reads `scalar op vector`. Comparisons keep
/// the vector's value, whichever side it is on.
fn vector_scalar(op: BinOp, samples: Vec<Sample>, scalar: f64, scalar_on_left: bool, return_bool: bool) -> Vec<Sample> {
    samples
        .into_iter()
        .filter_map(|sample| {
            let (l, r) = if scalar_on_left { (scalar, sample.v) } else { (sample.v, scalar) };
            let (mut v, mut keep) = apply_binop(op, l, r);
            if op.is_comparison() {
                v = sample.v;
            }
            if return_bool {
                v = if keep { 1.0 } else { 0.0 };
                keep = true;
            }
            keep.then_some(Sample { labels: sample.labels, v })
        })
        .collect()
}

/// The (name, value) pairs two samples must share to match.
type Signature<'l> = Vec<(&'l str, &'l str)>;

/// The matching signature of a label set: the `on` labels, or all but the `ignoring` labels.
fn signature<'l>(labels: &'l BTreeMap<String, String>, matching: &Matching) -> Signature<'l> {
    labels
        .iter()
        .filter(|(name, _)| {
            if matching.on {
                matching.labels.contains(name)
            } else {
                !matching.labels.contains(name) && name.as_str() != "__name__"
            }
        })
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn format_labels(labels: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

/// One-to-one, many-to-one (`group_left`) and one-to-many (`group_right`) matching, as Prometheus'
/// `VectorBinop`.
fn vector_vector(
    op: BinOp,
    lhs: Vec<Sample>,
    rhs: Vec<Sample>,
    return_bool: bool,
    matching: &Matching,
) -> Result<Vec<Sample>, PromQLError> {
    // The right side is always the "one" side below; one-to-many swaps the sides and the operands.
    let swapped = matches!(matching.card, Cardinality::OneToMany(_));
    let (many, one) = if swapped { (rhs, lhs) } else { (lhs, rhs) };
    let include: &[String] = match &matching.card {
        Cardinality::ManyToOne(labels) | Cardinality::OneToMany(labels) => labels,
        Cardinality::OneToOne | Cardinality::ManyToMany => &[],
    };
    let one_to_one = matches!(matching.card, Cardinality::OneToOne | Cardinality::ManyToMany);

    let mut one_side: HashMap<Signature<'_>, &Sample> = HashMap::new();
    for sample in &one {
        let sig = signature(&sample.labels, matching);
        if let Some(previous) = one_side.get(&sig) {
            let side = if swapped { "left" } else { "right" };
            return Err(PromQLError::Execution(format!(
                "found duplicate series for the match group {} on the {side} hand-side of the \
                 operation: [{}, {}];many-to-many matching not allowed: matching labels must be \
                 unique on one side",
                format_labels(&sig.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>()),
                format_labels(&sample.labels),
                format_labels(&previous.labels),
            )));
        }
        one_side.insert(sig, sample);
    }

    let mut matched: HashMap<Signature<'_>, Vec<BTreeMap<String, String>>> = HashMap::new();
    let mut out = Vec::new();
    for sample in &many {
        let sig = signature(&sample.labels, matching);
        let Some(other) = one_side.get(&sig) else {
            continue;
        };
        let (l, r) = if swapped { (other.v, sample.v) } else { (sample.v, other.v) };
        let (mut v, keep) = apply_binop(op, l, r);
        if return_bool {
            v = if keep { 1.0 } else { 0.0 };
        } else if !keep {
            continue;
        }
        let labels = result_labels(&sample.labels, &other.labels, matching, one_to_one, include);
        let seen = matched.entry(sig).or_default();
        if one_to_one {
            if !seen.is_empty() {
                return Err(PromQLError::Execution(
                    "multiple matches for labels: many-to-one matching must be explicit \
                     (group_left/group_right)"
                        .to_owned(),
                ));
            }
        } else if seen.contains(&labels) {
            return Err(PromQLError::Execution(
                "multiple matches for labels: grouping labels must ensure unique matches".to_owned(),
            ));
        }
        seen.push(labels.clone());
        out.push(Sample { labels: Arc::new(labels), v });
    }
    Ok(out)
}

/// Prometheus' `resultMetric`: one-to-one keeps only the `on` labels (or drops the `ignoring`
/// ones); `group_*` labels are copied from the "one" side.
fn result_labels(
    many: &BTreeMap<String, String>,
    one: &BTreeMap<String, String>,
    matching: &Matching,
    one_to_one: bool,
    include: &[String],
) -> BTreeMap<String, String> {
    let mut labels = many.clone();
    if one_to_one {
        labels.retain(|name, _| matching.on == matching.labels.contains(name));
    }
    for name in include {
        match one.get(name).filter(|v| !v.is_empty()) {
            Some(value) => {
                labels.insert(name.clone(), value.clone());
            }
            None => {
                labels.remove(name);
            }
        }
    }
    labels
}

/// `and`: left samples whose signature appears on the right.
fn vector_and(lhs: Vec<Sample>, rhs: Vec<Sample>, matching: &Matching) -> Vec<Sample> {
    let right: HashSet<_> = rhs.iter().map(|s| signature(&s.labels, matching)).collect();
    lhs.into_iter().filter(|s| right.contains(&signature(&s.labels, matching))).collect()
}

/// `or`: every left sample, then the right samples whose signature does not appear on the left.
fn vector_or(lhs: Vec<Sample>, rhs: Vec<Sample>, matching: &Matching) -> Vec<Sample> {
    let left: HashSet<_> = lhs.iter().map(|s| signature(&s.labels, matching)).collect();
    let extra: Vec<Sample> = rhs.into_iter().filter(|s| !left.contains(&signature(&s.labels, matching))).collect();
    let mut out = lhs;
    out.extend(extra);
    out
}

/// `unless`: left samples whose signature does not appear on the right.
fn vector_unless(lhs: Vec<Sample>, rhs: Vec<Sample>, matching: &Matching) -> Vec<Sample> {
    let right: HashSet<_> = rhs.iter().map(|s| signature(&s.labels, matching)).collect();
    lhs.into_iter().filter(|s| !right.contains(&signature(&s.labels, matching))).collect()
}
