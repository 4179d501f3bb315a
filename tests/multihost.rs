//! The multi-host test: every component on a host of its own, a network namespace, joined by a
//! bridge, with mutual TLS on every internal hop and the Dopplers found by DNS (`dnsmasq`
//! answering `doppler.multihost.test` with every Doppler's address, as a headless Service does).
//!
//! Two agents, three Dopplers (a fourth joins through DNS), one traffic controller (RLP, gateway,
//! WebSockets) and two log-cache nodes whose nozzles read the RLP. The test emits from both
//! agents, tallies every envelope by sequence number at an RLP subscriber, an RLP gateway (SSE)
//! client, a WebSocket firehose client and in log-cache (read from both nodes), and checks in
//! turn: delivery is complete and every hop's counters add up; a Doppler whose link is cut (no
//! FIN, no RST) is given up within a bounded time, what is lost is bounded by what the agents
//! count `unconfirmed`, and it receives again when its link returns; a Doppler added to the DNS
//! answer is used without a restart; a log-cache node killed and restarted loses only its own
//! sources' history. It needs root, `ip` and `dnsmasq` and fails (does not skip) without them;
//! `scripts/multihost` runs it.
//! README.md "Multi-host test" says what each check asserts; a run prints its figures on
//! `multihost:` lines (detection time, loss, counted drops).

#[path = "multihost/netns.rs"]
mod netns;
#[path = "faults/support.rs"]
mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use loggregator_proto::events;
use loggregator_proto::prost::Message as _;
use loggregator_proto::tonic::transport::{Channel, Endpoint};
use netns::*;
use plumbing::test_support::TestPki;
use support::*;

/// Envelopes per second from each agent's emitter: modest, so a debug build of nine processes on
/// two cores keeps up and whatever is lost is lost to a fault, not to load.
const RATE: u64 = 1500;
/// Each phase's emitters number from `phase × PHASE` (timestamps `base + n`), so one tally per
/// source holds every phase apart.
const PHASE: u64 = 10_000_000;
/// Every Doppler delivers each envelope four times: to the RLP stream of the test's subscriber
/// of its source, to one of the log-cache nozzles' streams (one shard group), to the RLP
/// gateway's stream of the test's SSE client and to the firehose.
const DELIVERIES: u64 = 4;
/// Streams the RLP serves: the two test subscribers, the two nozzles and the gateway's.
const RLP_STREAMS: u64 = 5;
/// Subscriptions each Doppler holds: one per RLP stream, and the firehose's.
const SUBSCRIPTIONS: u64 = RLP_STREAMS + 1;
/// The longest a cut-off Doppler may hold an agent's stream by design: the stream's recycle
/// (1 s) plus the close's grace (5 s), or, when HTTP/2 flow control stalls the stream before it
/// recycles, the keepalive ping interval (15 s) plus its timeout (20 s); and a margin.
const CUT_DETECTION_BOUND: Duration = Duration::from_secs(40);

/// A gRPC channel with mutual TLS, verifying `server_name`, retried until `DEADLINE`.
async fn tls_channel(addr: SocketAddr, pki: &TestPki, server_name: &str) -> Channel {
    let tls = pki.client_files().client_config(server_name).expect("client TLS config");
    let endpoint = Endpoint::from_shared(format!("https://{addr}"))
        .expect("valid endpoint")
        .tls_config(tls)
        .expect("TLS endpoint")
        .connect_timeout(Duration::from_secs(1));
    let end = Instant::now() + DEADLINE;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(error) if Instant::now() >= end => panic!("cannot connect to {addr}: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Whether a plaintext gRPC client is refused by the server at `addr` (it speaks mutual TLS only).
async fn refuses_plaintext(addr: SocketAddr) -> bool {
    use loggregator_proto::v2::{egress_client::EgressClient, EgressBatchRequest};
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).expect("valid endpoint");
    let attempt = async {
        let channel = endpoint.connect().await.map_err(|_| ())?;
        EgressClient::new(channel).batched_receiver(EgressBatchRequest::default()).await.map_err(|_| ())
    };
    matches!(tokio::time::timeout(Duration::from_secs(5), attempt).await, Ok(Err(())) | Err(_))
}

/// Every envelope log-cache holds of `source` (read through the node at `addr`), by sequence
/// number, paging by time.
async fn log_cache_all(addr: SocketAddr, pki: &TestPki, source: &str, base: i64) -> Result<BTreeSet<u64>, String> {
    let channel = tls_channel(addr, pki, "log-cache").await;
    let mut seen = BTreeSet::new();
    let mut start = 0;
    loop {
        let page = log_cache_read_on(channel.clone(), source, base, start, 1000).await.map_err(|s| s.to_string())?;
        let Some(last) = page.last() else { return Ok(seen) };
        start = base + *last as i64 + 1;
        seen.extend(page);
    }
}

/// Sequence numbers `from..to`.
fn range(from: u64, to: u64) -> BTreeSet<u64> {
    (from..to).collect()
}

/// A firehose WebSocket client tallying the v1 envelopes of the two sources.
fn firehose(url: String, sources: [(String, SharedTally); 2], base: i64) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (mut socket, _) = tokio_tungstenite::connect_async(url).await.expect("the firehose upgrades");
        while let Some(Ok(frame)) = socket.next().await {
            let tokio_tungstenite::tungstenite::Message::Binary(bytes) = frame else { continue };
            let Ok(envelope) = events::Envelope::decode(&bytes[..]) else { continue };
            let Some(log) = envelope.log_message.as_ref() else { continue };
            let app = log.app_id.clone().unwrap_or_default();
            if let Some((_, tally)) = sources.iter().find(|(source, _)| *source == app) {
                tally.lock().record("ws", (log.timestamp - base) as u64);
            }
        }
    })
}

