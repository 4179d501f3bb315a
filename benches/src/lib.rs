//! Benchmarks and the end-to-end load generator.
//!
//! - `benches/*.rs`: criterion benchmarks, one file per area (codec, diode, router, log_cache).
//! - [`workload`]: generated envelopes and re-stampable batch templates, shared by both.
//! - [`loadgen`]: the `loadgen` binary's modules (settings and scenarios, the spawned pipeline,
//!   senders, subscribers, metrics and the report).

pub mod loadgen;
pub mod workload;
