//! What the root package's tests share: an HTTP GET with a deadline and the wall clock in
//! nanoseconds, for tests that run the whole pipeline in process.

#![allow(dead_code)] // each test binary uses its own part of it

use std::time::Duration;

use loggregator_proto::bytes::Bytes;

/// The longest any step of a test waits.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// `GET url`: the status and the body as text.
pub async fn http_get(url: &str) -> (u16, String) {
    use http_body_util::BodyExt as _;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let response = tokio::time::timeout(DEADLINE, client.get(url.parse().expect("valid url")))
        .await
        .expect("answers in time")
        .expect("answers");
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8(body.to_vec()).expect("utf-8"))
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_nanos() as i64
}
