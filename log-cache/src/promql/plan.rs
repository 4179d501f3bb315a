//! Turns the `promql-parser` syntax tree into the engine's own evaluation tree.
//!
//! Planning is where a query is rejected before any data is read: features the engine does not
//! evaluate (subqueries, `or` inside matchers, unlisted functions and aggregations) and selectors
//! without a `source_id` matcher (PROTOCOLS.md §6.6). Selectors are collected in [`Plan::selectors`]
//! so the loader can read each source id once for all of them.

use std::collections::HashSet;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use promql_parser::label::{MatchOp, METRIC_NAME};
use promql_parser::parser::token::{
    T_ADD, T_AVG, T_BOTTOMK, T_COUNT, T_DIV, T_EQLC, T_GTE, T_GTR, T_LAND, T_LOR, T_LSS, T_LTE, T_LUNLESS, T_MAX,
    T_MIN, T_MOD, T_MUL, T_NEQ, T_POW, T_SUB, T_SUM, T_TOPK,
};
use promql_parser::parser::{
    AggregateExpr, AtModifier, BinaryExpr, Call, Expr, LabelModifier, Offset, VectorMatchCardinality, VectorSelector,
};

use super::series::Series;
use super::PromQLError;

/// Index of a selector in [`Plan::selectors`].
pub(crate) type SelectorId = usize;

/// A query ready to evaluate: its tree and the selectors the tree refers to.
pub(crate) struct Plan {
    pub root: Node,
    pub selectors: Vec<Selector>,
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
    /// A string literal: only its type matters, as no supported function takes a string.
    String,
    VectorSelector(SelectorId),
    MatrixSelector(SelectorId),
    Call {
        func: Func,
        args: Vec<Node>,
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

/// The functions the engine evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Func {
    Rate,
    Irate,
    Increase,
    Delta,
    Idelta,
    AvgOverTime,
    MinOverTime,
    MaxOverTime,
    SumOverTime,
    CountOverTime,
    LastOverTime,
    Abs,
    Ceil,
    Floor,
    Round,
    Clamp,
    ClampMin,
    ClampMax,
    Time,
    Vector,
    Scalar,
}

impl Func {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "rate" => Self::Rate,
            "irate" => Self::Irate,
            "increase" => Self::Increase,
            "delta" => Self::Delta,
            "idelta" => Self::Idelta,
            "avg_over_time" => Self::AvgOverTime,
            "min_over_time" => Self::MinOverTime,
            "max_over_time" => Self::MaxOverTime,
            "sum_over_time" => Self::SumOverTime,
            "count_over_time" => Self::CountOverTime,
            "last_over_time" => Self::LastOverTime,
            "abs" => Self::Abs,
            "ceil" => Self::Ceil,
            "floor" => Self::Floor,
            "round" => Self::Round,
            "clamp" => Self::Clamp,
            "clamp_min" => Self::ClampMin,
            "clamp_max" => Self::ClampMax,
            "time" => Self::Time,
            "vector" => Self::Vector,
            "scalar" => Self::Scalar,
            _ => return None,
        })
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
    let mut planner = Planner { start_ms, end_ms, selectors: Vec::new() };
    let root = planner.node(expr)?;
    Ok(Plan { root, selectors: planner.selectors })
}

struct Planner {
    start_ms: i64,
    end_ms: i64,
    selectors: Vec<Selector>,
}

impl Planner {
    fn node(&mut self, expr: &Expr) -> Result<Node, PromQLError> {
        Ok(match expr {
            Expr::NumberLiteral(n) => Node::Number(n.val),
            Expr::StringLiteral(_) => Node::String,
            Expr::Paren(p) => self.node(&p.expr)?,
            Expr::Unary(u) => Node::Negate(Box::new(self.node(&u.expr)?)),
            Expr::VectorSelector(vs) => Node::VectorSelector(self.selector(vs, None)?),
            Expr::MatrixSelector(ms) => Node::MatrixSelector(self.selector(&ms.vs, Some(ms.range))?),
            Expr::Call(call) => self.call(call)?,
            Expr::Aggregate(agg) => self.aggregate(agg)?,
            Expr::Binary(bin) => self.binary(bin)?,
            Expr::Subquery(_) => return Err(unsupported("subqueries are")),
            Expr::Extension(_) => return Err(unsupported("extension expressions are")),
        })
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
        let offset_ms = match &vs.offset {
            None => 0,
            Some(Offset::Pos(d)) => duration_ms(*d)?,
            Some(Offset::Neg(d)) => -duration_ms(*d)?,
        };
        let at_ms = match &vs.at {
            None => None,
            Some(AtModifier::Start) => Some(self.start_ms),
            Some(AtModifier::End) => Some(self.end_ms),
            Some(AtModifier::At(at)) => Some(system_time_ms(*at)?),
        };
        let range_ms = range.map(duration_ms).transpose()?;
        self.selectors.push(Selector { name, source_ids, labels, offset_ms, at_ms, range_ms, series: Vec::new() });
        Ok(self.selectors.len() - 1)
    }

    fn call(&mut self, call: &Call) -> Result<Node, PromQLError> {
        let Some(func) = Func::from_name(call.func.name) else {
            return Err(PromQLError::BadQuery(format!("function \"{}\" is not supported", call.func.name)));
        };
        let args = call.args.args.iter().map(|arg| self.node(arg)).collect::<Result<Vec<_>, _>>()?;
        Ok(Node::Call { func, args })
    }

    fn aggregate(&mut self, agg: &AggregateExpr) -> Result<Node, PromQLError> {
        let op = match agg.op.id() {
            T_SUM => AggOp::Sum,
            T_AVG => AggOp::Avg,
            T_MIN => AggOp::Min,
            T_MAX => AggOp::Max,
            T_COUNT => AggOp::Count,
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
