//! The control API: HTTP/1.1 + JSON on a Unix socket, curl-able
//! (`curl --unix-socket PATH http://localhost/vm`).

pub mod client;
pub mod http;
pub mod server;
pub mod types;

use http::{Request, Response};
use types::{EstimateRequest, FaultRequest, MigrateRequest, ThrottleRequest};

/// A request the VMM acts on.
#[derive(Clone, Debug, PartialEq)]
pub enum ApiRequest {
    /// `GET /vm`
    GetVm,
    /// `PUT /vm/pause`
    Pause,
    /// `PUT /vm/resume`
    Resume,
    /// `PUT /vm/shutdown`
    Shutdown,
    /// `PUT /vm/throttle`
    SetThrottle(ThrottleRequest),
    /// `PUT /migration`
    StartMigration(MigrateRequest),
    /// `GET /migration`
    GetMigration,
    /// `DELETE /migration`
    CancelMigration,
    /// `PUT /migration/estimate`
    Estimate(EstimateRequest),
    /// `PUT /devices/{id}/fault`
    DeviceFault {
        /// Device id, e.g. `blk0`.
        id: String,
        /// The fault to apply.
        fault: FaultRequest,
    },
}

/// Something that answers API requests (the VMM).
pub trait ApiHandler: Send + Sync {
    /// Acts on `req` and says how it went.
    fn handle(&self, req: ApiRequest) -> Response;
}

fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Response> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}" as &[u8]
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| Response::error(400, format!("bad JSON body: {e}")))
}

/// Maps an HTTP request to an `ApiRequest`, or the error response to send.
pub fn route(req: &Request) -> Result<ApiRequest, Response> {
    let path = req.path.trim_end_matches('/');
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    match (req.method.as_str(), parts.as_slice()) {
        ("GET", ["vm"]) => Ok(ApiRequest::GetVm),
        ("PUT", ["vm", "pause"]) => Ok(ApiRequest::Pause),
        ("PUT", ["vm", "resume"]) => Ok(ApiRequest::Resume),
        ("PUT", ["vm", "shutdown"]) => Ok(ApiRequest::Shutdown),
        ("PUT", ["vm", "throttle"]) => Ok(ApiRequest::SetThrottle(json(&req.body)?)),
        ("PUT", ["migration"]) => Ok(ApiRequest::StartMigration(json(&req.body)?)),
        ("GET", ["migration"]) => Ok(ApiRequest::GetMigration),
        ("DELETE", ["migration"]) => Ok(ApiRequest::CancelMigration),
        ("PUT", ["migration", "estimate"]) => Ok(ApiRequest::Estimate(json(&req.body)?)),
        ("PUT", ["devices", id, "fault"]) => Ok(ApiRequest::DeviceFault {
            id: (*id).to_string(),
            fault: json(&req.body)?,
        }),
        (_, ["vm"] | ["vm", _] | ["migration"] | ["migration", _] | ["devices", _, _]) => {
            Err(Response::error(
                405,
                format!("{} is not allowed on {}", req.method, req.path),
            ))
        }
        _ => Err(Response::error(
            404,
            format!("no such resource: {}", req.path),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, path: &str, body: &str) -> Request {
        Request {
            method: method.into(),
            path: path.into(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn routes() {
        assert_eq!(route(&req("GET", "/vm", "")), Ok(ApiRequest::GetVm));
        assert_eq!(route(&req("PUT", "/vm/pause/", "")), Ok(ApiRequest::Pause));
        assert_eq!(
            route(&req("DELETE", "/migration", "")),
            Ok(ApiRequest::CancelMigration)
        );
        match route(&req("PUT", "/migration", r#"{"to":"tcp:127.0.0.1:4444"}"#)) {
            Ok(ApiRequest::StartMigration(m)) => {
                assert_eq!(m.max_downtime_ms, 300);
                assert_eq!(m.on_no_converge, "abort");
            }
            other => panic!("{other:?}"),
        }
        match route(&req("PUT", "/devices/blk0/fault", r#"{"hold":true}"#)) {
            Ok(ApiRequest::DeviceFault { id, fault }) => assert!(id == "blk0" && fault.hold),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn errors_are_clear() {
        assert_eq!(route(&req("GET", "/nope", "")).unwrap_err().status, 404);
        assert_eq!(
            route(&req("POST", "/vm/pause", "")).unwrap_err().status,
            405
        );
        let e = route(&req("PUT", "/migration", "{")).unwrap_err();
        assert_eq!(e.status, 400);
        let e = route(&req("PUT", "/migration", r#"{"to":"x","bogus":1}"#)).unwrap_err();
        assert!(e.body["error"].as_str().unwrap().contains("bogus"));
    }
}
