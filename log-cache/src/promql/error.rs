//! The one error type of the PromQL engine, and its single mapping to gRPC codes, HTTP statuses and the
//! Prometheus `errorType` of the JSON error body (PROTOCOLS.md §6.7).

/// Why a PromQL query failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PromQLError {
    /// The query does not parse, or uses a PromQL feature this engine does not evaluate.
    #[error("{0}")]
    BadQuery(String),
    /// A request parameter (`time`, `start`, `end`, `step`) is invalid.
    #[error("invalid parameter \"{param}\": {reason}")]
    BadParameter {
        /// The parameter's name as the HTTP API spells it.
        param: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
    /// A selector lacks a `source_id` matcher with `=` or `=~` (§6.6); holds the metric name.
    #[error("metric '{0}' does not have a 'source_id' label")]
    MissingSourceId(String),
    /// Evaluation ran past the engine's timeout.
    #[error("query timed out in expression evaluation")]
    Timeout,
    /// Evaluation touched more samples than the engine's bound.
    #[error("query processing would load too many samples into memory in query execution")]
    TooManySamples,
    /// The query is well formed but cannot be evaluated on this data (e.g. ambiguous vector matching).
    #[error("{0}")]
    Execution(String),
}

impl PromQLError {
    /// The gRPC status code of this error on `logcache.v1.PromQLQuerier`.
    pub fn grpc_code(&self) -> tonic::Code {
        match self {
            Self::BadQuery(_) | Self::BadParameter { .. } | Self::MissingSourceId(_) => tonic::Code::InvalidArgument,
            Self::Timeout => tonic::Code::DeadlineExceeded,
            Self::TooManySamples => tonic::Code::ResourceExhausted,
            Self::Execution(_) => tonic::Code::Unknown,
        }
    }

    /// The HTTP status of this error on `/api/v1/query` and `/api/v1/query_range`, as Prometheus answers.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::BadQuery(_) | Self::BadParameter { .. } | Self::MissingSourceId(_) => 400,
            Self::Timeout => 503,
            Self::TooManySamples | Self::Execution(_) => 422,
        }
    }

    /// The Prometheus `errorType` of the JSON error body.
    pub fn error_type(&self) -> &'static str {
        match self {
            Self::BadQuery(_) | Self::BadParameter { .. } | Self::MissingSourceId(_) => "bad_data",
            Self::Timeout => "timeout",
            Self::TooManySamples | Self::Execution(_) => "execution",
        }
    }
}
