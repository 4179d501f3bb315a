//! `loadgen`: drives a Loggregator-compatible pipeline over the public v2 protocol and reports
//! what arrived, how late, where the rest was dropped, and what it cost.
//!
//! ```text
//! cargo run --release -p benches --bin loadgen -- --scenario smoke
//! cargo run --release -p benches --bin loadgen -- --spawn --agent --rate 100k --duration 10 --baseline
//! cargo run --release -p benches --bin loadgen -- --scenario agent-doppler-logcache --read-back
//! cargo run --release -p benches --bin loadgen -- --scenario logcache-http-read
//! cargo run --release -p benches --bin loadgen -- --scenario doppler-rlp-sse
//! cargo run --release -p benches --bin loadgen -- --ingress 127.0.0.1:3458 --egress 127.0.0.1:8082 \
//!     --ca ca.pem --cert client.pem --key client.key --metrics http://127.0.0.1:14825/metrics
//! ```

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use benches::loadgen::pipeline::{Pipeline, Targets};
use benches::loadgen::report::Report;
use benches::loadgen::run::{run_prefix, Accounting, MetricSource, Phase};
use benches::loadgen::settings::{list_scenarios, Cli, Settings};

fn main() -> ExitCode {
    // The spawned components log through tracing, as in the real binary. Without a subscriber every
    // span of the gRPC stack would fall back to the `log` crate, a cost the real binary never pays.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .init();
    let cli = Cli::parse();
    if cli.list_scenarios {
        for (name, description) in list_scenarios() {
            println!("{name:<22} {description}");
        }
        return ExitCode::SUCCESS;
    }
    match run(&cli) {
        Ok(report) => {
            if cli.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(json) => println!("{json}"),
                    Err(error) => eprintln!("loadgen: cannot encode the report: {error}"),
                }
            } else {
                print!("{}", report.table());
            }
            if cli.assert_lossless && !report.lossless() {
                eprintln!("loadgen: --assert-lossless: envelopes were lost or dropped");
                return ExitCode::from(1);
            }
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("loadgen: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<Report> {
    let settings = Settings::resolve(cli)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(settings.loadgen_threads)
        .thread_name("loadgen-rt")
        .enable_all()
        .build()
        .context("cannot start the load generator's runtime")?;
    let mut phases = Vec::new();

    if settings.baseline {
        let mut null = Pipeline::spawn_null(&settings)?;
        let phase = Phase {
            name: "baseline",
            target: format!("null BatchSender sink at {}{}", null.targets.ingress.join(","), tls_note(&null.targets)),
            settings: &settings,
            targets: null.targets.clone(),
            metrics: Vec::new(),
            accounting: Accounting {
                threads: null.components.iter().map(|c| (c.name.clone(), c.thread_name.clone())).collect(),
                pids: Vec::new(),
            },
            in_process: true,
            source_prefix: run_prefix(&settings),
        };
        let report = runtime.block_on(phase.run());
        null.stop();
        phases.push(report?);
    }

    let mut pipeline = if settings.spawn { Some(Pipeline::spawn(&settings)?) } else { None };
    let (targets, metrics, accounting, target) = match &pipeline {
        Some(p) => (
            p.targets.clone(),
            p.components
                .iter()
                .map(|c| MetricSource::Registry { name: c.name.clone(), registry: c.registry.clone() })
                .collect(),
            Accounting {
                threads: p.components.iter().map(|c| (c.name.clone(), c.thread_name.clone())).collect(),
                pids: Vec::new(),
            },
            format!(
                "spawned {}{} doppler(s){}{}, {} {} subscriber(s){}",
                if settings.agent { "agent → " } else { "" },
                settings.dopplers,
                if settings.traffic_controller { " → traffic controller" } else { "" },
                if settings.log_cache { " → nozzle → log-cache" } else { "" },
                settings.subscribers,
                subscriber_kind(&settings),
                tls_note(&p.targets)
            ),
        ),
        None => (
            Targets {
                ingress: settings.ingress.clone(),
                ingress_tls: settings.ingress_tls.clone(),
                egress: settings.egress.clone(),
                egress_tls: settings.egress_tls.clone(),
                sink_received: None,
                log_cache_url: settings.log_cache_url.clone(),
            },
            settings.metrics.iter().cloned().map(MetricSource::Url).collect(),
            Accounting { threads: Vec::new(), pids: settings.pids.clone() },
            format!(
                "ingress {}{}{}",
                settings.ingress.join(","),
                if settings.egress.is_empty() {
                    String::new()
                } else {
                    format!(" → {} egress {}", subscriber_kind(&settings), settings.egress.join(","))
                },
                settings.log_cache_url.as_ref().map(|u| format!(" → log-cache {u}")).unwrap_or_default()
            ),
        ),
    };
    let phase = Phase {
        name: "pipeline",
        target,
        settings: &settings,
        targets,
        metrics,
        accounting,
        in_process: pipeline.is_some(),
        source_prefix: run_prefix(&settings),
    };
    let report = runtime.block_on(phase.run());
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    if let Some(p) = pipeline.as_mut() {
        p.stop();
    }
    phases.push(report?);
    Ok(Report::new(settings, phases))
}

fn subscriber_kind(settings: &benches::loadgen::settings::Settings) -> &'static str {
    use benches::loadgen::settings::SubscriberKind;
    match settings.subscriber_kind {
        SubscriberKind::Grpc => "gRPC",
        SubscriberKind::Sse => "SSE",
        SubscriberKind::WsFirehose => "WebSocket firehose",
        SubscriberKind::WsApp => "WebSocket app-stream",
    }
}

fn tls_note(targets: &Targets) -> &'static str {
    if targets.ingress_tls.is_some() || targets.egress_tls.is_some() {
        " (mutual TLS)"
    } else {
        ""
    }
}
