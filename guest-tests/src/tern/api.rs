//! A minimal HTTP/1.1 client for tern's API socket: one request per
//! connection (`Connection: close`), JSON bodies.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::error::{Error, Result};

/// An answer: status code and body.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

impl Response {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON (an empty body is `null`).
    pub fn json(&self) -> std::result::Result<serde_json::Value, serde_json::Error> {
        if self.body.trim().is_empty() {
            Ok(serde_json::Value::Null)
        } else {
            serde_json::from_str(&self.body)
        }
    }
}

/// Parses a raw HTTP/1.1 response (status line, headers, body up to
/// Content-Length or the end).
pub fn parse_response(raw: &[u8]) -> std::result::Result<Response, String> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {} bytes", raw.len()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let length = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())?
    });
    let body = match length {
        Some(n) if n <= body.len() => body[..n].to_string(),
        Some(n) => {
            return Err(format!(
                "body shorter ({}) than Content-Length {n}",
                body.len()
            ))
        }
        None => body.to_string(),
    };
    Ok(Response { status, body })
}

/// Sends one request and reads the whole answer.
pub fn request(socket: &Path, method: &str, path: &str, body: Option<&str>) -> Result<Response> {
    let what = format!("{method} {path}");
    let fail = |message: String| Error::Api {
        request: what.clone(),
        message,
    };
    let mut stream = UnixStream::connect(socket)
        .map_err(|e| fail(format!("connecting to {}: {e}", socket.display())))?;
    let timeout = Some(Duration::from_secs(30));
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|e| fail(e.to_string()))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(req.as_bytes())
        .map_err(|e| fail(format!("sending: {e}")))?;
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .map_err(|e| fail(format!("reading the answer: {e}")))?;
    parse_response(&raw).map_err(fail)
}

/// Like [`request`], but a non-2xx answer is an error carrying the body.
pub fn call(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<serde_json::Value> {
    let r = request(socket, method, path, body)?;
    let fail = |message: String| Error::Api {
        request: format!("{method} {path}"),
        message,
    };
    if !r.ok() {
        return Err(fail(format!("HTTP {}: {}", r.status, r.body.trim())));
    }
    r.json()
        .map_err(|e| fail(format!("answer is not JSON ({e}): {}", r.body.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}extra").unwrap();
        assert_eq!((r.status, r.body.as_str()), (200, "{}"));
        assert!(r.ok());
        let r =
            parse_response(b"HTTP/1.1 409 Conflict\r\ncontent-length: 13\r\n\r\n{\"error\":\"x\"}")
                .unwrap();
        assert_eq!(r.status, 409);
        assert_eq!(r.json().unwrap()["error"], "x");
        let r = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
        assert_eq!(r.json().unwrap(), serde_json::Value::Null);
        assert!(parse_response(b"garbage").is_err());
        assert!(parse_response(b"SMTP 200\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n{}").is_err());
    }
}
