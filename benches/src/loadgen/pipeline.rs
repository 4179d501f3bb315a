//! `--spawn`: the project's own pipeline, in this process, each component on its own tokio runtime.
//!
//! Every component (each Doppler, the agent, the null sink of `--baseline`) gets a runtime whose
//! threads are named after it, so its CPU time can be read per thread from `/proc/self/task` and
//! told apart from the load generator's. Everything listens on 127.0.0.1 with OS-chosen ports.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use loggregator_proto::raw::server::ingress::ingress_server::{Ingress, IngressServer};
use loggregator_proto::raw::{RawBatch, RawBytes};
use loggregator_proto::v2::{BatchSenderResponse, IngressResponse, SendResponse};
use loggregator_proto::wire::{read_key, skip_field, WireType};
use plumbing::test_support::TestPki;
use plumbing::Registry;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status, Streaming};

use super::settings::{ClientTls, Settings, SubscriberKind};

/// One running component.
pub struct Component {
    /// `doppler-0`, `agent`, `log-cache`, `null`.
    pub name: String,
    /// Prefix of its threads' names (`/proc/self/task/*/comm`, at most 15 bytes).
    pub thread_name: String,
    pub registry: Registry,
    /// Its gRPC address.
    pub grpc: SocketAddr,
    /// `http://127.0.0.1:PORT/metrics`, once [`Component::serve_metrics`] ran.
    pub metrics_url: Option<String>,
    runtime: Option<Runtime>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Component {
    fn start<S, F>(
        name: &str,
        thread_name: &str,
        threads: usize,
        registry: Registry,
        start: S,
    ) -> anyhow::Result<(Self, SocketAddr)>
    where
        S: FnOnce(oneshot::Receiver<()>) -> F,
        F: std::future::Future<Output = anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)>>,
    {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(thread_name)
            .enable_all()
            .build()
            .with_context(|| format!("cannot start the {name} runtime"))?;
        let (tx, rx) = oneshot::channel();
        let (addr, task) = runtime.block_on(start(rx))?;
        Ok((
            Self {
                name: name.to_string(),
                thread_name: thread_name.to_string(),
                registry,
                grpc: addr,
                metrics_url: None,
                runtime: Some(runtime),
                shutdown: Some(tx),
                task: Some(task),
            },
            addr,
        ))
    }

    /// Serves the component's registry on `127.0.0.1:0/metrics` (until its runtime stops), so the
    /// pipeline can also be observed the way an external deployment is.
    fn serve_metrics(&mut self) -> anyhow::Result<()> {
        let Some(runtime) = &self.runtime else { return Ok(()) };
        let listener = runtime.block_on(tokio::net::TcpListener::bind(loopback()))?;
        let addr = listener.local_addr()?;
        let registry = self.registry.clone();
        runtime.spawn(async move {
            let _ = plumbing::telemetry::serve_metrics(listener, registry, std::future::pending()).await;
        });
        self.metrics_url = Some(format!("http://{addr}/metrics"));
        Ok(())
    }

    /// Stops the component (bounded) and its runtime.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            if let Some(task) = self.task.take() {
                let _ = runtime.block_on(async { tokio::time::timeout(Duration::from_secs(3), task).await });
            }
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

