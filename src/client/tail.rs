//! `loggregator tail SOURCE`: log-cache-cli's `cf tail` — the last envelopes of a source of any
//! type, pretty or as protojson, and with `-f` everything that follows, without gaps or repeats
//! ([`Walk`]).

use std::io::Write as _;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, ValueEnum};
use loggregator_proto::v2::{self, envelope::Message};
use regex::Regex;

use super::format::tail_line;
use super::http::{Http, HttpArgs};
use super::logcache::{EnvelopeType, LogCache, ReadQuery, Walk};
use super::now_nanos;

/// How long `-f` leaves envelopes to settle in log-cache before reading them: one that arrives
/// out of order behind the walk's cursor would otherwise be skipped. The cf CLI waits 2 s too.
const FOLLOW_DELAY: Duration = Duration::from_secs(2);
/// Between reads when the last page was not full.
const POLL: Duration = Duration::from_millis(250);

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum TypeFilter {
    Log,
    Counter,
    Gauge,
    Timer,
    Event,
    Any,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Class {
    Logs,
    Metrics,
    Any,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  loggregator tail my-app                      the last 10 envelopes of any type
  loggregator tail my-app -n 100 -t gauge      the last 100 gauges
  loggregator tail my-app -f -c metrics        metrics as they come
  loggregator tail my-app --name-filter '^cpu' --json")]
pub struct TailArgs {
    /// Source id.
    pub source: String,
    /// How many envelopes to print first (at most 1000).
    #[arg(short = 'n', long = "lines", default_value = "10")]
    pub lines: usize,
    /// Keep printing envelopes as they arrive.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Envelope type.
    #[arg(short = 't', long = "envelope-type", value_enum, default_value = "any")]
    pub envelope_type: TypeFilter,
    /// Logs (logs and events) or metrics (counters, gauges, timers).
    #[arg(short = 'c', long = "envelope-class", value_enum, default_value = "any")]
    pub class: Class,
    /// Only envelopes whose counter, timer or gauge metric names (or event titles) match this
    /// regular expression; logs have no name and are left out when it is given.
    #[arg(long)]
    pub name_filter: Option<String>,
    /// Start of the range, in Unix nanoseconds.
    #[arg(long, allow_negative_numbers = true)]
    pub start_time: Option<i64>,
    /// End of the range, in Unix nanoseconds.
    #[arg(long, allow_negative_numbers = true)]
    pub end_time: Option<i64>,
    /// One protojson envelope per line.
    #[arg(long)]
    pub json: bool,
    /// log-cache's HTTP API.
    #[arg(long, env = "LOG_CACHE_ADDR", default_value = "http://127.0.0.1:8083")]
    pub log_cache: String,
    #[command(flatten)]
    pub http: HttpArgs,
}

struct Filter {
    class: Class,
    names: Option<Regex>,
}

impl Filter {
    fn keeps(&self, env: &v2::Envelope) -> bool {
        let class_ok = matches!(
            (&env.message, self.class),
            (_, Class::Any)
                | (Some(Message::Log(_) | Message::Event(_)), Class::Logs)
                | (Some(Message::Counter(_) | Message::Gauge(_) | Message::Timer(_)), Class::Metrics)
        );
        let Some(names) = &self.names else { return class_ok };
        class_ok
            && match &env.message {
                Some(Message::Counter(c)) => names.is_match(&c.name),
                Some(Message::Timer(t)) => names.is_match(&t.name),
                Some(Message::Gauge(g)) => g.metrics.keys().any(|k| names.is_match(k)),
                Some(Message::Event(e)) => names.is_match(&e.title),
                _ => false,
            }
    }
}

pub async fn run(args: TailArgs) -> anyhow::Result<()> {
    if args.lines > 1000 {
        bail!("--lines cannot be greater than 1000");
    }
    if let (Some(start), Some(end)) = (args.start_time, args.end_time) {
        if start > end {
            bail!("invalid time range: --start-time {start} is after --end-time {end}");
        }
    }
    let names = args
        .name_filter
        .as_deref()
        .map(Regex::new)
        .transpose()
        .map_err(|e| anyhow::anyhow!("invalid --name-filter: {e}"))?;
    let filter = Filter { class: args.class, names };
    let types: Vec<EnvelopeType> = match args.envelope_type {
        TypeFilter::Any => Vec::new(),
        TypeFilter::Log => vec![EnvelopeType::Log],
        TypeFilter::Counter => vec![EnvelopeType::Counter],
        TypeFilter::Gauge => vec![EnvelopeType::Gauge],
        TypeFilter::Timer => vec![EnvelopeType::Timer],
        TypeFilter::Event => vec![EnvelopeType::Event],
    };
    let log_cache = LogCache::new(Http::new(&args.http)?, &args.log_cache);
    let print = |envelopes: &[v2::Envelope]| -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        for env in envelopes.iter().filter(|e| filter.keeps(e)) {
            if args.json {
                writeln!(out, "{}", loggregator_proto::json::envelope_to_json_string(env))?;
            } else {
                writeln!(out, "{}", tail_line(env, &args.source, &chrono::Local))?;
            }
        }
        out.flush()
    };

    let mut walk = Walk::new(args.start_time.unwrap_or_else(|| now_nanos() - 5_000_000_000));
    if args.lines > 0 {
        let query = ReadQuery {
            start: args.start_time,
            end: args.end_time,
            types: types.clone(),
            limit: args.lines,
            descending: true,
        };
        let mut envelopes = match log_cache.read(&args.source, &query).await {
            Ok(envelopes) => envelopes,
            Err(e) if !args.follow => return Err(e),
            Err(e) => {
                eprintln!("loggregator: {e:#}");
                Vec::new()
            }
        };
        envelopes.reverse();
        for env in &envelopes {
            walk.seen(env);
        }
        if print(&envelopes).is_err() {
            return Ok(());
        }
    }
    if !args.follow {
        return Ok(());
    }
    loop {
        let end = args.end_time.unwrap_or(i64::MAX).min(now_nanos() - FOLLOW_DELAY.as_nanos() as i64);
        let (page, full) = match walk.step(&log_cache, &args.source, &types, end).await {
            Ok(step) => step,
            Err(e) => {
                eprintln!("loggregator: {e:#}; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if print(&page).is_err() {
            return Ok(());
        }
        if args.end_time.is_some_and(|e| e <= end) && !full {
            return Ok(());
        }
        if !full {
            tokio::time::sleep(POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_by_class_and_name() {
        let counter = v2::Envelope {
            message: Some(Message::Counter(v2::Counter { name: "requests".into(), ..Default::default() })),
            ..Default::default()
        };
        let log = v2::Envelope { message: Some(Message::Log(v2::Log::default())), ..Default::default() };
        let metrics = Filter { class: Class::Metrics, names: None };
        assert!(metrics.keeps(&counter) && !metrics.keeps(&log));
        let logs = Filter { class: Class::Logs, names: None };
        assert!(!logs.keeps(&counter) && logs.keeps(&log));
        let named = Filter { class: Class::Any, names: Some(Regex::new("^req").unwrap()) };
        assert!(named.keeps(&counter) && !named.keeps(&log));
        let other = Filter { class: Class::Any, names: Some(Regex::new("^cpu").unwrap()) };
        assert!(!other.keeps(&counter));
    }
}
