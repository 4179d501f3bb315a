//! From metric envelopes to the labelled time series a PromQL selector sees (PROTOCOLS.md §6.6).
//!
//! A counter contributes its `total`, each key of a gauge its `value` (one series per key), a timer
//! `stop − start`; logs and events never contribute. A series' labels are the envelope's `tags` plus
//! `source_id` and, when non-empty, `instance_id`; there is no `__name__` label. Sample timestamps
//! are the envelope timestamp truncated to whole seconds.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use loggregator_proto::prost::Message as _;
use loggregator_proto::v2::{envelope, Envelope};

#[cfg(test)]
thread_local! {
    /// Envelopes decoded by `build_series` on this thread (tests of the budget's order).
    pub(crate) static DECODED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

use super::params::sample_time_ms;

/// A label set, sorted by name. Shared, because most operators pass labels through unchanged.
pub(crate) type Labels = Arc<BTreeMap<String, String>>;

/// One sample of a series: an instant in ms and its value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Point {
    pub t: i64,
    pub v: f64,
}

/// A labelled series of samples, ascending by time.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Series {
    pub labels: Labels,
    pub points: Vec<Point>,
}

/// What a selector asks of the envelopes of its source ids.
pub(crate) struct SeriesFilter<'a> {
    /// The sanitized metric name to match, or `None` for every metric.
    pub name: Option<&'a str>,
    /// Labels that must equal the given values (an absent label equals `""`).
    pub labels: &'a [(String, String)],
    /// Envelope timestamps outside `[start_ns, end_ns]` are skipped.
    pub start_ns: i64,
    pub end_ns: i64,
}

/// Sanitizes a metric name the way Log Cache does before matching it against a query: every character
/// outside `[A-Za-z0-9_]` becomes `_`, and so does a first character that is not a letter or `_`
/// (the reference regex is `^[^A-z_]|[\W_]+?`).
pub(crate) fn sanitize_metric_name(name: &str) -> String {
    sanitized_chars(name).collect()
}

fn sanitized_chars(name: &str) -> impl Iterator<Item = char> + '_ {
    name.chars().enumerate().map(|(i, c)| {
        let allowed = c.is_ascii_alphabetic() || c == '_' || (i > 0 && c.is_ascii_digit());
        if allowed {
            c
        } else {
            '_'
        }
    })
}

/// Whether `raw` sanitizes to `sanitized`, without allocating.
fn sanitizes_to(raw: &str, sanitized: &str) -> bool {
    sanitized_chars(raw).eq(sanitized.chars())
}

/// A series being built: its sanitized metric name, labels and samples.
struct SeriesBuilder {
    name: String,
    labels: BTreeMap<String, String>,
    points: Vec<Point>,
}

impl SeriesBuilder {
    fn is(&self, raw_name: &str, labels: &[(&str, &str)]) -> bool {
        sanitizes_to(raw_name, &self.name)
            && self.labels.len() == labels.len()
            && self.labels.iter().zip(labels).all(|((k, v), (lk, lv))| k == lk && v == lv)
    }
}

