//! Several log-cache nodes (§6.5): which node owns a source id, and the gRPC clients to the others.
//!
//! The owner of a source id is `jump_consistent_hash(xxhash64(source_id), N)` over `node_addrs`, as
//! in the original, so a Rust node can sit in a cluster of Go nodes. `Send` forwards each envelope to
//! its owner with `local_only = true`; `Read` and PromQL data reads are answered by the owner; `Meta`
//! fans out to every node. Clients connect lazily and reconnect by themselves (tonic `Channel`).

use std::time::Duration;

use loggregator_proto::logcache::v1::egress_client::EgressClient;
use loggregator_proto::raw::client::logcache_ingress::ingress_client::IngressClient;
use tonic::transport::{Channel, Endpoint};

use crate::config::{Config, LOG_CACHE_SERVER_NAME};

/// Longest wait for a peer's answer (Read, Meta, Send).
const PEER_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Jump consistent hash (Lamping & Veach, 2014): a bucket in `[0, buckets)` for `key`, moving only
/// `1/n` of the keys when a bucket is added.
pub fn jump_consistent_hash(mut key: u64, buckets: usize) -> usize {
    if buckets == 0 {
        return 0;
    }
    let mut b: i64 = -1;
    let mut j: i64 = 0;
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

/// The node index owning `source_id` among `nodes` nodes.
pub fn owner_of(source_id: &str, nodes: usize) -> usize {
    jump_consistent_hash(xxhash_rust::xxh64::xxh64(source_id.as_bytes(), 0), nodes)
}

/// Why a cluster could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("invalid node address `{addr}`: {reason}")]
    Address { addr: String, reason: String },
    #[error("peer TLS: {0}")]
    Tls(#[from] plumbing::tls::TlsError),
}

/// A peer node's clients (`ingress` sends pre-encoded envelopes: forwarding never re-encodes).
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: String,
    pub egress: EgressClient<Channel>,
    pub ingress: IngressClient<Channel>,
}

/// This node's view of the cluster.
#[derive(Clone, Debug)]
pub struct Cluster {
    index: usize,
    /// One slot per node of `node_addrs`; `None` at this node's own index.
    peers: Vec<Option<Peer>>,
}

impl Cluster {
    /// A cluster of one: every source is local.
    pub fn single() -> Self {
        Self { index: 0, peers: vec![None] }
    }

    /// Builds lazy clients to every other node of `config.node_addrs`.
    pub fn from_config(config: &Config) -> Result<Self, ClusterError> {
        if config.node_addrs.len() <= 1 {
            return Ok(Self::single());
        }
        let tls = match &config.tls {
            Some(files) => Some(files.grpc_client_config(LOG_CACHE_SERVER_NAME)?),
            None => None,
        };
        let mut peers = Vec::with_capacity(config.node_addrs.len());
        for (i, addr) in config.node_addrs.iter().enumerate() {
            if i == config.node_index {
                peers.push(None);
                continue;
            }
            // TLS is done by our connector (`plumbing::grpc`), so tonic sees a plain endpoint.
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| ClusterError::Address { addr: addr.clone(), reason: e.to_string() })?
                .connect_timeout(Duration::from_secs(5))
                .timeout(PEER_REQUEST_TIMEOUT)
                .tcp_nodelay(true);
            let channel = plumbing::grpc::connect_lazy(&endpoint, tls.clone());
            let max = config.max_message_bytes;
            peers.push(Some(Peer {
                addr: addr.clone(),
                egress: EgressClient::new(channel.clone())
                    .max_decoding_message_size(max)
                    .max_encoding_message_size(max),
                ingress: IngressClient::new(channel).max_decoding_message_size(max).max_encoding_message_size(max),
            }));
        }
        Ok(Self { index: config.node_index, peers })
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }

    pub fn index(&self) -> usize {
        self.index
    }

    /// The node owning `source_id`.
    pub fn owner(&self, source_id: &str) -> usize {
        owner_of(source_id, self.peers.len())
    }

    /// The peer owning `source_id`, or `None` when this node owns it.
    pub fn remote_owner(&self, source_id: &str) -> Option<&Peer> {
        self.peer(self.owner(source_id))
    }

    /// The peer at `index`, or `None` for this node.
    pub fn peer(&self, index: usize) -> Option<&Peer> {
        self.peers.get(index).and_then(Option::as_ref)
    }

    /// Every other node.
    /// One slot per node, `None` at this node's own index.
    pub fn slots(&self) -> &[Option<Peer>] {
        &self.peers
    }

    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hash_matches_the_reference_values() {
        // Values of the reference implementation (Lamping & Veach; Go `jump.Hash`).
        assert_eq!(jump_consistent_hash(1, 1), 0);
        assert_eq!(jump_consistent_hash(0, 10), 0);
        assert_eq!(jump_consistent_hash(0xdead_beef, 1), 0);
        let moved = (0..10_000u64)
            .filter(|k| {
                let key = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
                jump_consistent_hash(key, 10) != jump_consistent_hash(key, 11)
            })
            .count();
        // About 1/11 of the keys move to the new bucket, and only to it.
        assert!((700..1100).contains(&moved), "{moved}");
    }

    #[test]
    fn jump_hash_only_moves_keys_to_the_new_bucket() {
        for k in 0..2000u64 {
            let key = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let before = jump_consistent_hash(key, 5);
            let after = jump_consistent_hash(key, 6);
            assert!(after == before || after == 5, "key {key}: {before} -> {after}");
        }
    }

    #[test]
    fn owners_spread_over_the_nodes() {
        let mut counts = [0usize; 3];
        for i in 0..3000 {
            counts[owner_of(&format!("app-{i}"), 3)] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }
}
