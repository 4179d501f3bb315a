//! The web console, driven as a person would: a real `Pipeline` on ephemeral ports, envelopes sent
//! through the agent, and the page opened in headless Chromium (Debian's `chromium`, through
//! `chromedriver` and WebDriver). The live tail shows the logs, the charts render the gauges and
//! counter rates, and the pipeline page shows throughput; with log-cache's auth on, the page asks
//! for a token. The console's own routes are checked too: a dead upstream is a 502, a bad parameter
//! a 400, a live tail past the cap a 503.
//!
//! Chromium and chromedriver must be installed (`scripts/test` installs them): these tests fail,
//! not skip, without them. `UPDATE_SCREENSHOT=1` writes the screenshot to `docs/console.png`;
//! otherwise it goes to the target's tmp dir.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use common::{http_get, now_ns, DEADLINE};
use fantoccini::{Client, ClientBuilder, Locator};
use loggregator::console;
use loggregator::pipeline::{Endpoints, Pipeline, PipelineConfig};
use loggregator_proto::bytes::Bytes;
use loggregator_proto::tonic::transport::{Channel, Endpoint};
use loggregator_proto::v2::ingress_client::IngressClient;
use loggregator_proto::v2::{self, envelope::Message, Envelope, EnvelopeBatch};
use plumbing::test_support::wait_until;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const SOURCE: &str = "console-app";
/// Seconds of gauge and counter history sent before the page opens, so the charts have a past.
const HISTORY_SECONDS: i64 = 300;

// === the pipeline and what is sent through it ===

struct Running {
    endpoints: Endpoints,
    registry: plumbing::Registry,
    stop: CancellationToken,
    serving: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(config: PipelineConfig) -> Self {
        let pipeline = Pipeline::bind(config).await.expect("pipeline binds");
        let endpoints = pipeline.endpoints().clone();
        let registry = pipeline.registry();
        let stop = CancellationToken::new();
        let serving = tokio::spawn(pipeline.serve(stop.clone().cancelled_owned()));
        let subscribed = || registry.sum("subscriptions", &[("component", "doppler")]) >= 1;
        assert!(wait_until(DEADLINE, subscribed).await, "the log-cache nozzle subscribed to the doppler");
        Self { endpoints, registry, stop, serving }
    }

    async fn agent(&self) -> IngressClient<Channel> {
        let channel = Endpoint::from_shared(format!("http://{}", self.endpoints.agent_grpc))
            .expect("valid endpoint")
            .connect()
            .await
            .expect("agent reachable");
        IngressClient::new(channel)
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(DEADLINE, self.serving)
            .await
            .expect("stops in time")
            .expect("no panic")
            .expect("clean shutdown");
    }
}

