//! A minimal HTTP/1.1 client over a raw socket, so tests see the bytes exactly as sent: the status
//! line, headers, and a body de-chunked as it arrives (SSE framing is checked byte for byte).
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct HttpResponse {
    pub status: u16,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    stream: TcpStream,
    buffered: Vec<u8>,
    chunked: bool,
    remaining: Option<usize>,
    /// Decoded body bytes not yet taken.
    pub body: Vec<u8>,
    pub ended: bool,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(Duration::from_secs(20), self.stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => false,
            Ok(Ok(n)) => {
                self.buffered.extend_from_slice(&chunk[..n]);
                true
            }
        }
    }

    /// Decodes what is buffered into `body`; returns false when more input is needed.
    fn decode(&mut self) -> bool {
        if self.ended {
            return true;
        }
        if !self.chunked {
            let take = self.remaining.map_or(self.buffered.len(), |r| r.min(self.buffered.len()));
            self.body.extend(self.buffered.drain(..take));
            if let Some(r) = &mut self.remaining {
                *r -= take;
                if *r == 0 {
                    self.ended = true;
                }
            }
            return take > 0;
        }
        let mut progressed = false;
        loop {
            let Some(line_end) = self.buffered.windows(2).position(|w| w == b"\r\n") else { return progressed };
            let size = usize::from_str_radix(std::str::from_utf8(&self.buffered[..line_end]).unwrap().trim(), 16)
                .expect("chunk size");
            if self.buffered.len() < line_end + 2 + size + 2 {
                return progressed;
            }
            self.body.extend_from_slice(&self.buffered[line_end + 2..line_end + 2 + size]);
            self.buffered.drain(..line_end + 2 + size + 2);
            progressed = true;
            if size == 0 {
                self.ended = true;
                return true;
            }
        }
    }

    /// Reads until the decoded body contains `needle` (returns everything up to and including it,
    /// removing it from `body`), or until the body ends / 20 s pass (returns `None`).
    pub async fn read_through(&mut self, needle: &[u8]) -> Option<Vec<u8>> {
        loop {
            if let Some(at) = self.body.windows(needle.len()).position(|w| w == needle) {
                return Some(self.body.drain(..at + needle.len()).collect());
            }
            if self.ended {
                return None;
            }
            if !self.decode() && !self.fill().await {
                return None;
            }
        }
    }

    /// Reads the whole body.
    pub async fn read_to_end(&mut self) -> Vec<u8> {
        while !self.ended {
            if !self.decode() && !self.fill().await {
                break;
            }
        }
        std::mem::take(&mut self.body)
    }
}

/// Sends a request and reads its response head.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("writes");
    stream.write_all(body).await.expect("writes");
    let mut buffered = Vec::new();
    let head_end = loop {
        if let Some(at) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut chunk))
            .await
            .expect("response head within 20 s")
            .expect("reads");
        assert!(n > 0, "connection closed before the response head");
        buffered.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buffered[..head_end].to_vec()).expect("utf-8 head");
    let rest = buffered[head_end + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    let remaining = headers.iter().find(|(n, _)| n == "content-length").map(|(_, v)| v.parse().unwrap());
    HttpResponse {
        status,
        headers,
        stream,
        buffered: rest,
        chunked,
        remaining,
        body: Vec::new(),
        ended: remaining == Some(0),
    }
}

pub async fn get(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> HttpResponse {
    request(addr, "GET", target, headers, b"").await
}
