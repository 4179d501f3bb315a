//! Evaluates a [`Plan`] at one instant, with Prometheus semantics.
//!
//! A range query evaluates the same tree once per step. Selectors borrow their loaded series, so a
//! matrix selector costs a binary search, not a copy. Every evaluation checks the query deadline and
//! charges the samples it selects to the query's sample budget.
//!
//! A subquery evaluates its inside at the multiples of its step in its range. Those instants are
//! absolute, so consecutive evaluations (the steps of a range query, or of an enclosing subquery)
//! share most of them: each subquery keeps the inner results of the instants still in its range and
//! evaluates only the new ones, which makes a range query over a subquery cost what Prometheus' does
//! (one inner evaluation per distinct instant) rather than one per instant and step. Every inner
//! evaluation is charged four samples plus its result (see [`SUBQUERY_STEP_COST`]), and every point of the range vector assembled
//! at a step is charged as a matrix selector's are.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::f64::consts::PI;
use std::sync::Arc;
use std::time::{Duration, Instant};

use regex::Regex;

use super::aggregate::{aggregate, AggParam};
use super::binary::binary;
use super::calendar::{date_field, go_float_to_int64, DateField};
use super::functions::{
    deriv, double_exponential_smoothing, extrapolated_rate, go_max, go_min, instant_value, over_time, predict_linear,
    quantile, round_to_nearest, sgn, OverTime,
};
use super::histogram::{bucket_quantile, Bucket};
use super::plan::{AggOp, BinOp, Func, Grouping, Matching, Node, Plan, Selector, Subquery};
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

/// One element of a range vector: the samples of a series inside the selector's range (borrowed
/// from the loaded series), or a subquery's points (computed).
pub(crate) struct RangeSeries<'a> {
    pub labels: Labels,
    pub points: Cow<'a, [Point]>,
}

/// A range vector and the range `[start, end]` (ms) it covers, which `rate` and friends extrapolate to.
pub(crate) struct RangeArg<'a> {
    series: Vec<RangeSeries<'a>>,
    start: i64,
    end: i64,
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

/// What one inner step of a subquery is charged, in samples: its entry in the subquery's map of
/// steps takes about 64 bytes, four samples' worth (a sample is 16), so that the budget bounds
/// memory even when every step selects nothing.
const SUBQUERY_STEP_COST: usize = 4;

/// Evaluation state shared by every step of one query.
pub(crate) struct Evaluator<'a> {
    plan: &'a Plan,
    lookback_ms: i64,
    deadline: Deadline,
    pub budget: SampleBudget,
    /// Per subquery, the inner results of the instants of its current range, by instant.
    subquery_steps: Vec<BTreeMap<i64, Vec<Sample>>>,
}

impl<'a> Evaluator<'a> {
    pub fn new(plan: &'a Plan, lookback_ms: i64, deadline: Deadline, budget: SampleBudget) -> Self {
        let subquery_steps = (0..plan.subqueries).map(|_| BTreeMap::new()).collect();
        Self { plan, lookback_ms, deadline, budget, subquery_steps }
    }

    /// Evaluates `node` at instant `t` (ms).
    pub fn eval(&mut self, node: &'a Node, t: i64) -> Result<Value<'a>, PromQLError> {
        self.deadline.check()?;
        match node {
            Node::Number(v) => Ok(Value::Scalar(*v)),
            Node::String(_) => Ok(Value::String),
            Node::VectorSelector(id) => self.vector_selector(*id, t),
            Node::MatrixSelector(_) | Node::Subquery(_) => self.matrix(node, t),
            Node::Negate(inner) => self.negate(inner, t),
            Node::Call { func, args } => self.call(*func, args, t),
            Node::Absent { over_time, arg, labels } => self.absent(*over_time, arg, labels, t),
            Node::LabelReplace { arg, dst, replacement, src, regex } => {
                self.label_replace(arg, dst, replacement, src, regex, t)
            }
            Node::LabelJoin { arg, dst, separator, src } => self.label_join(arg, dst, separator, src, t),
            Node::Aggregate { op, param, grouping, expr } => self.aggregate(*op, param.as_deref(), grouping, expr, t),
            Node::Binary { op, lhs, rhs, return_bool, matching } => {
                self.binary(*op, lhs, rhs, *return_bool, matching, t)
            }
        }
    }

    // The arms of `eval` are methods of their own, and `eval` returns their results as they are: a
    // debug build gives a function one stack slot per temporary of every arm, and every level of a
    // nested query passes through `eval`, whose frame must stay small (see `guard`).

    fn vector_selector(&mut self, id: usize, t: i64) -> Result<Value<'a>, PromQLError> {
        Ok(Value::Vector(self.select_instant(self.selector(id)?, t)?))
    }

