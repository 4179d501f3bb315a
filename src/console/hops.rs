//! `GET /api/pipeline`: envelopes/s in and out, and drops, per hop of the pipeline, from the
//! components' `/metrics` (README.md "Metrics": `ingress`, `egress`, `dropped{direction}`, told
//! apart by their `component` label).
//!
//! Each request scrapes every configured `/metrics` URL. Rates are the difference between this
//! scrape and a baseline at least [`MIN_RATE_INTERVAL`] older, divided by the time between them;
//! then this scrape becomes the baseline. So however many pages poll, the state is one set of
//! totals, and the first answer has totals but no rates yet.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::{IntoResponse, Json, Response};
use serde::Serialize;

use super::error::{ConsoleError, METRICS};
use super::AppState;
use plumbing::promtext;

/// Shortest interval rates are computed over; a page polling faster sees the last rates again.
pub const MIN_RATE_INTERVAL: Duration = Duration::from_millis(900);

/// Most hops reported (a scrape names its components; this bounds what the console keeps).
const MAX_HOPS: usize = 64;

/// The hops in data-flow order; other components follow, by name.
const FLOW_ORDER: [&str; 6] =
    ["agent", "doppler", "log-cache", "reverse-log-proxy", "rlp-gateway", "traffic-controller"];

/// The counters of one hop, summed over its series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub ingress: f64,
    pub egress: f64,
    pub dropped: f64,
    pub dropped_by_direction: BTreeMap<String, f64>,
}

