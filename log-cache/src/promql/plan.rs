//! Turns the `promql-parser` syntax tree into the engine's own evaluation tree.
//!
//! Planning is where a query is rejected before any data is read: features the engine does not
//! evaluate (`or` inside matchers, fill modifiers, unlisted functions and aggregations), selectors
//! without a `source_id` matcher (PROTOCOLS.md §6.6), and bad label-function arguments (regexes are
//! compiled here, once per query rather than once per step). Selectors are collected in [`Plan::selectors`]
//! so the loader can read each source id once for all of them.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use regex::Regex;

use promql_parser::label::{MatchOp, METRIC_NAME};
use promql_parser::parser::token::{
    T_ADD, T_ATAN2, T_AVG, T_BOTTOMK, T_COUNT, T_COUNT_VALUES, T_DIV, T_EQLC, T_GROUP, T_GTE, T_GTR, T_LAND, T_LOR,
    T_LSS, T_LTE, T_LUNLESS, T_MAX, T_MIN, T_MOD, T_MUL, T_NEQ, T_POW, T_QUANTILE, T_STDDEV, T_STDVAR, T_SUB, T_SUM,
    T_TOPK,
};
use promql_parser::parser::{
    AggregateExpr, AtModifier, BinaryExpr, Call, Expr, LabelModifier, MatrixSelector, Offset, SubqueryExpr,
    VectorMatchCardinality, VectorSelector,
};

use super::series::{Labels, Series};
use super::PromQLError;

/// Index of a selector in [`Plan::selectors`].
pub(crate) type SelectorId = usize;

/// A query ready to evaluate: its tree and the selectors the tree refers to.
pub(crate) struct Plan {
    pub root: Node,
    pub selectors: Vec<Selector>,
    /// How many subqueries the tree holds (their ids are `0..subqueries`).
    pub subqueries: usize,
}

/// A vector or matrix selector, with the series loaded for it.
pub(crate) struct Selector {
    /// The metric name to match against sanitized envelope names; `None` matches every metric.
    pub name: Option<String>,
    /// Source ids to read, from the `source_id` matchers.
    pub source_ids: Vec<String>,
    /// Other matchers, as (label, value) pairs compared by equality (see `series::labels_match`).
    pub labels: Vec<(String, String)>,
    /// `offset`, in ms (negative for `offset -5m`).
    pub offset_ms: i64,
    /// `@` modifier, resolved to an instant in ms.
    pub at_ms: Option<i64>,
    /// The range of a matrix selector (`[5m]`), in ms; `None` for an instant vector selector.
    pub range_ms: Option<i64>,
    /// The first and last instants the selector is evaluated at (wider than the query's inside a
    /// subquery).
    pub eval_window_ms: (i64, i64),
    /// Filled by the loader before evaluation.
    pub series: Vec<Series>,
}

impl Selector {
    /// The instant whose data this selector reads when the query is evaluated at `t`.
    pub fn reference_time(&self, t: i64) -> i64 {
        self.at_ms.unwrap_or(t).saturating_sub(self.offset_ms)
    }
}

/// The evaluation tree. Parentheses are gone; everything else mirrors PromQL.
pub(crate) enum Node {
    Number(f64),
    /// A string literal: the parameter of `count_values`, or of a label function planned below.
    String(String),
    VectorSelector(SelectorId),
    MatrixSelector(SelectorId),
    /// `expr[range:step]`: a range vector computed by evaluating `expr` at every multiple of the step.
    Subquery(Box<Subquery>),
    Call {
        func: Func,
        args: Vec<Node>,
    },
    /// `absent(v)` and `absent_over_time(m)`, with the labels Prometheus derives from the argument's
    /// equality matchers.
    Absent {
        over_time: bool,
        arg: Box<Node>,
        labels: Labels,
    },
    /// `label_replace(v, dst, replacement, src, regex)`, its regex anchored and compiled once.
    LabelReplace {
        arg: Box<Node>,
        dst: String,
        replacement: String,
        src: String,
        regex: Regex,
    },
    /// `label_join(v, dst, separator, src...)`.
    LabelJoin {
        arg: Box<Node>,
        dst: String,
        separator: String,
        src: Vec<String>,
    },
    Aggregate {
        op: AggOp,
        param: Option<Box<Node>>,
        grouping: Grouping,
        expr: Box<Node>,
    },
    Negate(Box<Node>),
    Binary {
        op: BinOp,
        lhs: Box<Node>,
        rhs: Box<Node>,
        return_bool: bool,
        matching: Matching,
    },
}