    fn matrix(&mut self, node: &'a Node, t: i64) -> Result<Value<'a>, PromQLError> {
        Ok(Value::Matrix(self.eval_range(node, t)?.series))
    }

    fn negate(&mut self, inner: &'a Node, t: i64) -> Result<Value<'a>, PromQLError> {
        match self.eval(inner, t)? {
            Value::Scalar(v) => Ok(Value::Scalar(-v)),
            Value::Vector(samples) => Ok(Value::Vector(map_values(samples, |v| -v))),
            _ => Err(type_error("unary minus", "a scalar or an instant vector")),
        }
    }

    fn aggregate(
        &mut self,
        op: AggOp,
        param: Option<&'a Node>,
        grouping: &Grouping,
        expr: &'a Node,
        t: i64,
    ) -> Result<Value<'a>, PromQLError> {
        let param = match param {
            None => AggParam::None,
            Some(Node::String(s)) => AggParam::String(s),
            Some(node) => AggParam::Scalar(self.eval_scalar(node, t)?),
        };
        let samples = self.eval_vector(expr, t)?;
        Ok(Value::Vector(aggregate(op, param, samples, grouping)?))
    }

    fn binary(
        &mut self,
        op: BinOp,
        lhs: &'a Node,
        rhs: &'a Node,
        return_bool: bool,
        matching: &Matching,
        t: i64,
    ) -> Result<Value<'a>, PromQLError> {
        let lhs = self.eval(lhs, t)?;
        let rhs = self.eval(rhs, t)?;
        binary(op, lhs, rhs, return_bool, matching)
    }

    fn absent(&mut self, over_time: bool, arg: &'a Node, labels: &Labels, t: i64) -> Result<Value<'a>, PromQLError> {
        let absent =
            if over_time { self.eval_range(arg, t)?.series.is_empty() } else { self.eval_vector(arg, t)?.is_empty() };
        Ok(Value::Vector(if absent { vec![Sample { labels: labels.clone(), v: 1.0 }] } else { Vec::new() }))
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

    /// A range vector argument: a matrix selector or a subquery.
    fn eval_range(&mut self, node: &'a Node, t: i64) -> Result<RangeArg<'a>, PromQLError> {
        match node {
            Node::MatrixSelector(id) => {
                let selector = self.selector(*id)?;
                let end = selector.reference_time(t);
                let start = end.saturating_sub(selector.range_ms.unwrap_or(0));
                Ok(RangeArg { series: self.select_range(selector, t)?, start, end })
            }
            Node::Subquery(subquery) => self.subquery(subquery, t),
            _ => Err(type_error("this function", "a range vector")),
        }
    }

    /// An instant vector selector: per series, the latest sample within the lookback window
    /// `[t_ref − lookback, t_ref]` (inclusive both ends, as Prometheus 2.x), with its own timestamp.
    fn select_instant_points(&mut self, selector: &'a Selector, t: i64) -> Result<Vec<(Labels, Point)>, PromQLError> {
        let t_ref = selector.reference_time(t);
        let oldest = t_ref.saturating_sub(self.lookback_ms);
        let mut out = Vec::new();
        for series in &selector.series {
            let end = series.points.partition_point(|p| p.t <= t_ref);
            let latest = end.checked_sub(1).and_then(|i| series.points.get(i));
            if let Some(point) = latest.filter(|p| p.t >= oldest) {
                out.push((series.labels.clone(), *point));
            }
        }
        self.budget.charge(out.len())?;
        Ok(out)
    }

    fn select_instant(&mut self, selector: &'a Selector, t: i64) -> Result<Vec<Sample>, PromQLError> {
        let points = self.select_instant_points(selector, t)?;
        Ok(points.into_iter().map(|(labels, point)| Sample { labels, v: point.v }).collect())
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
                    out.push(RangeSeries { labels: series.labels.clone(), points: Cow::Borrowed(points) });
                }
                _ => {}
            }
        }
        self.budget.charge(touched)?;
        Ok(out)
    }