impl Drop for Component {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What the load generator drives: addresses and client TLS of each side.
#[derive(Clone)]
pub struct Targets {
    pub ingress: Vec<String>,
    pub ingress_tls: Option<ClientTls>,
    pub egress: Vec<String>,
    pub egress_tls: Option<ClientTls>,
    /// Envelopes the null sink counted (baseline only).
    pub sink_received: Option<Arc<AtomicU64>>,
    /// HTTP base URL of a log-cache fed by the pipeline (spawned, or `--log-cache URL`).
    pub log_cache_url: Option<String>,
}

/// The spawned components and what to drive.
pub struct Pipeline {
    pub components: Vec<Component>,
    pub targets: Targets,
    /// Keeps the generated certificates on disk while the pipeline runs.
    _pki: Option<TestPki>,
}

/// Serves the component's metrics and tells the operator where everything listens.
fn announce(mut component: Component) -> anyhow::Result<Component> {
    component.serve_metrics()?;
    eprintln!(
        "loadgen: spawned {} on {} (metrics {})",
        component.name,
        component.grpc,
        component.metrics_url.as_deref().unwrap_or("-")
    );
    Ok(component)
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn client_tls(pki: &Option<TestPki>, server_name: &str) -> Option<ClientTls> {
    pki.as_ref().map(|pki| ClientTls { files: pki.client_files(), server_name: server_name.to_string() })
}

fn log_error(component: &str) -> impl FnOnce(Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    let component = component.to_string();
    move |result| {
        if let Err(error) = result {
            eprintln!("loadgen: {component} stopped with an error: {error}");
        }
    }
}

impl Pipeline {
    /// Starts `settings.dopplers` Dopplers, with `settings.agent` an agent in front of them, and with
    /// `settings.log_cache` a log-cache whose nozzle subscribes to every Doppler.
    pub fn spawn(settings: &Settings) -> anyhow::Result<Self> {
        let pki = settings.tls.then(|| TestPki::new(&["doppler", "metron", "reverselogproxy"]));
        if let Some(pki) = &pki {
            let files = pki.client_files();
            eprintln!(
                "loadgen: generated mutual-TLS files: --ca {} --cert {} --key {}",
                files.ca_file.display(),
                files.cert_file.display(),
                files.key_file.display()
            );
        }
        let mut components = Vec::new();
        let mut dopplers = Vec::new();
        for i in 0..settings.dopplers {
            let registry = Registry::new().scoped("doppler");
            let config = doppler::Config {
                grpc_addr: loopback(),
                subscription_buffer: NonZeroUsize::new(settings.subscription_buffer).context("subscription buffer")?,
                shutdown_grace: Duration::from_secs(1),
                tls: pki.as_ref().map(|p| p.server_files()),
                ..Default::default()
            };
            let reg = registry.clone();
            let (component, addr) = Component::start(
                &format!("doppler-{i}"),
                &format!("dop{i}"),
                settings.pipeline_threads,
                registry,
                |stop| async move {
                    let doppler = doppler::Doppler::bind(config, &reg).await?;
                    let addr = doppler.local_addrs().grpc;
                    let log = log_error("doppler");
                    let task = tokio::spawn(async move {
                        log(doppler
                            .serve(async move {
                                let _ = stop.await;
                            })
                            .await
                            .map_err(Into::into))
                    });
                    Ok((addr, task))
                },
            )?;
            dopplers.push(addr);
            components.push(announce(component)?);
        }
        let mut ingress: Vec<String> = dopplers.iter().map(ToString::to_string).collect();
        let mut ingress_tls = client_tls(&pki, "doppler");
        if settings.agent {
            let registry = Registry::new().scoped("agent");
            let config = agent::Config {
                grpc_addr: loopback(),
                udp_addr: None,
                dopplers: dopplers.iter().map(ToString::to_string).collect(),
                ingress_buffer: NonZeroUsize::new(settings.agent_buffer).context("agent buffer")?,
                connections: NonZeroUsize::new(settings.agent_connections).context("agent connections")?,
                shutdown_grace: Duration::from_secs(1),
                tls: pki.as_ref().map(|p| p.server_files()),
                doppler_tls: pki.as_ref().map(|p| p.client_files()),
                ..Default::default()
            };
            let reg = registry.clone();
            let (component, addr) =
                Component::start("agent", "agent", settings.pipeline_threads, registry, |stop| async move {
                    let agent = agent::Agent::bind(config, &reg).await?;
                    let addr = agent.local_addrs().grpc;
                    let log = log_error("agent");
                    let task = tokio::spawn(async move {
                        log(agent
                            .serve(async move {
                                let _ = stop.await;
                            })
                            .await
                            .map_err(Into::into))
                    });
                    Ok((addr, task))
                })?;
            ingress = vec![addr.to_string()];
            ingress_tls = client_tls(&pki, "metron");
            components.push(announce(component)?);
        }
        let mut log_cache_url = None;
        if settings.log_cache {
            let registry = Registry::new();
            let config = log_cache::Config {
                grpc_addr: loopback(),
                http_addr: loopback(),
                shutdown_grace: Duration::from_secs(1),
                nozzle: log_cache::config::NozzleConfig {
                    addrs: dopplers.iter().map(ToString::to_string).collect(),
                    tls: pki.as_ref().map(|p| p.client_files()),
                    server_name: "doppler".into(),
                    ..Default::default()
                },
                syslog: log_cache::config::SyslogConfig { addr: loopback(), ..Default::default() },
                ..Default::default()
            };
            let reg = registry.clone();
            let http = Arc::new(std::sync::OnceLock::new());
            let http_addr = Arc::clone(&http);
            let (component, _) =
                Component::start("log-cache", "lcache", settings.pipeline_threads, registry, |stop| async move {
                    let cache = log_cache::LogCache::bind(config, &reg).await?;
                    let addrs = cache.local_addrs();
                    let _ = http_addr.set(addrs.http);
                    let log = log_error("log-cache");
                    let task = tokio::spawn(async move {
                        log(cache
                            .serve(async move {
                                let _ = stop.await;
                            })
                            .await
                            .map_err(Into::into))
                    });
                    Ok((addrs.grpc, task))
                })?;
            let http = http.get().copied().context("log-cache HTTP address")?;
            eprintln!("loadgen: log-cache HTTP API on http://{http}");
            log_cache_url = Some(format!("http://{http}"));
            components.push(announce(component)?);
        }
        let mut egress: Vec<String> = dopplers.iter().map(ToString::to_string).collect();
        let mut egress_tls = client_tls(&pki, "doppler");
        if settings.traffic_controller {
            let (component, addrs) = spawn_traffic_controller(settings, &dopplers, &pki)?;
            // gRPC subscribers read the RLP (mutual TLS as from a Doppler); the HTTP edges are plain.
            egress = vec![match settings.subscriber_kind {
                SubscriberKind::Grpc => addrs.rlp.to_string(),
                SubscriberKind::Sse => addrs.gateway.to_string(),
                SubscriberKind::WsFirehose | SubscriberKind::WsApp => addrs.websocket.to_string(),
            }];
            egress_tls = match settings.subscriber_kind {
                SubscriberKind::Grpc => client_tls(&pki, "reverselogproxy"),
                _ => None,
            };
            eprintln!(
                "loadgen: traffic controller: RLP {} (gRPC), gateway http://{}, WebSockets ws://{}",
                addrs.rlp, addrs.gateway, addrs.websocket
            );
            components.push(announce(component)?);
        }
        let targets = Targets { ingress, ingress_tls, egress, egress_tls, sink_received: None, log_cache_url };
        Ok(Self { components, targets, _pki: pki })
    }

    /// A null pipeline: a `BatchSender` server that counts and discards (same TLS as the pipeline).
    pub fn spawn_null(settings: &Settings) -> anyhow::Result<Self> {
        let pki = settings.tls.then(|| TestPki::new(&["doppler", "metron"]));
        let received = Arc::new(AtomicU64::new(0));
        let sink = NullIngress { received: Arc::clone(&received) };
        let server_tls = pki.as_ref().map(|p| p.server_files().grpc_server_config()).transpose()?;
        let (component, addr) =
            Component::start("null", "null", settings.pipeline_threads, Registry::new(), |stop| async move {
                let listener = tokio::net::TcpListener::bind(loopback()).await?;
                let addr = listener.local_addr()?;
                let mut builder = tonic::transport::Server::builder()
                    .tcp_nodelay(true)
                    .max_frame_size(plumbing::grpc::MAX_FRAME_SIZE);
                let service = IngressServer::new(sink).max_decoding_message_size(10 * 1024 * 1024);
                // The components' own accept path (nodelay, buffered reads), so the baseline is the
                // same transport with nothing behind it.
                let incoming = plumbing::grpc::incoming(listener, server_tls);
                let serve = builder.add_service(service).serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.await;
                });
                let log = log_error("null sink");
                let task = tokio::spawn(async move { log(serve.await.map_err(Into::into)) });
                Ok((addr, task))
            })?;
        let targets = Targets {
            ingress: vec![addr.to_string()],
            ingress_tls: client_tls(&pki, "doppler"),
            egress: Vec::new(),
            egress_tls: None,
            sink_received: Some(received),
            log_cache_url: None,
        };
        Ok(Self { components: vec![component], targets, _pki: pki })
    }