/// A subquery, with its modifiers resolved to milliseconds.
pub(crate) struct Subquery {
    /// Index of this subquery's cache of inner results (see `eval`).
    pub id: SubqueryId,
    pub expr: Node,
    pub range_ms: i64,
    /// The resolution; the default evaluation interval when the query gives none.
    pub step_ms: i64,
    pub offset_ms: i64,
    pub at_ms: Option<i64>,
}

/// Index of a subquery in the evaluator's caches.
pub(crate) type SubqueryId = usize;

impl Subquery {
    /// The end of the range this subquery covers when evaluated at `t`.
    pub fn reference_time(&self, t: i64) -> i64 {
        self.at_ms.unwrap_or(t).saturating_sub(self.offset_ms)
    }
}

/// The step of a subquery without one (`x[5m:]`): Prometheus' default global evaluation interval.
pub(crate) const DEFAULT_SUBQUERY_STEP_MS: i64 = 60_000;

/// The functions the engine evaluates (Prometheus 2.x's function list, less what needs native
/// histograms; see the crate README for what is refused and why).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    // Over a range vector.
    Rate,
    Irate,
    Increase,
    Delta,
    Idelta,
    Deriv,
    PredictLinear,
    Changes,
    Resets,
    DoubleExponentialSmoothing,
    AvgOverTime,
    MinOverTime,
    MaxOverTime,
    SumOverTime,
    CountOverTime,
    LastOverTime,
    StddevOverTime,
    StdvarOverTime,
    QuantileOverTime,
    PresentOverTime,
    // Over an instant vector, value by value.
    Abs,
    Ceil,
    Floor,
    Round,
    Exp,
    Ln,
    Log2,
    Log10,
    Sqrt,
    Sgn,
    Clamp,
    ClampMin,
    ClampMax,
    Acos,
    Acosh,
    Asin,
    Asinh,
    Atan,
    Atanh,
    Cos,
    Cosh,
    Sin,
    Sinh,
    Tan,
    Tanh,
    Deg,
    Rad,
    Timestamp,
    DayOfMonth,
    DayOfWeek,
    DayOfYear,
    DaysInMonth,
    Hour,
    Minute,
    Month,
    Year,
    // Over a whole instant vector.
    HistogramQuantile,
    Sort,
    SortDesc,
    Scalar,
    // No vector argument.
    Time,
    Pi,
    Vector,
}

