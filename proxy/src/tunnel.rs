//! CONNECT tunnels: connect to `host:port` (directly, or with a CONNECT
//! through the upstream proxy), answer 200, then splice bytes both ways
//! until either side closes or the tunnel has been idle too long.
//!
//! The server side is connected *before* the 200 goes out, so a refused,
//! unreachable or timed-out destination reaches the client as 502/504 with
//! a body instead of a tunnel that closes at once.

use std::sync::Arc;
use std::time::Duration;

use http::header;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::audit::Exchange;
use crate::body::ProxyBody;
use crate::client::{ClientConn, Shared};
use crate::connect::{dial, ConnectError, Loops, Outbound, Secs};
use crate::headers;
use crate::io::{Meter, Metered};
use crate::response;
use crate::target::{Target, TargetError};
use crate::upstream::{Kind, Upstream};

/// Copy buffer per direction.
const SPLICE_BUF: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TunnelError {
    #[error("CONNECT needs an authority-form target (CONNECT host:port)")]
    NoAuthority,
    #[error("invalid CONNECT target")]
    Target(#[from] TargetError),
    #[error(transparent)]
    Origin(ConnectError),
    #[error("cannot reach the upstream proxy {upstream}")]
    Upstream {
        upstream: String,
        #[source]
        source: ConnectError,
    },
    #[error("CONNECT {target} through the upstream proxy {upstream} failed")]
    UpstreamExchange {
        upstream: String,
        target: Target,
        #[source]
        source: hyper::Error,
    },
    #[error(
        "the upstream proxy {upstream} did not answer CONNECT {target} within {}",
        Secs(*after)
    )]
    UpstreamTimeout {
        upstream: String,
        target: Target,
        after: Duration,
    },
    #[error("the upstream proxy {upstream} refused CONNECT {target} with {status}")]
    UpstreamRefused {
        upstream: String,
        target: Target,
        status: StatusCode,
    },
    /// Answered with [`response::upstream_auth_failed`], not as an error body.
    #[error("the upstream proxy {0} answered {1}")]
    UpstreamAuth(Upstream, StatusCode),
}

impl TunnelError {
    fn status(&self) -> StatusCode {
        match self {
            TunnelError::NoAuthority | TunnelError::Target(_) => StatusCode::BAD_REQUEST,
            TunnelError::Origin(e) | TunnelError::Upstream { source: e, .. } if e.is_timeout() => {
                StatusCode::GATEWAY_TIMEOUT
            }
            TunnelError::Origin(e) | TunnelError::Upstream { source: e, .. } if e.is_loop() => {
                StatusCode::LOOP_DETECTED
            }
            TunnelError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            // The guest sees what the upstream said (403, 502, 503, ...).
            TunnelError::UpstreamRefused { status, .. } => *status,
            TunnelError::UpstreamAuth(..) => StatusCode::PROXY_AUTHENTICATION_REQUIRED,
            _ => StatusCode::BAD_GATEWAY,
        }
    }

    fn proxy_status(&self) -> &'static str {
        match self {
            TunnelError::NoAuthority | TunnelError::Target(_) => "http_request_error",
            TunnelError::Origin(e) | TunnelError::Upstream { source: e, .. } => e.proxy_status(),
            TunnelError::UpstreamTimeout { .. } => "connection_timeout",
            TunnelError::UpstreamExchange { .. } => "http_protocol_error",
            TunnelError::UpstreamRefused { .. } | TunnelError::UpstreamAuth(..) => {
                "destination_unavailable"
            }
        }
    }
}

/// The server side of a tunnel.
enum ServerSide {
    Direct(Outbound),
    ThroughUpstream(TokioIo<Upgraded>),
}

pub async fn handle(
    mut req: Request<Incoming>,
    shared: &Arc<Shared>,
    conn: &Arc<ClientConn>,
    exchange: Arc<Exchange>,
) -> Response<ProxyBody> {
    let opened = open(&req, shared, conn, &exchange).await;
    let server_side = match opened {
        Ok(Opened::Server(s)) => s,
        Ok(Opened::Refused(refusal)) => return refusal,
        Err(TunnelError::UpstreamAuth(u, status)) => {
            return response::upstream_auth_failed(&u, status, &exchange)
        }
        Err(e) => {
            airlock_common::ratelimited!(
                log::Level::Info,
                "{}: {}",
                conn.client,
                airlock_common::report::chain(&e).replace('\n', "; ")
            );
            return response::error(e.status(), e.proxy_status(), &e, &exchange);
        }
    };

    let on_upgrade = hyper::upgrade::on(&mut req);
    // The client connection is a tunnel from now on: its kept-alive origin
    // connection will not be used again.
    drop(conn.take_kept());
    let idle = shared.limits.idle_timeout;
    let conn = conn.clone();
    let tunnel_exchange = exchange.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let client = TokioIo::new(upgraded);
                match server_side {
                    ServerSide::Direct(s) => splice(client, s, &tunnel_exchange, idle).await,
                    ServerSide::ThroughUpstream(s) => {
                        splice(client, s, &tunnel_exchange, idle).await
                    }
                }
            }
            Err(e) => tunnel_exchange.set_error(format!("client connection was not upgraded: {e}")),
        }
        // Holding the client connection (and its --max-connections slot)
        // until the tunnel ends.
        drop(conn);
    });
    exchange.set_status(StatusCode::OK);
    Response::new(ProxyBody::empty())
}