    pub fn stop(&mut self) {
        // Log-cache first (its nozzle must not see Dopplers go away as errors), then the agent, so
        // it can flush into still-running Dopplers.
        for component in self.components.iter_mut().rev() {
            component.stop();
        }
    }
}

/// A traffic controller (RLP, RLP gateway, WebSockets) reading every Doppler, with mutual TLS
/// towards them and on its RLP (server name `reverselogproxy`) when the pipeline has TLS.
fn spawn_traffic_controller(
    settings: &Settings,
    dopplers: &[SocketAddr],
    pki: &Option<TestPki>,
) -> anyhow::Result<(Component, traffic_controller::Addrs)> {
    let registry = Registry::new();
    let mut config = traffic_controller::Config {
        dopplers: dopplers.iter().map(ToString::to_string).collect(),
        doppler_tls: pki.as_ref().map(|p| p.client_files()),
        shutdown_grace: Duration::from_secs(1),
        ..Default::default()
    };
    config.rlp.addr = loopback();
    config.rlp.tls = pki.as_ref().map(|p| p.server_files());
    config.gateway.addr = loopback();
    config.websocket.addr = loopback();
    let reg = registry.clone();
    let addrs = Arc::new(std::sync::OnceLock::new());
    let bound = Arc::clone(&addrs);
    let (component, _) =
        Component::start("traffic-controller", "tc", settings.pipeline_threads, registry, |stop| async move {
            let tc = traffic_controller::TrafficController::bind(config, &reg).await?;
            let local = tc.local_addrs();
            let _ = bound.set(local);
            let log = log_error("traffic controller");
            let task = tokio::spawn(async move {
                log(tc
                    .serve(async move {
                        let _ = stop.await;
                    })
                    .await
                    .map_err(Into::into))
            });
            Ok((local.rlp, task))
        })?;
    let addrs = addrs.get().copied().context("traffic controller addresses")?;
    Ok((component, addrs))
}

