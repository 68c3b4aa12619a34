//! Listening, accepting and serving client connections: the connection
//! limit, idle timeout, HTTP/1.1 parsing (hyper) and dispatch to
//! [`forward`](crate::forward) or [`tunnel`](crate::tunnel).

use std::convert::Infallible;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_common::audit::AuditLog;
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
use crate::config::{Config, Limits, Listen};
use crate::forward::{self, Pooled};
use crate::headers;
use crate::io::{Meter, Metered};
use crate::policy::Policy;
use crate::response;
use crate::target::Target;
use crate::tunnel;
use crate::upstream::Upstreams;

/// Connections being refused (503) at once, beyond which they are just
/// closed.
const MAX_REFUSING: usize = 64;
/// Time a refused connection gets to read its 503.
const REFUSE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {0}")]
    Bind(Listen, #[source] io::Error),
    #[error("cannot listen on unix:{0}: a running process is listening on that socket")]
    SocketInUse(PathBuf),
    #[error(
        "cannot listen on unix:{0}: the path exists and is not a socket; refusing to replace it"
    )]
    NotASocket(PathBuf),
    #[error("cannot remove the stale socket {0}")]
    RemoveStale(PathBuf, #[source] io::Error),
    #[error("cannot set up signal handling")]
    Signals(#[source] io::Error),
    #[error(transparent)]
    Sandbox(#[from] airlock_common::sandbox::SandboxError),
    #[error(transparent)]
    Seccomp(#[from] airlock_common::seccomp::SeccompError),
}

/// What every connection needs.
pub struct Shared {
    pub upstreams: Upstreams,
    pub policy: Policy,
    pub audit: Option<Arc<AuditLog>>,
    pub limits: Limits,
    refusing: Arc<Semaphore>,
}

impl Shared {
    pub fn new(
        upstreams: Upstreams,
        policy: Policy,
        audit: Option<Arc<AuditLog>>,
        limits: Limits,
    ) -> Shared {
        Shared {
            upstreams,
            policy,
            audit,
            limits,
            refusing: Arc::new(Semaphore::new(MAX_REFUSING)),
        }
    }

    /// Applies the policy to `target`: `Some` is the 403 to send instead.
    pub fn refusal(
        &self,
        target: &Target,
        exchange: &Arc<Exchange>,
        client: &str,
    ) -> Option<Response<ProxyBody>> {
        let verdict = self.policy.evaluate(&target.host);
        exchange.set_verdict(verdict);
        if verdict.allowed {
            return None;
        }
        let why = self.policy.explain(&verdict);
        ratelimited!(
            log::Level::Info,
            "{client}: {target} forbidden by policy: {why}"
        );
        Some(response::text(
            StatusCode::FORBIDDEN,
            Some("http_request_denied"),
            format!(
                "forbidden by policy: {why}\n\
                 {target} may not be reached through airlock-proxy.\n"
            ),
            exchange,
        ))
    }
}

/// One client connection: who it is, its kept-alive origin connection, and
/// its `--max-connections` slot (held until the connection and any tunnel
/// it became are gone).
pub struct ClientConn {
    pub client: Arc<str>,
    kept: Mutex<Option<Pooled>>,
    _slot: OwnedSemaphorePermit,
}

impl ClientConn {
    pub fn take_kept(&self) -> Option<Pooled> {
        self.kept.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    pub fn keep(&self, pooled: Pooled) {
        *self.kept.lock().unwrap_or_else(|e| e.into_inner()) = Some(pooled);
    }
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

    let shared = Arc::new(Shared::new(
        config.upstreams,
        config.policy,
        audit,
        config.limits,
    ));
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
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ServerError::SocketInUse(path.to_owned()));
            }
            std::fs::remove_file(path).map_err(|e| ServerError::RemoveStale(path.to_owned(), e))?;
        }
        Ok(_) => return Err(ServerError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(ServerError::Bind(listen.clone(), e)),
    }
    // SAFETY: umask(2) has no memory-safety preconditions and cannot fail.
    // It is process-wide: this runs at startup, before any connection is
    // served, so nothing else of ours creates files meanwhile; the socket is
    // therefore never accessible to others, not even briefly.
    let old_mask = unsafe { libc::umask(0o177) };
    let result = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above; this restores the previous mask.
    unsafe { libc::umask(old_mask) };
    let std_listener = result.map_err(|e| ServerError::Bind(listen.clone(), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| match owner {
            Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid)),
            None => Ok(()),
        })
        .and_then(|()| std_listener.set_nonblocking(true))
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
                start(stream, Arc::from(peer.to_string()), &shared, &slots);
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
                start(stream, Arc::from(client), &shared, &slots);
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// Serves a new connection if a slot is free, else answers 503.
fn start<I>(io: I, client: Arc<str>, shared: &Arc<Shared>, slots: &Arc<Semaphore>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match slots.clone().try_acquire_owned() {
        Ok(slot) => {
            tokio::spawn(serve_connection(io, client, shared.clone(), slot));
        }
        Err(_) => {
            let limit = shared.limits.max_connections;
            ratelimited!(
                log::Level::Warn,
                "refusing connection from {client}: --max-connections {limit} reached"
            );
            if let Ok(permit) = shared.refusing.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(REFUSE_GRACE, refuse_busy(io, limit)).await;
                    drop(permit);
                });
            }
        }
    }
}

/// Writes a 503 and lets the client read it: the write side is shut and
/// what the client sends is drained, so closing does not reset the
/// connection before the answer is read.
async fn refuse_busy<I: AsyncRead + AsyncWrite + Unpin>(mut io: I, limit: usize) -> io::Result<()> {
    let body = format!(
        "503 Service Unavailable (airlock-proxy)\n\
         too many connections: --max-connections {limit} reached; try again later\n"
    );
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\n\
         content-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\n\
         proxy-status: {}; error=connection_limit_reached\r\n\
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
    let io = TokioIo::new(Metered::new(io, meter.clone()));
    let conn = Arc::new(ClientConn {
        client: client.clone(),
        kept: Mutex::new(None),
        _slot: slot,
    });
    let service_shared = shared.clone();
    let service = service_fn(move |req| {
        let shared = service_shared.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(req, shared, conn).await) }
    });
    let idle = shared.limits.idle_timeout;
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .max_buf_size(shared.limits.max_header_bytes)
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .keep_alive(true);
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::select! {
        result = connection => {
            if let Err(e) = result {
                connection_error(&e, &client, &shared);
            }
        }
        () = meter.idle(idle) => log::debug!("{client}: closing connection idle for {idle:?}"),
    }
}

/// Reports a connection hyper gave up on. For malformed requests hyper has
/// already answered (400, or 431 for headers over --max-header-bytes).
fn connection_error(e: &hyper::Error, client: &str, shared: &Shared) {
    let status = if e.is_parse_too_large() {
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    } else if e.is_parse() {
        StatusCode::BAD_REQUEST
    } else {
        log::debug!("{client}: connection ended: {e}");
        return;
    };
    ratelimited!(
        log::Level::Info,
        "{client}: malformed request ({e}): answered {status}"
    );
    record_rejected(
        shared.audit.as_deref(),
        client,
        status,
        format!("malformed request: {e}"),
    );
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
