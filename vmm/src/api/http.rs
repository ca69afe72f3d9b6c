//! Just enough HTTP/1.1 for a local control API: one request per connection,
//! bodies framed by Content-Length, JSON in and out. Parsing by httparse.

use std::io::{self, BufRead, BufReader, Read, Write};

/// Largest request head and body accepted.
const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
/// Largest response body the client reads (migration statistics with a long history).
const MAX_RESPONSE_BODY: usize = 64 * 1024 * 1024;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Method, e.g. `GET`.
    pub method: String,
    /// Path without the query string.
    pub path: String,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// A response to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// JSON body.
    pub body: serde_json::Value,
}

impl Response {
    /// 200 with a JSON body.
    pub fn ok(body: serde_json::Value) -> Self {
        Response { status: 200, body }
    }

    /// An error status with `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        Response {
            status,
            body: serde_json::json!({ "error": message.into() }),
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Errors reading a request or a response.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The peer sent something that is not HTTP/1.x.
    #[error("malformed HTTP: {0}")]
    Malformed(String),
    /// Head or body too large.
    #[error("request too large")]
    TooLarge,
    /// Socket error.
    #[error(transparent)]
    Io(#[from] io::Error),
}

fn read_head<R: BufRead>(r: &mut R) -> Result<Vec<u8>, HttpError> {
    let mut head = Vec::new();
    loop {
        let n = r.read_until(b'\n', &mut head)?;
        if n == 0 {
            return Err(HttpError::Malformed(
                "connection closed before the end of the head".into(),
            ));
        }
        if head.len() > MAX_HEAD {
            return Err(HttpError::TooLarge);
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            return Ok(head);
        }
    }
}

fn content_length(headers: &[httparse::Header<'_>], max: usize) -> Result<usize, HttpError> {
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| HttpError::Malformed("bad Content-Length".into()))?;
            if v > max {
                return Err(HttpError::TooLarge);
            }
            return Ok(v);
        }
    }
    Ok(0)
}

/// Reads one request from `stream`.
pub fn read_request<S: Read>(stream: S) -> Result<Request, HttpError> {
    let mut r = BufReader::new(stream);
    let head = read_head(&mut r)?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(HttpError::Malformed("incomplete head".into()))
        }
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    }
    let method = req.method.unwrap_or_default().to_string();
    let full = req.path.unwrap_or("/");
    let path = full.split('?').next().unwrap_or("/").to_string();
    let len = content_length(req.headers, MAX_BODY)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(Request { method, path, body })
}

/// Writes `resp` to `stream` and ends the exchange.
pub fn write_response<W: Write>(mut stream: W, resp: &Response) -> io::Result<()> {
    let body = if resp.status == 204 {
        Vec::new()
    } else {
        let mut b = serde_json::to_vec(&resp.body).unwrap_or_default();
        b.push(b'\n');
        b
    };
    write!(
        stream,
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        resp.status,
        reason(resp.status),
        body.len()
    )?;
    stream.write_all(&body)?;
    stream.flush()
}

/// Sends a request and reads the response (the client side, for `tern status` etc.).
pub fn roundtrip<S: Read + Write>(
    mut stream: S,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> Result<(u16, serde_json::Value), HttpError> {
    let payload = body
        .map(|b| serde_json::to_vec(b).unwrap_or_default())
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    )?;
    stream.write_all(&payload)?;
    stream.flush()?;
    let mut r = BufReader::new(stream);
    let head = read_head(&mut r)?;
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(HttpError::Malformed("bad response head".into())),
    }
    let status = resp.code.unwrap_or(0);
    let len = content_length(resp.headers, MAX_RESPONSE_BODY)?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| HttpError::Malformed(format!("response body: {e}")))?
    };
    Ok((status, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_curl_request() {
        let raw = b"PUT /vm/pause?x=1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}";
        let r = read_request(&raw[..]).unwrap();
        assert_eq!(r.method, "PUT");
        assert_eq!(r.path, "/vm/pause");
        assert_eq!(r.body, b"{}");
    }

    #[test]
    fn rejects_garbage_and_huge_bodies() {
        assert!(read_request(&b"\x00\x01\x02\r\n\r\n"[..]).is_err());
        let raw = b"PUT / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n";
        assert!(matches!(read_request(&raw[..]), Err(HttpError::TooLarge)));
        assert!(read_request(&b"GET / HTTP/1.1\r\n"[..]).is_err());
    }

    #[test]
    fn response_roundtrip() {
        let mut out = Vec::new();
        write_response(
            &mut out,
            &Response::ok(serde_json::json!({"state": "running"})),
        )
        .unwrap();
        // Feed the response back through the client parser via a duplex buffer.
        struct Duplex(std::io::Cursor<Vec<u8>>, Vec<u8>);
        impl Read for Duplex {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                self.0.read(b)
            }
        }
        impl Write for Duplex {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                self.1.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (status, body) = roundtrip(
            Duplex(std::io::Cursor::new(out), Vec::new()),
            "GET",
            "/vm",
            None,
        )
        .unwrap();
        assert_eq!(status, 200);
        assert_eq!(body["state"], "running");
    }
}
