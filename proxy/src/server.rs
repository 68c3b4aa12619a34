//! Listening, accepting and serving client connections: the connection
//! limit, idle timeout, HTTP/1.1 parsing (hyper) and dispatch to
//! [`forward`](crate::forward) or [`tunnel`](crate::tunnel).

use std::convert::Infallible;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airlock_common::audit::AuditLog;
use airlock_common::listen::{ListenError, SocketAccess};
use airlock_common::ratelimited;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::audit::{record_rejected, Exchange};
use crate::body::ProxyBody;
use crate::client::{ClientConn, Shared};
use crate::config::{Config, Listen};
use crate::connect::{Inbound, Loops, Secs};
use crate::forward;
use crate::headers;
use crate::io::{Meter, Metered, SharedIo};
use crate::response;
use crate::tunnel;

/// Most header fields in a request head (hyper's default, named here so
/// the 431 for too many can say so).
pub const MAX_HEADERS: usize = 100;
/// Time a refused connection gets to read its 503.
const REFUSE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {0}")]
    Bind(Listen, #[source] io::Error),
    #[error("cannot listen on {0}")]
    Listen(Listen, #[source] ListenError),
    #[error("cannot set up signal handling")]
    Signals(#[source] io::Error),
    #[error(transparent)]
    Sandbox(#[from] airlock_common::sandbox::SandboxError),
    #[error(transparent)]
    Seccomp(#[from] airlock_common::seccomp::SeccompError),
}

enum Bound {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// Binds every listener, serves until SIGTERM or SIGINT, then removes the
/// Unix sockets it created.
pub async fn run(config: Config, audit: Option<Arc<AuditLog>>) -> Result<(), ServerError> {
    for line in config.upstreams.describe() {
        log::info!("{line}");
    }
    for warning in &config.upstreams.warnings {
        log::warn!("{warning}");
    }
    for (i, rule) in config.policy.rules().iter().enumerate() {
        log::info!("policy rule {}: {rule}", i + 1);
    }
    if !config.policy.rules().is_empty() {
        log::info!(
            "policy default: {}",
            if config.policy.default_allows() {
                "allow"
            } else {
                "deny"
            }
        );
    }

    // The user this proxy serves as once confined owns its Unix sockets, so
    // an airlock-net running as that same user can connect to them.
    let owner = config.confine.identity()?;
    let mut bound = Vec::with_capacity(config.listen.len());
    let mut sockets = Vec::new();
    for listen in &config.listen {
        match bind(listen, owner) {
            Ok(b) => {
                if let Bound::Unix(_, path) = &b {
                    sockets.push(path.clone());
                }
                bound.push(b);
            }
            Err(e) => {
                remove_sockets(&sockets);
                return Err(e);
            }
        }
    }

    let mut terminate = signal(SignalKind::terminate()).map_err(ServerError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ServerError::Signals)?;
    let mut hangup = signal(SignalKind::hangup()).map_err(ServerError::Signals)?;
    // Everything is bound and open: read-only mounts, --user, seccomp.
    if let Err(e) = airlock_common::sandbox::confine(&config.confine)
        .map_err(ServerError::from)
        .and_then(|()| {
            airlock_common::seccomp::apply(crate::SECCOMP_ALLOW_LIST, config.seccomp)
                .map_err(ServerError::from)
        })
    {
        remove_sockets(&sockets);
        return Err(e);
    }

    let mut shared = Shared::new(config.upstreams, config.policy, audit, config.limits);
    shared.loops = Loops::new(
        bound
            .iter()
            .filter_map(|b| match b {
                Bound::Tcp(listener) => listener.local_addr().ok(),
                Bound::Unix(..) => None,
            })
            .collect(),
    );
    let shared = Arc::new(shared);
    let slots = Arc::new(Semaphore::new(
        config.limits.max_connections.min(Semaphore::MAX_PERMITS),
    ));
    for b in bound {
        match b {
            Bound::Tcp(listener) => {
                let local = listener
                    .local_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_else(|_| "?".into());
                log::info!("listening on {local}");
                tokio::spawn(accept_tcp(listener, shared.clone(), slots.clone()));
            }
            Bound::Unix(listener, path) => {
                log::info!("listening on unix:{}", path.display());
                tokio::spawn(accept_unix(listener, path, shared.clone(), slots.clone()));
            }
        }
    }
    airlock_common::notify::ready();

    loop {
        tokio::select! {
            _ = terminate.recv() => { log::info!("SIGTERM received, exiting"); break; }
            _ = interrupt.recv() => { log::info!("SIGINT received, exiting"); break; }
            _ = hangup.recv() => log::info!("SIGHUP ignored: nothing to reload (restart to change the configuration)"),
        }
    }
    remove_sockets(&sockets);
    Ok(())
}

fn remove_sockets(paths: &[PathBuf]) {
    for path in paths {
        // remove_socket logs what it could not do.
        let _ = airlock_common::sandbox::remove_socket(path);
    }
}

/// The uid and gid a Unix listener is handed to.
type Owner = Option<(libc::uid_t, libc::gid_t)>;

fn bind(listen: &Listen, owner: Owner) -> Result<Bound, ServerError> {
    match listen {
        Listen::Tcp(addr) => {
            let std_listener = std::net::TcpListener::bind(addr)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .map_err(|e| ServerError::Bind(listen.clone(), e))?;
            let listener = TcpListener::from_std(std_listener)
                .map_err(|e| ServerError::Bind(listen.clone(), e))?;
            Ok(Bound::Tcp(listener))
        }
        Listen::Unix(path) => Ok(Bound::Unix(bind_unix(listen, path, owner)?, path.clone())),
    }
}

/// Binds a Unix socket with mode 0600 (owned by `owner` if given),
/// replacing a stale socket file (one nobody listens on) but never a live
/// socket or a non-socket.
fn bind_unix(listen: &Listen, path: &Path, owner: Owner) -> Result<UnixListener, ServerError> {
    let access = match owner {
        Some((uid, gid)) => SocketAccess::User(uid, gid),
        None => SocketAccess::Owner,
    };
    let std_listener = airlock_common::listen::bind_socket(path, access)
        .map_err(|e| ServerError::Listen(listen.clone(), e))?;
    std_listener
        .set_nonblocking(true)
        .map_err(|e| ServerError::Bind(listen.clone(), e))?;
    UnixListener::from_std(std_listener).map_err(|e| ServerError::Bind(listen.clone(), e))
}

async fn accept_failed(e: io::Error) {
    ratelimited!(log::Level::Warn, "accept failed: {e}");
    // EMFILE and friends: give connections time to close instead of spinning.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn accept_tcp(listener: TcpListener, shared: Arc<Shared>, slots: Arc<Semaphore>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let client = Arc::from(peer.to_string());
                let Some(inbound) = shared.loops.admit(&stream) else {
                    refuse(
                        stream,
                        client,
                        &shared,
                        StatusCode::LOOP_DETECTED,
                        "proxy_loop_detected",
                        "this connection comes from airlock-proxy itself (a forwarding loop): \
                         tunnels through the proxy do not nest"
                            .to_owned(),
                    );
                    continue;
                };
                start(stream, client, Some(inbound), &shared, &slots);
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

async fn accept_unix(
    listener: UnixListener,
    path: PathBuf,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let client = match stream.peer_cred() {
                    Ok(cred) => format!(
                        "unix:{} (uid {}, pid {})",
                        path.display(),
                        cred.uid(),
                        cred.pid().map_or_else(|| "?".to_owned(), |p| p.to_string())
                    ),
                    Err(_) => format!("unix:{}", path.display()),
                };
                start(stream, Arc::from(client), None, &shared, &slots);
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// Serves a new connection if a slot is free, else answers 503. A TCP
/// client stays known to [`Loops`] (`inbound`) while it is served.
fn start<I>(
    io: I,
    client: Arc<str>,
    inbound: Option<Inbound>,
    shared: &Arc<Shared>,
    slots: &Arc<Semaphore>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match slots.clone().try_acquire_owned() {
        Ok(slot) => {
            let shared = shared.clone();
            tokio::spawn(async move {
                serve_connection(io, client, shared, slot).await;
                drop(inbound);
            });
        }
        Err(_) => {
            let limit = shared.limits.max_connections;
            refuse(
                io,
                client,
                shared,
                StatusCode::SERVICE_UNAVAILABLE,
                "connection_limit_reached",
                format!("too many connections: --max-connections {limit} reached; try again later"),
            );
        }
    }
}

/// Answers a connection that will not be served with `status` and `why`
/// (logged, rate-limited, and audited), without taking a slot. At most
/// [`MAX_REFUSING`](crate::client) are answered at once; past that they are just closed.
fn refuse<I>(
    io: I,
    client: Arc<str>,
    shared: &Shared,
    status: StatusCode,
    kind: &'static str,
    why: String,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    ratelimited!(log::Level::Warn, "refusing connection from {client}: {why}");
    record_rejected(
        shared.audit.as_deref(),
        &client,
        status,
        format!("connection refused: {why}"),
    );
    if let Ok(permit) = shared.refusing.clone().try_acquire_owned() {
        tokio::spawn(async move {
            let _ =
                tokio::time::timeout(REFUSE_GRACE, answer_and_close(io, status, kind, &why)).await;
            drop(permit);
        });
    }
}

/// Writes `status` with `why` as its body and lets the client read it: the
/// write side is shut and what the client sends is drained, so closing
/// does not reset the connection before the answer is read.
async fn answer_and_close<I: AsyncRead + AsyncWrite + Unpin>(
    mut io: I,
    status: StatusCode,
    kind: &str,
    why: &str,
) -> io::Result<()> {
    let line = response::status_line(status);
    let body = format!("{line} (airlock-proxy)\n{why}\n");
    let head = format!(
        "HTTP/1.1 {line}\r\n\
         content-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\n\
         proxy-status: {}; error={kind}\r\n\
         connection: close\r\n\r\n",
        body.len(),
        headers::VIA_PSEUDONYM
    );
    io.write_all(head.as_bytes()).await?;
    io.write_all(body.as_bytes()).await?;
    io.shutdown().await?;
    let mut sink = [0u8; 4096];
    while io.read(&mut sink).await? > 0 {}
    Ok(())
}

/// Serves one client connection (also the `proxy_request` fuzz target's
/// entry).
pub async fn serve_connection<I>(
    io: I,
    client: Arc<str>,
    shared: Arc<Shared>,
    slot: OwnedSemaphorePermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let meter = Meter::new();
    let answer = SharedIo::new(io);
    let io = TokioIo::new(Metered::new(answer.clone(), meter.clone()));
    let conn = Arc::new(ClientConn::new(client.clone(), slot));
    let service_shared = shared.clone();
    let service = service_fn(move |req| {
        let shared = service_shared.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(req, shared, conn).await) }
    });
    let idle = shared.limits.idle_timeout;
    let mut builder = hyper::server::conn::http1::Builder::new();
    // half_close: a client that shuts its write side after the request
    // (nc -N, some HTTP/1.0 tools) still gets the response.
    builder
        .max_buf_size(shared.limits.max_header_bytes)
        .max_headers(MAX_HEADERS)
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .half_close(true)
        .keep_alive(true);
    let connection = builder.serve_connection(io, service).with_upgrades();
    let timed_out = tokio::select! {
        result = connection => match result {
            Ok(()) => false,
            Err(e) if e.is_timeout() => true,
            Err(e) => {
                connection_error(&e, &client, &shared);
                false
            }
        },
        () = meter.idle(idle) => true,
    };
    if !timed_out {
        return;
    }
    // Part of a request head arrived and the rest did not: 408 (hyper would
    // close without a word). A connection idle between requests just closes.
    let pending = meter.unanswered();
    if pending == 0 {
        log::debug!("{client}: closing connection idle for {idle:?}");
        return;
    }
    let why = format!(
        "the request head was not complete within --idle-timeout {} ({pending} bytes received)",
        Secs(idle)
    );
    ratelimited!(log::Level::Info, "{client}: {why}: answered 408");
    record_rejected(
        shared.audit.as_deref(),
        &client,
        StatusCode::REQUEST_TIMEOUT,
        why.clone(),
    );
    let _ = tokio::time::timeout(
        REFUSE_GRACE,
        answer_and_close(
            answer,
            StatusCode::REQUEST_TIMEOUT,
            "http_request_error",
            &why,
        ),
    )
    .await;
}

/// Reports a connection hyper gave up on. For malformed requests hyper has
/// already answered (400, or 431 for headers over --max-header-bytes).
fn connection_error(e: &hyper::Error, client: &str, shared: &Shared) {
    let (status, why) = if e.is_parse_too_large() {
        (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!(
                "request head too large: over --max-header-bytes {} bytes, \
                 or over {MAX_HEADERS} header fields ({e})",
                shared.limits.max_header_bytes
            ),
        )
    } else if e.is_parse() {
        (StatusCode::BAD_REQUEST, format!("malformed request: {e}"))
    } else {
        log::debug!("{client}: connection ended: {e}");
        return;
    };
    ratelimited!(log::Level::Info, "{client}: {why}: answered {status}");
    record_rejected(shared.audit.as_deref(), client, status, why);
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    conn: Arc<ClientConn>,
) -> Response<ProxyBody> {
    let exchange = Exchange::new(
        shared.audit.clone(),
        conn.client.clone(),
        req.method().as_str(),
    );
    if headers::has_our_via(req.headers()) {
        return response::text(
            StatusCode::LOOP_DETECTED,
            Some("proxy_loop_detected"),
            "508 Loop Detected (airlock-proxy)\n\
             this request has already passed through airlock-proxy: \
             the proxy was asked to fetch from itself\n"
                .to_owned(),
            &exchange,
        );
    }
    if req.method() == Method::CONNECT {
        tunnel::handle(req, &shared, &conn, exchange).await
    } else {
        forward::handle(req, &shared, &conn, exchange).await
    }
}
