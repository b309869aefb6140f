//! The gateway's one error type and its JSON answer.

use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Bytes;
use hyper::{Response, StatusCode};

use crate::proxy::Body;

/// Which side a failure belongs to, so that logs and callers know whom to blame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The request was wrong (4xx).
    Client,
    /// A replica failed or could not be reached (502).
    Upstream,
    /// Flowers itself could not serve yet (503).
    Flowers,
}

/// Everything the gateway can answer instead of a replica's response.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no route matches {host}{path}")]
    NoRoute { host: String, path: String },
    #[error("request headers are {size} bytes, over the gateway's limit of {limit} bytes")]
    HeadersTooLarge { size: usize, limit: usize },
    #[error("{}", unauthorized_message(service, *missing))]
    Unauthorized { service: String, missing: bool },
    #[error("the request body is {size} bytes, over service {service}'s limit of {limit} bytes")]
    BodyTooLarge {
        service: String,
        size: u64,
        limit: u64,
    },
    #[error("no replica of service {service} became ready within {hold:?}")]
    NoReadyReplica { service: String, hold: Duration },
    #[error(
        "no replica of service {service} is ready and {limit} requests are already waiting for one"
    )]
    HoldQueueFull { service: String, limit: usize },
    #[error("no replica of service {service} could be reached ({detail})")]
    UpstreamUnreachable { service: String, detail: String },
    #[error("replica {run} of service {service} failed before answering ({detail})")]
    UpstreamFailed {
        service: String,
        run: String,
        detail: String,
    },
}

impl Error {
    pub fn code(&self) -> &'static str {
        match self {
            Error::NoRoute { .. } => "no_route",
            Error::HeadersTooLarge { .. } => "headers_too_large",
            Error::BodyTooLarge { .. } => "body_too_large",
            Error::Unauthorized { .. } => "unauthorized",
            Error::NoReadyReplica { .. } => "no_ready_replica",
            Error::HoldQueueFull { .. } => "hold_queue_full",
            Error::UpstreamUnreachable { .. } => "upstream_unreachable",
            Error::UpstreamFailed { .. } => "upstream_failed",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Error::NoRoute { .. } => StatusCode::NOT_FOUND,
            Error::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Error::NoReadyReplica { .. } | Error::HoldQueueFull { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Error::UpstreamUnreachable { .. } | Error::UpstreamFailed { .. } => {
                StatusCode::BAD_GATEWAY
            }
        }
    }

    pub fn side(&self) -> Side {
        match self {
            Error::NoRoute { .. }
            | Error::HeadersTooLarge { .. }
            | Error::BodyTooLarge { .. }
            | Error::Unauthorized { .. } => Side::Client,
            Error::NoReadyReplica { .. } | Error::HoldQueueFull { .. } => Side::Flowers,
            Error::UpstreamUnreachable { .. } | Error::UpstreamFailed { .. } => Side::Upstream,
        }
    }

    /// Whether the caller may send the same request again safely and usefully.
    pub fn retry_safe(&self) -> bool {
        matches!(
            self,
            Error::NoReadyReplica { .. }
                | Error::HoldQueueFull { .. }
                | Error::UpstreamUnreachable { .. }
        )
    }

    /// The JSON answer `{code, message}`; 503s carry `Retry-After` so clients back off, 401s
    /// `WWW-Authenticate` to say which credentials would do.
    pub(crate) fn into_response(self) -> Response<Body> {
        let body = serde_json::json!({ "code": self.code(), "message": self.to_string() });
        let mut builder = Response::builder()
            .status(self.status())
            .header(hyper::header::CONTENT_TYPE, "application/json");
        if self.status() == StatusCode::SERVICE_UNAVAILABLE {
            builder = builder.header(hyper::header::RETRY_AFTER, "1");
        }
        if self.status() == StatusCode::UNAUTHORIZED {
            builder = builder.header(hyper::header::WWW_AUTHENTICATE, "Bearer");
        }
        let body = http_body_util::Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed_unsync();
        builder
            .body(body)
            .expect("a response from valid parts builds")
    }
}

fn unauthorized_message(service: &str, missing: bool) -> String {
    if missing {
        format!("service {service} needs an API key: send `Authorization: Bearer KEY`")
    } else {
        format!("the API key is not one of service {service}'s keys")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_names_its_side_and_status_class() {
        let errors = [
            Error::NoRoute {
                host: "h".into(),
                path: "/".into(),
            },
            Error::HeadersTooLarge { size: 2, limit: 1 },
            Error::BodyTooLarge {
                service: "s".into(),
                size: 2,
                limit: 1,
            },
            Error::Unauthorized {
                service: "s".into(),
                missing: true,
            },
            Error::NoReadyReplica {
                service: "s".into(),
                hold: Duration::from_secs(1),
            },
            Error::HoldQueueFull {
                service: "s".into(),
                limit: 1,
            },
            Error::UpstreamUnreachable {
                service: "s".into(),
                detail: "refused".into(),
            },
            Error::UpstreamFailed {
                service: "s".into(),
                run: "r".into(),
                detail: "reset".into(),
            },
        ];
        for error in errors {
            let status = error.status().as_u16();
            match error.side() {
                Side::Client => assert!((400..500).contains(&status), "{error}"),
                Side::Upstream => assert!(status == 502 || status == 504, "{error}"),
                Side::Flowers => assert_eq!(status, 503, "{error}"),
            }
        }
    }

    #[test]
    fn no_route_message_names_host_and_path() {
        let error = Error::NoRoute {
            host: "chat.lan".into(),
            path: "/v1".into(),
        };
        assert_eq!(error.to_string(), "no route matches chat.lan/v1");
    }
}
