//! Byte counting and idle detection for sockets: [`Metered`] wraps any
//! tokio stream and records, in a shared [`Meter`], how many bytes were read
//! and written and when the last one moved; [`Meter::idle`] resolves once
//! nothing has moved for a given time. [`SharedIo`] lets the server answer
//! on a connection hyper has given up on.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

pub struct Meter {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last read or write.
    last: AtomicU64,
    read: AtomicU64,
    written: AtomicU64,
    /// `read` when the last byte was written.
    read_at_last_write: AtomicU64,
}

impl Meter {
    pub fn new() -> Arc<Self> {
        Arc::new(Meter {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
            read: AtomicU64::new(0),
            written: AtomicU64::new(0),
            read_at_last_write: AtomicU64::new(0),
        })
    }

    /// Bytes read since the last write: on a client connection, the part
    /// of a request that has not been answered (a head still arriving).
    pub fn unanswered(&self) -> u64 {
        self.bytes_read()
            .saturating_sub(self.read_at_last_write.load(Ordering::Relaxed))
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        self.last.store(self.now_ms(), Ordering::Relaxed);
    }

    pub fn bytes_read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    pub fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// How long since the last byte moved.
    pub fn idle_for(&self) -> Duration {
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last.load(Ordering::Relaxed)),
        )
    }

    /// Resolves once no byte has moved for `timeout`.
    pub async fn idle(&self, timeout: Duration) {
        loop {
            let idle = self.idle_for();
            if idle >= timeout {
                return;
            }
            tokio::time::sleep(timeout - idle).await;
        }
    }
}

pub struct Metered<T> {
    inner: T,
    meter: Arc<Meter>,
}

impl<T> Metered<T> {
    pub fn new(inner: T, meter: Arc<Meter>) -> Self {
        meter.touch();
        Metered { inner, meter }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Metered<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            let n = buf.filled().len().saturating_sub(before);
            if n > 0 {
                this.meter.read.fetch_add(n as u64, Ordering::Relaxed);
                this.meter.touch();
            }
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Metered<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            this.record_write(n);
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            this.record_write(n);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T> Metered<T> {
    fn record_write(&self, n: usize) {
        if n > 0 {
            self.meter.written.fetch_add(n as u64, Ordering::Relaxed);
            self.meter
                .read_at_last_write
                .store(self.meter.bytes_read(), Ordering::Relaxed);
            self.meter.touch();
        }
    }
}

/// An I/O object shared by hyper, which serves the connection through one
/// handle, and the server, which keeps another to answer once hyper has
/// given up on it (hyper closes a connection whose request head times out
/// without a word; the server sends 408). Each read or write locks it for
/// the duration of that call only.
pub struct SharedIo<T> {
    inner: Arc<Mutex<T>>,
}

impl<T> Clone for SharedIo<T> {
    fn clone(&self) -> Self {
        SharedIo {
            inner: self.inner.clone(),
        }
    }
}

impl<T> SharedIo<T> {
    pub fn new(io: T) -> Self {
        SharedIo {
            inner: Arc::new(Mutex::new(io)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SharedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SharedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.lock()).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.lock().is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.lock()).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn counts_and_detects_idleness() {
        let (a, mut b) = tokio::io::duplex(64);
        let meter = Meter::new();
        let mut m = Metered::new(a, meter.clone());
        m.write_all(b"hello").await.unwrap();
        b.write_all(b"abc").await.unwrap();
        let mut buf = [0u8; 3];
        m.read_exact(&mut buf).await.unwrap();
        assert_eq!((meter.bytes_read(), meter.bytes_written()), (3, 5));
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(meter.idle_for() >= Duration::from_secs(3));
        m.write_all(b"x").await.unwrap();
        assert!(meter.idle_for() < Duration::from_secs(1));
        let start = tokio::time::Instant::now();
        meter.idle(Duration::from_secs(10)).await;
        assert!(start.elapsed() >= Duration::from_secs(10));
    }

    #[tokio::test]
    async fn unanswered_bytes_are_those_read_since_the_last_write() {
        let (a, mut b) = tokio::io::duplex(64);
        let meter = Meter::new();
        let mut m = Metered::new(a, meter.clone());
        let mut buf = [0u8; 8];
        b.write_all(b"GET /").await.unwrap();
        let n = m.read(&mut buf).await.unwrap();
        assert_eq!(meter.unanswered(), n as u64);
        m.write_all(b"HTTP/1.1 200").await.unwrap();
        assert_eq!(meter.unanswered(), 0);
        b.write_all(b"GE").await.unwrap();
        let n = m.read(&mut buf).await.unwrap();
        assert_eq!(meter.unanswered(), n as u64);
    }

    #[tokio::test]
    async fn a_shared_io_answers_after_the_other_handle_is_gone() {
        let (a, mut b) = tokio::io::duplex(64);
        let first = SharedIo::new(a);
        let mut second = first.clone();
        drop(first);
        second.write_all(b"408").await.unwrap();
        let mut buf = [0u8; 3];
        b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"408");
    }
}