/// What [`open`] achieved.
enum Opened {
    Server(ServerSide),
    /// Forbidden by policy: the 403 to send.
    Refused(Response<ProxyBody>),
}

/// Checks the policy and connects the server side.
async fn open(
    req: &Request<Incoming>,
    shared: &Shared,
    conn: &ClientConn,
    exchange: &Arc<Exchange>,
) -> Result<Opened, TunnelError> {
    let authority = req.uri().authority().ok_or(TunnelError::NoAuthority)?;
    let target = Target::from_authority(authority, None)?;
    exchange.set_target(&target);
    if let Some(refusal) = shared.refusal(&target, exchange, &conn.client) {
        return Ok(Opened::Refused(refusal));
    }
    let upstream = shared.upstreams.select(Kind::Connect, &target.host);
    exchange.set_upstream(upstream);
    let timeout = shared.limits.connect_timeout;
    let side = match upstream {
        None => ServerSide::Direct(
            dial(&target, timeout, &shared.loops)
                .await
                .map_err(TunnelError::Origin)?,
        ),
        Some(u) => {
            ServerSide::ThroughUpstream(connect_via(u, &target, timeout, &shared.loops).await?)
        }
    };
    Ok(Opened::Server(side))
}

/// Opens a tunnel to `target` with a CONNECT through `upstream`, all within
/// `timeout`.
async fn connect_via(
    upstream: &Upstream,
    target: &Target,
    timeout: Duration,
    loops: &Loops,
) -> Result<TokioIo<Upgraded>, TunnelError> {
    let work = async {
        let stream = dial(&upstream.addr, timeout, loops)
            .await
            .map_err(|source| TunnelError::Upstream {
                upstream: upstream.to_string(),
                source,
            })?;
        let exchange_error = |source| TunnelError::UpstreamExchange {
            upstream: upstream.to_string(),
            target: target.clone(),
            source,
        };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake::<_, ProxyBody>(TokioIo::new(stream))
                .await
                .map_err(exchange_error)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                log::debug!("upstream CONNECT connection ended: {e}");
            }
        });
        let authority = target.to_string();
        let mut request = Request::new(ProxyBody::empty());
        *request.method_mut() = Method::CONNECT;
        *request.uri_mut() = authority.parse().map_err(|_| TunnelError::NoAuthority)?;
        let headers = request.headers_mut();
        headers.insert(header::HOST, target.host_header(0));
        headers::add_via(headers, http::Version::HTTP_11);
        if let Some(auth) = upstream.auth() {
            headers.insert(header::PROXY_AUTHORIZATION, auth.clone());
        }
        let response = sender.send_request(request).await.map_err(exchange_error)?;
        match response.status() {
            s if s.is_success() => hyper::upgrade::on(response)
                .await
                .map(TokioIo::new)
                .map_err(exchange_error),
            // Only the upstream itself answers a CONNECT; tinyproxy answers a
            // wrong password with 401 rather than 407.
            status @ (StatusCode::PROXY_AUTHENTICATION_REQUIRED | StatusCode::UNAUTHORIZED) => {
                Err(TunnelError::UpstreamAuth(upstream.clone(), status))
            }
            status => Err(TunnelError::UpstreamRefused {
                upstream: upstream.to_string(),
                target: target.clone(),
                status,
            }),
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(result) => result,
        Err(_) => Err(TunnelError::UpstreamTimeout {
            upstream: upstream.to_string(),
            target: target.clone(),
            after: timeout,
        }),
    }
}

/// Copies both ways until both directions are done, an error, or `idle`
/// without traffic; byte counts go to the audit record.
async fn splice<C, S>(mut client: C, server: S, exchange: &Exchange, idle: Duration)
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let meter = Meter::new();
    let mut server = Metered::new(server, meter.clone());
    let outcome = tokio::select! {
        r = tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, SPLICE_BUF, SPLICE_BUF) => {
            r.map(|_| ()).map_err(|e| format!("tunnel ended with an error: {e}"))
        }
        () = meter.idle(idle) => Err(format!("tunnel closed after {} without traffic", Secs(idle))),
    };
    exchange.add_up(meter.bytes_written());
    exchange.add_down(meter.bytes_read());
    if let Err(e) = outcome {
        log::debug!("{e}");
        exchange.set_error(e);
    }
}
