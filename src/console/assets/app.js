// The loggregator web console: one page, four views chosen by the URL's hash
// (#sources, #tail/<source id>, #charts/<source id>, #pipeline). Every request goes to the
// console's own server (/api/...), which reaches log-cache, the RLP gateway and /metrics itself.
// No build step: plain browser JavaScript, with uPlot (vendored) for the charts.
"use strict";

(() => {
  const $ = (selector) => document.querySelector(selector);
  const TOKEN_KEY = "loggregator-console-token";
  const MAX_TAIL_LINES = 10000;
  // An SSE event (one batch) larger than this means something is wrong upstream: reconnect.
  const MAX_EVENT_CHARS = 16 << 20;
  const MAX_CHARTS = 12;
  const PALETTE = ["#4fa3ff", "#5ad17a", "#f5a742", "#ff6b6b", "#b48ead", "#56c7c7", "#e0d46a", "#ff8fc7"];

  // === requests, and the token they carry ===

  let tokenPrompt = null;
  // Set when the person cancelled the token dialog: polls stop asking until they press "Token".
  let tokenDeclined = false;

  function authorizationHeader() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (!token) return {};
    return { Authorization: /^bearer\s/i.test(token) ? token : "bearer " + token };
  }

  /** Opens the token dialog once, however many requests are waiting for it; true if a token was given. */
  function askToken(reason) {
    if (tokenPrompt) return tokenPrompt;
    tokenPrompt = new Promise((resolve) => {
      const dialog = $("#token-dialog");
      const input = $("#token-input");
      $("#token-reason").textContent = reason || "log-cache and the gateway need a token.";
      input.value = sessionStorage.getItem(TOKEN_KEY) || "";
      dialog.addEventListener(
        "close",
        () => {
          const token = input.value.trim();
          const given = dialog.returnValue === "ok" && token !== "";
          if (given) sessionStorage.setItem(TOKEN_KEY, token);
          tokenDeclined = !given;
          tokenPrompt = null;
          resolve(given);
        },
        { once: true },
      );
      dialog.showModal();
    });
    return tokenPrompt;
  }

  class ApiError extends Error {}

  /** fetch(path) with the token; a 401 asks for a token and retries. */
  async function api(path, options = {}) {
    for (let attempt = 0; ; attempt++) {
      const response = await fetch(path, { headers: authorizationHeader(), signal: options.signal });
      if (response.status !== 401 || attempt >= 3) return response;
      const body = await response.json().catch(() => null);
      const reason = (body && body.message) || "a token is needed";
      if (tokenDeclined || !(await askToken(reason))) throw new ApiError(reason);
    }
  }

  /** The JSON body of a successful answer; otherwise an error with the server's message. */
  async function apiJSON(path, options) {
    const response = await api(path, options);
    const text = await response.text();
    let body = null;
    try {
      body = JSON.parse(text);
    } catch (_) {
      // Not JSON: reported below if the status says it failed.
    }
    if (!response.ok) {
      const message = (body && (body.message || body.error)) || text.trim() || "HTTP " + response.status;
      throw new ApiError(message);
    }
    return body;
  }

  function showStatus(error) {
    $("#status").textContent = error ? String(error.message || error) : "";
  }

  function sleep(ms, signal) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      if (signal) signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
    });
  }

  // === formatting ===

  function formatCount(n) {
    if (n === null || n === undefined || !isFinite(n)) return "–";
    if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(2) + "M";
    if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + "k";
    return Number.isInteger(n) ? String(n) : n.toFixed(1);
  }

  /** Axis ticks: 180000000 as 180M, so that they fit beside the chart. */
  function formatTick(n) {
    const abs = Math.abs(n);
    for (const [scale, suffix] of [[1e12, "T"], [1e9, "G"], [1e6, "M"], [1e3, "k"]]) {
      if (abs >= scale) return +(n / scale).toPrecision(3) + suffix;
    }
    return +n.toPrecision(3) + "";
  }

  // A fresh pair for each chart: uPlot fills its defaults into the objects it is given.
  const axes = () => [
    {
      stroke: "#8a94a3",
      grid: { stroke: "#2a313b" },
      ticks: { stroke: "#2a313b" },
      // One line of local clock time, HH:MM on whole minutes and :SS between them: uPlot's
      // two-line default collides with itself at the left edge.
      size: 32,
      values: (_, ticks) =>
        ticks.map((t) => {
          const clock = formatClock(t * 1e9);
          return Math.round(t) % 60 === 0 ? clock.slice(0, 5) : ":" + clock.slice(6, 8);
        }),
    },
    {
      stroke: "#8a94a3",
      grid: { stroke: "#2a313b" },
      ticks: { stroke: "#2a313b" },
      size: 56,
      values: (_, ticks) => ticks.map(formatTick),
    },
  ];

  function formatRate(n) {
    return n === null || n === undefined ? "–" : formatCount(n) + "/s";
  }

  function formatDuration(seconds) {
    if (!isFinite(seconds) || seconds < 0) return "–";
    if (seconds < 1) return "< 1 s";
    if (seconds < 90) return Math.round(seconds) + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    if (seconds < 172800) return (seconds / 3600).toFixed(1) + " h";
    return (seconds / 86400).toFixed(1) + " d";
  }

  function formatClock(ns) {
    const date = new Date(ns / 1e6);
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    return pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds()) + "." + pad(date.getMilliseconds(), 3);
  }

  // protojson: int64 as decimal strings (§1.5); precision past 2^53 ns does not matter here.
  const num = (value) => (value === undefined || value === null ? 0 : Number(value));

  function cell(row, text, className) {
    const td = row.insertCell();
    td.textContent = text;
    if (className) td.className = className;
    return td;
  }

  function link(parent, href, text) {
    const a = document.createElement("a");
    a.href = href;
    a.textContent = text;
    parent.appendChild(a);
  }

  const viewHash = (view, source) => "#" + view + "/" + encodeURIComponent(source);

  // === sources: log-cache's meta, with rates from successive polls ===

  const sources = { previous: null, ids: [] };

  async function refreshSources() {
    const body = await apiJSON("/api/meta");
    const meta = (body && body.meta) || {};
    const now = performance.now();
    const previous = sources.previous;
    const seen = new Map();
    const rows = Object.keys(meta).sort().map((id) => {
      const m = meta[id];
      // With auth on, log-cache writes Meta as the cf-auth-proxy does: camelCase (§6.8).
      const count = num(m.count);
      const expired = num(m.expired);
      const oldest = num(m.oldest_timestamp ?? m.oldestTimestamp);
      const newest = num(m.newest_timestamp ?? m.newestTimestamp);
      seen.set(id, count + expired);
      let rate = null;
      if (previous && previous.totals.has(id)) {
        rate = Math.max(0, count + expired - previous.totals.get(id)) / ((now - previous.at) / 1000);
      }
      return { id, count, expired, oldest, newest, rate };
    });
    sources.previous = { at: now, totals: seen };
    sources.ids = rows.map((r) => r.id);
    updateSourceList();

    const tbody = $("#sources-table tbody");
    tbody.replaceChildren();
    for (const r of rows) {
      const row = tbody.insertRow();
      row.dataset.source = r.id;
      const id = cell(row, "", "id");
      link(id, viewHash("tail", r.id), r.id);
      cell(row, formatCount(r.count), "num").dataset.value = r.count;
      cell(row, formatCount(r.expired), "num");
      const rate = cell(row, formatRate(r.rate), "num rate");
      rate.dataset.value = r.rate === null ? "" : String(r.rate);
      cell(row, formatDuration((r.newest - r.oldest) / 1e9), "num");
      cell(row, formatDuration(Date.now() / 1000 - r.newest / 1e9) + " ago", "num");
      const actions = cell(row, "");
      link(actions, viewHash("tail", r.id), "tail");
      link(actions, viewHash("charts", r.id), "charts");
    }
    $("#sources-empty").hidden = rows.length > 0;
    const total = rows.reduce((sum, r) => sum + r.count, 0);
    $("#sources-info").textContent = rows.length + " sources, " + formatCount(total) + " envelopes held";
  }

  function updateSourceList() {
    const list = $("#source-ids");
    list.replaceChildren(...sources.ids.map((id) => Object.assign(document.createElement("option"), { value: id })));
  }

  // === live tail: the gateway's SSE stream through /api/tail ===

  // `queue`: envelopes waiting for the next frame; `pending`: envelopes held while paused.
  const tail = {
    source: "",
    abort: null,
    paused: false,
    queue: [],
    flushScheduled: false,
    pending: [],
    pendingDropped: 0,
    filter: "",
    shown: 0,
  };
  const tailLines = () => $("#tail-lines");

  function startTail(source) {
    if (tail.abort && tail.source === source) return;
    stopTail();
    if (source !== tail.source) {
      tailLines().replaceChildren();
      tail.queue = [];
      tail.pending = [];
      tail.pendingDropped = 0;
      tail.shown = 0;
    }
    tail.source = source;
    $("#tail-source").value = source;
    if (!source) {
      $("#tail-info").textContent = "choose a source";
      return;
    }
    const controller = new AbortController();
    tail.abort = controller;
    runTail(source, controller.signal);
  }

  function stopTail() {
    if (tail.abort) tail.abort.abort();
    tail.abort = null;
  }

  async function runTail(source, signal) {
    let backoff = 500;
    while (!signal.aborted) {
      try {
        setTailInfo("connecting…");
        const response = await api("/api/tail?source_id=" + encodeURIComponent(source), { signal });
        if (!response.ok) {
          const body = await response.json().catch(() => null);
          throw new ApiError((body && body.message) || "HTTP " + response.status);
        }
        backoff = 500;
        setTailInfo("streaming");
        await readEvents(response.body, signal);
        // The gateway closes a stream after 14 minutes (`event: closing`): reconnect.
      } catch (error) {
        if (signal.aborted) return;
        setTailInfo("disconnected (" + error.message + "), retrying");
      }
      await sleep(backoff, signal);
      backoff = Math.min(backoff * 2, 10000);
    }
  }

  function setTailInfo(state) {
    const paused = tail.paused ? " · paused, " + tail.pending.length + " waiting" : "";
    const dropped = tail.pendingDropped ? " (" + tail.pendingDropped + " dropped while paused)" : "";
    tail.state = state;
    $("#tail-info").textContent = state + " · " + tail.shown + " lines" + paused + dropped;
  }

  /** Reads SSE events (§5.4) off a fetch body: `data:` lines until a blank line. */
  async function readEvents(body, signal) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || signal.aborted) return;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          handleEvent(buffer.slice(0, end));
          buffer = buffer.slice(end + 2);
        }
        if (buffer.length > MAX_EVENT_CHARS) throw new Error("an event larger than " + MAX_EVENT_CHARS + " characters");
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  function handleEvent(text) {
    let type = "message";
    const data = [];
    for (const line of text.split("\n")) {
      if (line.startsWith("event:")) type = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (type !== "message" || data.length === 0) return; // heartbeat, closing
    const batch = JSON.parse(data.join("\n")).batch || [];
    const logs = batch.filter((envelope) => envelope.log);
    if (logs.length === 0) return;
    if (tail.paused) {
      tail.pending.push(...logs);
      const excess = tail.pending.length - MAX_TAIL_LINES;
      if (excess > 0) {
        tail.pending.splice(0, excess);
        tail.pendingDropped += excess;
      }
      setTailInfo(tail.state);
    } else {
      enqueue(logs);
    }
  }

  /**
   * Queues envelopes for the next animation frame, which draws them all at once: one layout a
   * frame however many events arrive, and nothing built for lines a burst pushes out anyway.
   */
  function enqueue(logs) {
    tail.queue.push(...logs);
    const excess = tail.queue.length - MAX_TAIL_LINES;
    if (excess > 0) tail.queue.splice(0, excess);
    if (!tail.flushScheduled) {
      tail.flushScheduled = true;
      requestAnimationFrame(flush);
    }
  }

  function flush() {
    tail.flushScheduled = false;
    const logs = tail.queue;
    tail.queue = [];
    if (logs.length) appendLines(logs.map(tailLine));
    setTailInfo(tail.state);
  }

  function decodePayload(base64) {
    try {
      const bytes = Uint8Array.from(atob(base64 || ""), (c) => c.charCodeAt(0));
      return new TextDecoder().decode(bytes).replace(/\r?\n$/, "");
    } catch (_) {
      return "(payload is not base64)";
    }
  }

  function tailLine(envelope) {
    const div = document.createElement("div");
    const isErr = envelope.log.type === "ERR";
    div.className = "line " + (isErr ? "err" : "out");
    const ts = document.createElement("span");
    ts.className = "ts";
    ts.textContent = formatClock(num(envelope.timestamp));
    const tag = document.createElement("span");
    tag.className = "tag";
    const sourceType = (envelope.tags && envelope.tags.source_type) || "";
    tag.textContent = "[" + [sourceType, envelope.instance_id].filter((s) => s).join("/") + "]";
    const payload = document.createElement("span");
    payload.className = "payload";
    payload.textContent = decodePayload(envelope.log.payload);
    div.append(ts, tag, payload);
    div.hidden = !matchesFilter(div);
    return div;
  }

  function matchesFilter(line) {
    return tail.filter === "" || line.textContent.toLowerCase().includes(tail.filter);
  }

  function atBottom(el) {
    return el.scrollHeight - el.scrollTop - el.clientHeight < 8;
  }

  function appendLines(lines) {
    const el = tailLines();
    const follow = atBottom(el);
    if (lines.length >= MAX_TAIL_LINES) {
      el.replaceChildren(...lines.slice(-MAX_TAIL_LINES));
    } else {
      const fragment = document.createDocumentFragment();
      fragment.append(...lines);
      el.appendChild(fragment);
      let excess = el.childElementCount - MAX_TAIL_LINES;
      while (excess-- > 0) el.firstElementChild.remove();
    }
    tail.shown = el.childElementCount;
    if (follow) el.scrollTop = el.scrollHeight;
    $("#tail-follow").hidden = follow || atBottom(el);
  }

  function setupTail() {
    const el = tailLines();
    el.addEventListener("scroll", () => { $("#tail-follow").hidden = atBottom(el); });
    $("#tail-follow").addEventListener("click", () => {
      el.scrollTop = el.scrollHeight;
      $("#tail-follow").hidden = true;
    });
    $("#tail-pause").addEventListener("click", () => {
      tail.paused = !tail.paused;
      $("#tail-pause").textContent = tail.paused ? "Resume" : "Pause";
      $("#tail-pause").classList.toggle("on", tail.paused);
      if (!tail.paused) {
        const waiting = tail.pending;
        tail.pending = [];
        tail.pendingDropped = 0;
        if (waiting.length) enqueue(waiting);
      }
      setTailInfo(tail.state || "");
    });
    $("#tail-clear").addEventListener("click", () => {
      el.replaceChildren();
      tail.queue = [];
      tail.pending = [];
      tail.pendingDropped = 0;
      tail.shown = 0;
      setTailInfo(tail.state || "");
    });
    $("#tail-filter").addEventListener("input", (event) => {
      tail.filter = event.target.value.trim().toLowerCase();
      for (const line of el.children) line.hidden = !matchesFilter(line);
      el.scrollTop = el.scrollHeight;
    });
    $("#tail-source").addEventListener("change", (event) => {
      location.hash = viewHash("tail", event.target.value.trim());
    });
  }

  // === charts: PromQL range queries of a source's gauges and counter rates ===

  const charts = { source: "", cards: new Map(), busy: false };

  // §6.6: log-cache matches metric names sanitized this way.
  function promName(name) {
    return name.replace(/[^A-Za-z0-9_]/g, "_").replace(/^[^A-Za-z_]/, "_");
  }

  function promString(s) {
    return '"' + s.replace(/\\/g, "\\\\").replace(/"/g, '\\"') + '"';
  }

  /** The gauge metric names and counter names the source sent in the window, newest first. */
  async function discoverMetrics(source, startSeconds) {
    const startNs = (BigInt(Math.floor(startSeconds * 1000)) * 1000000n).toString();
    const body = await apiJSON(
      "/api/read?source_id=" + encodeURIComponent(source) +
        "&envelope_types=GAUGE&envelope_types=COUNTER&descending=true&limit=1000&start_time=" + startNs,
    );
    const gauges = new Map(); // name -> unit
    const counters = new Set();
    for (const envelope of (body && body.envelopes && body.envelopes.batch) || []) {
      for (const [name, value] of Object.entries((envelope.gauge && envelope.gauge.metrics) || {})) {
        if (!gauges.has(name)) gauges.set(name, (value && value.unit) || "");
      }
      if (envelope.counter && envelope.counter.name) counters.add(envelope.counter.name);
    }
    const metrics = [
      ...[...gauges.keys()].sort().map((name) => ({ kind: "gauge", name, unit: gauges.get(name) })),
      ...[...counters].sort().map((name) => ({ kind: "counter", name })),
    ];
    return metrics.slice(0, MAX_CHARTS);
  }

  async function refreshCharts() {
    if (charts.busy || !charts.source) return;
    charts.busy = true;
    try {
      const source = charts.source;
      const windowSeconds = Number($("#charts-window").value);
      const end = Date.now() / 1000;
      const start = end - windowSeconds;
      const step = Math.max(1, Math.ceil(windowSeconds / 300));
      const metrics = await discoverMetrics(source, start);
      if (source !== charts.source) return;
      const selector = "{source_id=" + promString(source) + "}";
      const rateWindow = Math.max(60, step * 4) + "s";
      const results = await Promise.all(
        metrics.map((metric) => {
          const query = metric.kind === "gauge"
            ? promName(metric.name) + selector
            : "rate(" + promName(metric.name) + selector + "[" + rateWindow + "])";
          const params = new URLSearchParams({ query, start: start.toFixed(3), end: end.toFixed(3), step: String(step) });
          return apiJSON("/api/query_range?" + params).then(
            (body) => ({ metric, query, result: (body && body.data && body.data.result) || [] }),
            (error) => ({ metric, query, error }),
          );
        }),
      );
      if (source !== charts.source) return;
      renderCharts(results, start, end);
      const failed = results.find((r) => r.error);
      $("#charts-info").textContent = failed
        ? "query failed: " + failed.error.message
        : metrics.length + " metrics · refreshed " + new Date().toLocaleTimeString();
      $("#charts-empty").hidden = metrics.length > 0;
      $("#charts-empty").textContent = "No gauge or counter from " + source + " in this window.";
    } finally {
      charts.busy = false;
    }
  }

  /** uPlot's aligned data: one x array of the union of timestamps, one y array per series. */
  function alignSeries(result) {
    const times = new Set();
    for (const series of result) for (const [t] of series.values || []) times.add(t);
    const xs = [...times].sort((a, b) => a - b);
    const index = new Map(xs.map((t, i) => [t, i]));
    const ys = result.map((series) => {
      const y = new Array(xs.length).fill(null);
      for (const [t, v] of series.values || []) y[index.get(t)] = Number(v);
      return y;
    });
    return [xs, ...ys];
  }

  function seriesLabel(metric) {
    const labels = Object.entries(metric || {}).filter(([k]) => k !== "source_id" && k !== "__name__");
    const instance = labels.find(([k]) => k === "instance_id");
    if (instance) return "instance " + instance[1];
    return labels.length ? labels.map(([k, v]) => k + "=" + v).join(",") : "value";
  }

  function renderCharts(results, start, end) {
    const container = $("#charts");
    const keep = new Set();
    for (const { metric, query, result, error } of results) {
      const key = metric.kind + ":" + metric.name;
      keep.add(key);
      let card = charts.cards.get(key);
      if (!card) {
        card = { el: document.createElement("div"), plot: null, seriesCount: -1, range: [start, end] };
        card.el.className = "card chart";
        card.el.dataset.metric = metric.name;
        card.el.dataset.kind = metric.kind;
        const title = document.createElement("div");
        title.className = "card-title";
        const name = document.createElement("span");
        name.textContent = metric.kind === "gauge" ? metric.name : "rate(" + metric.name + ")";
        const kind = document.createElement("span");
        kind.className = "kind";
        kind.textContent = metric.kind === "gauge"
          ? "gauge" + (metric.unit ? ", " + metric.unit : "")
          : "counter, per second";
        title.append(name, kind);
        card.body = document.createElement("div");
        card.el.append(title, card.body);
        container.appendChild(card.el);
        charts.cards.set(key, card);
      }
      card.el.title = query;
      if (error) {
        card.el.dataset.points = "0";
        continue;
      }
      const data = alignSeries(result);
      // The x scale is always the whole window, even where the source sent nothing.
      card.range = [start, end];
      const width = Math.max(300, card.body.clientWidth || 500);
      if (!card.plot || card.seriesCount !== result.length) {
        if (card.plot) card.plot.destroy();
        card.plot = new uPlot(
          {
            width,
            height: 200,
            scales: { x: { time: true, range: () => card.range } },
            series: [{}, ...result.map((s, i) => ({
              label: seriesLabel(s.metric),
              stroke: PALETTE[i % PALETTE.length],
              width: 1.5,
              spanGaps: true,
              points: { show: false },
            }))],
            axes: axes(),
            legend: { show: true },
          },
          data,
          card.body,
        );
        card.seriesCount = result.length;
      } else {
        card.plot.setData(data);
      }
      card.el.dataset.points = String(data[0].length);
    }
    for (const [key, card] of charts.cards) {
      if (keep.has(key)) continue;
      if (card.plot) card.plot.destroy();
      card.el.remove();
      charts.cards.delete(key);
    }
  }

  function clearCharts() {
    for (const card of charts.cards.values()) {
      if (card.plot) card.plot.destroy();
      card.el.remove();
    }
    charts.cards.clear();
  }

  function setupCharts() {
    $("#charts-source").addEventListener("change", (event) => {
      location.hash = viewHash("charts", event.target.value.trim());
    });
    $("#charts-window").addEventListener("change", () => {
      clearCharts();
      poll.now();
    });
    window.addEventListener("resize", () => {
      for (const card of charts.cards.values()) {
        if (card.plot) card.plot.setSize({ width: Math.max(300, card.body.clientWidth), height: 200 });
      }
      if (pipeline.plot) pipeline.plot.setSize({ width: pipelineChartWidth(), height: 220 });
    });
  }

  // === pipeline: envelopes/s and drops per hop, from the components' /metrics ===

  const HOP_CAPTIONS = {
    agent: "in from emitters, out to Dopplers",
    doppler: "in from agents, out to subscribers",
    "log-cache": "stored from the nozzle, read by clients",
    "reverse-log-proxy": "in from Dopplers, out to gRPC and gateway streams",
    "rlp-gateway": "out as SSE",
    "traffic-controller": "in from Dopplers, out as v1 WebSocket frames",
  };
  const HISTORY = 150; // samples kept for the throughput chart (5 min at one every 2 s)
  const pipeline = { plot: null, components: [], history: [] };

  async function refreshPipeline() {
    const view = await apiJSON("/api/pipeline");
    const hops = (view && view.hops) || [];
    const tbody = $("#pipeline-table tbody");
    tbody.replaceChildren();
    for (const hop of hops) {
      const row = tbody.insertRow();
      row.dataset.component = hop.component;
      const name = cell(row, hop.component);
      const caption = document.createElement("span");
      caption.className = "caption";
      caption.textContent = HOP_CAPTIONS[hop.component] || "";
      name.appendChild(caption);
      const rateCell = (value, className) => {
        const td = cell(row, formatRate(value), className);
        td.dataset.value = value === null || value === undefined ? "" : String(value);
        return td;
      };
      rateCell(hop.ingress_rate, "num in-rate");
      rateCell(hop.egress_rate, "num out-rate");
      rateCell(hop.dropped_rate, "num drops" + (hop.dropped_rate > 0 ? " nonzero" : ""));
      cell(row, formatCount(hop.ingress), "num");
      cell(row, formatCount(hop.egress), "num");
      cell(row, formatCount(hop.dropped), "num drops" + (hop.dropped > 0 ? " nonzero" : ""));
      const directions = Object.entries(hop.dropped_by_direction || {});
      cell(row, directions.map(([d, n]) => (d || "–") + " " + formatCount(n)).join(" · ") || "–");
    }
    $("#pipeline-info").textContent = view.interval_seconds
      ? "rates over the last " + view.interval_seconds.toFixed(1) + " s"
      : "measuring: rates appear on the next poll";
    if (view.interval_seconds) recordThroughput(hops);
  }

  function pipelineChartWidth() {
    return Math.max(400, $("#pipeline-chart").clientWidth || 800);
  }

  function recordThroughput(hops) {
    const rated = hops.filter((hop) => hop.egress_rate !== null);
    const components = rated.map((hop) => hop.component);
    if (components.join() !== pipeline.components.join()) {
      pipeline.components = components;
      pipeline.history = [];
      if (pipeline.plot) pipeline.plot.destroy();
      pipeline.plot = null;
    }
    pipeline.history.push([Date.now() / 1000, ...rated.map((hop) => hop.egress_rate)]);
    if (pipeline.history.length > HISTORY) pipeline.history.shift();
    const data = [pipeline.history.map((row) => row[0])];
    components.forEach((_, i) => data.push(pipeline.history.map((row) => row[i + 1])));
    if (!pipeline.plot) {
      pipeline.plot = new uPlot(
        {
          width: pipelineChartWidth(),
          height: 220,
          // The span the history can cover, ending now: a first lone point is not stretched over years.
          scales: { x: { time: true, range: () => [Date.now() / 1000 - HISTORY * 2, Date.now() / 1000] } },
          series: [{}, ...components.map((c, i) => ({ label: c, stroke: PALETTE[i % PALETTE.length], width: 1.5 }))],
          axes: axes(),
        },
        data,
        $("#pipeline-chart"),
      );
    } else {
      pipeline.plot.setData(data);
    }
  }

  // === views and polling ===

  const VIEWS = {
    sources: { refresh: refreshSources, every: 2000 },
    tail: { refresh: refreshSources, every: 10000 }, // keeps the source list fresh
    charts: { refresh: refreshCharts, every: 5000 },
    pipeline: { refresh: refreshPipeline, every: 2000 },
  };

  /** One poll loop for the current view; `now()` runs it at once. */
  const poll = {
    timer: null,
    view: null,
    now() {
      clearTimeout(this.timer);
      const view = this.view;
      const spec = VIEWS[view];
      spec.refresh().then(
        () => showStatus(null),
        (error) => showStatus(error),
      ).finally(() => {
        if (this.view === view) this.timer = setTimeout(() => this.now(), spec.every);
      });
    },
  };

  function route() {
    const [name, ...rest] = location.hash.replace(/^#/, "").split("/");
    const view = VIEWS[name] ? name : "sources";
    const source = decodeURIComponent(rest.join("/"));
    for (const id of Object.keys(VIEWS)) $("#view-" + id).hidden = id !== view;
    for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.view === view);
    // The nav links keep the chosen source between the tail and the charts.
    const chosen = source || tail.source || charts.source;
    document.querySelector('nav a[data-view="tail"]').href = chosen ? viewHash("tail", chosen) : "#tail";
    document.querySelector('nav a[data-view="charts"]').href = chosen ? viewHash("charts", chosen) : "#charts";
    if (view === "tail") startTail(source);
    else stopTail();
    if (view === "charts") {
      if (source !== charts.source) clearCharts();
      charts.source = source;
      $("#charts-source").value = source;
      if (!source) $("#charts-info").textContent = "choose a source";
    }
    poll.view = view;
    poll.now();
  }

  $("#token-button").addEventListener("click", async () => {
    tokenDeclined = false;
    if (await askToken("The token sent to log-cache and the gateway.")) poll.now();
  });
  setupTail();
  setupCharts();
  window.addEventListener("hashchange", route);
  route();
})();