    /// A subquery at `t`: its inside at every multiple of its step in `[t_ref − range, t_ref]`,
    /// as a range vector (inclusive both ends, as a matrix selector in Prometheus 2.x).
    fn subquery(&mut self, subquery: &'a Subquery, t: i64) -> Result<RangeArg<'a>, PromQLError> {
        let end = subquery.reference_time(t);
        let start = end.saturating_sub(subquery.range_ms);
        let step = subquery.step_ms.max(1);
        // The first multiple of the step at or after the start.
        let mut first = start.div_euclid(step).saturating_mul(step);
        if first < start {
            first = first.saturating_add(step);
        }
        let Some(steps) = self.subquery_steps.get_mut(subquery.id) else {
            return Err(PromQLError::Execution(format!("unknown subquery {}", subquery.id)));
        };
        // Instants before this range are not needed again while evaluation moves forward (and are
        // recomputed, at their cost, if it does not).
        let mut steps = std::mem::take(steps).split_off(&first);
        let filled = self.fill_subquery_steps(subquery, &mut steps, first, end, step);
        let series = filled.and_then(|()| self.subquery_range(&steps, first, end));
        if let Some(slot) = self.subquery_steps.get_mut(subquery.id) {
            *slot = steps;
        }
        Ok(RangeArg { series: series?, start, end })
    }

    /// The range vector of a subquery's inner results at the instants in `[first, end]`.
    fn subquery_range(
        &mut self,
        steps: &BTreeMap<i64, Vec<Sample>>,
        first: i64,
        end: i64,
    ) -> Result<Vec<RangeSeries<'a>>, PromQLError> {
        let mut by_labels: BTreeMap<Labels, Vec<Point>> = BTreeMap::new();
        let mut touched = 0usize;
        if first <= end {
            for (&ts, samples) in steps.range(first..=end) {
                for sample in samples {
                    by_labels.entry(sample.labels.clone()).or_default().push(Point { t: ts, v: sample.v });
                }
                touched += samples.len();
            }
        }
        self.budget.charge(touched)?;
        Ok(by_labels.into_iter().map(|(labels, points)| RangeSeries { labels, points: Cow::Owned(points) }).collect())
    }

    /// Evaluates the inside of `subquery` at every multiple of `step` in `[first, end]` that
    /// `steps` does not hold yet.
    fn fill_subquery_steps(
        &mut self,
        subquery: &'a Subquery,
        steps: &mut BTreeMap<i64, Vec<Sample>>,
        first: i64,
        end: i64,
        step: i64,
    ) -> Result<(), PromQLError> {
        let mut ts = first;
        while ts <= end {
            if let std::collections::btree_map::Entry::Vacant(slot) = steps.entry(ts) {
                // The step itself is charged, so that an inside that selects nothing is bounded too.
                self.budget.charge(SUBQUERY_STEP_COST)?;
                let samples = self.eval_vector(&subquery.expr, ts)?;
                self.budget.charge(samples.len())?;
                slot.insert(samples);
            }
            let Some(next) = ts.checked_add(step) else {
                break;
            };
            ts = next;
        }
        Ok(())
    }

