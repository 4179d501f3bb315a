//! The HTTP gateway over real sockets: what gRPC `Send` stored is read back as the exact JSON of §6.7.

mod common;

use common::*;
use loggregator_proto::logcache::v1::{MetaRequest, ReadRequest};

#[tokio::test]
async fn http_read_returns_what_grpc_send_stored_as_golden_json() {
    let cache = start(test_config()).await;
    cache.send(vec![log_envelope("app-1", 1_700_000_000_000_000_000, "hello")]).await;

    let (status, content_type, body) = get(&cache.http_url("/api/v1/read/app-1?start_time=0"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");
    assert_eq!(
        body,
        concat!(
            r#"{"envelopes":{"batch":[{"timestamp":"1700000000000000000","source_id":"app-1","instance_id":"0","#,
            r#""deprecated_tags":{},"tags":{"source_type":"APP/PROC/WEB"},"log":{"payload":"aGVsbG8=","type":"OUT"}}]}}"#,
            "\n"
        )
    );
    cache.stop().await;
}

/// The gateway writes JSON straight from the stored encodings; gRPC `Read` decodes them. Both must
/// say the same, byte for byte (map keys are written in byte order by both writers).
#[tokio::test]
async fn http_read_is_the_json_of_what_grpc_read_returns_for_every_type() {
    use loggregator_proto::v2::{envelope::Message, Counter, Event, Timer, Value};
    let cache = start(test_config()).await;
    let mut log = log_envelope("mixed", 1, "a \"quoted\"\nline");
    log.tags.extend((0..8).map(|i| (format!("tag-{}", 7 - i), format!("value-{i}"))));
    log.deprecated_tags.insert("origin".into(), Value { data: Some(loggregator_proto::v2::value::Data::Integer(-3)) });
    let mut gauge = gauge_envelope("mixed", 2, "memory", 1.5e9);
    if let Some(Message::Gauge(g)) = &mut gauge.message {
        g.metrics.insert("cpu".into(), loggregator_proto::v2::GaugeValue { unit: "percentage".into(), value: 0.25 });
        g.metrics.insert("disk".into(), loggregator_proto::v2::GaugeValue { unit: "bytes".into(), value: f64::NAN });
    }
    let with = |ts: i64, message: Message| loggregator_proto::v2::Envelope {
        timestamp: ts,
        message: Some(message),
        ..log_envelope("mixed", ts, "")
    };
    cache
        .send(vec![
            log,
            gauge,
            with(3, Message::Counter(Counter { name: "requests".into(), delta: 2, total: u64::MAX })),
            with(4, Message::Timer(Timer { name: "http".into(), start: -1, stop: 9 })),
            with(5, Message::Event(Event { title: "t".into(), body: "é✓".into() })),
        ])
        .await;

    let (status, _, body) = get(&cache.http_url("/api/v1/read/mixed?start_time=0"), &[]).await;
    assert_eq!(status, 200);
    let grpc = cache
        .egress()
        .await
        .read(ReadRequest { source_id: "mixed".into(), start_time: 0, ..Default::default() })
        .await
        .expect("read")
        .into_inner();
    assert_eq!(grpc.envelopes.as_ref().map(|b| b.batch.len()), Some(5));
    assert_eq!(body, format!("{}\n", loggregator_proto::json::read_response_to_json(&grpc)));
    cache.stop().await;
}

#[tokio::test]
async fn empty_read_is_an_empty_batch() {
    let cache = start(test_config()).await;
    let (status, _, body) = get(&cache.http_url("/api/v1/read/nothing-here"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(body, "{\"envelopes\":{\"batch\":[]}}\n");
}

#[tokio::test]
async fn source_ids_with_slashes_raw_or_escaped() {
    let cache = start(test_config()).await;
    cache.send(vec![log_envelope("a/b", 10, "x")]).await;
    for path in ["/api/v1/read/a/b?start_time=0", "/api/v1/read/a%2Fb?start_time=0"] {
        let (status, _, body) = get(&cache.http_url(path), &[]).await;
        assert_eq!(status, 200, "{path}");
        assert!(body.contains(r#""source_id":"a/b""#), "{path}: {body}");
    }
}

#[tokio::test]
async fn read_parameters_filter_order_and_limit() {
    let cache = start(test_config()).await;
    let now = log_cache::service::now_nanos();
    let mut envelopes: Vec<_> = (0..5).map(|i| log_envelope("app", now - 5_000 + i, &format!("l{i}"))).collect();
    envelopes.push(gauge_envelope("app", now - 4_000, "cpu", 1.0));
    cache.send(envelopes).await;

    let path = format!("/api/v1/read/app?start_time={}&envelope_types=LOG&limit=2&descending=true", now - 10_000);
    let (status, _, body) = get(&cache.http_url(&path), &[]).await;
    assert_eq!(status, 200);
    let batch = loggregator_proto::json::read_response_from_json(body.trim_end()).expect("strict protojson");
    let timestamps: Vec<i64> = batch.envelopes.expect("batch").batch.iter().map(|e| e.timestamp).collect();
    assert_eq!(timestamps, vec![now - 4_996, now - 4_997]);

    let path = format!("/api/v1/read/app?start_time={}&envelope_types=GAUGE&name_filter=cp", now - 10_000);
    let (_, _, body) = get(&cache.http_url(&path), &[]).await;
    assert!(body.contains(r#""gauge":{"metrics":{"cpu":{"unit":"bytes","value":1}}}"#), "{body}");
}

#[tokio::test]
async fn read_errors_are_grpc_gateway_bodies() {
    let cache = start(test_config()).await;
    let cases = [
        (
            "/api/v1/read/app?limit=1001",
            500,
            r#"{"code":2,"message":"limit (1001) must be 1000 or less","details":[]}"#,
        ),
        (
            "/api/v1/read/app?limit=-1",
            500,
            r#"{"code":2,"message":"limit (-1) must be greater than zero","details":[]}"#,
        ),
        (
            "/api/v1/read/app?start_time=10&end_time=5",
            500,
            r#"{"code":2,"message":"StartTime (10) must be before EndTime (5)","details":[]}"#,
        ),
    ];
    for (path, want_status, want_body) in cases {
        let (status, content_type, body) = get(&cache.http_url(path), &[]).await;
        assert_eq!(status, want_status, "{path}");
        assert_eq!(content_type, "application/json");
        assert_eq!(body, format!("{want_body}\n"), "{path}");
    }
    let (status, _, body) = get(&cache.http_url("/api/v1/read/app?name_filter=("), &[]).await;
    assert_eq!(status, 500);
    assert!(body.starts_with(r#"{"code":2,"message":"name filter must be a valid regular expression: "#), "{body}");
    let (status, _, body) = get(&cache.http_url("/api/v1/read/app?start_time=abc"), &[]).await;
    assert_eq!(status, 400);
    assert!(body.starts_with(r#"{"code":3,"#), "{body}");
}

#[tokio::test]
async fn grpc_read_errors_are_plain_unknown() {
    let cache = start(test_config()).await;
    let status = cache
        .egress()
        .await
        .read(ReadRequest { source_id: "a".into(), limit: 1001, ..Default::default() })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::Unknown);
    assert_eq!(status.message(), "limit (1001) must be 1000 or less");
}

#[tokio::test]
async fn meta_golden_json_over_http_and_grpc() {
    let cache = start(test_config()).await;
    cache.send(vec![log_envelope("app-1", 100, "a"), log_envelope("app-1", 300, "b")]).await;

    let (status, _, body) = get(&cache.http_url("/api/v1/meta"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        "{\"meta\":{\"app-1\":{\"count\":\"2\",\"expired\":\"0\",\"oldest_timestamp\":\"100\",\"newest_timestamp\":\"300\"}}}\n"
    );
    let meta = cache.egress().await.meta(MetaRequest { local_only: false }).await.expect("meta").into_inner();
    let info = meta.meta["app-1"];
    assert_eq!((info.count, info.expired, info.oldest_timestamp, info.newest_timestamp), (2, 0, 100, 300));
}

#[tokio::test]
async fn info_reports_a_version_go_log_cache_accepts() {
    let cache = start(test_config()).await;
    let (status, content_type, body) = get(&cache.http_url("/api/v1/info"), &[]).await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");
    let prefix = r#"{"version":"3.2.12","vm_uptime":""#;
    assert!(body.starts_with(prefix) && body.ends_with("\"}\n"), "{body}");
    let uptime = &body[prefix.len()..body.len() - 3];
    assert!(uptime.parse::<u64>().is_ok(), "{uptime}");
}

#[tokio::test]
async fn unknown_routes_are_404() {
    let cache = start(test_config()).await;
    let (status, _, body) = get(&cache.http_url("/v1/read/app"), &[]).await;
    assert_eq!(status, 404);
    assert_eq!(body, "");
}

#[tokio::test]
async fn promql_unimplemented_answers_501_on_query_routes_only() {
    let mut config = test_config();
    config.promql_unimplemented = true;
    let cache = start(config).await;
    cache.send(vec![log_envelope("app", 1, "kept")]).await;
    let expected = "{\"status\":\"error\",\"errorType\":\"bad_data\",\"error\":\"Metrics not available\"}\n";
    for (method, path, body) in [
        ("GET", "/api/v1/query?query=up%7Bsource_id%3D%22app%22%7D", ""),
        ("POST", "/api/v1/query_range", "query=up&start=1&end=2&step=1"),
    ] {
        let (status, content_type, text) = request(method, &cache.http_url(path), &[], body).await;
        assert_eq!((status, text.as_str()), (501, expected), "{method} {path}");
        assert_eq!(content_type, "application/json");
    }
    // Everything else is served as usual.
    let (status, _, body) = get(&cache.http_url("/api/v1/read/app?start_time=0"), &[]).await;
    assert_eq!(status, 200);
    assert!(body.contains("\"source_id\":\"app\""), "{body}");
}

#[tokio::test]
async fn promql_instant_query_over_http_and_grpc() {
    let cache = start(test_config()).await;
    let now_s = log_cache::service::now_nanos() / 1_000_000_000;
    cache.send(vec![gauge_envelope("app", (now_s - 30) * 1_000_000_000, "memory", 42.5)]).await;

    let path = format!("/api/v1/query?query=memory%7Bsource_id%3D%22app%22%7D&time={now_s}");
    let (status, _, body) = get(&cache.http_url(&path), &[]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        format!(
            "{{\"status\":\"success\",\"data\":{{\"resultType\":\"vector\",\"result\":[{{\"metric\":{{\"instance_id\":\"0\",\"source_id\":\"app\"}},\"value\":[{now_s}.000,\"42.5\"]}}]}}}}\n"
        )
    );

    // POST form, as Grafana and promtool send it.
    let (status, _, post_body) = request(
        "POST",
        &cache.http_url("/api/v1/query"),
        &[("content-type", "application/x-www-form-urlencoded")],
        &format!("query=memory%7Bsource_id%3D%22app%22%7D&time={now_s}"),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(post_body, body);

    let (status, _, body) = get(&cache.http_url("/api/v1/query?query=memory"), &[]).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("does not have a 'source_id' label"), "{body}");
    assert!(body.starts_with(r#"{"status":"error","errorType":"bad_data","error":"#), "{body}");

    use loggregator_proto::logcache::v1::prom_ql::{instant_query_result, InstantQueryRequest};
    use loggregator_proto::logcache::v1::prom_ql_querier_client::PromQlQuerierClient;
    let mut client = PromQlQuerierClient::connect(format!("http://{}", cache.addrs.grpc)).await.expect("connects");
    let result = client
        .instant_query(InstantQueryRequest { query: r#"memory{source_id="app"}"#.into(), time: now_s.to_string() })
        .await
        .expect("query")
        .into_inner();
    let Some(instant_query_result::Result::Vector(vector)) = result.result else { panic!("a vector") };
    assert_eq!(vector.samples.len(), 1);
    assert_eq!(vector.samples[0].point.as_ref().map(|p| p.value), Some(42.5));
}

#[tokio::test]
async fn metrics_count_ingress_and_egress() {
    let cache = start(test_config()).await;
    cache.send((0..3).map(|i| log_envelope("app", 10 + i, "x")).collect()).await;
    let (_, _, _) = get(&cache.http_url("/api/v1/read/app?start_time=0"), &[]).await;
    assert_eq!(cache.registry.sum("ingress", &[("component", "log-cache")]), 3);
    assert_eq!(cache.registry.sum("egress", &[("component", "log-cache")]), 3);
    assert_eq!(cache.registry.sum("sources", &[]), 1);
    assert!(cache.registry.sum("memory_bytes", &[]) > 0);
}
