use super::*;
use loggregator_proto::events::{self, envelope::EventType};
use loggregator_proto::prost::Message;
use loggregator_proto::v2::{envelope, Counter, Envelope, EnvelopeBatch, Log};

fn v2(source_id: &str, timestamp: i64, message: envelope::Message) -> Envelope {
    Envelope {
        source_id: source_id.to_string(),
        timestamp,
        instance_id: "3".into(),
        // Keys that look like the envelope's own must not be taken for them.
        tags: [("timestamp".to_string(), "7".to_string()), ("source_id".to_string(), "\"x\"".to_string())].into(),
        message: Some(message),
        ..Default::default()
    }
}

#[test]
fn json_stamps_read_each_envelope_of_a_protojson_batch() {
    let batch = EnvelopeBatch {
        batch: vec![
            v2(
                "app-1",
                1_700_000_000_000_000_001,
                envelope::Message::Log(Log { payload: Bytes::from_static(b"hi \"}"), ..Default::default() }),
            ),
            v2("app-2", 42, envelope::Message::Counter(Counter { name: "c".into(), delta: 1, total: 2 })),
        ],
    };
    let json = loggregator_proto::json::batch_to_json_string(&batch);
    let (stamps, malformed) = json_stamps(json.as_bytes());
    assert!(!malformed, "{json}");
    assert_eq!(stamps, vec![(&b"app-1"[..], 1_700_000_000_000_000_001), (&b"app-2"[..], 42)], "{json}");

    let (stamps, malformed) = json_stamps(br#"{"batch":[{"source_id":"a","timestamp":"5"},{"source_id":"b"}]}"#);
    assert_eq!(stamps, vec![(&b"a"[..], 5)]);
    assert!(malformed, "an envelope without a timestamp");
    assert!(json_stamps(br#"{"batch":[{"timestamp":"5}"#).1, "unterminated");
    assert_eq!(json_stamps(br#"{"batch":[]}"#), (Vec::new(), false));
}

#[test]
fn sse_lines_tell_batches_from_heartbeats_and_closing() {
    let mut lines = SseLines::default();
    lines.extend(b"data: {\"batch\":[]}\n\nevent: heartbeat\ndata: 17000");
    assert_eq!(lines.next_event(), Some(SseEvent::Batch(Bytes::from_static(b"{\"batch\":[]}"))));
    assert_eq!(lines.next_event(), None, "the heartbeat's data line is not complete yet");
    lines.extend(b"00\n\ndata: {\"batch\":[1]}\r\n\r\nevent: closing\ndata: closing due to stream timeout\n\n");
    assert_eq!(lines.next_event(), Some(SseEvent::Other), "heartbeat data");
    assert_eq!(lines.next_event(), Some(SseEvent::Batch(Bytes::from_static(b"{\"batch\":[1]}"))));
    assert_eq!(lines.next_event(), Some(SseEvent::Closing));
}

#[test]
fn v1_stamp_reads_the_app_id_of_a_log_and_the_source_id_tag_of_the_rest() {
    let log = events::Envelope {
        origin: "o".into(),
        event_type: EventType::LogMessage as i32,
        timestamp: Some(1_700_000_000_000_000_000),
        log_message: Some(events::LogMessage {
            message: Bytes::from_static(b"m"),
            message_type: 1,
            timestamp: 1,
            app_id: Some("app-1".into()),
            ..Default::default()
        }),
        tags: [("source_id".to_string(), "other".to_string())].into(),
        ..Default::default()
    }
    .encode_to_vec();
    assert_eq!(v1_stamp(&log).unwrap(), (&b"app-1"[..], 1_700_000_000_000_000_000));
    let counter = events::Envelope {
        origin: "o".into(),
        event_type: EventType::CounterEvent as i32,
        timestamp: Some(9),
        counter_event: Some(events::CounterEvent { name: "c".into(), delta: 1, total: Some(1) }),
        tags: [("job".to_string(), "j".to_string()), ("source_id".to_string(), "app-2".to_string())].into(),
        ..Default::default()
    }
    .encode_to_vec();
    assert_eq!(v1_stamp(&counter).unwrap(), (&b"app-2"[..], 9));
    assert!(v1_stamp(&counter[..counter.len() - 1]).is_err());
}

#[test]
fn edge_urls() {
    assert_eq!(Edge::Sse { shard_id: String::new() }.url("h:1"), "http://h:1/v2/read?log&counter&gauge&timer&event");
    assert_eq!(
        Edge::Sse { shard_id: "s".into() }.url("h:1"),
        "http://h:1/v2/read?log&counter&gauge&timer&event&shard_id=s"
    );
    assert_eq!(Edge::Firehose { subscription_id: "f".into() }.url("h:1"), "ws://h:1/firehose/f");
    assert_eq!(Edge::App { guid: "g".into() }.url("h:1"), "ws://h:1/apps/g/stream");
}
