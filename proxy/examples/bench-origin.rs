//! A fast HTTP/1.1 origin for `proxy/bench.sh`:
//! `GET /hello` → 13 bytes; `GET /bytes/N` → N bytes streamed in 64 KiB
//! chunks. Usage: `bench-origin 127.0.0.1:18080`.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

const CHUNK: usize = 64 * 1024;

enum Reply {
    Small(Option<Bytes>),
    Stream { chunk: Bytes, left: u64 },
}

impl Body for Reply {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        Poll::Ready(match this {
            Reply::Small(b) => b.take().map(|b| Ok(Frame::data(b))),
            Reply::Stream { chunk, left } => {
                if *left == 0 {
                    None
                } else {
                    let n = (*left).min(chunk.len() as u64) as usize;
                    *left -= n as u64;
                    Some(Ok(Frame::data(chunk.slice(..n))))
                }
            }
        })
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Reply::Small(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Reply::Small(None) => SizeHint::with_exact(0),
            Reply::Stream { left, .. } => SizeHint::with_exact(*left),
        }
    }
}

async fn route(req: Request<Incoming>, chunk: Bytes) -> Result<Response<Reply>, Infallible> {
    let path = req.uri().path();
    if path == "/hello" {
        return Ok(Response::new(Reply::Small(Some(Bytes::from_static(
            b"hello, bench\n",
        )))));
    }
    if let Some(n) = path.strip_prefix("/bytes/").and_then(|n| n.parse().ok()) {
        return Ok(Response::new(Reply::Stream { chunk, left: n }));
    }
    let mut r = Response::new(Reply::Small(Some(Bytes::from_static(b"not found\n"))));
    *r.status_mut() = StatusCode::NOT_FOUND;
    Ok(r)
}

#[tokio::main]
async fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18080".into());
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .unwrap_or_else(|e| panic!("cannot listen on {addr}: {e}"));
    let chunk = Bytes::from((0..CHUNK).map(|i| (i * 7 % 251) as u8).collect::<Vec<u8>>());
    eprintln!("bench-origin listening on {addr}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let chunk = chunk.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| route(req, chunk.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