/// What the page shows for one hop.
#[derive(Debug, Serialize, PartialEq)]
pub struct Hop {
    pub component: String,
    pub ingress: f64,
    pub egress: f64,
    pub dropped: f64,
    pub dropped_by_direction: BTreeMap<String, f64>,
    /// Per second over the last interval; `None` until there are two scrapes.
    pub ingress_rate: Option<f64>,
    pub egress_rate: Option<f64>,
    pub dropped_rate: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct PipelineView {
    pub hops: Vec<Hop>,
    /// Seconds between the two scrapes the rates come from.
    pub interval_seconds: Option<f64>,
}

/// The baseline scrape and the rates last computed from it.
#[derive(Default)]
pub struct RateMemo {
    baseline: Option<(Instant, BTreeMap<String, Totals>)>,
    last: Option<(f64, BTreeMap<String, [f64; 3]>)>,
}

pub async fn pipeline(State(state): State<AppState>) -> Response {
    match scrape(&state).await {
        Ok(totals) => Json(state.rates.lock().view(Instant::now(), totals)).into_response(),
        Err(error) => error.into_response(),
    }
}

/// Every configured `/metrics`, summed per component.
async fn scrape(state: &AppState) -> Result<BTreeMap<String, Totals>, ConsoleError> {
    let limit = state.config.max_proxied;
    let _slot = state.proxy_slots.clone().try_acquire_owned().map_err(|_| ConsoleError::Busy { limit })?;
    let mut totals = BTreeMap::new();
    for url in &state.config.metrics_urls {
        let answer = state.upstream.get(METRICS, url, None, state.config.max_answer_bytes).await?;
        if !answer.status.is_success() {
            let reason = format!("{url} answered {}", answer.status);
            return Err(ConsoleError::UpstreamUnreachable { upstream: METRICS, reason });
        }
        let text = std::str::from_utf8(&answer.body)
            .map_err(|_| ConsoleError::UpstreamMalformed { upstream: METRICS, reason: format!("{url}: not UTF-8") })?;
        let samples = promtext::parse(text).map_err(|error| ConsoleError::UpstreamMalformed {
            upstream: METRICS,
            reason: format!("{url}: {error}"),
        })?;
        add_hop_totals(&mut totals, &samples, url);
    }
    Ok(totals)
}

/// Adds `ingress`, `egress` and `dropped` of `samples` to their component's totals; a series
/// without a `component` label belongs to the process at `url`.
pub fn add_hop_totals(totals: &mut BTreeMap<String, Totals>, samples: &[promtext::Sample], url: &str) {
    for sample in samples {
        if !matches!(sample.name.as_str(), "ingress" | "egress" | "dropped") || !sample.value.is_finite() {
            continue;
        }
        let component = sample.label("component").unwrap_or(url);
        if !totals.contains_key(component) && totals.len() >= MAX_HOPS {
            continue;
        }
        let hop = totals.entry(component.to_string()).or_default();
        match sample.name.as_str() {
            "ingress" => hop.ingress += sample.value,
            "egress" => hop.egress += sample.value,
            _ => {
                hop.dropped += sample.value;
                let direction = sample.label("direction").unwrap_or("").to_string();
                *hop.dropped_by_direction.entry(direction).or_default() += sample.value;
            }
        }
    }
}

impl RateMemo {
    /// The view of `totals` scraped at `now`, with rates against the baseline when it is old enough.
    pub fn view(&mut self, now: Instant, totals: BTreeMap<String, Totals>) -> PipelineView {
        match &self.baseline {
            Some((at, before)) if now.duration_since(*at) >= MIN_RATE_INTERVAL => {
                let seconds = now.duration_since(*at).as_secs_f64();
                let per_second = |now: f64, before: f64| (now - before).max(0.0) / seconds;
                let rates = totals
                    .iter()
                    .map(|(component, t)| {
                        let b = before.get(component).cloned().unwrap_or_default();
                        let rates = [
                            per_second(t.ingress, b.ingress),
                            per_second(t.egress, b.egress),
                            per_second(t.dropped, b.dropped),
                        ];
                        (component.clone(), rates)
                    })
                    .collect();
                self.last = Some((seconds, rates));
                self.baseline = Some((now, totals.clone()));
            }
            Some(_) => {}
            None => self.baseline = Some((now, totals.clone())),
        }
        let rates_of = |component: &str| self.last.as_ref().and_then(|(_, rates)| rates.get(component).copied());
        let mut hops: Vec<Hop> = totals
            .into_iter()
            .map(|(component, t)| {
                let rates = rates_of(&component);
                Hop {
                    ingress_rate: rates.map(|r| r[0]),
                    egress_rate: rates.map(|r| r[1]),
                    dropped_rate: rates.map(|r| r[2]),
                    component,
                    ingress: t.ingress,
                    egress: t.egress,
                    dropped: t.dropped,
                    dropped_by_direction: t.dropped_by_direction,
                }
            })
            .collect();
        hops.sort_by_key(|hop| {
            let position = FLOW_ORDER.iter().position(|c| *c == hop.component).unwrap_or(FLOW_ORDER.len());
            (position, hop.component.clone())
        });
        PipelineView { hops, interval_seconds: self.last.as_ref().map(|(seconds, _)| *seconds) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(text: &str) -> BTreeMap<String, Totals> {
        let mut totals = BTreeMap::new();
        add_hop_totals(&mut totals, &promtext::parse(text).unwrap(), "http://127.0.0.1:1/metrics");
        totals
    }

    #[test]
    fn sums_each_components_counters_and_drops_by_direction() {
        let t = totals(
            "ingress{component=\"agent\"} 10\n\
             egress{component=\"agent\"} 9\n\
             dropped{component=\"agent\",direction=\"ingress\"} 1\n\
             dropped{component=\"agent\",direction=\"egress\"} 2\n\
             ingress{component=\"doppler\",transport=\"a\"} 4\n\
             ingress{component=\"doppler\",transport=\"b\"} 5\n\
             subscriptions{component=\"doppler\"} 3\n\
             ingress 7\n",
        );
        let agent = &t["agent"];
        assert_eq!((agent.ingress, agent.egress, agent.dropped), (10.0, 9.0, 3.0));
        assert_eq!(agent.dropped_by_direction, BTreeMap::from([("egress".into(), 2.0), ("ingress".into(), 1.0)]));
        assert_eq!(t["doppler"].ingress, 9.0);
        assert_eq!(t["http://127.0.0.1:1/metrics"].ingress, 7.0);
    }

    #[test]
    fn rates_come_from_two_scrapes_at_least_the_minimum_interval_apart() {
        let mut memo = RateMemo::default();
        let start = Instant::now();
        let first = memo.view(start, totals("ingress{component=\"doppler\"} 100\n"));
        assert_eq!(first.hops[0].ingress_rate, None);
        assert_eq!(first.interval_seconds, None);

        // Too soon: still no rates, and the baseline stays.
        let soon = memo.view(start + Duration::from_millis(100), totals("ingress{component=\"doppler\"} 150\n"));
        assert_eq!(soon.hops[0].ingress_rate, None);

        let later = memo.view(start + Duration::from_secs(2), totals("ingress{component=\"doppler\"} 300\n"));
        assert_eq!(later.hops[0].ingress_rate, Some(100.0));
        assert_eq!(later.hops[0].ingress, 300.0);
        assert_eq!(later.interval_seconds, Some(2.0));

        // A counter that went down (a restarted component) is not a negative rate.
        let reset = memo.view(start + Duration::from_secs(3), totals("ingress{component=\"doppler\"} 5\n"));
        assert_eq!(reset.hops[0].ingress_rate, Some(0.0));
    }

    #[test]
    fn hops_are_listed_in_data_flow_order() {
        let mut memo = RateMemo::default();
        let view = memo.view(
            Instant::now(),
            totals(
                "egress{component=\"rlp-gateway\"} 1\nzeta_thing 1\ningress{component=\"zeta\"} 1\n\
                 ingress{component=\"log-cache\"} 1\ningress{component=\"agent\"} 1\ningress{component=\"doppler\"} 1\n",
            ),
        );
        let names: Vec<&str> = view.hops.iter().map(|h| h.component.as_str()).collect();
        assert_eq!(names, ["agent", "doppler", "log-cache", "rlp-gateway", "zeta"]);
    }
}
