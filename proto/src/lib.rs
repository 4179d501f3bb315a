//! Wire types of Loggregator and Log Cache, and the code that moves them without copying.
//!
//! Every message and service of `shared/spec/PROTOCOLS.md` §1–§3 and §6.1 is generated here from the
//! `.proto` files under `proto/`, with the original packages, field numbers and file paths, so gRPC
//! method paths are identical to the original (`/loggregator.v2.Ingress/BatchSender`, ...).
//!
//! Layout:
//! - [`v2`], [`events`], [`plumbing`], [`logcache::v1`]: generated types, clients and servers.
//! - [`wire`]: the few protobuf wire primitives the scanner needs (varints, keys, skipping).
//! - [`scan`]: walks an encoded `EnvelopeBatch` and yields each envelope as a `Bytes` slice of the
//!   input plus its routing key (source id, type, counter name, gauge key-set hash), decoding nothing else.
//! - [`raw`]: message types that carry pre-encoded bytes through tonic, and the raw v2 Ingress/Egress
//!   services built on them: a Doppler receives and forwards envelopes without re-encoding them.
//! - [`stream`]: gRPC message streams read off the HTTP/2 body without tonic's receive buffer, for
//!   `BatchSender` (the agent's and the Doppler's ingress) and `BatchedReceiver` subscriptions.
//! - [`convert`]: v2→v1 and v1→v2 conversions (§3.4, §3.5).
//! - [`v1_encoded`]: v2→v1 for logs and counters straight from the encoding (the WebSockets' hot path).
//! - [`json`]: the protojson mapping of §1.5 for envelopes, batches and Log Cache responses.
//!
//! `prost`, `tonic` and `bytes` are re-exported so that every crate of the workspace agrees on versions.

pub use bytes;
pub use prost;
pub use tonic;

pub mod convert;
pub mod json;
pub mod raw;
pub mod scan;
pub mod stream;
pub mod v1_encoded;
pub mod wire;

/// The `loggregator` packages; generated code refers to `crate::loggregator::v2`.
pub mod loggregator {
    /// `loggregator.v2`: the v2 envelope, ingress and egress (§1, §2).
    pub mod v2 {
        include!(concat!(env!("OUT_DIR"), "/loggregator.v2.rs"));
    }
}

pub use loggregator::v2;

/// `events`: the v1 dropsonde protocol (proto2, §3).
pub mod events {
    include!(concat!(env!("OUT_DIR"), "/events.rs"));
}

/// `plumbing`: the v1 Doppler services (§2.2, §2.8).
pub mod plumbing {
    include!(concat!(env!("OUT_DIR"), "/plumbing.rs"));
}

/// `logcache.v1`: the Log Cache APIs (§6.1).
pub mod logcache {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/logcache.v1.rs"));
    }
}

pub use scan::{BatchScanner, EnvelopeKind, EnvelopeMeta, RawEnvelope, ScanError};
