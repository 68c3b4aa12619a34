//! Responses the proxy writes itself: short plain-text bodies that say what
//! happened, with an RFC 9209 `Proxy-Status` header on errors.

use std::error::Error;
use std::sync::Arc;

use airlock_common::report::chain;
use http::header::{self, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use crate::audit::Exchange;
use crate::body::{Direction, ProxyBody};
use crate::headers::VIA_PSEUDONYM;
use crate::upstream::Upstream;

/// A plain-text response. For a non-success status the first line of the
/// text becomes the audit record's `error` (unless one is already set).
pub fn text(
    status: StatusCode,
    proxy_status: Option<&str>,
    body: String,
    exchange: &Arc<Exchange>,
) -> Response<ProxyBody> {
    exchange.set_status(status);
    if !status.is_success() {
        exchange.set_error(body.lines().next().unwrap_or_default().to_owned());
    }
    let mut response =
        Response::new(ProxyBody::text(body).metered(exchange.clone(), Direction::Down));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if let Some(kind) = proxy_status {
        if let Ok(v) = HeaderValue::try_from(format!("{VIA_PSEUDONYM}; error={kind}")) {
            headers.insert(HeaderName::from_static("proxy-status"), v);
        }
    }
    response
}

/// An error response whose body is the error and its causes, one per line:
///
/// ```text
/// 502 Bad Gateway (airlock-proxy)
/// error: cannot connect to example.com:80 (93.184.216.34:80)
/// caused by: Connection refused (os error 111)
/// ```
pub fn error(
    status: StatusCode,
    proxy_status: &str,
    err: &dyn Error,
    exchange: &Arc<Exchange>,
) -> Response<ProxyBody> {
    let text = chain(err);
    let flat = text.replace('\n', "; ");
    exchange.set_error(flat.strip_prefix("error: ").unwrap_or(&flat));
    let body = format!("{} ({VIA_PSEUDONYM})\n{text}\n", status_line(status));
    self::text(status, Some(proxy_status), body, exchange)
}

/// `502 Bad Gateway`.
pub fn status_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    )
}

/// What the client gets when the upstream proxy answers 407 (or, for
/// tinyproxy, 401) to airlock-proxy itself: the upstream
/// refused *this proxy's* credentials (or wants some and none are set). The
/// upstream's challenge (`Proxy-Authenticate`) is not passed on: the guest
/// has nothing to answer it with, its own `Proxy-Authorization` is never used.
pub fn upstream_auth_failed(
    upstream: &Upstream,
    received: StatusCode,
    exchange: &Arc<Exchange>,
) -> Response<ProxyBody> {
    let status = StatusCode::PROXY_AUTHENTICATION_REQUIRED;
    let explanation = if upstream.has_credentials() {
        format!(
            "the upstream proxy {upstream} rejected airlock-proxy's credentials \
             (from {} or --upstream-credentials-file){}.",
            upstream.source,
            if received == StatusCode::UNAUTHORIZED {
                "; it answered 401 Unauthorized, as tinyproxy does for a wrong password"
            } else {
                ""
            }
        )
    } else {
        format!(
            "the upstream proxy {upstream} requires authentication and airlock-proxy \
             has no credentials for it."
        )
    };
    let body = format!(
        "{} ({VIA_PSEUDONYM})\n{explanation}\n\
         This is a problem in the proxy configuration on the host, not in this request: \
         the host's administrator has to fix the user:password airlock-proxy uses \
         (in the upstream URL or in --upstream-credentials-file). Credentials sent \
         by this client are never passed on.\n",
        status_line(status)
    );
    exchange.set_error(format!(
        "upstream proxy {upstream} answered {}: credentials rejected",
        received.as_u16()
    ));
    text(status, None, body, exchange)
}
