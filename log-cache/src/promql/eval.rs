//! Evaluates a [`Plan`] at one instant, with Prometheus semantics.
//!
//! A range query evaluates the same tree once per step. Selectors borrow their loaded series, so a
//! matrix selector costs a binary search, not a copy. Every evaluation checks the query deadline and
//! charges the samples it selects to the query's sample budget.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::functions::{
    apply_binop, extrapolated_rate, go_max, go_min, instant_value, over_time, round_to_nearest, OverTime,
};
use super::plan::{AggOp, BinOp, Cardinality, Func, Grouping, Matching, Node, Plan, Selector};
use super::series::{Labels, Point};
use super::PromQLError;

/// The value of an expression at one instant.
pub(crate) enum Value<'a> {
    Scalar(f64),
    /// A string literal; never a query result here (the protocol has no string results).
    String,
    Vector(Vec<Sample>),
    Matrix(Vec<RangeSeries<'a>>),
}

/// One element of an instant vector.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Sample {
    pub labels: Labels,
    pub v: f64,
}

/// One element of a range vector: the samples of a series inside the selector's range.
pub(crate) struct RangeSeries<'a> {
    pub labels: Labels,
    pub points: &'a [Point],
}

/// Counts the samples a query touches against its bound.
pub(crate) struct SampleBudget {
    used: usize,
    max: usize,
}

impl SampleBudget {
    pub fn new(max: usize) -> Self {
        Self { used: 0, max }
    }

    /// Samples still allowed.
    pub fn remaining(&self) -> usize {
        self.max.saturating_sub(self.used)
    }

    pub fn charge(&mut self, samples: usize) -> Result<(), PromQLError> {
        self.used = self.used.saturating_add(samples);
        if self.used > self.max {
            return Err(PromQLError::TooManySamples);
        }
        Ok(())
    }
}

/// When a query must have finished; checked between evaluation steps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline(Option<Instant>);

impl Deadline {
    /// `timeout` from now; a timeout too large for the clock means no deadline.
    pub fn after(timeout: Duration) -> Self {
        Self(Instant::now().checked_add(timeout))
    }

    pub fn check(&self) -> Result<(), PromQLError> {
        match self.0 {
            Some(deadline) if Instant::now() >= deadline => Err(PromQLError::Timeout),
            _ => Ok(()),
        }
    }
}

/// Evaluation state shared by every step of one query.
pub(crate) struct Evaluator<'a> {
    pub plan: &'a Plan,
    pub lookback_ms: i64,
    pub deadline: Deadline,
    pub budget: SampleBudget,
}

impl<'a> Evaluator<'a> {
    /// Evaluates `node` at instant `t` (ms).
    pub fn eval(&mut self, node: &'a Node, t: i64) -> Result<Value<'a>, PromQLError> {
        self.deadline.check()?;
        Ok(match node {
            Node::Number(v) => Value::Scalar(*v),
            Node::String => Value::String,
            Node::VectorSelector(id) => Value::Vector(self.select_instant(self.selector(*id)?, t)?),
            Node::MatrixSelector(id) => Value::Matrix(self.select_range(self.selector(*id)?, t)?),
            Node::Negate(inner) => match self.eval(inner, t)? {
                Value::Scalar(v) => Value::Scalar(-v),
                Value::Vector(samples) => Value::Vector(map_values(samples, |v| -v)),
                _ => return Err(type_error("unary minus", "a scalar or an instant vector")),
            },
            Node::Call { func, args } => self.call(*func, args, t)?,
            Node::Aggregate { op, param, grouping, expr } => {
                let samples = self.eval_vector(expr, t)?;
                match op {
                    AggOp::Topk | AggOp::Bottomk => {
                        let Some(param) = param else {
                            return Err(type_error("topk/bottomk", "a parameter"));
                        };
                        let k = self.eval_scalar(param, t)?;
                        Value::Vector(top_k(samples, k, grouping, *op == AggOp::Topk)?)
                    }
                    _ => Value::Vector(aggregate(*op, samples, grouping)),
                }
            }
            Node::Binary { op, lhs, rhs, return_bool, matching } => {
                let lhs = self.eval(lhs, t)?;
                let rhs = self.eval(rhs, t)?;
                binary(*op, lhs, rhs, *return_bool, matching)?
            }
        })
    }

    fn selector(&self, id: usize) -> Result<&'a Selector, PromQLError> {
        self.plan.selectors.get(id).ok_or_else(|| PromQLError::Execution(format!("unknown selector {id}")))
    }

    fn eval_scalar(&mut self, node: &'a Node, t: i64) -> Result<f64, PromQLError> {
        match self.eval(node, t)? {
            Value::Scalar(v) => Ok(v),
            _ => Err(type_error("this argument", "a scalar")),
        }
    }

