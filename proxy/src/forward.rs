//! Plain-HTTP forwarding: an absolute-form request (`GET http://host/path`)
//! is sent on to the origin in origin-form, or to the upstream proxy in
//! absolute-form with the proxy's own credentials; the response streams back.
//!
//! Origin connections are kept alive and reused by later requests on the
//! same client connection (one origin connection per client connection at
//! most); they are never shared between clients.

use std::sync::Arc;
use std::time::Duration;

use http::header;
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::client::conn::TrySendError;
use hyper_util::rt::TokioIo;

use crate::audit::Exchange;
use crate::body::{Direction, ProxyBody, UploadFailure};
use crate::client::{ClientConn, PoolKey, Pooled, Shared};
use crate::connect::{dial, ConnectError};
use crate::headers;
use crate::response;
use crate::target::{Target, TargetError};
use crate::upstream::{Kind, Upstream};

const HTTP_PORT: u16 = 80;

/// How long a kept-alive origin connection may take to become ready for the
/// next request before a fresh one is opened instead.
const POOL_READY_WAIT: Duration = Duration::from_millis(200);

/// Longest request target quoted back in an error.
const MAX_QUOTED: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(
        "airlock-proxy is a forward proxy: send an absolute URL (GET http://host/path) \
         or CONNECT host:port, not {0:?}"
    )]
    NotAbsolute(String),
    #[error(
        "{0}:// URLs are not forwarded: only http:// is (clients reach https:// \
         origins through a CONNECT tunnel, which they open by themselves)"
    )]
    Scheme(String),
    #[error("invalid request target")]
    Target(#[from] TargetError),
    #[error(transparent)]
    Origin(ConnectError),
    #[error("cannot reach the upstream proxy {upstream}")]
    Upstream {
        upstream: String,
        #[source]
        source: ConnectError,
    },
    #[error(
        "{0} answered 101 Switching Protocols although no upgrade was requested \
         (upgrades such as WebSocket go through CONNECT)"
    )]
    UnaskedUpgrade(String),
    #[error(
        "transfer coding {0} is not supported: airlock-proxy only undoes chunked \
         (send the body chunked or with a Content-Length; Content-Encoding is passed on)"
    )]
    TransferCoding(String),
    #[error(transparent)]
    Upload(UploadFailure),
    #[error("HTTP exchange with {peer} failed")]
    Exchange {
        peer: String,
        #[source]
        source: hyper::Error,
    },
}

impl ForwardError {
    fn status(&self) -> StatusCode {
        match self {
            ForwardError::NotAbsolute(_)
            | ForwardError::Scheme(_)
            | ForwardError::Target(_)
            | ForwardError::Upload(_) => StatusCode::BAD_REQUEST,
            ForwardError::TransferCoding(_) => StatusCode::NOT_IMPLEMENTED,
            ForwardError::Origin(e) | ForwardError::Upstream { source: e, .. }
                if e.is_timeout() =>
            {
                StatusCode::GATEWAY_TIMEOUT
            }
            ForwardError::Origin(e) | ForwardError::Upstream { source: e, .. } if e.is_loop() => {
                StatusCode::LOOP_DETECTED
            }
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    fn proxy_status(&self) -> &'static str {
        match self {
            ForwardError::NotAbsolute(_)
            | ForwardError::Scheme(_)
            | ForwardError::Target(_)
            | ForwardError::TransferCoding(_)
            | ForwardError::Upload(_) => "http_request_error",
            ForwardError::Origin(e) | ForwardError::Upstream { source: e, .. } => e.proxy_status(),
            ForwardError::Exchange { .. } | ForwardError::UnaskedUpgrade(_) => {
                "http_protocol_error"
            }
        }
    }
}

pub async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
    conn: &ClientConn,
    exchange: Arc<Exchange>,
) -> Response<ProxyBody> {
    match forward(req, shared, conn, &exchange).await {
        Ok(response) => response,
        Err(e) => {
            airlock_common::ratelimited!(
                log::Level::Info,
                "{}: {}",
                conn.client,
                airlock_common::report::chain(&e).replace('\n', "; ")
            );
            response::error(e.status(), e.proxy_status(), &e, &exchange)
        }
    }
}

fn quoted(uri: &Uri) -> String {
    uri.to_string().chars().take(MAX_QUOTED).collect()
}

