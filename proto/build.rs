//! Compiles the .proto files with protox (pure Rust, no system `protoc`) and hands the descriptor set
//! to tonic's build crate, so method paths are exactly `/loggregator.v2.Ingress/BatchSender` etc.
//!
//! It also writes "raw" variants of the v2 Ingress and Egress services (same package, service and
//! method names, so the same paths on the wire) whose messages are pre-encoded bytes: the Doppler
//! and the agent use them to move envelopes without decoding or re-encoding them (see `raw.rs`).

use std::path::PathBuf;

use tonic_prost_build::manual::{Builder, Method, Service};

const PROTOS: &[&str] = &[
    "loggregator-api/v2/envelope.proto",
    "loggregator-api/v2/ingress.proto",
    "loggregator-api/v2/egress.proto",
    "events/envelope.proto",
    "plumbing/doppler.proto",
    "api/v1/egress.proto",
    "api/v1/ingress.proto",
    "api/v1/promql.proto",
    "api/v1/orchestration.proto",
];

/// The raw services' codec: prost's, but reserving each message's length before encoding it.
const CODEC: &str = "crate::raw::RawCodec";

fn method(name: &str, route: &str, input: &str, output: &str) -> tonic_prost_build::manual::MethodBuilder {
    Method::builder().name(name).route_name(route).input_type(input).output_type(output).codec_path(CODEC)
}

/// The v2 services with raw message types. `batch_in` is what the receiving side decodes,
/// `batch_out` what the sending side encodes.
fn raw_services(batch_in: &str, batch_out: &str, envelope_in: &str, envelope_out: &str) -> [Service; 2] {
    let ingress = Service::builder()
        .name("Ingress")
        .package("loggregator.v2")
        .method(method("sender", "Sender", envelope_in, "crate::v2::IngressResponse").client_streaming().build())
        .method(
            method("batch_sender", "BatchSender", batch_in, "crate::v2::BatchSenderResponse")
                .client_streaming()
                .build(),
        )
        .method(method("send", "Send", batch_in, "crate::v2::SendResponse").build())
        .build();
    let egress = Service::builder()
        .name("Egress")
        .package("loggregator.v2")
        .method(method("receiver", "Receiver", "crate::v2::EgressRequest", envelope_out).server_streaming().build())
        .method(
            method("batched_receiver", "BatchedReceiver", "crate::v2::EgressBatchRequest", batch_out)
                .server_streaming()
                .build(),
        )
        .build();
    [ingress, egress]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: a build script binary compiled
    // in another checkout (a git worktree sharing this target dir) must not read that checkout's files.
    let root =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let files = protox::compile(PROTOS, [&root])?;
    let mut config = prost_build::Config::new();
    // Payloads and opaque v1 envelopes stay `Bytes`, so decoding them slices the input, never copies.
    config.bytes(["."]);
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds_with_config(files, config)?;

    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let server_dir = out.join("raw_server");
    let client_dir = out.join("raw_client");
    std::fs::create_dir_all(&server_dir)?;
    std::fs::create_dir_all(&client_dir)?;
    // A server decodes whole batches as one `RawBatch` and encodes egress from envelope slices.
    Builder::new().build_client(false).out_dir(&server_dir).compile(&raw_services(
        "crate::raw::RawBatch",
        "crate::raw::EncodedBatch",
        "crate::raw::RawBytes",
        "crate::raw::RawBytes",
    ));
    // A client encodes ingress from envelope slices and receives egress batches undecoded.
    Builder::new().build_server(false).out_dir(&client_dir).compile(&raw_services(
        "crate::raw::EncodedBatch",
        "crate::raw::RawBatch",
        "crate::raw::RawBytes",
        "crate::raw::RawBytes",
    ));
    // log-cache's Egress server answers Read from the stored envelope bytes.
    let logcache_egress = Service::builder()
        .name("Egress")
        .package("logcache.v1")
        .method(method("read", "Read", "crate::logcache::v1::ReadRequest", "crate::raw::EncodedReadResponse").build())
        .method(method("meta", "Meta", "crate::logcache::v1::MetaRequest", "crate::logcache::v1::MetaResponse").build())
        .build();
    // log-cache's Ingress: a node receives `Send` undecoded (its batch scanned, as the nozzle's)
    // and forwards to the owner node from the received envelope slices.
    let logcache_ingress = |input: &str| {
        Service::builder()
            .name("Ingress")
            .package("logcache.v1")
            .method(method("send", "Send", input, "crate::logcache::v1::SendResponse").build())
            .build()
    };
    Builder::new()
        .build_client(false)
        .out_dir(&server_dir)
        .compile(&[logcache_egress, logcache_ingress("crate::raw::RawSendRequest")]);
    Builder::new()
        .build_server(false)
        .out_dir(&client_dir)
        .compile(&[logcache_ingress("crate::raw::EncodedSendRequest")]);
    Ok(())
}
