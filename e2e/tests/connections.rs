//! Slow, idle and surplus connections on a real collector: clients that never finish their
//! headers, a body that trickles in a byte a second, keep-alive connections left idle and
//! connections beyond `maxConnections` are all closed within their limits, while a
//! legitimate client's posts keep getting 202.

use std::time::{Duration, Instant};

use serde_json::json;
use tally_e2e::{Options, Stack};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Half-sent requests held open at once.
const STALLED: usize = 2000;
/// The test pipeline's `headerReadTimeout` and `requestTimeout`, in seconds.
const HEADER_TIMEOUT: u64 = 1;
const REQUEST_TIMEOUT: u64 = 3;
/// How late after its timeout a connection may still be seen closing: timers, scheduling
/// and thousands of sockets on a small machine.
const SLACK: Duration = Duration::from_secs(4);

fn options(max_connections: usize) -> Options {
    Options {
        collector_spec: vec![
            format!("headerReadTimeout: {HEADER_TIMEOUT}s"),
            format!("requestTimeout: {REQUEST_TIMEOUT}s"),
            format!("maxConnections: {max_connections}"),
        ],
        ..Options::default()
    }
}

fn event() -> String {
    json!({"site_id": "shop", "event_type": "page_view", "path": "/"}).to_string()
}

/// Reads until the server closes `stream` (EOF or reset), returning what it sent, or
/// `None` when it is still open at `deadline`.
async fn closed_by(stream: &mut TcpStream, deadline: Instant) -> Option<Vec<u8>> {
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(answer),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    }
}

#[tokio::test]
async fn slow_and_idle_clients_are_closed_while_posts_go_on() -> anyhow::Result<()> {
    let stack = Stack::start(options(10_000)).await?;
    let addr = format!("127.0.0.1:{}", stack.collector_port);
    let started = Instant::now();
    let mut stalled = Vec::with_capacity(STALLED);
    for _ in 0..STALLED {
        let mut stream = TcpStream::connect(&addr).await?;
        stream
            .write_all(b"POST /v1/events HTTP/1.1\r\nHost: collector\r\nContent-Type: applic")
            .await?;
        stalled.push(stream);
    }
    // A keep-alive connection left idle after one answered request.
    let mut idle = TcpStream::connect(&addr).await?;
    let body = event();
    idle.write_all(
        format!(
            "POST /v1/events HTTP/1.1\r\nHost: collector\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await?;
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).await?;
    assert_eq!(&first, b"HTTP/1.1 202");
    let idle_since = Instant::now();
    // A body that trickles in, a byte a second.
    let trickle = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut stream = TcpStream::connect(&addr).await?;
            stream
                .write_all(b"POST /v1/events HTTP/1.1\r\nHost: collector\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n")
                .await?;
            let headers_sent = Instant::now();
            let (mut reader, mut writer_half) = stream.into_split();
            let deadline = headers_sent + Duration::from_secs(REQUEST_TIMEOUT) + SLACK;
            let writer = async {
                for byte in b"[{\"site_id\":\"shop\",\"path\":\"/slow\"" {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    if writer_half.write_all(&[*byte]).await.is_err() {
                        break;
                    }
                }
            };
            let mut answer = Vec::new();
            let mut buf = [0u8; 1024];
            tokio::pin!(writer);
            // Write on while reading, until the server answers and closes.
            let mut written = false;
            let closed = loop {
                tokio::select! {
                    () = &mut writer, if !written => written = true,
                    read = tokio::time::timeout_at(deadline.into(), reader.read(&mut buf)) => match read {
                        Err(_) => break false,
                        Ok(Ok(0) | Err(_)) => break true,
                        Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
                    },
                }
            };
            anyhow::Ok((
                closed,
                headers_sent.elapsed(),
                String::from_utf8_lossy(&answer).into_owned(),
            ))
        })
    };

    // Meanwhile a legitimate client posts, and every post is taken.
    for _ in 0..20 {
        let (status, answer) = stack.post(event()).await?;
        assert_eq!(status, 202, "{answer}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let deadline = started + Duration::from_secs(HEADER_TIMEOUT) + SLACK;
    let mut open = 0;
    for stream in &mut stalled {
        if closed_by(stream, deadline).await.is_none() {
            open += 1;
        }
    }
    assert_eq!(
        open,
        0,
        "{open} of {STALLED} half-sent requests still open after {:?}",
        started.elapsed()
    );
    let idle_closed = closed_by(
        &mut idle,
        idle_since + Duration::from_secs(HEADER_TIMEOUT) + SLACK,
    )
    .await;
    assert!(
        idle_closed.is_some(),
        "the idle keep-alive connection is still open"
    );

    let (closed, took, answer) = trickle.await??;
    assert!(
        closed,
        "the trickling body's connection is still open after {took:?}"
    );
    assert!(answer.starts_with("HTTP/1.1 408"), "answered: {answer:?}");
    assert!(
        took < Duration::from_secs(REQUEST_TIMEOUT) + SLACK,
        "{took:?}"
    );

    let (status, answer) = stack.post(event()).await?;
    assert_eq!(status, 202, "{answer}");
    Ok(())
}

#[tokio::test]
async fn connections_beyond_the_limit_are_closed_at_once() -> anyhow::Result<()> {
    const LIMIT: usize = 50;
    let stack = Stack::start(options(LIMIT)).await?;
    let addr = format!("127.0.0.1:{}", stack.collector_port);
    // LIMIT connections that keep the server waiting for their headers.
    let mut held = Vec::new();
    for _ in 0..LIMIT {
        let mut stream = TcpStream::connect(&addr).await?;
        stream.write_all(b"GET /healthz HTTP/1.1\r\n").await?;
        held.push(stream);
    }
    // The next ones are closed as soon as they are accepted, well before any timeout.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..5 {
        let mut extra = TcpStream::connect(&addr).await?;
        let _ = extra
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: c\r\n\r\n")
            .await;
        let closed = closed_by(&mut extra, Instant::now() + Duration::from_millis(900)).await;
        assert_eq!(
            closed,
            Some(Vec::new()),
            "a connection over the limit was served"
        );
    }
    // Once the held ones time out, connections are served again.
    let deadline = Instant::now() + Duration::from_secs(HEADER_TIMEOUT) + SLACK;
    for stream in &mut held {
        assert!(
            closed_by(stream, deadline).await.is_some(),
            "a held connection is still open"
        );
    }
    let (status, answer) = stack.post(event()).await?;
    assert_eq!(status, 202, "{answer}");
    let metrics = stack.get(&stack.collector_url("/metrics")).await.body;
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tally_collector_connections_refused_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(refused.is_some_and(|n| n >= 5), "{metrics}");
    Ok(())
}
