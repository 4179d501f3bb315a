//! The `loggregator` package: the all-in-one pipeline that the binary runs with no subcommand.
//!
//! [`pipeline::Pipeline`] binds every component, wiring each to the addresses the others actually
//! bound, and serves them together; the binary and the whole-pipeline test start exactly this.
//!
//! Layout:
//! - [`pipeline`]: binding and serving every component together.
//! - [`demo`]: the `--demo` emitter of realistic traffic.
//! - [`console`]: the web console the all-in-one serves (sources, live tail, charts, pipeline).

pub mod console;
pub mod demo;
pub mod pipeline;