impl Func {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "rate" => Self::Rate,
            "irate" => Self::Irate,
            "increase" => Self::Increase,
            "delta" => Self::Delta,
            "idelta" => Self::Idelta,
            "deriv" => Self::Deriv,
            "predict_linear" => Self::PredictLinear,
            "changes" => Self::Changes,
            "resets" => Self::Resets,
            "double_exponential_smoothing" => Self::DoubleExponentialSmoothing,
            "avg_over_time" => Self::AvgOverTime,
            "min_over_time" => Self::MinOverTime,
            "max_over_time" => Self::MaxOverTime,
            "sum_over_time" => Self::SumOverTime,
            "count_over_time" => Self::CountOverTime,
            "last_over_time" => Self::LastOverTime,
            "stddev_over_time" => Self::StddevOverTime,
            "stdvar_over_time" => Self::StdvarOverTime,
            "quantile_over_time" => Self::QuantileOverTime,
            "present_over_time" => Self::PresentOverTime,
            "abs" => Self::Abs,
            "ceil" => Self::Ceil,
            "floor" => Self::Floor,
            "round" => Self::Round,
            "exp" => Self::Exp,
            "ln" => Self::Ln,
            "log2" => Self::Log2,
            "log10" => Self::Log10,
            "sqrt" => Self::Sqrt,
            "sgn" => Self::Sgn,
            "clamp" => Self::Clamp,
            "clamp_min" => Self::ClampMin,
            "clamp_max" => Self::ClampMax,
            "acos" => Self::Acos,
            "acosh" => Self::Acosh,
            "asin" => Self::Asin,
            "asinh" => Self::Asinh,
            "atan" => Self::Atan,
            "atanh" => Self::Atanh,
            "cos" => Self::Cos,
            "cosh" => Self::Cosh,
            "sin" => Self::Sin,
            "sinh" => Self::Sinh,
            "tan" => Self::Tan,
            "tanh" => Self::Tanh,
            "deg" => Self::Deg,
            "rad" => Self::Rad,
            "timestamp" => Self::Timestamp,
            "day_of_month" => Self::DayOfMonth,
            "day_of_week" => Self::DayOfWeek,
            "day_of_year" => Self::DayOfYear,
            "days_in_month" => Self::DaysInMonth,
            "hour" => Self::Hour,
            "minute" => Self::Minute,
            "month" => Self::Month,
            "year" => Self::Year,
            "histogram_quantile" => Self::HistogramQuantile,
            "sort" => Self::Sort,
            "sort_desc" => Self::SortDesc,
            "scalar" => Self::Scalar,
            "time" => Self::Time,
            "pi" => Self::Pi,
            "vector" => Self::Vector,
            _ => return None,
        })
    }

    /// Why a function Prometheus' parser knows is refused, for the error message.
    fn refusal(name: &str) -> &'static str {
        match name {
            n if n.starts_with("histogram_") || n == "info" => {
                "it reads native histograms or info metrics, which log-cache does not hold"
            }
            _ => "it is not a function of Prometheus 2, whose semantics log-cache follows",
        }
    }
}

/// The aggregation operators the engine evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AggOp {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Group,
    Stddev,
    Stdvar,
    Quantile,
    CountValues,
    Topk,
    Bottomk,
}

/// `by (...)` or `without (...)`; no clause is `by ()`.
pub(crate) enum Grouping {
    By(Vec<String>),
    Without(Vec<String>),
}

/// Binary operators: arithmetic, comparison and set operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    And,
    Or,
    Unless,
}

impl BinOp {
    pub fn is_comparison(self) -> bool {
        matches!(self, Self::Eq | Self::Ne | Self::Gt | Self::Lt | Self::Ge | Self::Le)
    }

    pub fn is_set(self) -> bool {
        matches!(self, Self::And | Self::Or | Self::Unless)
    }
}

/// How the samples of two vectors are paired: by the labels listed in `on (...)`, or by all labels
/// except those listed in `ignoring (...)` (the default, with an empty list).
pub(crate) struct Matching {
    pub on: bool,
    pub labels: Vec<String>,
    pub card: Cardinality,
}

/// Vector matching cardinality; the `group_*` variants carry their extra labels.
pub(crate) enum Cardinality {
    OneToOne,
    ManyToOne(Vec<String>),
    OneToMany(Vec<String>),
    ManyToMany,
}

/// Plans `expr` for a query over `[start_ms, end_ms]` (equal for an instant query); `@ start()` and
/// `@ end()` resolve to those instants.
pub(crate) fn plan(expr: &Expr, start_ms: i64, end_ms: i64) -> Result<Plan, PromQLError> {
    let mut planner = Planner { start_ms, end_ms, window: (start_ms, end_ms), selectors: Vec::new(), subqueries: 0 };
    let root = planner.node(expr)?;
    Ok(Plan { root, selectors: planner.selectors, subqueries: planner.subqueries })
}