    /// A function call. The arguments are evaluated first, and the function applied by
    /// [`apply_function`] after: the recursion through nested calls then passes only through this
    /// small frame, which keeps a query at the nesting bound within a 2 MiB stack (see `guard`).
    fn call(&mut self, func: Func, args: &'a [Node], t: i64) -> Result<Value<'a>, PromQLError> {
        if let Some(kernel) = RangeKernel::of(func) {
            return self.range_call(kernel, args, t);
        }
        // Of a selector, the timestamps of the selected samples (Prometheus special-cases it too).
        if let (Func::Timestamp, [Node::VectorSelector(id)]) = (func, args) {
            let points = self.select_instant_points(self.selector(*id)?, t)?;
            let samples = points.into_iter().map(|(labels, p)| Sample { labels, v: p.t as f64 / 1000.0 });
            return Ok(Value::Vector(samples.collect()));
        }
        let mut values = Vec::with_capacity(args.len());
        for arg in args {
            values.push(self.eval(arg, t)?);
        }
        apply_function(func, values, t)
    }

    /// A function of a range vector, with its scalar parameters.
    fn range_call(&mut self, kernel: RangeKernel, args: &'a [Node], t: i64) -> Result<Value<'a>, PromQLError> {
        let (range_node, scalars): (Option<&'a Node>, &'a [Node]) = match (kernel, args) {
            // `quantile_over_time(φ, range)` is the one whose range comes second.
            (RangeKernel::Quantile, [q, range]) => (Some(range), std::slice::from_ref(q)),
            (_, [range, rest @ ..]) => (Some(range), rest),
            _ => (None, &[]),
        };
        let Some(range_node) = range_node else {
            return Err(type_error("this function", "a range vector argument"));
        };
        let mut params = [f64::NAN; 2];
        for (slot, node) in params.iter_mut().zip(scalars) {
            *slot = self.eval_scalar(node, t)?;
        }
        let range = self.eval_range(range_node, t)?;
        let mut out = Vec::with_capacity(range.series.len());
        for series in range.series {
            if let Some(v) = kernel.apply(&series.points, range.start, range.end, t, params)? {
                out.push(Sample { labels: series.labels, v });
            }
        }
        Ok(Value::Vector(out))
    }

    /// `label_replace`: where the anchored `regex` matches the value of `src` (`""` when absent),
    /// `dst` becomes `replacement` with `$1`, `${name}` expanded (and is removed if that is empty).
    fn label_replace(
        &mut self,
        arg: &'a Node,
        dst: &str,
        replacement: &str,
        src: &str,
        regex: &Regex,
        t: i64,
    ) -> Result<Value<'a>, PromQLError> {
        let samples = self.eval_vector(arg, t)?;
        let mut out = Vec::with_capacity(samples.len());
        for sample in samples {
            let source = sample.labels.get(src).map_or("", String::as_str);
            let Some(captures) = regex.captures(source) else {
                out.push(sample);
                continue;
            };
            let mut value = String::new();
            captures.expand(replacement, &mut value);
            self.charge_label_bytes(value.len())?;
            out.push(Sample { labels: with_label(&sample.labels, dst, value), v: sample.v });
        }
        check_unique_labels(&out)?;
        Ok(Value::Vector(out))
    }

    /// `label_join`: `dst` becomes the values of `src` (`""` when absent) joined by `separator`
    /// (and is removed if that is empty).
    fn label_join(
        &mut self,
        arg: &'a Node,
        dst: &str,
        separator: &str,
        src: &[String],
        t: i64,
    ) -> Result<Value<'a>, PromQLError> {
        let samples = self.eval_vector(arg, t)?;
        let mut out = Vec::with_capacity(samples.len());
        for sample in samples {
            let values: Vec<&str> = src.iter().map(|name| sample.labels.get(name).map_or("", String::as_str)).collect();
            let value = values.join(separator);
            self.charge_label_bytes(value.len())?;
            out.push(Sample { labels: with_label(&sample.labels, dst, value), v: sample.v });
        }
        check_unique_labels(&out)?;
        Ok(Value::Vector(out))
    }

