//! The bodies of the coverage-guided fuzz targets of `fuzz/` (issue 15), one public function per
//! target, in a workspace crate so that `cargo test` replays every corpus entry and every crash kept
//! in `fuzz/corpus/<target>/` and `fuzz/artifacts/<target>/` (`tests/replay.rs`) without libFuzzer.
//!
//! Each function takes the fuzzer's bytes, must never panic, and asserts what the code under test
//! promises: agreement with a reference (prost, `to_v1`, a model of the framing), round trips, and
//! independence from how the input was split into reads.
//!
//! Layout:
//! - [`scan`]: the envelope and batch scanner against a prost decode.
//! - [`stream`]: gRPC message framing over HTTP/2 DATA frames against a model, for any frame split.
//! - [`dropsonde`]: v1 decoding and v1→v2, v2→v1, and the encoded v2→v1 writer against `to_v1`.
//! - [`json`]: protojson decoding, its round trip, and the two JSON writers against each other.
//! - [`syslog`]: octet-counting and newline framing for any read split, then RFC 5424 parsing.
//! - [`query`]: the log-cache gateway's and the RLP gateway's query parameters.
//! - [`promql`]: PromQL parsing and evaluation on a small store, under tight limits.
//! - [`tls`]: the TLS record layer over an in-memory transport, with records sealed under fixed secrets.
//! - [`split`]: how a target cuts its input into reads or frames.

pub mod dropsonde;
pub mod json;
pub mod promql;
pub mod query;
pub mod scan;
pub mod split;
pub mod stream;
pub mod syslog;
pub mod tls;

/// A target's body: the fuzzer's bytes in, a panic on a broken promise.
pub type Body = fn(&[u8]);

/// Every target's name (its directory under `fuzz/corpus/` and `fuzz/artifacts/`) and body.
pub const TARGETS: &[(&str, Body)] = &[
    ("scan", scan::fuzz),
    ("stream", stream::fuzz),
    ("dropsonde", dropsonde::fuzz),
    ("json", json::fuzz),
    ("syslog", syslog::fuzz),
    ("query", query::fuzz),
    ("promql", promql::fuzz),
    ("tls", tls::fuzz),
];