fn log(timestamp: i64, n: u64) -> Envelope {
    let err = n % 4 == 3;
    let text = if err { format!("console test line {n}: something failed") } else { format!("console test line {n}") };
    Envelope {
        timestamp,
        source_id: SOURCE.into(),
        instance_id: (n % 2).to_string(),
        tags: [("source_type".to_string(), "APP/PROC/WEB".to_string())].into(),
        message: Some(Message::Log(v2::Log { payload: Bytes::from(text), r#type: i32::from(err) })),
        ..Default::default()
    }
}

/// Gauges of instances 0 and 1 and a counter, as an app's container metrics would come, at second `i`.
fn metrics_at(timestamp: i64, i: i64) -> Vec<Envelope> {
    let wave = (i as f64 / 40.0).sin();
    let gauge = |instance: i64, memory: f64, cpu: f64| Envelope {
        timestamp,
        source_id: SOURCE.into(),
        instance_id: instance.to_string(),
        message: Some(Message::Gauge(v2::Gauge {
            metrics: [
                ("memory".to_string(), v2::GaugeValue { unit: "bytes".into(), value: memory }),
                ("cpu".to_string(), v2::GaugeValue { unit: "percentage".into(), value: cpu }),
            ]
            .into(),
        })),
        ..Default::default()
    };
    let counter = Envelope {
        timestamp,
        source_id: SOURCE.into(),
        // The agent turns deltas into totals (§1.4).
        message: Some(Message::Counter(v2::Counter {
            name: "requests".into(),
            delta: 5 + (i as u64 * 7) % 11,
            total: 0,
        })),
        ..Default::default()
    };
    vec![gauge(0, 180e6 + 40e6 * wave, 20.0 + 10.0 * wave), gauge(1, 150e6 - 30e6 * wave, 25.0 - 8.0 * wave), counter]
}

/// Sends `HISTORY_SECONDS` of metrics, one set a second up to now.
async fn send_history(agent: &mut IngressClient<Channel>) {
    let now = now_ns();
    let envelopes: Vec<Envelope> =
        (0..HISTORY_SECONDS).flat_map(|i| metrics_at(now - (HISTORY_SECONDS - i) * 1_000_000_000, i)).collect();
    let batches: Vec<EnvelopeBatch> = envelopes.chunks(100).map(|c| EnvelopeBatch { batch: c.to_vec() }).collect();
    agent.batch_sender(futures::stream::iter(batches)).await.expect("the agent takes the history");
}

/// Sends four logs every 100 ms and a set of metrics every second until `stop`.
fn send_live(mut agent: IngressClient<Channel>, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut second = HISTORY_SECONDS;
        let mut last_metrics = Instant::now();
        while !stop.is_cancelled() {
            tick.tick().await;
            let now = now_ns();
            let mut batch: Vec<Envelope> = (0..4).map(|k| log(now + k, n + k as u64)).collect();
            n += 4;
            if last_metrics.elapsed() >= Duration::from_secs(1) {
                last_metrics = Instant::now();
                batch.extend(metrics_at(now, second));
                second += 1;
            }
            let request = futures::stream::iter([EnvelopeBatch { batch }]);
            if let Err(status) = agent.batch_sender(request).await {
                // Only at the end, when the pipeline stops before this task does.
                eprintln!("live sender: {status}");
            }
        }
    })
}

// === the browser ===

/// chromedriver and the Chromium session it started; `close` ends both.
struct Browser {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    client: Client,
    driver: Driver,
    profile: PathBuf,
}

/// The chromedriver process, killed when dropped (so also when a test panics).
struct Driver(std::process::Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_program(env: &str, candidates: &[&str]) -> PathBuf {
    if let Ok(path) = std::env::var(env) {
        return PathBuf::from(path);
    }
    candidates.iter().map(PathBuf::from).find(|p| p.exists()).unwrap_or_else(|| {
        panic!(
            "{} not found (looked at {candidates:?}; set {env} to override): install Debian's chromium and \
             chromium-driver packages, as scripts/test does",
            candidates[0]
        )
    })
}

/// One Chromium at a time: two at once on a 2-core CI machine only slow each other down.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

impl Browser {
    async fn start() -> Self {
        let chromium = find_program("CHROMIUM", &["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
        let chromedriver = find_program("CHROMEDRIVER", &["/usr/bin/chromedriver"]);
        let turn = ONE_BROWSER.lock().await;
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("binds a probe port");
            probe.local_addr().expect("probe address").port()
        };
        let driver = std::process::Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map(Driver)
            .unwrap_or_else(|e| panic!("starting {}: {e}", chromedriver.display()));
        let listening = async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(DEADLINE, listening).await.expect("chromedriver listens");

        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let profile =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("console-chromium-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&profile);
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1440,1000",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".to_string(),
            serde_json::json!({ "binary": chromium.to_string_lossy(), "args": args }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = tokio::time::timeout(
            DEADLINE,
            ClientBuilder::new(connector).capabilities(capabilities).connect(&format!("http://127.0.0.1:{port}")),
        )
        .await
        .expect("chromium starts in time")
        .expect("chromedriver starts a chromium session");
        Self { _turn: turn, client, driver, profile }
    }

    /// Ends the Chromium session, then chromedriver.
    async fn close(self) {
        if let Err(error) = self.client.close().await {
            eprintln!("closing the browser session: {error}");
        }
        drop(self.driver);
        let _ = std::fs::remove_dir_all(&self.profile);
    }

    /// Evaluates `expression` in the page.
    async fn eval(&self, expression: &str) -> anyhow::Result<Value> {
        Ok(self.client.execute(&format!("return ({expression});"), vec![]).await?)
    }

    /// Polls `expression` until it is truthy (returning it), or fails after `DEADLINE` saying `what`.
    async fn wait_for(&self, what: &str, expression: &str) -> anyhow::Result<Value> {
        let started = Instant::now();
        loop {
            let value = self.eval(expression).await?;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::Number(n) => n.as_f64().is_some_and(|n| n != 0.0),
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::Object(_) => true,
            };
            if truthy {
                return Ok(value);
            }
            if started.elapsed() > DEADLINE {
                let status = self.eval("document.querySelector('#status').textContent").await.unwrap_or_default();
                bail!("timed out waiting for {what} (`{expression}` is {value}; page status: {status})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client.goto(url).await.with_context(|| format!("opening {url}"))
    }

    async fn click(&self, selector: &str) -> anyhow::Result<()> {
        self.client.find(Locator::Css(selector)).await?.click().await?;
        Ok(())
    }
}

/// Saves a screenshot of the page as `console-<view>.png` in the target's tmp dir (to look at
/// when a test fails); the charts view's also to `docs/console.png` with `UPDATE_SCREENSHOT=1`.
async fn save_screenshot(browser: &Browser, view: &str) -> anyhow::Result<()> {
    let png = browser.client.screenshot().await?;
    let mut paths = vec![Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("console-{view}.png"))];
    if view == "charts" && std::env::var_os("UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        paths.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console.png"));
    }
    for path in paths {
        std::fs::write(&path, &png).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("screenshot: {}", path.display());
    }
    Ok(())
}

// === the tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_tails_logs_charts_gauges_and_shows_pipeline_throughput_in_chromium() {
    let running = Running::start(PipelineConfig::ephemeral()).await;
    let mut agent = running.agent().await;
    send_history(&mut agent).await;
    let stop_sending = CancellationToken::new();
    let sender = send_live(agent, stop_sending.clone());

    let started = Instant::now();
    let browser = Browser::start().await;
    eprintln!("chromium started in {:?}", started.elapsed());
    let outcome = drive_the_console(&browser, &running).await;
    browser.close().await;
    eprintln!("the browser part took {:?}", started.elapsed());

    stop_sending.cancel();
    sender.await.expect("sender ends");
    let registry = running.registry.clone();
    running.stop().await;
    outcome.expect("the console works in chromium");
    assert_eq!(registry.sum("tails", &[("component", "console")]), 0, "every live tail ended with the page");
}

async fn drive_the_console(browser: &Browser, running: &Running) -> anyhow::Result<()> {
    let base = &format!("http://{}/", running.endpoints.console);
    // Sources: log-cache's meta, with the source and what it holds.
    browser.goto(&format!("{base}#sources")).await?;
    let held = browser
        .wait_for(
            "the source in the sources table",
            &format!("document.querySelector('tr[data-source=\"{SOURCE}\"] td.num')?.dataset.value"),
        )
        .await?;
    ensure!(held.as_str().and_then(|s| s.parse::<u64>().ok()).unwrap_or(0) > 0, "envelopes held: {held}");
    // The rate needs a second poll of meta.
    browser
        .wait_for(
            "the source's rate",
            &format!("document.querySelector('tr[data-source=\"{SOURCE}\"] td.rate')?.dataset.value > 0"),
        )
        .await?;
    save_screenshot(browser, "sources").await?;

    // The live tail: logs sent through the agent appear, OUT and ERR told apart.
    browser.goto(&format!("{base}#tail/{SOURCE}")).await?;
    let payloads = "[...document.querySelectorAll('#tail-lines .line .payload')].map(e => e.textContent)";
    browser
        .wait_for(
            "logs in the live tail",
            &format!("{payloads}.filter(t => t.startsWith('console test line')).length >= 8"),
        )
        .await?;
    let err_line = browser.eval("document.querySelector('#tail-lines .line.err .payload')?.textContent").await?;
    ensure!(
        err_line.as_str().is_some_and(|t| t.ends_with("something failed")),
        "an ERR line is marked err: {err_line}"
    );
    let out_line = browser.eval("document.querySelector('#tail-lines .line.out .payload')?.textContent").await?;
    ensure!(
        out_line.as_str().is_some_and(|t| !t.ends_with("something failed")),
        "an OUT line is marked out: {out_line}"
    );

    // Paused, lines wait instead of appearing; resumed, they appear.
    let count = "document.querySelectorAll('#tail-lines .line').length";
    browser.click("#tail-pause").await?;
    let paused_at = browser.eval(count).await?.as_u64().unwrap_or(0);
    browser
        .wait_for(
            "lines waiting while paused",
            "/[1-9][0-9]* waiting/.test(document.querySelector('#tail-info').textContent)",
        )
        .await?;
    let still = browser.eval(count).await?.as_u64().unwrap_or(0);
    ensure!(still == paused_at, "no line appended while paused ({paused_at} then {still})");
    browser.click("#tail-pause").await?;
    browser.wait_for("the waiting lines after resume", &format!("{count} > {paused_at}")).await?;
    save_screenshot(browser, "tail").await?;

    // The filter hides the lines without its text.
    browser.client.find(Locator::Css("#tail-filter")).await?.send_keys("failed").await?;
    let visible = "[...document.querySelectorAll('#tail-lines .line')].filter(l => !l.hidden).map(l => l.textContent)";
    let shown = browser.wait_for("lines matching the filter", visible).await?;
    let shown = shown.as_array().cloned().unwrap_or_default();
    ensure!(
        shown.iter().all(|t| t.as_str().is_some_and(|t| t.contains("failed"))),
        "only matching lines shown: {shown:?}"
    );
    // Clear empties the view: the first line is no longer the one before (new ones keep coming).
    let first_line = "document.querySelector('#tail-lines .line')?.textContent ?? ''";
    let before = browser.eval(first_line).await?;
    ensure!(before.as_str().is_some_and(|t| !t.is_empty()), "lines before clear");
    browser.click("#tail-clear").await?;
    browser.wait_for("a cleared tail", &format!("{first_line} !== {before}")).await?;
    browser.eval("(f => { f.value = ''; f.dispatchEvent(new Event('input')); return true; })(document.querySelector('#tail-filter'))").await?;

    // Scrolled away from the bottom, the view stays where it is as lines arrive, and offers to
    // follow again; following, it stays at the bottom.
    let lines = "document.querySelector('#tail-lines')";
    let at_bottom = format!("(el => el.scrollHeight - el.scrollTop - el.clientHeight < 8)({lines})");
    browser.wait_for("enough lines to scroll", &format!("{lines}.scrollHeight > 2 * {lines}.clientHeight")).await?;
    browser.eval(&format!("({lines}.scrollTop = 0, true)")).await?;
    let before_scroll = browser.eval(count).await?.as_u64().unwrap_or(0);
    browser.wait_for("the follow button", "!document.querySelector('#tail-follow').hidden").await?;
    browser.wait_for("more lines while scrolled away", &format!("{count} > {before_scroll} + 8")).await?;
    let top = browser.eval(&format!("{lines}.scrollTop")).await?;
    ensure!(top.as_f64() == Some(0.0), "the view stayed where it was scrolled to: scrollTop {top}");
    browser.click("#tail-follow").await?;
    browser.wait_for("the bottom after follow", &at_bottom).await?;
    let before_follow = browser.eval(count).await?.as_u64().unwrap_or(0);
    browser.wait_for("more lines while following", &format!("{count} > {before_follow} + 8")).await?;
    ensure!(browser.eval(&at_bottom).await? == Value::Bool(true), "the view follows the bottom");

    // A burst past 10,000 lines: the view keeps the newest 10,000.
    const BURST: u64 = 10_100;
    let now = now_ns();
    let burst: Vec<Envelope> = (0..BURST)
        .map(|i| {
            let mut envelope = log(now + i as i64, i);
            envelope.message =
                Some(Message::Log(v2::Log { payload: Bytes::from(format!("burst line {i}")), r#type: 0 }));
            envelope
        })
        .collect();
    let batches: Vec<EnvelopeBatch> = burst.chunks(100).map(|c| EnvelopeBatch { batch: c.to_vec() }).collect();
    // Paced at 10,000 lines/s: all at once, they outran a debug build's tail stream on a loaded
    // machine, whose buffers then dropped the oldest as designed (8,948 kept once in CI), and this
    // checks the view's cap, not the pipeline's.
    let paced = futures::StreamExt::then(futures::stream::iter(batches), |batch| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        batch
    });
    running.agent().await.batch_sender(paced).await.context("sending the burst")?;
    let last = format!("burst line {}", BURST - 1);
    browser
        .wait_for(
            "the end of the burst",
            &format!("[...{lines}.querySelectorAll('.payload')].some(p => p.textContent === '{last}')"),
        )
        .await?;
    let kept = browser.eval(count).await?.as_u64().unwrap_or(0);
    ensure!(kept == 10_000, "the tail keeps at most 10,000 lines: {kept}");

    // Charts: the gauges and the counter's rate, from PromQL range queries, drawn by uPlot.
    browser.goto(&format!("{base}#charts/{SOURCE}")).await?;
    for (kind, metric) in [("gauge", "memory"), ("gauge", "cpu"), ("counter", "requests")] {
        let card = format!("document.querySelector('.chart[data-kind=\"{kind}\"][data-metric=\"{metric}\"]')");
        let points = browser
            .wait_for(&format!("a {kind} chart of {metric} with data"), &format!("Number({card}?.dataset.points)"))
            .await?;
        ensure!(points.as_f64().unwrap_or(0.0) >= 10.0, "{metric}: {points} points");
        let canvas = browser.eval(&format!("{card}.querySelector('canvas')?.width")).await?;
        ensure!(canvas.as_u64().unwrap_or(0) > 0, "{metric} chart has a drawn canvas: {canvas}");
    }
    let series =
        browser.eval("document.querySelectorAll('.chart[data-metric=\"memory\"] .u-legend .u-series').length").await?;
    ensure!(series.as_u64() == Some(3), "memory has a series per instance (and the x legend): {series}");
    save_screenshot(browser, "charts").await?;

    // Pipeline: envelopes/s per hop from /metrics, non-zero while the sender runs.
    browser.goto(&format!("{base}#pipeline")).await?;
    for hop in ["agent", "doppler", "log-cache"] {
        browser
            .wait_for(
                &format!("non-zero throughput of the {hop}"),
                &format!(
                    "Number(document.querySelector('tr[data-component=\"{hop}\"] td.in-rate')?.dataset.value) > 0"
                ),
            )
            .await?;
    }
    // A few points of the throughput chart, for the screenshot.
    browser.wait_for("the throughput chart", "document.querySelector('#pipeline-chart canvas')").await?;
    save_screenshot(browser, "pipeline").await?;
    Ok(())
}

/// A console whose upstreams listen nowhere: every proxied route is a 502 naming the upstream.
#[tokio::test]
async fn routes_answer_a_dead_upstream_with_502_and_bad_parameters_with_400() {
    let dead = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        listener.local_addr().expect("address")
    };
    let console = serve_console(console::Config::for_pipeline("127.0.0.1:0".parse().unwrap(), dead, dead, dead)).await;
    let addr = console.addr;
    let get = |path: &str| http_get_json(format!("http://{addr}{path}"));

    for (path, upstream) in [
        ("/api/meta", "log-cache"),
        ("/api/read?source_id=a&envelope_types=GAUGE&limit=10", "log-cache"),
        ("/api/query_range?query=memory%7Bsource_id%3D%22a%22%7D&start=1&end=61&step=1", "log-cache"),
        ("/api/tail?source_id=a", "rlp-gateway"),
        ("/api/pipeline", "metrics"),
    ] {
        let (status, body) = get(path).await;
        assert_eq!(status, 502, "{path}: {body}");
        assert_eq!(body["error"], "upstream_unreachable", "{path}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.starts_with(&format!("{upstream} is unreachable")), "{path}: {message}");
    }

    for (path, message) in [
        ("/api/read", "parameter `source_id` is required"),
        ("/api/read?source_id=a&limit=ten", "`limit` must be an integer, not `ten`"),
        ("/api/read?source_id=a&envelope_types=SOUND", "unknown envelope type `SOUND`"),
        ("/api/read?source_id=a&descending=maybe", "`descending` must be true or false, not `maybe`"),
        ("/api/query_range?query=up&start=1&end=2", "parameter `step` is required"),
        ("/api/query_range?query=up&start=10&end=2&step=1", "`start` (10) must not be after `end` (2)"),
        ("/api/query_range?query=up&start=0&end=100000&step=1", "at most 11000 points a series"),
        ("/api/query_range?query=up&start=0&end=1&step=0", "`step` must be positive, not 0"),
        ("/api/tail", "parameter `source_id` is required"),
        ("/api/tail?source_id=a&source_id=b", "parameter `source_id` given more than once"),
        ("/api/meta?local_only=true", "unknown parameter `local_only` (this route takes no parameters)"),
    ] {
        let (status, body) = get(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(body["error"], "bad_request", "{path}: {body}");
        assert!(body["message"].as_str().unwrap_or_default().starts_with(message), "{path}: {body}");
    }

    let (status, body) = get("/nothing/here").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")), "{body}");

    // The page and its assets are in the binary.
    let (status, page) = http_get(&format!("http://{addr}/")).await;
    assert_eq!(status, 200);
    assert!(page.contains("/assets/uPlot.iife.min.js") && page.contains("/assets/app.js"), "{page}");
    let (status, uplot) = http_get(&format!("http://{addr}/assets/uPlot.iife.min.js")).await;
    assert_eq!(status, 200);
    assert!(uplot.starts_with("/*! https://github.com/leeoniya/uPlot (v1.6.32) */"), "{}", &uplot[..80]);
    let (status, _) = http_get(&format!("http://{addr}/assets/uPlot.LICENSE")).await;
    assert_eq!(status, 200);
    let (status, _) = http_get(&format!("http://{addr}/assets/missing.js")).await;
    assert_eq!(status, 404);
    console.stop.cancel();
}

/// One live tail is open on a console allowed one: the next is a 503 until the first ends. At
/// shutdown the console ends its open tail itself, while the gateway behind it still streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_tail_past_the_cap_is_a_503_until_one_ends_and_shutdown_ends_the_open_one() {
    let running = Running::start(PipelineConfig::ephemeral()).await;
    let e = &running.endpoints;
    let mut config =
        console::Config::for_pipeline("127.0.0.1:0".parse().unwrap(), e.log_cache_http, e.rlp_gateway, e.metrics);
    config.max_tails = 1;
    let console = serve_console(config).await;
    let addr = console.addr;
    let url = format!("http://{addr}/api/tail?source_id={SOURCE}");

    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let first =
        tokio::time::timeout(DEADLINE, client.get(url.parse().unwrap())).await.expect("in time").expect("answers");
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["content-type"], "text/event-stream");

    let (status, body) = http_get_json(url.clone()).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"], "too_many_tails");
    assert_eq!(body["message"], "too many live tails: 1 are open; close one and retry");

    // The first tail's logs arrive as SSE data through the console.
    let mut agent = running.agent().await;
    let mut first = first.into_body();
    let read_first_event = async {
        use http_body_util::BodyExt as _;
        let mut text = String::new();
        loop {
            agent.batch_sender(futures::stream::iter([EnvelopeBatch { batch: vec![log(now_ns(), 1)] }])).await.ok();
            let frame = tokio::time::timeout(Duration::from_millis(200), first.frame()).await;
            if let Ok(Some(Ok(frame))) = frame {
                text.push_str(&String::from_utf8_lossy(frame.data_ref().map(|d| d.as_ref()).unwrap_or_default()));
                if text.contains("\n\n") {
                    return text;
                }
            }
        }
    };
    let event = tokio::time::timeout(DEADLINE, read_first_event).await.expect("an event within the deadline");
    assert!(event.starts_with("data: {\"batch\":["), "{event}");
    assert!(event.contains("\"source_id\":\"console-app\""), "{event}");

    // Closing it frees the slot (the console notices when it next writes to the closed connection).
    drop(first);
    let reopened = async {
        loop {
            agent.batch_sender(futures::stream::iter([EnvelopeBatch { batch: vec![log(now_ns(), 2)] }])).await.ok();
            let answer = client.get(url.parse().unwrap()).await.expect("answers");
            if answer.status() == 200 {
                return answer;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let open = tokio::time::timeout(DEADLINE, reopened).await.expect("a tail opens again once the first ended");

    console.stop.cancel();
    let rest = tokio::time::timeout(DEADLINE, http_body_util::BodyExt::collect(open.into_body())).await;
    assert!(rest.is_ok(), "shutdown ended the open tail");
    let served = tokio::time::timeout(DEADLINE, console.serving).await.expect("the console stops in time");
    served.expect("no panic").expect("clean shutdown");
    running.stop().await;
}

/// With log-cache's auth on, the API answers 401 without a token; the page asks for one, sends it
/// on, and shows the sources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_the_page_asks_for_a_token_and_sends_it() {
    const SECRET: &str = "console-test-secret";
    let mut config = PipelineConfig::ephemeral();
    config.log_cache.auth.enabled = true;
    config.log_cache.auth.jwt_keys = vec![auth::JwtKey { algorithm: "HS256".into(), key: auth::Secret(SECRET.into()) }];
    let running = Running::start(config).await;
    let mut agent = running.agent().await;
    agent.batch_sender(futures::stream::iter([EnvelopeBatch { batch: vec![log(now_ns(), 1)] }])).await.expect("sent");
    let stored = || running.registry.sum("ingress", &[("component", "log-cache")]) >= 1;
    assert!(wait_until(DEADLINE, stored).await, "log-cache stored the log");

    let base = format!("http://{}/", running.endpoints.console);
    let (status, body) = http_get_json(format!("{base}api/meta")).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unauthorized");

    let browser = Browser::start().await;
    let outcome = async {
        browser.goto(&format!("{base}#sources")).await?;
        browser.wait_for("the token dialog", "document.querySelector('#token-dialog').open").await?;
        let token = admin_token(SECRET);
        browser.client.find(Locator::Css("#token-input")).await?.send_keys(&token).await?;
        browser.click("#token-dialog button[value=ok]").await?;
        browser
            .wait_for(
                "the source, read with the token",
                &format!("document.querySelector('tr[data-source=\"{SOURCE}\"]')"),
            )
            .await?;
        let kept = browser.eval("sessionStorage.getItem('loggregator-console-token')").await?;
        ensure!(kept.as_str() == Some(token.as_str()), "the token is kept for the tab: {kept}");
        anyhow::Ok(())
    }
    .await;
    browser.close().await;
    running.stop().await;
    outcome.expect("the token flow works in chromium");
}

/// An HS256 token with the `logs.admin` scope, valid ten minutes.
fn admin_token(secret: &str) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let exp = now_ns() / 1_000_000_000 + 600;
    let claims = serde_json::json!({ "scope": ["logs.admin"], "user_id": "console-test", "exp": exp });
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).expect("encodes")
}

// === helpers ===

/// A console alone, its address, what stops it, and its task.
struct StandaloneConsole {
    addr: SocketAddr,
    stop: CancellationToken,
    serving: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn serve_console(config: console::Config) -> StandaloneConsole {
    let registry = plumbing::Registry::new().scoped("console");
    let console = console::Console::bind(config, &registry).await.expect("console binds");
    let addr = console.local_addr().expect("bound address");
    let stop = CancellationToken::new();
    let serving = tokio::spawn(console.serve(stop.clone().cancelled_owned()));
    StandaloneConsole { addr, stop, serving }
}

async fn http_get_json(url: String) -> (u16, Value) {
    let (status, body) = http_get(&url).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {body}"));
    (status, json)
}