/// Builds the series `filter` selects from the envelopes of one or more sources, sorted by labels,
/// each ascending by time. Envelopes are grouped by metric name and labels, so two metrics of a
/// selector without a name stay apart even though their label sets are equal.
///
/// This runs once per envelope a query reads, so the common path allocates nothing: an envelope's
/// labels are borrowed into a reused buffer and its series found by hash.
///
/// Envelopes arrive encoded and are decoded one at a time, so a query holds one decoded envelope at
/// a time plus the samples it keeps; a stored envelope always decodes (it was scanned on the way
/// in), and one that does not is skipped.
pub(crate) fn build_series(sources: &[&[Bytes]], filter: &SeriesFilter<'_>) -> Vec<Series> {
    let mut builders: Vec<SeriesBuilder> = Vec::new();
    let mut by_hash: HashMap<u64, Vec<usize>> = HashMap::new();
    for encoded in sources.iter().flat_map(|envelopes| envelopes.iter()) {
        let Ok(envelope) = Envelope::decode(&encoded[..]) else {
            continue;
        };
        #[cfg(test)]
        DECODED.with(|decoded| decoded.set(decoded.get() + 1));
        let envelope = &envelope;
        let mut labels: Vec<(&str, &str)> = Vec::new();
        if envelope.timestamp < filter.start_ns || envelope.timestamp > filter.end_ns {
            continue;
        }
        let Some(message) = &envelope.message else {
            continue;
        };
        if !labels_match(envelope, filter.labels) {
            continue;
        }
        borrow_labels(envelope, &mut labels);
        let t = sample_time_ms(envelope.timestamp);
        for_each_metric(message, |raw_name, v| {
            if filter.name.is_some_and(|wanted| !sanitizes_to(raw_name, wanted)) {
                return;
            }
            let mut hasher = DefaultHasher::new();
            sanitized_chars(raw_name).for_each(|c| c.hash(&mut hasher));
            labels.hash(&mut hasher);
            let slots = by_hash.entry(hasher.finish()).or_default();
            let existing = slots.iter().copied().find(|&i| builders.get(i).is_some_and(|b| b.is(raw_name, &labels)));
            let slot = existing.unwrap_or_else(|| {
                builders.push(SeriesBuilder {
                    name: sanitize_metric_name(raw_name),
                    labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    points: Vec::new(),
                });
                slots.push(builders.len() - 1);
                builders.len() - 1
            });
            if let Some(builder) = builders.get_mut(slot) {
                builder.points.push(Point { t, v });
            }
        });
    }
    builders.sort_by(|a, b| a.labels.cmp(&b.labels).then_with(|| a.name.cmp(&b.name)));
    builders
        .into_iter()
        .map(|mut b| {
            // Stable: envelopes of one second keep their store order.
            b.points.sort_by_key(|p| p.t);
            Series { labels: Arc::new(b.labels), points: b.points }
        })
        .collect()
}

/// Calls `f` with each (raw metric name, value) an envelope contributes; never for logs and events.
fn for_each_metric(message: &envelope::Message, mut f: impl FnMut(&str, f64)) {
    match message {
        // u64 → f64 has no lossless `From`; Prometheus holds every value as a float too.
        envelope::Message::Counter(c) => f(&c.name, c.total as f64),
        envelope::Message::Gauge(g) => {
            for (key, value) in &g.metrics {
                f(key, value.value);
            }
        }
        envelope::Message::Timer(t) => {
            // Widened so that no pair of client-sent timestamps can overflow.
            let duration_ns = i128::from(t.stop) - i128::from(t.start);
            f(&t.name, duration_ns as f64);
        }
        envelope::Message::Log(_) | envelope::Message::Event(_) => {}
    }
}

/// Fills `out` with an envelope's labels, sorted by name: its `tags`, then `source_id` and a non-empty
/// `instance_id`, which override tags of the same name.
fn borrow_labels<'e>(envelope: &'e Envelope, out: &mut Vec<(&'e str, &'e str)>) {
    out.clear();
    let has_instance_id = !envelope.instance_id.is_empty();
    out.extend(
        envelope
            .tags
            .iter()
            .filter(|(k, _)| k.as_str() != "source_id" && !(has_instance_id && k.as_str() == "instance_id"))
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    out.push(("source_id", &envelope.source_id));
    if has_instance_id {
        out.push(("instance_id", &envelope.instance_id));
    }
    out.sort_unstable_by(|a, b| a.0.cmp(b.0));
}

/// The value of label `name` of an envelope, `""` when absent.
fn label_value<'a>(envelope: &'a Envelope, name: &str) -> &'a str {
    match name {
        "source_id" => &envelope.source_id,
        "instance_id" if !envelope.instance_id.is_empty() => &envelope.instance_id,
        _ => envelope.tags.get(name).map_or("", String::as_str),
    }
}

/// Label matchers other than `source_id` and `__name__` are compared by string equality whatever
/// their operator (`=`, `!=`, `=~`, `!~`). This is a quirk of the original Log Cache, kept on purpose
/// so that queries behave the same against both (§6.6).
fn labels_match(envelope: &Envelope, wanted: &[(String, String)]) -> bool {
    wanted.iter().all(|(name, value)| label_value(envelope, name) == value)
}
