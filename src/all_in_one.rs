//! Every component in one process on loopback, wired together with the addresses they bound.

use std::net::SocketAddr;

use anyhow::Context as _;
use plumbing::Registry;
use tokio_util::sync::CancellationToken;

use crate::cli::spawn_metrics;

pub async fn run(metrics_addr: SocketAddr) -> anyhow::Result<()> {
    let registry = Registry::new();
    let token = CancellationToken::new();

    let doppler = doppler::Doppler::bind(doppler::Config::default(), &registry.scoped("doppler"))
        .await
        .context("starting the doppler")?;
    let doppler_addr = doppler.local_addrs().grpc;
    let agent_config = agent::Config { dopplers: vec![doppler_addr.to_string()], ..agent::Config::default() };
    let agent = agent::Agent::bind(agent_config, &registry.scoped("agent")).await.context("starting the agent")?;
    let agent_addrs = agent.local_addrs();
    let (metrics_bound, metrics) = spawn_metrics(metrics_addr, registry.clone(), token.clone()).await?;

    let mut rows: Vec<(&str, String)> = vec![
        ("agent v2 gRPC ingress", agent_addrs.grpc.to_string()),
        ("agent v1 UDP ingress", agent_addrs.udp.map_or("disabled".into(), |a| a.to_string())),
        ("doppler gRPC (ingress + egress)", doppler_addr.to_string()),
    ];
    rows.push(("Prometheus /metrics (every component)", format!("http://{metrics_bound}/metrics")));
    print_table(&rows);

    let doppler_task = tokio::spawn(doppler.serve(token.clone().cancelled_owned()));
    let agent_task = tokio::spawn(agent.serve(token.clone().cancelled_owned()));
    crate::shutdown_signal().await;
    token.cancel();
    // Upstream first: the agent flushes into the doppler before the doppler stops.
    agent_task.await.context("agent task")??;
    doppler_task.await.context("doppler task")??;
    let _ = metrics.await;
    Ok(())
}

fn print_table(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    println!("loggregator: all components on loopback (Ctrl-C to stop)");
    println!("  {:width$}  address", "endpoint");
    for (name, addr) in rows {
        println!("  {name:width$}  {addr}");
    }
}