    /// A label value built by a query can be far larger than the query (`$1` repeated): its bytes
    /// are charged as samples, 16 bytes (a sample's size) each, so that memory stays bounded.
    fn charge_label_bytes(&mut self, bytes: usize) -> Result<(), PromQLError> {
        self.budget.charge(bytes / 16)
    }
}

/// Applies a function that takes no range vector to its evaluated arguments.
fn apply_function<'a>(func: Func, values: Vec<Value<'a>>, t: i64) -> Result<Value<'a>, PromQLError> {
    let mut args = values.into_iter();
    let math: Option<fn(f64) -> f64> = match func {
        Func::Abs => Some(f64::abs),
        Func::Ceil => Some(f64::ceil),
        Func::Floor => Some(f64::floor),
        Func::Exp => Some(f64::exp),
        Func::Ln => Some(f64::ln),
        Func::Log2 => Some(f64::log2),
        Func::Log10 => Some(f64::log10),
        Func::Sqrt => Some(f64::sqrt),
        Func::Sgn => Some(sgn),
        Func::Acos => Some(f64::acos),
        Func::Acosh => Some(f64::acosh),
        Func::Asin => Some(f64::asin),
        Func::Asinh => Some(f64::asinh),
        Func::Atan => Some(f64::atan),
        Func::Atanh => Some(f64::atanh),
        Func::Cos => Some(f64::cos),
        Func::Cosh => Some(f64::cosh),
        Func::Sin => Some(f64::sin),
        Func::Sinh => Some(f64::sinh),
        Func::Tan => Some(f64::tan),
        Func::Tanh => Some(f64::tanh),
        Func::Deg => Some(|v| v * 180.0 / PI),
        Func::Rad => Some(|v| v * PI / 180.0),
        _ => None,
    };
    if let Some(f) = math {
        return Ok(Value::Vector(map_values(next_vector(&mut args)?, f)));
    }
    if let Some(field) = date_field_of(func) {
        // Without an argument, the date of the evaluation instant (`vector(time())`).
        if args.len() == 0 {
            let v = date_field(field, t / 1000);
            return Ok(Value::Vector(vec![Sample { labels: Arc::default(), v }]));
        }
        let samples = next_vector(&mut args)?;
        return Ok(Value::Vector(map_values(samples, |v| date_field(field, go_float_to_int64(v)))));
    }

    Ok(match func {
        Func::Time => Value::Scalar(t as f64 / 1000.0),
        Func::Pi => Value::Scalar(PI),
        Func::Vector => {
            let v = next_scalar(&mut args, f64::NAN)?;
            Value::Vector(vec![Sample { labels: Arc::default(), v }])
        }
        Func::Scalar => match next_vector(&mut args)?.as_slice() {
            [only] => Value::Scalar(only.v),
            _ => Value::Scalar(f64::NAN),
        },
        // Of anything but a selector (see `Evaluator::call`), the evaluation instant.
        Func::Timestamp => {
            let now = t as f64 / 1000.0;
            Value::Vector(map_values(next_vector(&mut args)?, |_| now))
        }
        Func::Round => {
            let samples = next_vector(&mut args)?;
            let to_nearest = next_scalar(&mut args, 1.0)?;
            Value::Vector(map_values(samples, |v| round_to_nearest(v, to_nearest)))
        }
        Func::Clamp => {
            let samples = next_vector(&mut args)?;
            let min = next_scalar(&mut args, f64::NAN)?;
            let max = next_scalar(&mut args, f64::NAN)?;
            if max < min {
                Value::Vector(Vec::new())
            } else {
                Value::Vector(map_values(samples, |v| go_max(min, go_min(max, v))))
            }
        }
        Func::ClampMin => {
            let samples = next_vector(&mut args)?;
            let min = next_scalar(&mut args, f64::NAN)?;
            Value::Vector(map_values(samples, |v| go_max(min, v)))
        }
        Func::ClampMax => {
            let samples = next_vector(&mut args)?;
            let max = next_scalar(&mut args, f64::NAN)?;
            Value::Vector(map_values(samples, |v| go_min(max, v)))
        }
        Func::Sort | Func::SortDesc => {
            let mut samples = next_vector(&mut args)?;
            let descending = func == Func::SortDesc;
            // NaN last either way; the sort is stable, so equal values keep label order.
            samples.sort_by(|a, b| match (a.v.is_nan(), b.v.is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                (false, false) if descending => b.v.total_cmp(&a.v),
                (false, false) => a.v.total_cmp(&b.v),
            });
            Value::Vector(samples)
        }
        Func::HistogramQuantile => {
            let q = next_scalar(&mut args, f64::NAN)?;
            Value::Vector(histogram_quantile(q, next_vector(&mut args)?))
        }
        _ => return Err(type_error("this function", "a range vector")),
    })
}