/// An RLP gateway client (`GET /v2/read` of both sources' logs, Server-Sent Events) tallying
/// the envelopes of each source, from the `data:` events' protojson batches.
fn gateway_reader(addr: SocketAddr, sources: [(String, SharedTally); 2], base: i64) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let find = |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).position(|w| w == needle);
    tokio::spawn(async move {
        let target = format!("/v2/read?log&source_id={}&source_id={}", sources[0].0, sources[1].0);
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects to the gateway");
        // HTTP/1.0: the body is the rest of the connection, not chunked.
        let request = format!("GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("sends the request");
        let (mut pending, mut in_body) = (Vec::new(), false);
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&buffer[..n]);
            if !in_body {
                let Some(end) = find(&pending, b"\r\n\r\n") else { continue };
                let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                assert!(
                    head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
                    "gateway answered {head}"
                );
                pending.drain(..end + 4);
                in_body = true;
            }
            while let Some(end) = find(&pending, b"\n\n") {
                let event: Vec<u8> = pending.drain(..end + 2).collect();
                for line in event.split(|b| *b == b'\n') {
                    let Some(data) = line.strip_prefix(b"data: ") else { continue };
                    let json: serde_json::Value = serde_json::from_slice(data).expect("a data event is JSON");
                    for envelope in json["batch"].as_array().into_iter().flatten() {
                        let source = envelope["source_id"].as_str().unwrap_or_default();
                        let timestamp: i64 = envelope["timestamp"].as_str().and_then(|t| t.parse().ok()).unwrap_or(0);
                        if let Some((_, tally)) = sources.iter().find(|(s, _)| s == source) {
                            tally.lock().record("sse", (timestamp - base) as u64);
                        }
                    }
                }
            }
        }
    })
}

/// Starts one emitter per agent for `phase` (envelopes numbered from `phase × PHASE`), each over
/// mutual TLS as a co-located emitter speaks to its agent.
async fn start_emitters(agents: &[Host], pki: &TestPki, sources: &[String; 2], base: i64, phase: u64) -> Vec<Emitter> {
    let mut emitters = Vec::new();
    for (host, source) in agents.iter().zip(sources) {
        let channel = tls_channel(at(host, AGENT), pki, "metron").await;
        emitters.push(Emitter::start_on(channel, base + (phase * PHASE) as i64, source, RATE, 100).await);
    }
    emitters
}

/// Waits until every emitter has sent `count`.
async fn wait_sent(emitters: &[Emitter], count: u64) {
    let ok = eventually(DEADLINE, || async { emitters.iter().all(|e| e.sent() >= count) }).await;
    assert!(ok, "an emitter stalled: {:?}", emitters.iter().map(Emitter::sent).collect::<Vec<_>>());
}

async fn finish(emitters: Vec<Emitter>) -> Vec<u64> {
    let mut sent = Vec::new();
    for emitter in emitters {
        sent.push(emitter.finish().await);
    }
    sent
}

async fn start_doppler(name: &str, host: &Host, dir: &TempDir, pki: &TestPki) -> Proc {
    let config = format!("grpc_addr = \"{}\"\n{}", at(host, GRPC), tls_table("tls", &pki.server_files()));
    let path = dir.file(&format!("{name}.toml"), &config);
    let args = strings(&["doppler", "--config", path.to_str().expect("utf-8 path")]);
    Proc::start_with(name, &host.exec(), &args, &[at(host, GRPC)], at(host, METRICS)).await
}

async fn agent_scrape(agents: &[Proc]) -> Vec<Metrics> {
    scrape_all(&agents.iter().collect::<Vec<_>>()).await
}

async fn scrape_all(procs: &[&Proc]) -> Vec<Metrics> {
    let mut all = Vec::new();
    for proc in procs {
        all.push(proc.metrics().await);
    }
    all
}

