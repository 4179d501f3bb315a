//! Two log-cache nodes (§6.5): `Send` to either node lands on the owner, `Read` on either node is
//! answered by the owner, `Meta` merges both, and PromQL reads a remote source through its owner.

mod common;

use bytes::Bytes;
use common::*;
use log_cache::cluster::owner_of;
use log_cache::Listeners;
use loggregator_proto::logcache::v1::{MetaRequest, ReadRequest};

/// Two running nodes that know each other's gRPC address.
async fn two_nodes() -> (Running, Running) {
    let (grpc0, addr0) = listener().await;
    let (grpc1, addr1) = listener().await;
    let node_addrs = vec![addr0.to_string(), addr1.to_string()];
    let mut nodes = Vec::new();
    for (index, grpc) in [grpc0, grpc1].into_iter().enumerate() {
        let mut config = test_config();
        config.node_addrs = node_addrs.clone();
        config.node_index = index;
        config.syslog.enabled = false;
        nodes.push(start_with(config, Listeners { grpc: Some(grpc), ..Listeners::default() }).await);
    }
    let node1 = nodes.pop().expect("two nodes");
    let node0 = nodes.pop().expect("two nodes");
    (node0, node1)
}

/// A source id owned by `node` of two.
fn source_owned_by(node: usize, tag: &str) -> String {
    (0..).map(|i| format!("{tag}-{i}")).find(|id| owner_of(id, 2) == node).expect("some id hashes there")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_read_and_meta_across_two_nodes() {
    let (node0, node1) = two_nodes().await;
    let local = source_owned_by(0, "app");
    let remote = source_owned_by(1, "app");
    let now = log_cache::service::now_nanos();
    node0
        .send(vec![
            log_envelope(&local, now - 2_000, "on node 0"),
            log_envelope(&remote, now - 1_000, "on node 1"),
            log_envelope(&remote, now - 500, "on node 1 too"),
        ])
        .await;

    // Each envelope is stored only by its owner (forwarded asynchronously: `Send` answers once the
    // owner's are queued, as the original's does).
    eventually("node 1 holds its two", || async { node1.store.meta().get(&remote).is_some_and(|m| m.count == 2) })
        .await;
    assert_eq!(node0.store.meta().keys().cloned().collect::<Vec<_>>(), vec![local.clone()]);
    assert_eq!(node1.store.meta().keys().cloned().collect::<Vec<_>>(), vec![remote.clone()]);

    // Reads on either node are answered by the owner.
    for node in [&node0, &node1] {
        let request = ReadRequest { source_id: remote.clone(), ..Default::default() };
        let batch = node.egress().await.read(request).await.expect("read").into_inner().envelopes.expect("batch");
        assert_eq!(batch.batch.len(), 2);
        let (status, _, body) = get(&node.http_url(&format!("/api/v1/read/{local}")), &[]).await;
        assert_eq!(status, 200);
        assert!(body.contains(&format!("\"source_id\":\"{local}\"")), "{body}");
    }

    // Meta merges both nodes; local_only answers for one.
    let merged = node1.egress().await.meta(MetaRequest { local_only: false }).await.expect("meta").into_inner();
    assert_eq!(merged.meta.len(), 2);
    assert_eq!(merged.meta[&remote].count, 2);
    assert_eq!(merged.meta[&local].count, 1);
    let only = node1.egress().await.meta(MetaRequest { local_only: true }).await.expect("meta").into_inner();
    assert_eq!(only.meta.keys().cloned().collect::<Vec<_>>(), vec![remote.clone()]);
    assert_eq!(node0.registry.sum("forwarded", &[]), 2);

    node0.stop().await;
    node1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promql_reads_a_source_through_its_owner() {
    let (node0, node1) = two_nodes().await;
    let remote = source_owned_by(1, "metric");
    let now_s = log_cache::service::now_nanos() / 1_000_000_000;
    node1.send(vec![gauge_envelope(&remote, (now_s - 10) * 1_000_000_000, "memory", 7.0)]).await;
    assert!(node0.store.meta().is_empty());

    let query = format!("memory{{source_id=\"{remote}\"}}");
    let path = format!("/api/v1/query?query={}&time={now_s}", form_encode(&query));
    let (status, _, body) = get(&node0.http_url(&path), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(&format!("\"value\":[{now_s}.000,\"7\"]")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_owner_reads_as_empty() {
    let (grpc0, addr0) = listener().await;
    // A node address where nothing listens.
    let (dead, dead_addr) = listener().await;
    drop(dead);
    let mut config = test_config();
    config.node_addrs = vec![addr0.to_string(), dead_addr.to_string()];
    config.syslog.enabled = false;
    let node0 = start_with(config, Listeners { grpc: Some(grpc0), ..Listeners::default() }).await;
    let remote = source_owned_by(1, "gone");
    let (status, _, body) = get(&node0.http_url(&format!("/api/v1/read/{remote}")), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, "{\"envelopes\":{\"batch\":[]}}\n");
    // Meta still answers with what the reachable nodes hold.
    let (status, _, _) = get(&node0.http_url("/api/v1/meta"), &[]).await;
    assert_eq!(status, 200);
}

/// A node that sends forwarded envelopes to a frozen peer keeps storing its own: the nozzle and
/// `Send` only queue what a peer owns (once, the nozzle awaited each forward, so a peer that did
/// not answer stalled this node's ingest for the request timeout), and the peer's queue is bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_answers_delays_nothing_but_its_own_sources() {
    let (grpc0, addr0) = listener().await;
    // A peer that accepts connections and never answers: a listener nobody accepts on.
    let (_silent, silent_addr) = listener().await;
    let mut config = test_config();
    config.node_addrs = vec![addr0.to_string(), silent_addr.to_string()];
    config.syslog.enabled = false;
    let node0 = start_with(config, Listeners { grpc: Some(grpc0), ..Listeners::default() }).await;
    let (local, remote) = (source_owned_by(0, "own"), source_owned_by(1, "frozen"));
    let now = log_cache::service::now_nanos();
    let started = std::time::Instant::now();
    for i in 0..20 {
        let ts = now - 10_000 + i;
        node0.send(vec![log_envelope(&remote, ts, "theirs"), log_envelope(&local, ts, "mine")]).await;
    }
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(2), "20 sends took {took:?}: they waited for the peer");
    assert_eq!(node0.store.meta()[&local].count, 20, "node 0 stored its own at once");
    assert!(node0.service.forwarding_queued() <= log_cache::forward::QUEUE_LEN);
    node0.stop().await;
}

/// Forwarding to the owner sends the bytes that arrived, not a re-encoding: a field this version
/// does not know (a newer client's) survives the hop, as it does on a node that owns the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_envelope_is_stored_by_its_owner_byte_for_byte() {
    use loggregator_proto::prost::Message as _;
    use loggregator_proto::raw::client::logcache_ingress::ingress_client::IngressClient as RawIngressClient;
    use loggregator_proto::raw::{EncodedBatch, EncodedSendRequest};
    let (node0, node1) = two_nodes().await;
    let remote = source_owned_by(1, "bytes");
    let mut encoded = log_envelope(&remote, log_cache::service::now_nanos() - 1_000, "kept").encode_to_vec();
    // Field 99, varint 7: unknown to prost's `Envelope`, so decoding and encoding would drop it.
    encoded.extend_from_slice(&[0x98, 0x06, 0x07]);
    let mut client = RawIngressClient::connect(format!("http://{}", node0.addrs.grpc)).await.expect("connects");
    let batch = EncodedBatch { envelopes: vec![Bytes::from(encoded.clone())] };
    client.send(EncodedSendRequest { batch, local_only: false }).await.expect("node 0 takes it");
    eventually("node 0 forwards it", || async { node0.registry.sum("forwarded", &[]) == 1 }).await;
    let request = ReadRequest { source_id: remote.clone(), ..Default::default() };
    let filter = log_cache::store::ReadFilter::from_request(&request, log_cache::service::now_nanos()).expect("valid");
    let stored = node1.store.read(&remote, &filter);
    assert_eq!(stored, vec![Bytes::from(encoded)], "node 1 stores what node 0 received");
    node0.stop().await;
    node1.stop().await;
}

/// A `Send` whose batch does not parse is refused whole with INTERNAL, as grpc-go refuses a
/// request that does not unmarshal, and the node goes on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_send_is_refused_whole_and_the_node_serves_on() {
    use loggregator_proto::raw::client::logcache_ingress::ingress_client::IngressClient as RawIngressClient;
    use loggregator_proto::raw::{EncodedBatch, EncodedSendRequest};
    let (node0, node1) = two_nodes().await;
    let mut client = RawIngressClient::connect(format!("http://{}", node0.addrs.grpc)).await.expect("connects");
    let good = loggregator_proto::prost::Message::encode_to_vec(&log_envelope(&source_owned_by(0, "m"), 1, "x"));
    // A field 1 (timestamp, varint) whose varint never ends.
    let batch = EncodedBatch { envelopes: vec![Bytes::from(good), Bytes::from_static(&[0x08, 0xff, 0xff])] };
    let status = client.send(EncodedSendRequest { batch, local_only: false }).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    assert!(status.message().starts_with("grpc: error unmarshalling request"), "{status:?}");
    assert!(node0.store.meta().is_empty(), "part of a refused batch was stored");
    node0.send(vec![log_envelope(&source_owned_by(0, "m"), 2, "after")]).await;
    assert_eq!(node0.store.meta().len(), 1);
    node0.stop().await;
    node1.stop().await;
}

fn form_encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A trickle of envelopes for another node goes out in few requests: a short queue waits
/// `LINGER` for company instead of costing a request per nozzle batch (about twice the CPU per
/// envelope, BENCHMARKS.md §1.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickle_for_another_node_is_forwarded_in_few_requests() {
    use loggregator_proto::logcache::v1::SendRequest;
    use loggregator_proto::v2::EnvelopeBatch;
    let (node0, node1) = two_nodes().await;
    let remote = source_owned_by(1, "trickle");
    let now = log_cache::service::now_nanos();
    let mut client = node0.ingress().await;
    // 40 sends of one envelope, one every 2 ms: apart, each would be a request of its own.
    let mut pace = tokio::time::interval(std::time::Duration::from_millis(2));
    for i in 0..40 {
        pace.tick().await;
        let batch = EnvelopeBatch { batch: vec![log_envelope(&remote, now - 100_000 + i, "drip")] };
        client.send(SendRequest { envelopes: Some(batch), local_only: false }).await.expect("send");
    }
    eventually("node 1 holds all 40", || async { node1.store.meta().get(&remote).is_some_and(|m| m.count == 40) })
        .await;
    let requests = node0.registry.sum("forward_requests", &[]);
    assert_eq!(node0.registry.sum("forwarded", &[]), 40);
    assert!(requests <= 16, "40 envelopes over ~80 ms took {requests} requests");
    node0.stop().await;
    node1.stop().await;
}
