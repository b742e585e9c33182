//! Clients that hold a connection without finishing a request: the worker
//! closes or answers them within its timeouts, whoever they are.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::Worker;

const TOKEN: &str = "edge-slow-token-51c2";

async fn worker() -> Worker {
    Worker::start_with_env(
        &["--max-body-bytes", "4096"],
        &[
            ("EDGE_WORKER_TOKEN", TOKEN),
            ("EDGE_HEADER_READ_TIMEOUT_MS", "400"),
            ("EDGE_BODY_READ_TIMEOUT_MS", "400"),
        ],
    )
    .await
}

async fn connect(w: &Worker) -> TcpStream {
    let addr = w.base.trim_start_matches("http://");
    TcpStream::connect(addr).await.unwrap()
}

/// Everything the worker sends until it closes the connection, and how
/// long that took; fails if it is still open after five seconds.
async fn until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection was still open after 5 s");
    (String::from_utf8_lossy(&got).into_owned(), start.elapsed())
}

#[tokio::test]
async fn silent_and_slow_headers_are_closed() {
    let w = worker().await;
    // Connects and sends nothing.
    let mut silent = connect(&w).await;
    // Sends part of a request line, then nothing.
    let mut slow = connect(&w).await;
    slow.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    for stream in [&mut silent, &mut slow] {
        let (_, took) = until_closed(stream).await;
        assert!(took < Duration::from_secs(3), "closed after {took:?}");
    }
}

#[tokio::test]
async fn a_slow_body_gets_408_and_a_declared_oversize_413_at_once() {
    let w = worker().await;
    let head = |len: usize, token: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    // Headers, then five bytes of a hundred.
    let mut slow = connect(&w).await;
    slow.write_all(format!("{}{{\"mo", head(100, TOKEN)).as_bytes())
        .await
        .unwrap();
    let (answer, took) = until_closed(&mut slow).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");
    assert!(took < Duration::from_secs(3), "answered after {took:?}");
    // A length over the limit, no body sent: refused before reading.
    let mut big = connect(&w).await;
    big.write_all(head(1 << 20, TOKEN).as_bytes())
        .await
        .unwrap();
    let (answer, _) = until_closed(&mut big).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"request_too_large""#), "{answer}");
    // Without the token the body is never waited for.
    let mut stranger = connect(&w).await;
    stranger
        .write_all(format!("{}{{", head(100, "wrong")).as_bytes())
        .await
        .unwrap();
    let (answer, _) = until_closed(&mut stranger).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(!answer.contains(TOKEN));
}