async fn forward(
    req: Request<Incoming>,
    shared: &Shared,
    conn: &ClientConn,
    exchange: &Arc<Exchange>,
) -> Result<Response<ProxyBody>, ForwardError> {
    let uri = req.uri();
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") => {}
        Some(s) => return Err(ForwardError::Scheme(s.chars().take(MAX_QUOTED).collect())),
        None => return Err(ForwardError::NotAbsolute(quoted(uri))),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| ForwardError::NotAbsolute(quoted(uri)))?;
    let target = Target::from_authority(authority, Some(HTTP_PORT))?;
    exchange.set_target(&target);
    if let Some(refusal) = shared.refusal(&target, exchange, &conn.client) {
        return Ok(refusal);
    }
    let codings = headers::other_transfer_codings(req.headers());
    if !codings.is_empty() {
        return Err(ForwardError::TransferCoding(codings.join(", ")));
    }
    let upstream = shared.upstreams.select(Kind::Http, &target.host);
    exchange.set_upstream(upstream);

    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .filter(|p| !p.is_empty())
        .unwrap_or("/");
    let out_uri = match upstream {
        Some(_) => format!("http://{target}{path}"),
        None => path.to_owned(),
    };
    parts.uri = out_uri
        .parse()
        .map_err(|_| ForwardError::NotAbsolute(quoted(&parts.uri)))?;
    headers::strip_hop_by_hop(&mut parts.headers);
    headers::strip_request_extras(&mut parts.headers);
    headers::add_via(&mut parts.headers, parts.version);
    parts
        .headers
        .insert(header::HOST, target.host_header(HTTP_PORT));
    if let Some(auth) = upstream.and_then(Upstream::auth) {
        parts
            .headers
            .insert(header::PROXY_AUTHORIZATION, auth.clone());
    }
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    // What a second attempt needs, if one may be made (see `replay`).
    let replayable = (is_idempotent(&parts.method) && body.is_end_stream()).then(|| {
        let mut head = Request::new(());
        *head.method_mut() = parts.method.clone();
        *head.uri_mut() = parts.uri.clone();
        *head.version_mut() = parts.version;
        *head.headers_mut() = parts.headers.clone();
        head
    });
    let outgoing = Request::from_parts(
        parts,
        ProxyBody::stream(body).metered(exchange.clone(), Direction::Up),
    );

    let key = match upstream {
        Some(u) => PoolKey::Upstream(u.addr.clone()),
        None => PoolKey::Direct(target.clone()),
    };
    let (mut sender, reused) = sender_for(conn, &key, upstream, shared).await?;
    let peer = || match upstream {
        Some(u) => format!("the upstream proxy {u}"),
        None => format!("the origin {target}"),
    };
    let exchange_failed = |source: hyper::Error| {
        client_body_error(source).unwrap_or_else(|source| ForwardError::Exchange {
            peer: peer(),
            source,
        })
    };
    let response = match sender.try_send_request(outgoing).await {
        Ok(response) => response,
        Err(mut failed) => {
            let Some(again) = replay(reused, &mut failed, replayable) else {
                return Err(exchange_failed(failed.into_error()));
            };
            log::debug!(
                "{}: {} closed a kept-alive connection before answering; \
                 sending the request again on a new one",
                conn.client,
                peer()
            );
            sender = connect(&key, upstream, shared).await?;
            sender.send_request(again).await.map_err(exchange_failed)?
        }
    };
    conn.keep(Pooled { key, sender });

    if let Some(u) = upstream {
        if rejects_credentials(u, &response) {
            return Ok(response::upstream_auth_failed(
                u,
                response.status(),
                exchange,
            ));
        }
    }
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        // Upgrade was stripped from the request: nobody asked for this.
        return Err(ForwardError::UnaskedUpgrade(peer()));
    }
    let (mut parts, body) = response.into_parts();
    // Codings besides chunked stay on the body: keep saying so (hyper
    // frames it chunked again).
    let codings = headers::other_transfer_codings(&parts.headers);
    headers::strip_hop_by_hop(&mut parts.headers);
    if !codings.is_empty() {
        if let Ok(v) = http::HeaderValue::try_from(format!("{}, chunked", codings.join(", "))) {
            parts.headers.insert(header::TRANSFER_ENCODING, v);
        }
    }
    if let Some(auth) = upstream.and_then(Upstream::auth) {
        headers::scrub_secret(&mut parts.headers, auth);
    }
    headers::add_via(&mut parts.headers, parts.version);
    // This hop speaks HTTP/1.1 to the client whatever the origin spoke.
    parts.version = Version::HTTP_11;
    exchange.set_status(parts.status);
    Ok(Response::from_parts(
        parts,
        ProxyBody::stream(body).metered(exchange.clone(), Direction::Down),
    ))
}