struct Planner {
    start_ms: i64,
    end_ms: i64,
    /// The instants the expression being planned is evaluated at: the query's, or for the inside of
    /// a subquery the instants of its steps. Selectors record it so that the loader reads what they see.
    window: (i64, i64),
    selectors: Vec<Selector>,
    subqueries: usize,
}

impl Planner {
    /// Every level of a nested query passes through here, so it only dispatches: each arm returns
    /// its method's result as is, and a debug build's frame stays small (a query at the nesting
    /// bound must fit a 2 MiB stack, see `guard`).
    fn node(&mut self, expr: &Expr) -> Result<Node, PromQLError> {
        match expr {
            Expr::NumberLiteral(n) => Ok(Node::Number(n.val)),
            Expr::StringLiteral(s) => Ok(Node::String(s.val.clone())),
            Expr::Paren(p) => self.node(&p.expr),
            Expr::Unary(u) => self.negate(&u.expr),
            Expr::VectorSelector(vs) => self.vector_selector(vs),
            Expr::MatrixSelector(ms) => self.matrix_selector(ms),
            Expr::Call(call) => self.call(call),
            Expr::Aggregate(agg) => self.aggregate(agg),
            Expr::Binary(bin) => self.binary(bin),
            Expr::Subquery(sq) => self.subquery(sq),
            Expr::Extension(_) => Err(unsupported("extension expressions are")),
        }
    }

    fn negate(&mut self, expr: &Expr) -> Result<Node, PromQLError> {
        Ok(Node::Negate(Box::new(self.node(expr)?)))
    }

    fn vector_selector(&mut self, vs: &VectorSelector) -> Result<Node, PromQLError> {
        Ok(Node::VectorSelector(self.selector(vs, None)?))
    }

    fn matrix_selector(&mut self, ms: &MatrixSelector) -> Result<Node, PromQLError> {
        Ok(Node::MatrixSelector(self.selector(&ms.vs, Some(ms.range))?))
    }

    fn selector(&mut self, vs: &VectorSelector, range: Option<Duration>) -> Result<SelectorId, PromQLError> {
        if !vs.matchers.or_matchers.is_empty() {
            return Err(unsupported("'or' inside label matchers is"));
        }
        let mut name = vs.name.clone();
        let mut has_source_id_matcher = false;
        let mut source_ids: Vec<String> = Vec::new();
        let mut excluded_ids: Vec<&str> = Vec::new();
        let mut labels = Vec::new();
        for matcher in &vs.matchers.matchers {
            match matcher.name.as_str() {
                // Metric names, like other labels, are compared by equality whatever the operator.
                METRIC_NAME => name = Some(matcher.value.clone()),
                // `=~` lists literal ids separated by `|`; it is not a regular expression (§6.6).
                "source_id" => match &matcher.op {
                    MatchOp::Equal => {
                        has_source_id_matcher = true;
                        source_ids.push(matcher.value.clone());
                    }
                    MatchOp::Re(_) => {
                        has_source_id_matcher = true;
                        source_ids.extend(matcher.value.split('|').map(str::to_owned));
                    }
                    MatchOp::NotEqual => excluded_ids.push(&matcher.value),
                    MatchOp::NotRe(_) => excluded_ids.extend(matcher.value.split('|')),
                },
                _ => labels.push((matcher.name.clone(), matcher.value.clone())),
            }
        }
        if !has_source_id_matcher {
            return Err(PromQLError::MissingSourceId(name.unwrap_or_default()));
        }
        let mut seen: HashSet<String> = excluded_ids.into_iter().map(str::to_owned).collect();
        source_ids.retain(|id| seen.insert(id.clone()));
        let offset_ms = offset_ms(&vs.offset)?;
        let at_ms = self.at_ms(&vs.at)?;
        let range_ms = range.map(duration_ms).transpose()?;
        self.selectors.push(Selector {
            name,
            source_ids,
            labels,
            offset_ms,
            at_ms,
            range_ms,
            eval_window_ms: self.window,
            series: Vec::new(),
        });
        Ok(self.selectors.len() - 1)
    }

