//! The `loadgen` binary's parts.
//!
//! - [`settings`]: flags, scenario files, defaults.
//! - [`pipeline`]: `--spawn` (our Dopplers, agent and log-cache in-process) and the `--baseline` null sink.
//! - [`transport`]: gRPC channels, plaintext or mutual TLS.
//! - [`sender`], [`subscriber`]: the two ends, speaking only the public v2 protocol;
//!   [`edge`]: subscribers of the RLP gateway (SSE) and the traffic controller (v1 WebSockets).
//! - [`logcache`]: the Log Cache hop over HTTP (stored count, read-back, read throughput).
//! - [`observe`]: `/metrics` scraping and `/proc` CPU and memory.
//! - [`run`]: one measured phase; [`report`]: the table and JSON.
//!
//! Adding a hop (an RLP, log-cache) means starting it in [`pipeline`], pointing `egress` at it and
//! adding its registry to the metric sources: senders, subscribers and the report are unchanged.

pub mod edge;
pub mod logcache;
pub mod observe;
pub mod pipeline;
pub mod report;
pub mod run;
pub mod sender;
pub mod settings;
pub mod subscriber;
pub mod transport;
