//! The `loggregator` package: the all-in-one pipeline that the binary runs with no subcommand.
//!
//! [`pipeline::Pipeline`] binds every component, wiring each to the addresses the others actually
//! bound, and serves them together; the binary and the whole-pipeline test start exactly this.

pub mod demo;
pub mod pipeline;
