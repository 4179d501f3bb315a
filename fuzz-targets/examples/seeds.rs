//! Writes seed inputs for every fuzz target into `fuzz/corpus/<target>/seed-*`, built with the
//! crates' own encoders so the fuzzers start from real encodings:
//! `cargo run -p fuzz-targets --example seeds`, then minimize (fuzz/README.md).

use std::collections::HashMap;
use std::path::Path;

use bytes::Bytes;
use fuzz_targets::split;
use loggregator_proto::events;
use loggregator_proto::json::{
    batch_to_json_string, envelope_to_json_string, meta_response_to_json, read_response_to_json,
};
use loggregator_proto::logcache::v1::{MetaInfo, MetaResponse, ReadResponse};
use loggregator_proto::v2::{self, envelope::Message, value::Data};
use prost::Message as _;

fn envelopes() -> Vec<v2::Envelope> {
    let base = |message| v2::Envelope {
        timestamp: 1_700_000_000_000_000_000,
        source_id: "app-guid".into(),
        instance_id: "3".into(),
        tags: HashMap::from([("deployment".into(), "cf".into()), ("origin".into(), "rep".into())]),
        message: Some(message),
        ..Default::default()
    };
    let mut deprecated = base(Message::Event(v2::Event { title: "t".into(), body: "b".into() }));
    deprecated.deprecated_tags = HashMap::from([
        ("text".into(), v2::Value { data: Some(Data::Text("x".into())) }),
        ("int".into(), v2::Value { data: Some(Data::Integer(-7)) }),
        ("num".into(), v2::Value { data: Some(Data::Decimal(0.25)) }),
    ]);
    vec![
        base(Message::Log(v2::Log { payload: Bytes::from_static(b"hello\n"), r#type: 0 })),
        base(Message::Log(v2::Log { payload: Bytes::from_static(b"oops"), r#type: 1 })),
        base(Message::Counter(v2::Counter { name: "requests".into(), delta: 1, total: 42 })),
        base(Message::Gauge(v2::Gauge {
            metrics: HashMap::from([
                ("cpu".into(), v2::GaugeValue { unit: "percentage".into(), value: 12.5 }),
                ("memory".into(), v2::GaugeValue { unit: "bytes".into(), value: 1e9 }),
            ]),
        })),
        base(Message::Timer(v2::Timer { name: "http".into(), start: 1, stop: 2 })),
        deprecated,
        v2::Envelope::default(),
    ]
}

fn v1_envelopes() -> Vec<events::Envelope> {
    let base = |event_type: events::envelope::EventType| events::Envelope {
        origin: "rep".into(),
        event_type: event_type as i32,
        timestamp: Some(1_700_000_000_000_000_000),
        deployment: Some("cf".into()),
        job: Some("diego-cell".into()),
        index: Some("0".into()),
        ip: Some("10.0.0.1".into()),
        tags: HashMap::from([("source_id".into(), "app-guid".into())]),
        ..Default::default()
    };
    use events::envelope::EventType;
    let mut log = base(EventType::LogMessage);
    log.log_message = Some(events::LogMessage {
        message: Bytes::from_static(b"hello"),
        message_type: 1,
        timestamp: 5,
        app_id: Some("app-guid".into()),
        source_type: Some("APP/PROC/WEB".into()),
        source_instance: Some("0".into()),
    });
    let mut counter = base(EventType::CounterEvent);
    counter.counter_event = Some(events::CounterEvent { name: "requests".into(), delta: 1, total: Some(9) });
    let mut value = base(EventType::ValueMetric);
    value.value_metric = Some(events::ValueMetric { name: "cpu".into(), value: 1.5, unit: "%".into() });
    let mut container = base(EventType::ContainerMetric);
    container.container_metric = Some(events::ContainerMetric {
        application_id: "app-guid".into(),
        instance_index: 2,
        cpu_percentage: 3.5,
        memory_bytes: 100,
        disk_bytes: 200,
        memory_bytes_quota: Some(1000),
        disk_bytes_quota: Some(2000),
    });
    let mut error = base(EventType::Error);
    error.error = Some(events::Error { source: "s".into(), code: 4, message: "m".into() });
    let mut http = base(EventType::HttpStartStop);
    http.http_start_stop = Some(events::HttpStartStop {
        start_timestamp: 1,
        stop_timestamp: 2,
        request_id: events::Uuid { low: 1, high: 2 },
        peer_type: 1,
        method: 1,
        uri: "http://x/y".into(),
        remote_address: "1.2.3.4".into(),
        user_agent: "curl".into(),
        status_code: 200,
        content_length: 10,
        application_id: Some(events::Uuid { low: 3, high: 4 }),
        instance_index: Some(1),
        instance_id: Some("i".into()),
        forwarded: vec!["a".into(), "b".into()],
    });
    vec![log, counter, value, container, error, http]
}

fn framed(message: &[u8]) -> Vec<u8> {
    let mut out = vec![0];
    out.extend_from_slice(&(message.len() as u32).to_be_bytes());
    out.extend_from_slice(message);
    out
}

fn main() -> std::io::Result<()> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    let mut seeds: Vec<(&str, Vec<u8>)> = Vec::new();
    let envelopes = envelopes();
    let batch = v2::EnvelopeBatch { batch: envelopes.clone() }.encode_to_vec();

    // scan: the batch, each envelope alone, and batches of one.
    seeds.push(("scan", batch.clone()));
    for e in &envelopes {
        seeds.push(("scan", e.encode_to_vec()));
        seeds.push(("scan", v2::EnvelopeBatch { batch: vec![e.clone()] }.encode_to_vec()));
    }

    // stream: framed batches, cut at several places, with each ending.
    let mut wire = framed(&batch[..batch.len().min(900)]);
    wire.extend(framed(b""));
    wire.extend(framed(&envelopes[2].encode_to_vec()));
    for (ending, cuts) in [(0u8, vec![]), (1, vec![3usize]), (2, vec![5, 100]), (3, vec![1, 1, 1, 200])] {
        let mut chunks: Vec<&[u8]> = Vec::new();
        let mut rest = &wire[..];
        for cut in cuts {
            let (a, b) = rest.split_at(cut.min(rest.len()));
            chunks.push(a);
            rest = b;
        }
        chunks.push(rest);
        seeds.push(("stream", split::join(ending, &chunks)));
    }

    // dropsonde: every v1 event type, and v2 logs and counters for the encoded writer.
    for v1 in v1_envelopes() {
        seeds.push(("dropsonde", v1.encode_to_vec()));
    }
    for e in &envelopes[..3] {
        seeds.push(("dropsonde", e.encode_to_vec()));
    }

    // json: JSON text of each body (option 0), encoded envelopes (option 1).
    for e in &envelopes {
        seeds.push(("json", split::join(0, &[envelope_to_json_string(e).as_bytes()])));
        seeds.push(("json", split::join(1, &[&e.encode_to_vec()])));
    }
    seeds.push((
        "json",
        split::join(0, &[batch_to_json_string(&v2::EnvelopeBatch { batch: envelopes.clone() }).as_bytes()]),
    ));
    let read = ReadResponse { envelopes: Some(v2::EnvelopeBatch { batch: envelopes[..2].to_vec() }) };
    seeds.push(("json", split::join(0, &[read_response_to_json(&read).as_bytes()])));
    let meta = MetaResponse {
        meta: HashMap::from([(
            "app".into(),
            MetaInfo { count: 3, expired: 1, oldest_timestamp: 10, newest_timestamp: 20 },
        )]),
    };
    seeds.push(("json", split::join(0, &[meta_response_to_json(&meta).as_bytes()])));

    // syslog: messages of each kind, octet-counted and newline-framed, in several reads.
    let messages = [
        &b"<14>1 2023-11-14T22:13:20.123456Z host app-guid [APP/PROC/WEB/0] - - hello world"[..],
        b"<11>1 - host app-guid [APP/PROC/WEB/1] - [tags@47450 deployment=\"cf\" job=\"x\\\"y\"] \xEF\xBB\xBFerr",
        b"<14>1 2023-11-14T22:13:20+01:00 host app-guid [APP/0] - [gauge@47450 name=\"cpu\" value=\"0.5\" unit=\"%\"]",
        b"<14>1 2023-11-14T22:13:20Z host app-guid [APP/0] - [counter@47450 name=\"c\" total=\"5\" delta=\"1\"]",
        b"<14>1 2023-11-14T22:13:20Z host app-guid [APP/0] - [timer@47450 name=\"t\" start=\"1\" stop=\"2\"]",
        b"<14>1 2023-11-14T22:13:20Z host app-guid [APP/0] - [event@47450 title=\"t\" body=\"b\"][tags@1 a=\"b\"]",
    ];
    for (i, message) in messages.iter().enumerate() {
        let mut octet = format!("{} ", message.len()).into_bytes();
        octet.extend_from_slice(message);
        octet.extend_from_slice(format!("{} ", message.len()).as_bytes());
        octet.extend_from_slice(message);
        let mut newline = message.to_vec();
        newline.push(b'\n');
        newline.extend_from_slice(message);
        newline.push(b'\n');
        let cut = (i * 7 + 2).min(octet.len());
        seeds.push(("syslog", split::join(0, &[&octet[..cut], &octet[cut..]])));
        seeds.push(("syslog", split::join(0, &[&newline])));
    }

    // query: both routes' parameters.
    for q in [
        "start_time=1&end_time=9223372036854775807&limit=100&descending=true&envelope_types=LOG,GAUGE&name_filter=cpu.*",
        "startTime=-5&envelopeTypes=1&envelopeTypes=COUNTER&nameFilter=a%20b+c",
        "log&counter&gauge&timer&event&source_id=a&source_id=b&shard_id=s&deterministic_name=d",
        "counter.name=requests&gauge.name=cpu,memory&gauge.name=disk&source_id=app",
        "counter.name&gauge.name=",
        "local_only=TRUE&localOnly=0",
    ] {
        seeds.push(("query", q.as_bytes().to_vec()));
    }

    // promql: selectors, functions, aggregations, binary operators, ranges and parameters.
    for q in [
        "requests{source_id=\"a\"}",
        "rate(requests{source_id=~\"a|b\"}[1m])",
        "sum by (instance_id) (cpu{source_id=\"a\"}) / on() group_left count(memory{source_id=\"b\"})",
        "topk(2, max_over_time(cpu{source_id=\"a\",instance_id!=\"1\"}[2m] offset 30s))",
        "histogram_quantile(0.9, sum(rate(http{source_id=\"a\"}[5m])) by (le))",
        "-cpu{source_id=\"a\"} > bool 3 or memory{source_id=\"b\"} unless cpu{source_id=\"b\"}",
        "avg_over_time(cpu{source_id=\"a\"}[1m:15s])",
        "1 + 2 * 3 ^ 2 % 5\u{0}1700000060",
        "cpu{source_id=\"a\"}\u{0}2023-11-14T22:15:00Z\u{0}1700000000\u{0}1700000150.5\u{0}30s",
        "delta(requests{source_id=\"b\"}[90s]) and absent(nope{source_id=\"a\"})",
    ] {
        seeds.push(("promql", q.as_bytes().to_vec()));
    }

    // tls: for each suite and side, records of each kind (ops as `fuzz_targets::tls` reads them).
    for suite in 0..5u8 {
        let mut input = vec![suite, suite & 1, suite * 40];
        input.extend((0..44u8).map(|i| i.wrapping_mul(7).wrapping_add(suite)));
        let app = |len: u16, fill: u8| {
            let mut op = vec![0, (len >> 8) as u8, len as u8];
            op.extend(std::iter::repeat_n(fill, usize::from(len).min(64)));
            op
        };
        let mut data = input.clone();
        data.extend(app(5, b'h'));
        data.extend(app(16384, b'x'));
        data.extend([0x08 | 0x30, 0, 3, b'p', b'a', b'd']);
        seeds.push(("tls", data.clone()));
        let mut update = input.clone();
        update.extend(app(3, b'a'));
        update.extend([2, 0, 5, 24, 0, 0, 1, 1]);
        update.extend(app(3, b'b'));
        update.extend([1, 0, 2, 1, 0]);
        update.extend(app(1, b'c'));
        seeds.push(("tls", update));
        let mut odd = input;
        odd.extend([3, 0, 1, 1, 4, 99, 0, 2, 0, 0, 0x85, 23, 3, 3, 0, 1, 1, 0, 0, 0, 2, 0, 2, 2, 0]);
        seeds.push(("tls", odd));
    }

    for (target, data) in seeds {
        let dir = corpus.join(target);
        std::fs::create_dir_all(&dir)?;
        let name = format!("seed-{:016x}", fnv(&data));
        std::fs::write(dir.join(name), data)?;
    }
    Ok(())
}

/// A stable name for a seed: FNV-1a of its bytes.
fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}
