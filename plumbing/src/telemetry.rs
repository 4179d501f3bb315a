//! Metrics: a small Prometheus registry and the `/metrics` endpoint every component serves.
//!
//! Counter names are the original's (`ingress`, `egress`, `dropped{direction="ingress"}`, ...), exposed
//! without the `_total` suffix newer client libraries append, so existing dashboards keep working. A
//! metric is described where it is created (its `help`). Increments are one relaxed atomic add, so
//! counting on the hot path costs nothing worth measuring; the text exposition is built on scrape.
//!
//! In the all-in-one process every component registers in one registry and the components tell their
//! metrics apart by a `component` label (`Registry::scoped`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

/// A monotonically increasing count.
#[derive(Clone, Debug, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Clone, Debug, Default)]
pub struct Gauge(Arc<AtomicI64>);

impl Gauge {
    #[inline]
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    #[inline]
    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone, Debug)]
enum Metric {
    Counter(Counter),
    Gauge(Gauge),
}

#[derive(Debug)]
struct Family {
    help: String,
    kind: &'static str,
    /// Rendered label set (`{a="b",c="d"}` or empty) to its metric.
    series: BTreeMap<String, Metric>,
}

/// A set of metric families rendered in the Prometheus text format. Cloning shares the registry.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    families: Arc<Mutex<BTreeMap<String, Family>>>,
    /// Labels added to every metric registered through this handle.
    const_labels: Vec<(String, String)>,
    /// What `/health` answers; shared by every scoped handle.
    health: Arc<std::sync::atomic::AtomicU8>,
}

/// A process's state as `/health` reports it (Kubernetes readiness and liveness probes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// Listeners not bound yet: 503 `{"status":"starting"}`.
    Starting = 0,
    /// Every component serves: 200 `{"status":"ready"}`.
    Ready = 1,
    /// Shutting down (SIGTERM): 503 `{"status":"draining"}`, so a load balancer stops sending
    /// new work while what is in flight drains.
    Draining = 2,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A handle on the same registry that adds `component="<name>"` to everything it registers,
    /// in place of any `component` this handle already adds: scoping twice never repeats the label.
    pub fn scoped(&self, component: &str) -> Self {
        let mut const_labels = self.const_labels.clone();
        const_labels.retain(|(name, _)| name != "component");
        const_labels.push(("component".to_string(), component.to_string()));
        Self { families: Arc::clone(&self.families), const_labels, health: Arc::clone(&self.health) }
    }

    /// Sets what `/health` answers.
    pub fn set_health(&self, health: Health) {
        self.health.store(health as u8, std::sync::atomic::Ordering::Release);
    }

    pub fn health(&self) -> Health {
        match self.health.load(std::sync::atomic::Ordering::Acquire) {
            1 => Health::Ready,
            2 => Health::Draining,
            _ => Health::Starting,
        }
    }

    /// Registers (or finds) the counter `name` with `labels`.
    pub fn counter(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Counter {
        match self.register(name, help, "counter", labels, || Metric::Counter(Counter::default())) {
            Metric::Counter(c) => c,
            // A gauge registered under a counter's name is a programming error at start-up.
            Metric::Gauge(_) => panic!("metric {name} registered as a gauge and a counter"),
        }
    }

    /// Registers (or finds) the gauge `name` with `labels`.
    pub fn gauge(&self, name: &str, help: &str, labels: &[(&str, &str)]) -> Gauge {
        match self.register(name, help, "gauge", labels, || Metric::Gauge(Gauge::default())) {
            Metric::Gauge(g) => g,
            Metric::Counter(_) => panic!("metric {name} registered as a counter and a gauge"),
        }
    }

    fn register(
        &self,
        name: &str,
        help: &str,
        kind: &'static str,
        labels: &[(&str, &str)],
        make: impl FnOnce() -> Metric,
    ) -> Metric {
        let rendered = render_labels(&merge_labels(&self.const_labels, labels));
        let mut families = self.families.lock();
        let family = families.entry(name.to_string()).or_insert_with(|| Family {
            help: help.to_string(),
            kind,
            series: BTreeMap::new(),
        });
        family.series.entry(rendered).or_insert_with(make).clone()
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let families = self.families.lock();
        let mut out = String::new();
        for (name, family) in families.iter() {
            let _ = writeln!(out, "# HELP {name} {}", family.help);
            let _ = writeln!(out, "# TYPE {name} {}", family.kind);
            for (labels, metric) in &family.series {
                let value = match metric {
                    Metric::Counter(c) => c.get() as i128,
                    Metric::Gauge(g) => g.get() as i128,
                };
                let _ = writeln!(out, "{name}{labels} {value}");
            }
        }
        out
    }

    /// Sum of every series of `name` whose labels include all of `labels` (for tests and the loadgen).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let families = self.families.lock();
        let Some(family) = families.get(name) else { return 0 };
        let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
        family
            .series
            .iter()
            .filter(|(rendered, _)| wanted.iter().all(|w| rendered.contains(w.as_str())))
            .map(|(_, m)| match m {
                Metric::Counter(c) => c.get(),
                Metric::Gauge(g) => g.get().max(0) as u64,
            })
            .sum()
    }
}

fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The handle's labels, then the metric's own; a later label replaces an earlier one of the same
/// name, so no name appears twice (Prometheus refuses such a series).
fn merge_labels<'a>(const_labels: &'a [(String, String)], labels: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut all: Vec<(&str, &str)> = Vec::with_capacity(const_labels.len() + labels.len());
    for (name, value) in const_labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(labels.iter().copied()) {
        all.retain(|(existing, _)| *existing != name);
        all.push((name, value));
    }
    all
}

fn render_labels(labels: &[(&str, &str)]) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let mut sorted = labels.to_vec();
    sorted.sort();
    let inner: Vec<String> = sorted.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
    format!("{{{}}}", inner.join(","))
}

/// Serves `GET /metrics` and `GET /health` (200 once the process's components serve, 503 before
/// and while draining; see [`Health`]) on `listener` until `shutdown` completes.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    registry: Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // A scrape is one short request; the defaults bound what a silent or flooding peer can hold.
    let metrics = crate::http_server::HttpMetrics::register(&registry, "metrics");
    let health = registry.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let registry = registry.clone();
                async move { ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], registry.render()) }
            }),
        )
        .route(
            "/health",
            axum::routing::get(move || {
                let state = health.health();
                async move {
                    let (status, body) = match state {
                        Health::Ready => (axum::http::StatusCode::OK, r#"{"status":"ready"}"#),
                        Health::Starting => (axum::http::StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"starting"}"#),
                        Health::Draining => (axum::http::StatusCode::SERVICE_UNAVAILABLE, r#"{"status":"draining"}"#),
                    };
                    (status, [(axum::http::header::CONTENT_TYPE, "application/json")], format!("{body}\n"))
                }
            }),
        );
    crate::http_server::serve(listener, None, app, crate::http_server::HttpLimits::default(), metrics, shutdown).await
}

/// Binds the metrics listener; a separate step so callers learn the real port before serving.
pub async fn bind_metrics(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_original_counter_names_with_labels() {
        let registry = Registry::new().scoped("doppler");
        let dropped = registry.counter("dropped", "Envelopes dropped", &[("direction", "ingress")]);
        let ingress = registry.counter("ingress", "Envelopes received", &[]);
        dropped.add(3);
        ingress.inc();
        let text = registry.render();
        assert!(text.contains("# TYPE dropped counter"), "{text}");
        assert!(text.contains("dropped{component=\"doppler\",direction=\"ingress\"} 3"), "{text}");
        assert!(text.contains("ingress{component=\"doppler\"} 1"), "{text}");
        assert_eq!(registry.sum("dropped", &[("direction", "ingress")]), 3);
        let parsed = crate::promtext::parse(&text).expect("a valid exposition");
        assert_eq!(crate::promtext::sum(&parsed, "ingress", &[("component", "doppler")]), 1.0);
        assert_eq!(crate::promtext::sum(&parsed, "dropped", &[("direction", "ingress")]), 3.0);
    }

    /// Prometheus refuses a scrape whose series repeat a label name; the all-in-one once scoped
    /// log-cache twice and every log-cache series carried `component` two times.
    #[test]
    fn a_label_name_appears_once_however_often_it_is_given() {
        let registry = Registry::new().scoped("log-cache").scoped("log-cache");
        registry.counter("dropped", "x", &[("direction", "ingress")]).inc();
        registry.scoped("other").counter("ingress", "x", &[]).inc();
        registry.counter("egress", "x", &[("component", "explicit"), ("direction", "egress")]).inc();
        let text = registry.render();
        assert!(text.contains("\ndropped{component=\"log-cache\",direction=\"ingress\"} 1\n"), "{text}");
        assert!(text.contains("\ningress{component=\"other\"} 1\n"), "{text}");
        assert!(text.contains("\negress{component=\"explicit\",direction=\"egress\"} 1\n"), "{text}");
        for line in text.lines().filter(|line| !line.starts_with('#')) {
            assert_eq!(line.matches("component=").count(), 1, "{line}");
        }
    }

    #[test]
    fn registering_twice_returns_the_same_counter() {
        let registry = Registry::new();
        let a = registry.counter("egress", "x", &[]);
        let b = registry.counter("egress", "x", &[]);
        a.inc();
        assert_eq!(b.get(), 1);
    }
}