    fn at_ms(&self, at: &Option<AtModifier>) -> Result<Option<i64>, PromQLError> {
        Ok(match at {
            None => None,
            Some(AtModifier::Start) => Some(self.start_ms),
            Some(AtModifier::End) => Some(self.end_ms),
            Some(AtModifier::At(at)) => Some(system_time_ms(*at)?),
        })
    }

    /// A subquery's inside is evaluated at the multiples of its step within `[t_ref − range, t_ref]`
    /// for every instant `t` it is evaluated at, so its selectors see that wider window.
    fn subquery(&mut self, sq: &SubqueryExpr) -> Result<Node, PromQLError> {
        let range_ms = duration_ms(sq.range)?;
        let step_ms = match sq.step {
            Some(step) if !step.is_zero() => duration_ms(step)?,
            _ => DEFAULT_SUBQUERY_STEP_MS,
        };
        if step_ms < 1 {
            return Err(PromQLError::BadQuery("subquery step must be at least 1ms".to_owned()));
        }
        let offset_ms = offset_ms(&sq.offset)?;
        let at_ms = self.at_ms(&sq.at)?;
        let id = self.subqueries;
        self.subqueries += 1;
        let (first, last) = match at_ms {
            Some(at) => (at, at),
            None => self.window,
        };
        let inner = (first.saturating_sub(offset_ms).saturating_sub(range_ms), last.saturating_sub(offset_ms));
        let outer = std::mem::replace(&mut self.window, inner);
        let expr = self.node(&sq.expr);
        self.window = outer;
        Ok(Node::Subquery(Box::new(Subquery { id, expr: expr?, range_ms, step_ms, offset_ms, at_ms })))
    }

    /// A function call. The label functions and `absent` are planned apart, each in its own
    /// frame, so that the recursion through nested calls passes through this small one (a query at
    /// the nesting bound must fit a 2 MiB stack, see `guard`).
    fn call(&mut self, call: &Call) -> Result<Node, PromQLError> {
        let name = call.func.name;
        let ast_args: Vec<&Expr> = call.args.args.iter().map(|arg| unparen(arg)).collect();
        match name {
            "absent" | "absent_over_time" => return self.absent(name, &ast_args),
            "label_replace" => return self.label_replace(&ast_args),
            "label_join" => return self.label_join(&ast_args),
            _ => {}
        }
        let Some(func) = Func::from_name(name) else {
            return Err(refused_function(name));
        };
        let mut args = Vec::with_capacity(ast_args.len());
        for arg in ast_args {
            args.push(self.node(arg)?);
        }
        Ok(Node::Call { func, args })
    }

    fn absent(&mut self, name: &str, args: &[&Expr]) -> Result<Node, PromQLError> {
        let [arg] = args else {
            return Err(arity(name));
        };
        let labels = Arc::new(absent_labels(arg));
        let arg = Box::new(self.node(arg)?);
        Ok(Node::Absent { over_time: name == "absent_over_time", arg, labels })
    }

    fn label_replace(&mut self, args: &[&Expr]) -> Result<Node, PromQLError> {
        let [arg, dst, replacement, src, regex] = args else {
            return Err(arity("label_replace"));
        };
        let (dst, replacement, src, regex) =
            (string_arg(dst)?, string_arg(replacement)?, string_arg(src)?, string_arg(regex)?);
        if !is_label_name(&dst) {
            return Err(PromQLError::Execution(format!("invalid destination label name in label_replace(): {dst}")));
        }
        // Prometheus anchors the expression at both ends.
        let regex = Regex::new(&format!("^(?:{regex})$")).map_err(|e| {
            PromQLError::Execution(format!("invalid regular expression in label_replace(): {regex}: {e}"))
        })?;
        let arg = Box::new(self.node(arg)?);
        Ok(Node::LabelReplace { arg, dst, replacement, src, regex })
    }