/// The next argument, which must be an instant vector.
fn next_vector(args: &mut std::vec::IntoIter<Value<'_>>) -> Result<Vec<Sample>, PromQLError> {
    match args.next() {
        Some(Value::Vector(samples)) => Ok(samples),
        _ => Err(type_error("this function", "an instant vector argument")),
    }
}

/// The next argument, which must be a scalar, or `default` when there are no more.
fn next_scalar(args: &mut std::vec::IntoIter<Value<'_>>, default: f64) -> Result<f64, PromQLError> {
    match args.next() {
        None => Ok(default),
        Some(Value::Scalar(v)) => Ok(v),
        Some(_) => Err(type_error("this argument", "a scalar")),
    }
}

/// The functions of one range vector's series, each a kernel over the samples of one series.
#[derive(Debug, Clone, Copy)]
enum RangeKernel {
    Rate,
    Increase,
    Delta,
    Irate,
    Idelta,
    Deriv,
    PredictLinear,
    DoubleExponentialSmoothing,
    Quantile,
    OverTime(OverTime),
}

impl RangeKernel {
    fn of(func: Func) -> Option<Self> {
        Some(match func {
            Func::Rate => Self::Rate,
            Func::Increase => Self::Increase,
            Func::Delta => Self::Delta,
            Func::Irate => Self::Irate,
            Func::Idelta => Self::Idelta,
            Func::Deriv => Self::Deriv,
            Func::PredictLinear => Self::PredictLinear,
            Func::DoubleExponentialSmoothing => Self::DoubleExponentialSmoothing,
            Func::QuantileOverTime => Self::Quantile,
            Func::AvgOverTime => Self::OverTime(OverTime::Avg),
            Func::MinOverTime => Self::OverTime(OverTime::Min),
            Func::MaxOverTime => Self::OverTime(OverTime::Max),
            Func::SumOverTime => Self::OverTime(OverTime::Sum),
            Func::CountOverTime => Self::OverTime(OverTime::Count),
            Func::LastOverTime => Self::OverTime(OverTime::Last),
            Func::StddevOverTime => Self::OverTime(OverTime::Stddev),
            Func::StdvarOverTime => Self::OverTime(OverTime::Stdvar),
            Func::PresentOverTime => Self::OverTime(OverTime::Present),
            Func::Changes => Self::OverTime(OverTime::Changes),
            Func::Resets => Self::OverTime(OverTime::Resets),
            _ => return None,
        })
    }