    fn eval_vector(&mut self, node: &'a Node, t: i64) -> Result<Vec<Sample>, PromQLError> {
        match self.eval(node, t)? {
            Value::Vector(samples) => Ok(samples),
            _ => Err(type_error("this argument", "an instant vector")),
        }
    }

    /// An instant vector selector: per series, the latest sample within the lookback window
    /// `[t_ref − lookback, t_ref]` (inclusive both ends, as Prometheus 2.x).
    fn select_instant(&mut self, selector: &'a Selector, t: i64) -> Result<Vec<Sample>, PromQLError> {
        let t_ref = selector.reference_time(t);
        let oldest = t_ref.saturating_sub(self.lookback_ms);
        let mut out = Vec::new();
        for series in &selector.series {
            let end = series.points.partition_point(|p| p.t <= t_ref);
            let latest = end.checked_sub(1).and_then(|i| series.points.get(i));
            if let Some(point) = latest.filter(|p| p.t >= oldest) {
                out.push(Sample { labels: series.labels.clone(), v: point.v });
            }
        }
        self.budget.charge(out.len())?;
        Ok(out)
    }

    /// A matrix selector: per series, the samples in `[t_ref − range, t_ref]`; empty series are dropped.
    fn select_range(&mut self, selector: &'a Selector, t: i64) -> Result<Vec<RangeSeries<'a>>, PromQLError> {
        let t_ref = selector.reference_time(t);
        let oldest = t_ref.saturating_sub(selector.range_ms.unwrap_or(0));
        let mut out = Vec::new();
        let mut touched = 0;
        for series in &selector.series {
            let start = series.points.partition_point(|p| p.t < oldest);
            let end = series.points.partition_point(|p| p.t <= t_ref);
            match series.points.get(start..end) {
                Some(points) if !points.is_empty() => {
                    touched += points.len();
                    out.push(RangeSeries { labels: series.labels.clone(), points });
                }
                _ => {}
            }
        }
        self.budget.charge(touched)?;
        Ok(out)
    }

    fn call(&mut self, func: Func, args: &'a [Node], t: i64) -> Result<Value<'a>, PromQLError> {
        let range_kernel: Option<RangeKernel> = match func {
            Func::Rate => Some(|p, start, end| extrapolated_rate(p, start, end, true, true)),
            Func::Increase => Some(|p, start, end| extrapolated_rate(p, start, end, true, false)),
            Func::Delta => Some(|p, start, end| extrapolated_rate(p, start, end, false, false)),
            Func::Irate => Some(|p, _, _| instant_value(p, true)),
            Func::Idelta => Some(|p, _, _| instant_value(p, false)),
            Func::AvgOverTime => Some(|p, _, _| over_time(OverTime::Avg, p)),
            Func::MinOverTime => Some(|p, _, _| over_time(OverTime::Min, p)),
            Func::MaxOverTime => Some(|p, _, _| over_time(OverTime::Max, p)),
            Func::SumOverTime => Some(|p, _, _| over_time(OverTime::Sum, p)),
            Func::CountOverTime => Some(|p, _, _| over_time(OverTime::Count, p)),
            Func::LastOverTime => Some(|p, _, _| over_time(OverTime::Last, p)),
            _ => None,
        };
        if let Some(kernel) = range_kernel {
            let [Node::MatrixSelector(id)] = args else {
                return Err(type_error("this function", "a range vector selector"));
            };
            let selector = self.selector(*id)?;
            let range_end = selector.reference_time(t);
            let range_start = range_end.saturating_sub(selector.range_ms.unwrap_or(0));
            let out = self
                .select_range(selector, t)?
                .into_iter()
                .filter_map(|series| {
                    kernel(series.points, range_start, range_end).map(|v| Sample { labels: series.labels, v })
                })
                .collect();
            return Ok(Value::Vector(out));
        }

        Ok(match func {
            Func::Time => Value::Scalar(t as f64 / 1000.0),
            Func::Vector => {
                let v = self.optional_scalar_arg(args, 0, f64::NAN, t)?;
                Value::Vector(vec![Sample { labels: Arc::default(), v }])
            }
            Func::Scalar => {
                let samples = self.first_vector_arg(args, t)?;
                match samples.as_slice() {
                    [only] => Value::Scalar(only.v),
                    _ => Value::Scalar(f64::NAN),
                }
            }
            Func::Abs => Value::Vector(map_values(self.first_vector_arg(args, t)?, f64::abs)),
            Func::Ceil => Value::Vector(map_values(self.first_vector_arg(args, t)?, f64::ceil)),
            Func::Floor => Value::Vector(map_values(self.first_vector_arg(args, t)?, f64::floor)),
            Func::Round => {
                let samples = self.first_vector_arg(args, t)?;
                let to_nearest = self.optional_scalar_arg(args, 1, 1.0, t)?;
                Value::Vector(map_values(samples, |v| round_to_nearest(v, to_nearest)))
            }
            Func::Clamp => {
                let samples = self.first_vector_arg(args, t)?;
                let min = self.optional_scalar_arg(args, 1, f64::NAN, t)?;
                let max = self.optional_scalar_arg(args, 2, f64::NAN, t)?;
                if max < min {
                    Value::Vector(Vec::new())
                } else {
                    Value::Vector(map_values(samples, |v| go_max(min, go_min(max, v))))
                }
            }
            Func::ClampMin => {
                let samples = self.first_vector_arg(args, t)?;
                let min = self.optional_scalar_arg(args, 1, f64::NAN, t)?;
                Value::Vector(map_values(samples, |v| go_max(min, v)))
            }
            Func::ClampMax => {
                let samples = self.first_vector_arg(args, t)?;
                let max = self.optional_scalar_arg(args, 1, f64::NAN, t)?;
                Value::Vector(map_values(samples, |v| go_min(max, v)))
            }
            // Handled by the range kernels above.
            Func::Rate
            | Func::Irate
            | Func::Increase
            | Func::Delta
            | Func::Idelta
            | Func::AvgOverTime
            | Func::MinOverTime
            | Func::MaxOverTime
            | Func::SumOverTime
            | Func::CountOverTime
            | Func::LastOverTime => return Err(type_error("this function", "a range vector")),
        })
    }

    fn first_vector_arg(&mut self, args: &'a [Node], t: i64) -> Result<Vec<Sample>, PromQLError> {
        match args.first() {
            Some(node) => self.eval_vector(node, t),
            None => Err(type_error("this function", "an instant vector argument")),
        }
    }

    fn optional_scalar_arg(
        &mut self,
        args: &'a [Node],
        index: usize,
        default: f64,
        t: i64,
    ) -> Result<f64, PromQLError> {
        match args.get(index) {
            Some(node) => self.eval_scalar(node, t),
            None => Ok(default),
        }
    }
}

/// A function of the samples of a range and the range's `[start, end]` (ms).
type RangeKernel = fn(&[Point], i64, i64) -> Option<f64>;

fn type_error(what: &str, expected: &str) -> PromQLError {
    PromQLError::Execution(format!("{what} expects {expected}"))
}

fn map_values(mut samples: Vec<Sample>, f: impl Fn(f64) -> f64) -> Vec<Sample> {
    for sample in &mut samples {
        sample.v = f(sample.v);
    }
    samples
}

// === aggregation ===

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

/// Running state of one group of `sum`, `avg`, `min`, `max` or `count`.
struct Accumulator {
    labels: BTreeMap<String, String>,
    sum: f64,
    count: usize,
    min: f64,
    max: f64,
}

/// `sum`, `avg`, `min`, `max`, `count`; groups come out in order of first appearance.
fn aggregate(op: AggOp, samples: Vec<Sample>, grouping: &Grouping) -> Vec<Sample> {
    let mut index: HashMap<BTreeMap<String, String>, usize> = HashMap::new();
    let mut groups: Vec<Accumulator> = Vec::new();
    for sample in samples {
        let key = group_labels(&sample.labels, grouping);
        let slot = *index.entry(key).or_insert_with_key(|key| {
            groups.push(Accumulator { labels: key.clone(), sum: 0.0, count: 0, min: f64::NAN, max: f64::NAN });
            groups.len() - 1
        });
        let Some(group) = groups.get_mut(slot) else {
            continue;
        };
        group.sum += sample.v;
        group.count += 1;
        // As Prometheus: NaN only wins when every value of the group is NaN.
        if sample.v < group.min || group.min.is_nan() {
            group.min = sample.v;
        }
        if sample.v > group.max || group.max.is_nan() {
            group.max = sample.v;
        }
    }
    groups
        .into_iter()
        .map(|group| {
            let v = match op {
                AggOp::Sum => group.sum,
                AggOp::Avg => group.sum / group.count as f64,
                AggOp::Min => group.min,
                AggOp::Max => group.max,
                AggOp::Count => group.count as f64,
                // Not accumulated; `top_k` handles them.
                AggOp::Topk | AggOp::Bottomk => f64::NAN,
            };
            Sample { labels: Arc::new(group.labels), v }
        })
        .collect()
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

// === binary operators ===

fn binary<'a>(
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