    fn label_join(&mut self, args: &[&Expr]) -> Result<Node, PromQLError> {
        let [arg, dst, separator, src @ ..] = args else {
            return Err(arity("label_join"));
        };
        let (dst, separator) = (string_arg(dst)?, string_arg(separator)?);
        let src = src.iter().map(|s| string_arg(s)).collect::<Result<Vec<_>, _>>()?;
        if !is_label_name(&dst) {
            return Err(PromQLError::Execution(format!("invalid destination label name in label_join(): {dst}")));
        }
        if let Some(bad) = src.iter().find(|s| !is_label_name(s)) {
            return Err(PromQLError::Execution(format!("invalid source label name in label_join(): {bad}")));
        }
        let arg = Box::new(self.node(arg)?);
        Ok(Node::LabelJoin { arg, dst, separator, src })
    }

    fn aggregate(&mut self, agg: &AggregateExpr) -> Result<Node, PromQLError> {
        let op = match agg.op.id() {
            T_SUM => AggOp::Sum,
            T_AVG => AggOp::Avg,
            T_MIN => AggOp::Min,
            T_MAX => AggOp::Max,
            T_COUNT => AggOp::Count,
            T_GROUP => AggOp::Group,
            T_STDDEV => AggOp::Stddev,
            T_STDVAR => AggOp::Stdvar,
            T_QUANTILE => AggOp::Quantile,
            T_COUNT_VALUES => AggOp::CountValues,
            T_TOPK => AggOp::Topk,
            T_BOTTOMK => AggOp::Bottomk,
            _ => return Err(PromQLError::BadQuery(format!("aggregation \"{}\" is not supported", agg.op))),
        };
        let grouping = match &agg.modifier {
            None => Grouping::By(Vec::new()),
            Some(LabelModifier::Include(labels)) => Grouping::By(labels.labels.clone()),
            Some(LabelModifier::Exclude(labels)) => Grouping::Without(labels.labels.clone()),
        };
        let param = agg.param.as_ref().map(|p| self.node(p).map(Box::new)).transpose()?;
        let expr = Box::new(self.node(&agg.expr)?);
        Ok(Node::Aggregate { op, param, grouping, expr })
    }

    fn binary(&mut self, bin: &BinaryExpr) -> Result<Node, PromQLError> {
        let op = match bin.op.id() {
            T_ADD => BinOp::Add,
            T_SUB => BinOp::Sub,
            T_MUL => BinOp::Mul,
            T_DIV => BinOp::Div,
            T_MOD => BinOp::Mod,
            T_POW => BinOp::Pow,
            T_ATAN2 => BinOp::Atan2,
            T_EQLC => BinOp::Eq,
            T_NEQ => BinOp::Ne,
            T_GTR => BinOp::Gt,
            T_LSS => BinOp::Lt,
            T_GTE => BinOp::Ge,
            T_LTE => BinOp::Le,
            T_LAND => BinOp::And,
            T_LOR => BinOp::Or,
            T_LUNLESS => BinOp::Unless,
            _ => return Err(PromQLError::BadQuery(format!("binary operator \"{}\" is not supported", bin.op))),
        };
        let mut matching = Matching {
            on: false,
            labels: Vec::new(),
            card: if op.is_set() { Cardinality::ManyToMany } else { Cardinality::OneToOne },
        };
        let mut return_bool = false;
        if let Some(modifier) = &bin.modifier {
            if modifier.fill_values.lhs.is_some() || modifier.fill_values.rhs.is_some() {
                return Err(unsupported("fill modifiers are"));
            }
            return_bool = modifier.return_bool;
            match &modifier.matching {
                None => {}
                Some(LabelModifier::Include(labels)) => {
                    matching.on = true;
                    matching.labels = labels.labels.clone();
                }
                Some(LabelModifier::Exclude(labels)) => matching.labels = labels.labels.clone(),
            }
            matching.card = match &modifier.card {
                VectorMatchCardinality::OneToOne => Cardinality::OneToOne,
                VectorMatchCardinality::ManyToOne(l) => Cardinality::ManyToOne(l.labels.clone()),
                VectorMatchCardinality::OneToMany(l) => Cardinality::OneToMany(l.labels.clone()),
                VectorMatchCardinality::ManyToMany => Cardinality::ManyToMany,
            };
        }
        Ok(Node::Binary {
            op,
            lhs: Box::new(self.node(&bin.lhs)?),
            rhs: Box::new(self.node(&bin.rhs)?),
            return_bool,
            matching,
        })
    }
}