    /// The value for one series whose samples in `[start, end]` are `points`, evaluated at `t`
    /// with scalar parameters `params`; `None` when the function gives that series no value.
    fn apply(
        self,
        points: &[Point],
        start: i64,
        end: i64,
        t: i64,
        params: [f64; 2],
    ) -> Result<Option<f64>, PromQLError> {
        Ok(match self {
            Self::Rate => extrapolated_rate(points, start, end, true, true),
            Self::Increase => extrapolated_rate(points, start, end, true, false),
            Self::Delta => extrapolated_rate(points, start, end, false, false),
            Self::Irate => instant_value(points, true),
            Self::Idelta => instant_value(points, false),
            Self::Deriv => deriv(points),
            Self::PredictLinear => predict_linear(points, t, params[0]),
            Self::DoubleExponentialSmoothing => {
                double_exponential_smoothing(points, params[0], params[1]).map_err(PromQLError::Execution)?
            }
            Self::Quantile => {
                let mut values: Vec<f64> = points.iter().map(|p| p.v).collect();
                (!values.is_empty()).then(|| quantile(params[0], &mut values))
            }
            Self::OverTime(kind) => over_time(kind, points),
        })
    }
}

fn date_field_of(func: Func) -> Option<DateField> {
    Some(match func {
        Func::DayOfMonth => DateField::DayOfMonth,
        Func::DayOfWeek => DateField::DayOfWeek,
        Func::DayOfYear => DateField::DayOfYear,
        Func::DaysInMonth => DateField::DaysInMonth,
        Func::Hour => DateField::Hour,
        Func::Minute => DateField::Minute,
        Func::Month => DateField::Month,
        Func::Year => DateField::Year,
        _ => return None,
    })
}

/// `histogram_quantile(q, buckets)`: per histogram (the labels less `le`), the `q`-quantile of its
/// buckets. Samples without a parsable `le` are not buckets and are skipped, as in Prometheus.
fn histogram_quantile(q: f64, samples: Vec<Sample>) -> Vec<Sample> {
    let mut index: HashMap<BTreeMap<String, String>, usize> = HashMap::new();
    let mut histograms: Vec<(BTreeMap<String, String>, Vec<Bucket>)> = Vec::new();
    for sample in samples {
        // As Go's `strconv.ParseFloat` reads the decimal forms (`0.5`, `1e3`, `+Inf`).
        let Some(upper_bound) = sample.labels.get("le").and_then(|le| le.parse::<f64>().ok()) else {
            continue;
        };
        let mut labels = (*sample.labels).clone();
        labels.remove("le");
        let bucket = Bucket { upper_bound, count: sample.v };
        match index.get(&labels) {
            Some(&slot) => {
                if let Some((_, buckets)) = histograms.get_mut(slot) {
                    buckets.push(bucket);
                }
            }
            None => {
                index.insert(labels.clone(), histograms.len());
                histograms.push((labels, vec![bucket]));
            }
        }
    }
    histograms
        .into_iter()
        .map(|(labels, mut buckets)| Sample { labels: Arc::new(labels), v: bucket_quantile(q, &mut buckets) })
        .collect()
}

/// `labels` with `name` set to `value`, or removed when `value` is empty.
fn with_label(labels: &Labels, name: &str, value: String) -> Labels {
    let mut labels = (**labels).clone();
    if value.is_empty() {
        labels.remove(name);
    } else {
        labels.insert(name.to_owned(), value);
    }
    Arc::new(labels)
}

/// Prometheus refuses a function result in which two samples have the same labels.
fn check_unique_labels(samples: &[Sample]) -> Result<(), PromQLError> {
    let mut seen: HashSet<&Labels> = HashSet::with_capacity(samples.len());
    if samples.iter().all(|s| seen.insert(&s.labels)) {
        Ok(())
    } else {
        Err(PromQLError::Execution("vector cannot contain metrics with the same labelset".to_owned()))
    }
}

pub(crate) fn type_error(what: &str, expected: &str) -> PromQLError {
    PromQLError::Execution(format!("{what} expects {expected}"))
}

fn map_values(mut samples: Vec<Sample>, f: impl Fn(f64) -> f64) -> Vec<Sample> {
    for sample in &mut samples {
        sample.v = f(sample.v);
    }
    samples
}
