//! A deliberately small HTTP/1.1 client for load generation: keep-alive connections over
//! plain TCP, requests written from prebuilt bytes, responses read by `Content-Length`.
//! On a 2-core machine that also runs the collector, NATS and ClickHouse, every cycle the
//! load generator spends is taken from the system under test, so it does as little as it can
//! (no header maps, no per-request allocation beyond the read buffer's growth).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One request, serialised once and sent many times.
#[derive(Clone)]
pub struct Request {
    pub bytes: bytes::Bytes,
    /// How many events the body carries (0 for a GET).
    pub events: u64,
}

impl Request {
    pub fn post(host: &str, path: &str, content_type: &str, body: &[u8], events: u64) -> Self {
        let mut bytes = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        Self {
            bytes: bytes.into(),
            events,
        }
    }

    pub fn get(host: &str, path_and_query: &str) -> Self {
        Self::get_with(host, path_and_query, "")
    }

    /// A JSON POST that carries `api_key`: a `POST /v1/query` of the query service.
    pub fn read_post(host: &str, path: &str, body: &[u8], api_key: &str) -> Self {
        let mut bytes = format!(
            "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
             X-API-Key: {api_key}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        Self {
            bytes: bytes.into(),
            events: 0,
        }
    }

    /// A GET that carries `api_key`: a read of the query service.
    pub fn read(host: &str, path_and_query: &str, api_key: &str) -> Self {
        Self::get_with(host, path_and_query, &format!("X-API-Key: {api_key}\r\n"))
    }

    fn get_with(host: &str, path_and_query: &str, headers: &str) -> Self {
        Self {
            bytes: format!("GET {path_and_query} HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n")
                .into_bytes()
                .into(),
            events: 0,
        }
    }
}

/// A keep-alive connection that reconnects when the server closes it.
pub struct Conn {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    timeout: Duration,
}

/// What one response said.
#[derive(Debug, Clone, Copy)]
pub struct Answer {
    pub status: u16,
}

impl Conn {
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Self {
            addr,
            stream: None,
            buf: Vec::with_capacity(8192),
            timeout,
        }
    }

    /// Sends `request` and reads the whole answer; any failure drops the connection (the
    /// next request opens a new one) and is returned.
    pub async fn send(&mut self, request: &[u8]) -> io::Result<Answer> {
        match tokio::time::timeout(self.timeout, self.exchange(request)).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(io::Error::new(io::ErrorKind::TimedOut, "request timed out"))
            }
        }
    }

    /// The body of the last answer.
    pub fn body(&self) -> &[u8] {
        &self.buf
    }

    async fn exchange(&mut self, request: &[u8]) -> io::Result<Answer> {
        if self.stream.is_none() {
            let stream = TcpStream::connect(self.addr).await?;
            stream.set_nodelay(true)?;
            self.stream = Some(stream);
        }
        let stream = self.stream.as_mut().expect("connected above");
        stream.write_all(request).await?;
        self.buf.clear();
        // Read the head.
        let head_end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end + 4;
            }
            read_more(stream, &mut self.buf).await?;
        };
        let head = &self.buf[..head_end];
        let status = parse_status(head)?;
        let (length, chunked, close) = parse_headers(head)?;
        if chunked {
            self.read_chunked(head_end).await?;
        } else {
            let total = head_end + length;
            while self.buf.len() < total {
                read_more(stream, &mut self.buf).await?;
            }
            if self.buf.len() > total {
                return Err(io::Error::other("unexpected bytes after the response"));
            }
            // Keep only the body, for callers that want it.
            self.buf.drain(..head_end);
        }
        if close {
            self.stream = None;
        }
        Ok(Answer { status })
    }
}

impl Conn {
    /// Decodes a chunked body that starts at `start` of the buffer, leaving only the body.
    async fn read_chunked(&mut self, start: usize) -> io::Result<()> {
        let stream = self.stream.as_mut().expect("connected");
        let mut body = Vec::new();
        let mut at = start;
        loop {
            let line_end = loop {
                if let Some(end) = find(&self.buf[at..], b"\r\n") {
                    break at + end;
                }
                read_more(stream, &mut self.buf).await?;
            };
            let size_text = std::str::from_utf8(&self.buf[at..line_end])
                .map_err(|_| io::Error::other("bad chunk size"))?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| io::Error::other("bad chunk size"))?;
            let data = line_end + 2;
            while self.buf.len() < data + size + 2 {
                read_more(stream, &mut self.buf).await?;
            }
            body.extend_from_slice(&self.buf[data..data + size]);
            at = data + size + 2;
            if size == 0 {
                // No trailers are expected; the chunk's CRLF ended the message.
                break;
            }
        }
        if self.buf.len() > at {
            return Err(io::Error::other("unexpected bytes after the response"));
        }
        self.buf = body;
        Ok(())
    }
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
    let n = stream.read_buf(buf).await?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed by the server",
        ));
    }
    Ok(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_status(head: &[u8]) -> io::Result<u16> {
    // "HTTP/1.1 202 Accepted"
    head.get(9..12)
        .and_then(|s| std::str::from_utf8(s).ok())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other("malformed status line"))
}

/// (Content-Length, chunked, whether the server closes the connection).
fn parse_headers(head: &[u8]) -> io::Result<(usize, bool, bool)> {
    let text = std::str::from_utf8(head).map_err(|_| io::Error::other("non-UTF-8 head"))?;
    let mut length = None;
    let mut chunked = false;
    let mut close = false;
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") && value.eq_ignore_ascii_case("close") {
            close = true;
        }
    }
    Ok((length.unwrap_or(0), chunked, close))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_response_head() {
        let head =
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 12\r\nretry-after: 1\r\n\r\n";
        assert_eq!(parse_status(head).unwrap(), 503);
        assert_eq!(parse_headers(head).unwrap(), (12, false, false));
    }
}