/// The client's request body failing on its way to the origin: the only
/// body hyper's client sends is the client's (a "user" body error, whose
/// cause is the client connection's error). `Err` gives `e` back otherwise.
fn client_body_error(e: hyper::Error) -> Result<ForwardError, hyper::Error> {
    let incoming = std::error::Error::source(&e).and_then(|c| c.downcast_ref::<hyper::Error>());
    match incoming {
        Some(cause) if e.is_user() => Ok(ForwardError::Upload(UploadFailure::of(cause))),
        _ => Err(e),
    }
}

/// Whether `response` is the upstream proxy refusing *our* credentials:
/// a 407, or — tinyproxy answers a wrong password with 401 — a 401 the
/// upstream made itself. A response relayed from the origin carries the
/// upstream's `Via` (RFC 9110 §7.6.3: a proxy must add one), so a 401
/// without any `Via`, to a request that carried credentials, is the
/// upstream's own answer.
fn rejects_credentials(upstream: &Upstream, response: &Response<Incoming>) -> bool {
    match response.status() {
        StatusCode::PROXY_AUTHENTICATION_REQUIRED => true,
        StatusCode::UNAUTHORIZED => {
            upstream.has_credentials() && !response.headers().contains_key(header::VIA)
        }
        _ => false,
    }
}

/// Methods a client may repeat without changing the outcome (RFC 9110
/// §9.2.2), and so a proxy too, when the first attempt provably got no
/// answer.
fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::OPTIONS,
        Method::TRACE,
        Method::PUT,
        Method::DELETE,
    ]
    .contains(method)
}

/// The request to send again on a new connection after `failed`, if that
/// is safe: hyper hands the request back when it never started writing it;
/// otherwise only a bodiless idempotent request (`replayable`) that a
/// kept-alive connection (`reused`) lost without any answer — its peer had
/// closed it after the previous response, which a peer may do at any time
/// (RFC 9112 §9.3.1: tinyproxy does after every request), and on a busy
/// host the close arrives after the connection was picked for reuse.
fn replay(
    reused: bool,
    failed: &mut TrySendError<Request<ProxyBody>>,
    replayable: Option<Request<()>>,
) -> Option<Request<ProxyBody>> {
    if let Some(unsent) = failed.take_message() {
        return Some(unsent);
    }
    if !reused || !failed.error().is_incomplete_message() {
        return None;
    }
    replayable.map(|head| head.map(|()| ProxyBody::empty()))
}

/// A connection for `key`: the client connection's kept-alive one if it
/// leads there and is ready (`true`: reused), else a new one.
async fn sender_for(
    conn: &ClientConn,
    key: &PoolKey,
    upstream: Option<&Upstream>,
    shared: &Shared,
) -> Result<(SendRequest<ProxyBody>, bool), ForwardError> {
    if let Some(mut pooled) = conn.take_kept() {
        if pooled.key == *key
            && !pooled.sender.is_closed()
            && matches!(
                tokio::time::timeout(POOL_READY_WAIT, pooled.sender.ready()).await,
                Ok(Ok(()))
            )
        {
            return Ok((pooled.sender, true));
        }
    }
    Ok((connect(key, upstream, shared).await?, false))
}

/// A new connection for `key`.
async fn connect(
    key: &PoolKey,
    upstream: Option<&Upstream>,
    shared: &Shared,
) -> Result<SendRequest<ProxyBody>, ForwardError> {
    let timeout = shared.limits.connect_timeout;
    let stream = match (upstream, key) {
        (Some(u), _) => dial(&u.addr, timeout, &shared.loops)
            .await
            .map_err(|source| ForwardError::Upstream {
                upstream: u.to_string(),
                source,
            })?,
        (None, PoolKey::Direct(target) | PoolKey::Upstream(target)) => {
            dial(target, timeout, &shared.loops)
                .await
                .map_err(ForwardError::Origin)?
        }
    };
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ForwardError::Exchange {
            peer: match upstream {
                Some(u) => format!("the upstream proxy {u}"),
                None => "the origin".to_owned(),
            },
            source,
        })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            log::debug!("origin connection ended: {e}");
        }
    });
    Ok(sender)
}