/// The expression inside any parentheses.
fn unparen(expr: &Expr) -> &Expr {
    match expr {
        Expr::Paren(p) => unparen(&p.expr),
        other => other,
    }
}

fn refused_function(name: &str) -> PromQLError {
    PromQLError::BadQuery(format!("function \"{name}\" is not supported by log-cache: {}", Func::refusal(name)))
}

fn arity(function: &str) -> PromQLError {
    PromQLError::BadQuery(format!("wrong number of arguments for {function}()"))
}

/// A string argument; the parser has checked its type, and a string expression is always a literal.
fn string_arg(expr: &Expr) -> Result<String, PromQLError> {
    match unparen(expr) {
        Expr::StringLiteral(s) => Ok(s.val.clone()),
        _ => Err(PromQLError::BadQuery("expected a string literal argument".to_owned())),
    }
}

/// Prometheus' label name syntax, `[a-zA-Z_][a-zA-Z0-9_]*`.
pub(crate) fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The labels of `absent`'s answer: those the argument selector pins with `=`, unless it names
/// them more than once or with another operator (Prometheus' `createLabelsForAbsentFunction`).
fn absent_labels(arg: &Expr) -> BTreeMap<String, String> {
    let matchers = match arg {
        Expr::VectorSelector(vs) => &vs.matchers.matchers,
        Expr::MatrixSelector(ms) => &ms.vs.matchers.matchers,
        _ => return BTreeMap::new(),
    };
    let mut labels = BTreeMap::new();
    let mut dropped = Vec::new();
    for matcher in matchers {
        if matcher.name == METRIC_NAME {
            continue;
        }
        if matches!(matcher.op, MatchOp::Equal) && !labels.contains_key(&matcher.name) {
            labels.insert(matcher.name.clone(), matcher.value.clone());
        } else {
            dropped.push(&matcher.name);
        }
    }
    for name in dropped {
        labels.remove(name);
    }
    // An empty value is no label at all.
    labels.retain(|_, v| !v.is_empty());
    labels
}

fn offset_ms(offset: &Option<Offset>) -> Result<i64, PromQLError> {
    Ok(match offset {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(*d)?,
        Some(Offset::Neg(d)) => -duration_ms(*d)?,
    })
}

fn unsupported(what: &str) -> PromQLError {
    PromQLError::BadQuery(format!("{what} not supported by log-cache"))
}

fn duration_ms(d: Duration) -> Result<i64, PromQLError> {
    i64::try_from(d.as_millis()).map_err(|_| PromQLError::BadQuery(format!("duration {d:?} is out of range")))
}

fn system_time_ms(at: SystemTime) -> Result<i64, PromQLError> {
    let out_of_range = || PromQLError::BadQuery("timestamp of @ modifier is out of range".to_owned());
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).map_err(|_| out_of_range()),
        Err(before) => i64::try_from(before.duration().as_millis()).map(|ms| -ms).map_err(|_| out_of_range()),
    }
}
