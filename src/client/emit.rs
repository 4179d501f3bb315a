//! `loggregator emit`: sends envelopes through an agent's v2 gRPC ingress (`BatchSender`), from the
//! arguments or one envelope per line of stdin, so anything that writes lines can log into the
//! pipeline.

use anyhow::{bail, Context as _};
use clap::{Args, ValueEnum};
use loggregator_proto::bytes::Bytes;
use loggregator_proto::v2::ingress_client::IngressClient;
use loggregator_proto::v2::{self, envelope::Message};
use tokio::io::AsyncBufReadExt as _;
use tokio::sync::mpsc;

use super::grpc::{connect, GrpcTlsArgs};
use super::now_nanos;

/// Envelopes per batch when reading stdin; a batch also goes out whenever stdin has nothing more
/// ready, so an interactive writer sees its line sent at once.
const BATCH: usize = 100;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Kind {
    Log,
    Counter,
    Gauge,
    Event,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  loggregator emit my-app hello world                 one log line (OUT)
  loggregator emit my-app --err 'disk full'           one log line (ERR)
  tail -f app.log | loggregator emit my-app           one log envelope per line of stdin
  loggregator emit my-app --type gauge cpu=12.5% memory=1048576bytes
  loggregator emit my-app --type counter requests=3   a counter delta; the agent keeps the total
  loggregator emit my-app --type event deploy 'v42 rolled out'")]
pub struct EmitArgs {
    /// Source id of the envelopes (an app GUID in Cloud Foundry).
    pub source: String,
    /// Instance id.
    #[arg(long, default_value = "0")]
    pub instance: String,
    /// Envelope type.
    #[arg(long = "type", value_enum, default_value = "log")]
    pub kind: Kind,
    /// Logs go to ERR instead of OUT.
    #[arg(long)]
    pub err: bool,
    /// The `source_type` tag (shown as `[APP/PROC/WEB/0]` by `logs`).
    #[arg(long, default_value = "APP/PROC/WEB")]
    pub source_type: String,
    /// Extra tag `key=value`, repeatable.
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// The agent's v2 gRPC ingress.
    #[arg(long, env = "LOGGREGATOR_AGENT", default_value = "127.0.0.1:3458")]
    pub agent: String,
    #[command(flatten)]
    pub tls: GrpcTlsArgs,
    /// Log text (joined by spaces), `name=value[unit]` gauges, `name=delta` counters, or an event's
    /// title and body; without any, lines are read from stdin.
    pub text: Vec<String>,
}

/// `12.5%` → (12.5, "%"); `1048576bytes` → (1048576, "bytes"): the longest leading number, then
/// the unit (so `5events` is 5 events, not a broken exponent).
fn parse_value(text: &str) -> Option<(f64, String)> {
    let candidate = text
        .char_indices()
        .take_while(|&(i, c)| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E') || (matches!(c, '-' | '+') && i == 0))
        .count();
    (1..=candidate).rev().find_map(|end| {
        let value: f64 = text[..end].parse().ok()?;
        Some((value, text[end..].to_string()))
    })
}

fn name_value(arg: &str) -> anyhow::Result<(&str, &str)> {
    match arg.split_once('=') {
        Some((name, value)) if !name.is_empty() && !value.is_empty() => Ok((name, value)),
        _ => bail!("invalid metric `{arg}`: expected name=value"),
    }
}

impl EmitArgs {
    fn envelope(&self, message: Message) -> v2::Envelope {
        let mut tags: std::collections::HashMap<String, String> =
            self.tags.iter().filter_map(|t| t.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if self.kind == Kind::Log {
            tags.entry("source_type".into()).or_insert_with(|| self.source_type.clone());
        }
        v2::Envelope {
            timestamp: now_nanos(),
            source_id: self.source.clone(),
            instance_id: self.instance.clone(),
            tags,
            message: Some(message),
            ..Default::default()
        }
    }

    /// The envelopes of one line of input (the joined arguments are one line too).
    fn envelopes(&self, words: &[&str]) -> anyhow::Result<Vec<v2::Envelope>> {
        Ok(match self.kind {
            Kind::Log => {
                let r#type = (if self.err { v2::log::Type::Err } else { v2::log::Type::Out }) as i32;
                let payload = Bytes::from(words.join(" "));
                vec![self.envelope(Message::Log(v2::Log { payload, r#type }))]
            }
            Kind::Gauge => {
                let mut metrics = std::collections::HashMap::new();
                for word in words {
                    let (name, value) = name_value(word)?;
                    let (value, unit) = parse_value(value)
                        .with_context(|| format!("invalid gauge `{word}`: expected name=number[unit]"))?;
                    metrics.insert(name.to_string(), v2::GaugeValue { unit, value });
                }
                if metrics.is_empty() {
                    return Ok(Vec::new());
                }
                vec![self.envelope(Message::Gauge(v2::Gauge { metrics }))]
            }
            Kind::Counter => words
                .iter()
                .map(|word| {
                    let (name, delta) = name_value(word)?;
                    let delta: u64 = delta
                        .parse()
                        .with_context(|| format!("invalid counter `{word}`: expected name=delta, a whole number"))?;
                    Ok(self.envelope(Message::Counter(v2::Counter { name: name.to_string(), delta, total: 0 })))
                })
                .collect::<anyhow::Result<_>>()?,
            Kind::Event => match words.split_first() {
                Some((title, body)) => {
                    vec![self.envelope(Message::Event(v2::Event { title: title.to_string(), body: body.join(" ") }))]
                }
                None => Vec::new(),
            },
        })
    }
}

pub async fn run(args: EmitArgs) -> anyhow::Result<()> {
    if args.source.is_empty() {
        bail!("the source id must not be empty");
    }
    // Check the arguments before connecting, so a typo is reported as such.
    let from_args = if args.text.is_empty() {
        None
    } else {
        let words: Vec<&str> = args.text.iter().map(String::as_str).collect();
        // A gauge or counter takes one metric per argument; a log or event the words of one line.
        Some(args.envelopes(&words)?)
    };
    let channel = connect("the agent", &args.agent, &args.tls, "metron").await?;
    let (tx, rx) = mpsc::channel::<v2::EnvelopeBatch>(4);
    let call = tokio::spawn(async move {
        IngressClient::new(channel)
            .max_encoding_message_size(10 * 1024 * 1024)
            .batch_sender(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let produced = produce(&args, from_args, &tx).await;
    drop(tx);
    let sent = call.await.context("the sending task")?;
    produced?;
    sent.map_err(|status| anyhow::anyhow!("the agent at {} refused the envelopes: {}", args.agent, status.message()))?;
    Ok(())
}

async fn produce(
    args: &EmitArgs,
    from_args: Option<Vec<v2::Envelope>>,
    tx: &mpsc::Sender<v2::EnvelopeBatch>,
) -> anyhow::Result<()> {
    let closed = || anyhow::anyhow!("the agent at {} closed the stream", args.agent);
    if let Some(batch) = from_args {
        return tx.send(v2::EnvelopeBatch { batch }).await.map_err(|_| closed());
    }
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    let mut batch = Vec::with_capacity(BATCH);
    let mut line = String::new();
    loop {
        line.clear();
        let n = stdin.read_line(&mut line).await.context("reading stdin")?;
        if n > 0 {
            let text = line.trim_end_matches(['\n', '\r']);
            let words: Vec<&str> = match args.kind {
                Kind::Log => vec![text],
                _ => text.split_whitespace().collect(),
            };
            batch.extend(args.envelopes(&words)?);
        }
        if !batch.is_empty() && (n == 0 || batch.len() >= BATCH || stdin.buffer().is_empty()) {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            tx.send(v2::EnvelopeBatch { batch: full }).await.map_err(|_| closed())?;
        }
        if n == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: EmitArgs,
    }

    fn args(argv: &[&str]) -> EmitArgs {
        Wrap::parse_from(std::iter::once("emit").chain(argv.iter().copied())).args
    }

    #[test]
    fn values_split_into_number_and_unit() {
        assert_eq!(parse_value("12.5%"), Some((12.5, "%".to_string())));
        assert_eq!(parse_value("1048576bytes"), Some((1048576.0, "bytes".to_string())));
        assert_eq!(parse_value("-3"), Some((-3.0, String::new())));
        assert_eq!(parse_value("1e3ms"), Some((1000.0, "ms".to_string())));
        assert_eq!(parse_value("5events"), Some((5.0, "events".to_string())));
        assert_eq!(parse_value("abc"), None);
    }

    #[test]
    fn each_kind_builds_its_envelopes() {
        let a = args(&["app", "--type", "gauge", "cpu=12.5%", "memory=2048bytes"]);
        let envs = a.envelopes(&["cpu=12.5%", "memory=2048bytes"]).unwrap();
        let Some(Message::Gauge(g)) = &envs[0].message else { panic!("a gauge") };
        assert_eq!(g.metrics["cpu"].unit, "%");
        assert_eq!(g.metrics["memory"].value, 2048.0);
        assert!(envs[0].tags.is_empty(), "only logs get a source_type");

        let a = args(&["app", "--type", "counter"]);
        let envs = a.envelopes(&["requests=3", "errors=1"]).unwrap();
        assert_eq!(envs.len(), 2);
        assert!(a.envelopes(&["requests=x"]).unwrap_err().to_string().contains("whole number"));
        assert!(a.envelopes(&["requests"]).unwrap_err().to_string().contains("name=value"));

        let a = args(&["app", "--err", "--instance", "3", "--tag", "k=v"]);
        let envs = a.envelopes(&["disk", "full"]).unwrap();
        let Some(Message::Log(log)) = &envs[0].message else { panic!("a log") };
        assert_eq!((&log.payload[..], log.r#type), (&b"disk full"[..], v2::log::Type::Err as i32));
        assert_eq!((envs[0].instance_id.as_str(), envs[0].tags["source_type"].as_str()), ("3", "APP/PROC/WEB"));
        assert_eq!(envs[0].tags["k"], "v");

        let a = args(&["app", "--type", "event"]);
        let envs = a.envelopes(&["deploy", "v42", "out"]).unwrap();
        let Some(Message::Event(e)) = &envs[0].message else { panic!("an event") };
        assert_eq!((e.title.as_str(), e.body.as_str()), ("deploy", "v42 out"));
    }
}