/// Counts the envelopes of each batch (top-level fields 1) without looking inside them.
fn count_envelopes(batch: &[u8]) -> u64 {
    let mut pos = 0;
    let mut n = 0;
    while pos < batch.len() {
        let Ok((field, wire_type)) = read_key(batch, &mut pos) else { break };
        if field == 1 && wire_type == WireType::Len {
            n += 1;
        }
        if skip_field(batch, &mut pos, field, wire_type).is_err() {
            break;
        }
    }
    n
}

struct NullIngress {
    received: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl Ingress for NullIngress {
    async fn sender(&self, request: Request<Streaming<RawBytes>>) -> Result<Response<IngressResponse>, Status> {
        let mut stream = request.into_inner();
        while stream.message().await?.is_some() {
            self.received.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Response::new(IngressResponse {}))
    }

    async fn batch_sender(
        &self,
        request: Request<Streaming<RawBatch>>,
    ) -> Result<Response<BatchSenderResponse>, Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            self.received.fetch_add(count_envelopes(&batch.0), Ordering::Relaxed);
        }
        Ok(Response::new(BatchSenderResponse {}))
    }

    async fn send(&self, request: Request<RawBatch>) -> Result<Response<SendResponse>, Status> {
        self.received.fetch_add(count_envelopes(&request.into_inner().0), Ordering::Relaxed);
        Ok(Response::new(SendResponse {}))
    }
}