fn sum(metrics: &[Metrics], name: &str, labels: &[(&str, &str)]) -> u64 {
    metrics.iter().map(|m| m.sum(name, labels)).sum()
}

const RLP_COMPONENT: [(&str, &str); 1] = [("component", "reverse-log-proxy")];
const WS_COMPONENT: [(&str, &str); 1] = [("component", "traffic-controller")];

/// The counters that move while anything is in flight, and what the test's clients received.
fn snapshot(metrics: &[Metrics], tallies: &[SharedTally]) -> Vec<u64> {
    let mut values: Vec<u64> = metrics
        .iter()
        .flat_map(|m| ["ingress", "egress", "dropped", "nozzle_received", "forwarded"].map(|n| m.sum(n, &[])))
        .collect();
    values.extend(tallies.iter().map(|t| {
        let tally = t.lock();
        tally.received_by("rlp") + tally.received_by("ws") + tally.received_by("sse")
    }));
    values
}

/// Waits until the agents have forwarded (or counted) everything `sent` and then nothing moves
/// for half a second on any hop; returns the last scrapes, in `procs` order.
async fn settle(procs: &[&Proc], agents: usize, sent: &[u64], tallies: &[SharedTally]) -> Vec<Metrics> {
    let end = Instant::now() + DEADLINE;
    let mut last: Option<(Instant, Vec<u64>)> = None;
    loop {
        let all = scrape_all(procs).await;
        let agents_done = all[..agents]
            .iter()
            .zip(sent)
            .all(|(m, sent)| m.sum("ingress", &[]) == *sent && m.sum("egress", &[]) + m.sum("dropped", &[]) == *sent);
        let now = snapshot(&all, tallies);
        match &last {
            Some((since, before)) if agents_done && *before == now => {
                if since.elapsed() >= Duration::from_millis(500) {
                    return all;
                }
            }
            _ => last = Some((Instant::now(), now)),
        }
        if Instant::now() >= end {
            let text: Vec<String> = procs.iter().zip(&all).map(|(p, m)| format!("--- {}\n{}", p.name, m.0)).collect();
            panic!("the deployment did not settle within {DEADLINE:?} (sent {sent:?}):\n{}", text.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn doppler_holds_the_sum_rule(name: &str, m: &Metrics) {
    let (ingress, egress, dropped) = (m.sum("ingress", &[]), m.sum("egress", &[]), m.sum("dropped", &[]));
    assert_eq!(egress + dropped, DELIVERIES * ingress, "{name}: egress + dropped ≠ {DELIVERIES} × ingress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_host_deployment_delivers_everywhere_survives_a_cut_link_and_adds_up() {
    netns::require_root_and_tools();
    let started = Instant::now();
    let mut net = Network::create();
    let dir = TempDir::new("multihost");
    let pki = TestPki::new(&["doppler", "reverselogproxy", "log-cache", "metron"]);

    // === hosts ===
    let dns_host = net.host("ns", 2);
    let agent_hosts = [net.host("a1", 11), net.host("a2", 12)];
    let doppler_hosts = [net.host("d1", 21), net.host("d2", 22), net.host("d3", 23)];
    let tc_host = net.host("tc", 31);
    let cache_hosts = [net.host("c1", 41), net.host("c2", 42)];
    let entries: Vec<_> = doppler_hosts.iter().map(|h| (h.ip, DOPPLER_NAME)).collect();
    let mut dns = Dns::start(&dns_host, dir.0.join("dopplers.hosts"), &entries);
    let three: Vec<_> = doppler_hosts.iter().map(|h| h.ip).collect();
    let answered = eventually(DEADLINE, || async { netns::resolve_in(&agent_hosts[0], DOPPLER_NAME) == three }).await;
    assert!(answered, "dnsmasq does not answer {DOPPLER_NAME} with {three:?}");

    // === components ===
    let mut dopplers = Vec::new();
    for (i, host) in doppler_hosts.iter().enumerate() {
        dopplers.push(start_doppler(&format!("doppler-{}", i + 1), host, &dir, &pki).await);
    }
    let node_addrs: Vec<String> = cache_hosts.iter().map(|h| format!("\"{}\"", at(h, LOG_CACHE))).collect();
    let mut caches = Vec::new();
    for (i, host) in cache_hosts.iter().enumerate() {
        let config = format!(
            "grpc_addr = \"{}\"\nhttp_addr = \"{}\"\nnode_addrs = [{}]\nnode_index = {i}\n{}\
             [nozzle]\naddrs = [\"{}\"]\nserver_name = \"reverselogproxy\"\n{}[syslog]\nenabled = false\n",
            at(host, LOG_CACHE),
            at(host, LOG_CACHE_HTTP),
            node_addrs.join(", "),
            tls_table("tls", &pki.server_files()),
            at(&tc_host, RLP),
            tls_table("nozzle.tls", &pki.client_files()),
        );
        let path = dir.file(&format!("log-cache-{i}.toml"), &config);
        let args = strings(&["log-cache", "--config", path.to_str().expect("utf-8 path")]);
        let listens = [at(host, LOG_CACHE), at(host, LOG_CACHE_HTTP)];
        let name = format!("log-cache-{i}");
        caches.push(Proc::start_with(&name, &host.exec(), &args, &listens, at(host, METRICS)).await);
    }
    // Slow-consumer announcements go to an agent (the first: the traffic controller's host has
    // none of its own here), over mutual TLS as every internal hop.
    let tc_config = format!(
        "dopplers = [\"{DOPPLER_NAME}:{GRPC}\"]\nresolve_interval = 1000\nlog_cache_addr = \"{}\"\n\
         agent_addr = \"{}\"\nallow_unauthenticated_public = true\n{}{}{}[rlp]\naddr = \"{}\"\n{}\
         [gateway]\naddr = \"{}\"\n[websocket]\naddr = \"{}\"\n",
        at(&cache_hosts[0], LOG_CACHE),
        at(&agent_hosts[0], AGENT),
        tls_table("doppler_tls", &pki.client_files()),
        tls_table("log_cache_tls", &pki.client_files()),
        tls_table("agent_tls", &pki.client_files()),
        at(&tc_host, RLP),
        tls_table("rlp.tls", &pki.server_files()),
        at(&tc_host, GATEWAY),
        at(&tc_host, WEBSOCKET),
    );
    let path = dir.file("traffic-controller.toml", &tc_config);
    let args = strings(&["traffic-controller", "--config", path.to_str().expect("utf-8 path")]);
    let listens = [at(&tc_host, RLP), at(&tc_host, GATEWAY), at(&tc_host, WEBSOCKET)];
    let tc = Proc::start_with("traffic-controller", &tc_host.exec(), &args, &listens, at(&tc_host, METRICS)).await;
    let mut agents = Vec::new();
    for (i, host) in agent_hosts.iter().enumerate() {
        let config = format!(
            "grpc_addr = \"{}\"\ndopplers = [\"{DOPPLER_NAME}:{GRPC}\"]\nresolve_interval = 1000\n{}{}",
            at(host, AGENT),
            tls_table("tls", &pki.server_files()),
            tls_table("doppler_tls", &pki.client_files())
        );
        let path = dir.file(&format!("agent-{i}.toml"), &config);
        let args = strings(&["agent", "--config", path.to_str().expect("utf-8 path"), "--disable-udp"]);
        let name = format!("agent-{}", i + 1);
        agents.push(Proc::start_with(&name, &host.exec(), &args, &[at(host, AGENT)], at(host, METRICS)).await);
    }

    // One source per agent, owned by different log-cache nodes, so each node forwards the other's.
    let owned_by = |node: usize| {
        (0..).map(|i| format!("multihost-{i}")).find(|s| log_cache::cluster::owner_of(s, 2) == node).expect("a source")
    };
    let sources = [owned_by(0), owned_by(1)];
    let rlp_tallies = [tally(), tally()];
    let ws_tallies = [tally(), tally()];
    let sse_tallies = [tally(), tally()];
    let all_tallies: Vec<SharedTally> = rlp_tallies.iter().chain(&ws_tallies).chain(&sse_tallies).cloned().collect();
    let base = now_ns();
    let mut subscribers = Vec::new();
    for (source, tally) in sources.iter().zip(&rlp_tallies) {
        let channel = tls_channel(at(&tc_host, RLP), &pki, "reverselogproxy").await;
        subscribers.push(Subscriber::start_on("rlp", channel, source, base, tally).await);
    }
    let ws = firehose(
        format!("ws://{}/firehose/multihost", at(&tc_host, WEBSOCKET)),
        [(sources[0].clone(), ws_tallies[0].clone()), (sources[1].clone(), ws_tallies[1].clone())],
        base,
    );
    let sse = gateway_reader(
        at(&tc_host, GATEWAY),
        [(sources[0].clone(), sse_tallies[0].clone()), (sources[1].clone(), sse_tallies[1].clone())],
        base,
    );
    for doppler in &dopplers {
        let (ok, m) = doppler.scrape_until(|m| m.sum("subscriptions", &[]) == SUBSCRIPTIONS).await;
        assert!(ok, "{} has not {SUBSCRIPTIONS} subscriptions:\n{}", doppler.name, m.0);
    }
    eprintln!("multihost: deployment up in {:?}", started.elapsed());
    // Mutual TLS on the internal servers (agents included): a plaintext client gets nowhere.
    let internal = doppler_hosts.iter().map(|h| at(h, GRPC)).chain([at(&tc_host, RLP)]);
    let internal = internal.chain(agent_hosts.iter().map(|h| at(h, AGENT)));
    for addr in internal.chain(cache_hosts.iter().map(|h| at(h, LOG_CACHE))) {
        assert!(refuses_plaintext(addr).await, "{addr} serves a plaintext gRPC client");
    }
    let agent_pids: Vec<u32> = agents.iter().map(Proc::pid).collect();

    // === 1. steady delivery: complete everywhere, every hop adding up exactly ===
    let emitters = start_emitters(&agent_hosts, &pki, &sources, base, 0).await;
    wait_sent(&emitters, RATE * 3).await;
    let sent1 = finish(emitters).await;
    eprintln!("multihost: 1. emitted {sent1:?}");
    let everyone: Vec<&Proc> = agents.iter().chain(&dopplers).chain([&tc]).chain(&caches).collect();
    let m = settle(&everyone, 2, &sent1, &all_tallies).await;
    eprintln!("multihost: 1. settled");
    let (agent_m, doppler_m, tc_m, cache_m) = (&m[0..2], &m[2..5], &m[5], &m[6..8]);
    assert_eq!(sum(agent_m, "dropped", &[]), 0, "the agents dropped envelopes at a modest rate");
    assert_eq!(sum(doppler_m, "ingress", &[]), sum(agent_m, "egress", &[]), "agent → Doppler");
    for (i, d) in doppler_m.iter().enumerate() {
        assert!(d.sum("ingress", &[]) > 0, "doppler-{} got no share of the agents' traffic", i + 1);
        doppler_holds_the_sum_rule(&dopplers[i].name, d);
    }
    let upstream = tc_m.sum("ingress", &RLP_COMPONENT) + tc_m.sum("ingress", &WS_COMPONENT);
    assert_eq!(sum(doppler_m, "egress", &[]), upstream, "Doppler → RLP and firehose: egress ≠ ingress");
    for labels in [&RLP_COMPONENT, &WS_COMPONENT] {
        let (i, e, d) = (tc_m.sum("ingress", labels), tc_m.sum("egress", labels), tc_m.sum("dropped", labels));
        assert_eq!(i, e + d, "{labels:?}: ingress ≠ egress + dropped");
    }
    let to_clients: u64 = rlp_tallies.iter().map(|t| t.lock().received_by("rlp")).sum::<u64>()
        + sse_tallies.iter().map(|t| t.lock().received_by("sse")).sum::<u64>();
    let nozzles = sum(cache_m, "nozzle_received", &[]);
    assert_eq!(tc_m.sum("egress", &RLP_COMPONENT), to_clients + nozzles, "RLP → subscribers, gateway and nozzles");
    let gateway_egress = tc_m.sum("egress", &[("component", "rlp-gateway")]);
    let sse_received: u64 = sse_tallies.iter().map(|t| t.lock().received_by("sse")).sum();
    assert_eq!(gateway_egress, sse_received, "gateway → the SSE client");
    let ws_received: u64 = ws_tallies.iter().map(|t| t.lock().received_by("ws")).sum();
    assert_eq!(tc_m.sum("egress", &WS_COMPONENT), ws_received, "firehose → the WebSocket client");
    let cache_dropped = sum(cache_m, "dropped", &[]);
    assert_eq!(sum(cache_m, "ingress", &[]) + cache_dropped, nozzles, "nozzles → stores (with forwarding)");
    let forwarded: Vec<u64> = cache_m.iter().map(|c| c.sum("forwarded", &[])).collect();
    assert!(forwarded.iter().all(|f| *f > 0), "each node forwards the other's source: {forwarded:?}");
    for i in 0..2 {
        for (path, tallies) in [("rlp", &rlp_tallies), ("ws", &ws_tallies), ("sse", &sse_tallies)] {
            let tally = tallies[i].lock();
            assert_eq!(tally.missing(sent1[i]), Vec::<u64>::new(), "{}: lost on the way to {path}", sources[i]);
            assert_eq!(tally.duplicates(), 0, "{}: duplicates at {path}", sources[i]);
        }
        for (n, host) in cache_hosts.iter().enumerate() {
            let held = log_cache_all(at(host, LOG_CACHE), &pki, &sources[i], base).await.expect("log-cache reads");
            assert_eq!(held, range(0, sent1[i]), "{} via log-cache-{n} is not complete", sources[i]);
        }
    }
    eprintln!(
        "multihost: 1. steady: sent {sent1:?}, complete at the RLP, the gateway, the firehose and both log-cache nodes \
         (forwarded {forwarded:?}); Doppler ingress {:?}",
        doppler_m.iter().map(|m| m.sum("ingress", &[])).collect::<Vec<_>>()
    );
    let mut total_sent = sent1.clone();

    // === 2. a Doppler host cut off (link down: no FIN, no RST), then back ===
    let unconfirmed_before = sum(&agent_scrape(&agents).await, "unconfirmed", &[]);
    let emitters = start_emitters(&agent_hosts, &pki, &sources, base, 1).await;
    let d3_start = dopplers[2].metrics().await.sum("ingress", &[]);
    let (ok, _) = dopplers[2].scrape_until(|m| m.sum("ingress", &[]) > d3_start + RATE / 10).await;
    assert!(ok, "doppler-3 gets no share of the agents' traffic");
    let cut_at = emitters.iter().map(Emitter::sent).min().unwrap_or(0);
    doppler_hosts[2].cut();
    let cut_time = Instant::now();
    // Given up: an agent's stream to it failed, and what its transport had taken is `unconfirmed`.
    let detected = eventually(CUT_DETECTION_BOUND, || async {
        sum(&agent_scrape(&agents).await, "unconfirmed", &[]) > unconfirmed_before
    })
    .await;
    let detection = cut_time.elapsed();
    assert!(detected, "no agent gave its streams to the cut-off Doppler up within {CUT_DETECTION_BOUND:?}");
    // Cut for 8 s at least, so the agents' retries of it time out too, and until no stream has
    // given up for a second: the last one to do so marks the failover (what the emitters had sent
    // then). Each of the agents' connections gives its stream up on its own schedule.
    let (mut unconfirmed_seen, mut last_give_up) = (sum(&agent_scrape(&agents).await, "unconfirmed", &[]), detection);
    let mut failover_seq = emitters.iter().map(Emitter::sent).max().unwrap_or(0);
    loop {
        let elapsed = cut_time.elapsed();
        if elapsed >= Duration::from_secs(8) && elapsed >= last_give_up + Duration::from_secs(1) {
            break;
        }
        assert!(elapsed < CUT_DETECTION_BOUND, "the agents still give streams up {elapsed:?} after the cut");
        let sent_now = emitters.iter().map(Emitter::sent).max().unwrap_or(0);
        let unconfirmed_now = sum(&agent_scrape(&agents).await, "unconfirmed", &[]);
        if unconfirmed_now > unconfirmed_seen {
            (unconfirmed_seen, last_give_up, failover_seq) = (unconfirmed_now, cut_time.elapsed(), sent_now);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cut_for = cut_time.elapsed();
    let at_reconnect = emitters.iter().map(Emitter::sent).min().unwrap_or(0);
    let d3_at_cut = dopplers[2].scrape().await;
    assert!(d3_at_cut.is_none(), "the cut-off Doppler's /metrics still answers");
    doppler_hosts[2].reconnect();
    let up_time = Instant::now();
    let (ok, m) = dopplers[2].scrape_until(|m| m.sum("ingress", &[]) > d3_start + RATE).await;
    let back_after = up_time.elapsed();
    assert!(ok, "doppler-3 receives nothing after its link came back:\n{}", m.0);

    // === 3. a fourth Doppler, added to the DNS answer, is used without a restart ===
    let d4_host = net.host("d4", 24);
    let d4 = start_doppler("doppler-4", &d4_host, &dir, &pki).await;
    dns.add(d4_host.ip, DOPPLER_NAME);
    let added = Instant::now();
    let (ok, m) =
        d4.scrape_until(|m| m.sum("subscriptions", &[]) == SUBSCRIPTIONS && m.sum("ingress", &[]) > RATE / 10).await;
    let d4_after = added.elapsed();
    assert!(ok, "doppler-4 was not subscribed to and sent to after joining the DNS answer:\n{}", m.0);
    // The same agent processes: they re-resolved the name, and say so.
    assert_eq!(agents.iter().map(Proc::pid).collect::<Vec<_>>(), agent_pids, "an agent was restarted");
    for agent in &agents {
        let (ok, m) = agent.scrape_until(|m| m.sum("dopplers", &[]) == 4).await;
        assert!(ok, "{}'s dopplers gauge does not count the fourth Doppler:\n{}", agent.name, m.0);
    }
    let now_sent = emitters.iter().map(Emitter::sent).min().unwrap_or(0);
    wait_sent(&emitters, now_sent + RATE).await;
    let sent2 = finish(emitters).await;
    dopplers.push(d4);
    for (total, sent) in total_sent.iter_mut().zip(&sent2) {
        *total += sent;
    }
    let everyone: Vec<&Proc> = agents.iter().chain(&dopplers).chain([&tc]).chain(&caches).collect();
    let m = settle(&everyone, 2, &total_sent, &all_tallies).await;
    let (agent_m, doppler_m, tc_m) = (&m[0..2], &m[2..6], &m[6]);
    let (agent_egress, doppler_ingress) = (sum(agent_m, "egress", &[]), sum(doppler_m, "ingress", &[]));
    let unconfirmed = sum(agent_m, "unconfirmed", &[]) - unconfirmed_before;
    let unread = agent_egress - doppler_ingress;
    // What the Dopplers sent that the traffic controller never read: in flight from the cut-off
    // Doppler when a stream of its subscribers gave up (none when its connections outlive the cut).
    let upstream = tc_m.sum("ingress", &RLP_COMPONENT) + tc_m.sum("ingress", &WS_COMPONENT);
    let doppler_egress = sum(doppler_m, "egress", &[]);
    assert!(upstream <= doppler_egress, "the traffic controller read more than the Dopplers sent");
    let unread_from_dopplers = doppler_egress - upstream;
    // What a Doppler read and delivered to fewer than all three subscriptions, counted nowhere: a
    // Doppler new in the DNS answer gets the agents' traffic as soon as they re-resolve, which may
    // be before the RLP and the firehose have re-resolved and subscribed to it.
    let undelivered: u64 = doppler_m
        .iter()
        .map(|d| (DELIVERIES * d.sum("ingress", &[])).saturating_sub(d.sum("egress", &[]) + d.sum("dropped", &[])))
        .sum();
    let counted_drops = sum(agent_m, "dropped", &[])
        + sum(doppler_m, "dropped", &[])
        + tc_m.sum("dropped", &RLP_COMPONENT)
        + tc_m.sum("dropped", &WS_COMPONENT);
    assert!(doppler_ingress <= agent_egress, "the Dopplers read more than the agents sent");
    assert!(unread <= unconfirmed, "{unread} sent to no Doppler that read it, but only {unconfirmed} unconfirmed");
    for (i, d) in doppler_m.iter().enumerate().take(2) {
        doppler_holds_the_sum_rule(&dopplers[i].name, d);
    }
    for (d, proc) in doppler_m.iter().zip(&dopplers) {
        let (i, e, x) = (d.sum("ingress", &[]), d.sum("egress", &[]), d.sum("dropped", &[]));
        eprintln!(
            "multihost: 2. {}: ingress {i}, egress {e}, dropped {x}, subscriptions {}",
            proc.name,
            d.sum("subscriptions", &[])
        );
    }
    eprintln!(
        "multihost: 2. RLP ingress {}, firehose ingress {}, Σ Doppler egress {doppler_egress}",
        tc_m.sum("ingress", &RLP_COMPONENT),
        tc_m.sum("ingress", &WS_COMPONENT),
    );
    let mut lost = Vec::new();
    for i in 0..2 {
        let (from, to) = (PHASE, PHASE + sent2[i]);
        for (path, tallies) in [("rlp", &rlp_tallies), ("ws", &ws_tallies), ("sse", &sse_tallies)] {
            let tally = tallies[i].lock();
            let missing: Vec<u64> = (from..to).filter(|s| !tally.has(*s)).collect();
            assert_eq!(tally.duplicates(), 0, "{}: duplicates at {path}", sources[i]);
            assert!(
                missing.len() as u64 <= unconfirmed + unread_from_dopplers + undelivered + counted_drops,
                "{}: {} lost on the way to {path}, more than the {unconfirmed} unconfirmed, {unread_from_dopplers} \
                 unread from the Dopplers, {undelivered} delivered to no subscription and {counted_drops} dropped \
                 (#{:?}..=#{:?}, cut at #{cut_at})",
                sources[i],
                missing.len(),
                missing.first().map(|s| s - PHASE),
                missing.last().map(|s| s - PHASE)
            );
            // Lost only around the cut: nothing emitted a second (the agents' intake lag) after
            // the last stream to the cut-off Doppler was given up is missing.
            let failed_over = PHASE + failover_seq + RATE;
            let late = missing.iter().filter(|s| **s >= failed_over).count() as u64;
            let late_seqs: Vec<u64> =
                missing.iter().filter(|s| **s >= failed_over).take(40).map(|s| s - PHASE).collect();
            assert!(
                late <= counted_drops + undelivered,
                "{}: {late} emitted after the failover (#{failover_seq}; cut at #{cut_at}, reconnected at \
                 #{at_reconnect}) never reached {path}: {late_seqs:?}",
                sources[i]
            );
            lost.push((path, missing.len(), missing.first().map(|s| s - PHASE), missing.last().map(|s| s - PHASE)));
        }
    }
    eprintln!(
        "multihost: 2. cut at #{cut_at} for {cut_for:?}: first stream given up after {detection:?}, the last \
         after {last_give_up:?} (#{failover_seq}), reconnected at #{at_reconnect}, \
         receiving again {back_after:?} after; lost (path, count, first, last) {lost:?}; agent egress read by no \
         Doppler {unread}, unconfirmed {unconfirmed}, Doppler egress read by no subscriber {unread_from_dopplers}, \
         delivered to no subscription {undelivered}, \
         counted drops {counted_drops}; Doppler ingress {:?}",
        doppler_m.iter().map(|m| m.sum("ingress", &[])).collect::<Vec<_>>()
    );
    eprintln!("multihost: 3. doppler-4 subscribed to and sent to {d4_after:?} after the SIGHUP");

    // === 4. a log-cache node killed and restarted loses only its own sources' history ===
    let c = |i: usize| at(&cache_hosts[i], LOG_CACHE);
    let held: Vec<BTreeSet<u64>> = {
        let mut held = Vec::new();
        for source in &sources {
            held.push(log_cache_all(c(0), &pki, source, base).await.expect("log-cache reads"));
        }
        held
    };
    caches[1].kill9();
    assert_eq!(log_cache_all(c(0), &pki, &sources[0], base).await.expect("node 0 serves its own"), held[0]);
    caches[1].restart().await;
    let (ok, m) = tc.scrape_until(|m| m.sum("subscriptions", &RLP_COMPONENT) == RLP_STREAMS).await;
    assert!(ok, "the restarted node's nozzle did not subscribe again:\n{}", m.0);
    for n in 0..2 {
        assert_eq!(log_cache_all(c(n), &pki, &sources[1], base).await.expect("reads"), BTreeSet::new());
        assert_eq!(log_cache_all(c(n), &pki, &sources[0], base).await.expect("reads"), held[0]);
    }
    let emitters = start_emitters(&agent_hosts, &pki, &sources, base, 2).await;
    wait_sent(&emitters, RATE).await;
    let sent3 = finish(emitters).await;
    for (total, sent) in total_sent.iter_mut().zip(&sent3) {
        *total += sent;
    }
    let everyone: Vec<&Proc> = agents.iter().chain(&dopplers).chain([&tc]).chain(&caches).collect();
    let m = settle(&everyone, 2, &total_sent, &all_tallies).await;
    for n in 0..2 {
        let fresh = range(2 * PHASE, 2 * PHASE + sent3[1]);
        assert_eq!(log_cache_all(c(n), &pki, &sources[1], base).await.expect("reads"), fresh, "node {n}, source 1");
        let mut kept = held[0].clone();
        kept.extend(range(2 * PHASE, 2 * PHASE + sent3[0]));
        assert_eq!(log_cache_all(c(n), &pki, &sources[0], base).await.expect("reads"), kept, "node {n}, source 0");
    }
    eprintln!(
        "multihost: 4. log-cache-1 killed: node 0's source kept {} envelopes, node 1's lost {}; both serve {:?} new",
        held[0].len(),
        held[1].len(),
        sent3
    );

    // === the whole run: the sum rule per hop ===
    let (agent_m, doppler_m, tc_m) = (&m[0..2], &m[2..6], &m[6]);
    for (i, a) in agent_m.iter().enumerate() {
        assert_eq!(a.sum("ingress", &[]), total_sent[i], "agent-{}: ingress ≠ sent", i + 1);
        assert_eq!(a.sum("ingress", &[]), a.sum("egress", &[]) + a.sum("dropped", &[]), "agent-{}", i + 1);
    }
    let (agent_egress, doppler_ingress) = (sum(agent_m, "egress", &[]), sum(doppler_m, "ingress", &[]));
    let unconfirmed = sum(agent_m, "unconfirmed", &[]);
    assert!(doppler_ingress <= agent_egress && agent_egress <= doppler_ingress + unconfirmed, "agent → Doppler");
    for (i, d) in doppler_m.iter().enumerate() {
        let (ingress, egress, dropped) = (d.sum("ingress", &[]), d.sum("egress", &[]), d.sum("dropped", &[]));
        eprintln!("multihost: doppler-{}: ingress {ingress}, egress {egress}, dropped {dropped}", i + 1);
        if i < 2 {
            doppler_holds_the_sum_rule(&dopplers[i].name, d);
        } else {
            assert!(egress + dropped <= DELIVERIES * ingress, "doppler-{}: delivered more than it had", i + 1);
        }
    }
    let upstream = tc_m.sum("ingress", &RLP_COMPONENT) + tc_m.sum("ingress", &WS_COMPONENT);
    assert!(upstream <= sum(doppler_m, "egress", &[]), "the traffic controller read more than the Dopplers sent");
    for labels in [&RLP_COMPONENT, &WS_COMPONENT] {
        let (i, e, d) = (tc_m.sum("ingress", labels), tc_m.sum("egress", labels), tc_m.sum("dropped", labels));
        assert_eq!(i, e + d, "{labels:?}: ingress ≠ egress + dropped");
    }
    let ws_received: u64 = ws_tallies.iter().map(|t| t.lock().received_by("ws")).sum();
    assert_eq!(tc_m.sum("egress", &WS_COMPONENT), ws_received, "firehose → the WebSocket client");
    eprintln!("multihost: the whole run took {:?}", started.elapsed());
    drop(ws);
    drop(sse);
    drop(subscribers);
}
