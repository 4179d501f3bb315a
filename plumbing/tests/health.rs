//! `/health` on the metrics listener: what a Kubernetes probe sees as a process starts, serves and
//! drains.

use plumbing::telemetry::{serve_metrics, Health};
use plumbing::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

#[tokio::test]
async fn health_is_503_until_ready_then_200_then_503_while_draining() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let registry = Registry::new();
    let scoped = registry.scoped("doppler");
    tokio::spawn(serve_metrics(listener, registry.clone(), std::future::pending()));

    let answer = get(addr, "/health").await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.ends_with("{\"status\":\"starting\"}\n"), "{answer}");
    // Any scoped handle of the registry sets it for the process.
    scoped.set_health(Health::Ready);
    let answer = get(addr, "/health").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("{\"status\":\"ready\"}\n"), "{answer}");
    registry.set_health(Health::Draining);
    let answer = get(addr, "/health").await;
    assert!(answer.starts_with("HTTP/1.1 503") && answer.ends_with("{\"status\":\"draining\"}\n"), "{answer}");
    // /metrics is served throughout.
    assert!(get(addr, "/metrics").await.starts_with("HTTP/1.1 200"));
}
