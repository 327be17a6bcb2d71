//! Accepting and serving connections for roster's API and the dev-target.
//!
//! - TLS with rustls, as a poem [`Acceptor`] around another acceptor. The handshake runs
//!   lazily inside the connection's own task (on its first read or write), never in the accept
//!   loop, so one client that stalls its handshake cannot stop others from being accepted.
//! - [`serve`]: roster's own HTTP/1.1 loop (instead of `poem::Server`), so that slow clients
//!   cannot exhaust the process (DESIGN §9): at most `max_connections` connections are served
//!   at once (a permit is taken *before* accepting, so more wait in the kernel's backlog); a
//!   request head (and an idle keep-alive connection's next one) must arrive within
//!   `read_timeout`, or the connection is closed; a request body that makes no progress for
//!   `read_timeout` while a handler waits for it fails its read with [`BodyStalled`], which
//!   the API answers with 408.
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use poem::http::uri::Scheme;
use poem::listener::Acceptor;
use poem::web::{LocalAddr, RemoteAddr};
use poem::{Endpoint, EndpointExt, IntoEndpoint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

/// Wraps `inner`'s connections in TLS with `config`.
pub struct TlsAcceptor<A> {
    inner: A,
    tls: tokio_rustls::TlsAcceptor,
}

impl<A> TlsAcceptor<A> {
    pub fn new(inner: A, config: Arc<rustls::ServerConfig>) -> Self {
        Self {
            inner,
            tls: tokio_rustls::TlsAcceptor::from(config),
        }
    }
}

impl<A: Acceptor> Acceptor for TlsAcceptor<A> {
    type Io = LazyTls<A::Io>;

    fn local_addr(&self) -> Vec<LocalAddr> {
        self.inner.local_addr()
    }

    async fn accept(&mut self) -> io::Result<(Self::Io, LocalAddr, RemoteAddr, Scheme)> {
        let (io, local, remote, _) = self.inner.accept().await?;
        Ok((
            LazyTls::Handshaking(Box::new(self.tls.accept(io))),
            local,
            remote,
            Scheme::HTTPS,
        ))
    }
}

/// A server-side TLS stream whose handshake completes on first use.
pub enum LazyTls<Io> {
    Handshaking(Box<tokio_rustls::Accept<Io>>),
    Ready(Box<tokio_rustls::server::TlsStream<Io>>),
    Failed,
}

impl<Io: AsyncRead + AsyncWrite + Unpin> LazyTls<Io> {
    /// Drives the handshake; `Ready(Ok)` once the stream is usable.
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match self {
                LazyTls::Handshaking(accept) => match Pin::new(accept.as_mut()).poll(cx) {
                    Poll::Ready(Ok(stream)) => *self = LazyTls::Ready(Box::new(stream)),
                    Poll::Ready(Err(e)) => {
                        *self = LazyTls::Failed;
                        return Poll::Ready(Err(e));
                    }
                    Poll::Pending => return Poll::Pending,
                },
                LazyTls::Ready(_) => return Poll::Ready(Ok(())),
                LazyTls::Failed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "TLS handshake failed",
                    )));
                }
            }
        }
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin> AsyncRead for LazyTls<Io> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_ready(cx))?;
        match this {
            LazyTls::Ready(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
            _ => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }
}

impl<Io: AsyncRead + AsyncWrite + Unpin> AsyncWrite for LazyTls<Io> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_ready(cx))?;
        match this {
            LazyTls::Ready(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
            _ => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        std::task::ready!(this.poll_ready(cx))?;
        match this {
            LazyTls::Ready(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
            _ => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this {
            LazyTls::Ready(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
            _ => Poll::Ready(Ok(())),
        }
    }
}

/// What [`serve`] holds every connection to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `ROSTER_HTTP_READ_TIMEOUT_SECS`: the longest wait for a request head (from the
    /// connection's start or the previous answer) and for each piece of a request body.
    pub read_timeout: Duration,
    /// `ROSTER_MAX_CONNECTIONS`: connections served at once.
    pub max_connections: usize,
    /// After `stop`: how long requests under way may take before their connections are cut.
    pub drain: Duration,
}

/// How many connections [`serve`] holds open now (those waiting above the cap are not
/// counted).
#[derive(Debug, Clone, Default)]
pub struct OpenConnections(Arc<std::sync::atomic::AtomicUsize>);

impl OpenConnections {
    pub fn get(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts one until the guard is dropped.
    fn hold(&self) -> impl Drop + Send + use<> {
        struct Held(Arc<std::sync::atomic::AtomicUsize>);
        impl Drop for Held {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Held(self.0.clone())
    }
}

/// Serves `ep` over HTTP/1.1 on `acceptor`'s connections within `limits` until `stop` is
/// cancelled; then stops accepting, lets requests under way finish (up to `limits.drain`) and
/// closes idle connections.
pub async fn serve<A, E>(
    mut acceptor: A,
    ep: E,
    limits: Limits,
    open: OpenConnections,
    stop: CancellationToken,
) -> io::Result<()>
where
    A: Acceptor,
    E: IntoEndpoint,
    E::Endpoint: 'static,
{
    let ep: Arc<poem::endpoint::BoxEndpoint<'static>> =
        Arc::new(ep.into_endpoint().map_to_response().boxed());
    // `Config` caps the variable at 1,000,000; a semaphore holds at most `u32::MAX` permits.
    let cap = u32::try_from(limits.max_connections.max(1)).unwrap_or(u32::MAX);
    let permits = Arc::new(Semaphore::new(cap as usize));
    // Cancelled once the drain time is over: connections still open are dropped.
    let cut = CancellationToken::new();
    loop {
        // The permit comes first: above the cap, connections wait unaccepted.
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = acceptor.accept() => accepted,
        };
        let (io, local, remote, scheme) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                tracing::warn!(error = %e, "cannot accept a connection");
                drop(permit);
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        let connection = Connection {
            ep: ep.clone(),
            local,
            remote,
            scheme,
            read_timeout: limits.read_timeout,
        };
        let (draining, cut) = (stop.clone(), cut.clone());
        let counted = open.hold();
        tokio::spawn(async move {
            connection.run(io, draining, cut).await;
            drop(counted);
            drop(permit);
        });
    }
    // New connections are refused from here on.
    drop(acceptor);
    let all_back = permits.acquire_many(cap);
    if tokio::time::timeout(limits.drain, all_back).await.is_err() {
        tracing::info!("requests still under way after the drain time: closing their connections");
        cut.cancel();
        let _ = permits.acquire_many(cap).await;
    }
    Ok(())
}

struct Connection {
    ep: Arc<poem::endpoint::BoxEndpoint<'static>>,
    local: LocalAddr,
    remote: RemoteAddr,
    scheme: Scheme,
    read_timeout: Duration,
}

impl Connection {
    async fn run<Io>(self, io: Io, stop: CancellationToken, cut: CancellationToken)
    where
        Io: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let Connection {
            ep,
            local,
            remote,
            scheme,
            read_timeout,
        } = self;
        let remote_for_log = remote.clone();
        let service = hyper::service::service_fn(move |req: poem::http::Request<Incoming>| {
            let ep = ep.clone();
            let mut req: poem::Request =
                (req, local.clone(), remote.clone(), scheme.clone()).into();
            let body: BoxBody<Bytes, io::Error> = req.take_body().into();
            req.set_body(poem::Body::from(BoxBody::new(StallGuard::new(
                body,
                read_timeout,
            ))));
            async move {
                let resp = ep.get_response(req).await;
                Ok::<_, Infallible>(hyper::Response::<BoxBody<Bytes, io::Error>>::from(resp))
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(read_timeout)
            .serve_connection(TokioIo::new(io), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            result = conn.as_mut() => result,
            _ = stop.cancelled() => {
                // An idle connection closes now; one with a request under way after its answer.
                conn.as_mut().graceful_shutdown();
                tokio::select! {
                    result = conn.as_mut() => result,
                    _ = cut.cancelled() => Ok(()),
                }
            }
        };
        if let Err(e) = result {
            if e.is_timeout() {
                tracing::debug!(
                    remote = %remote_for_log,
                    timeout_secs = read_timeout.as_secs(),
                    "slow client cut off: no complete request head within the read timeout"
                );
            } else {
                tracing::debug!(remote = %remote_for_log, error = %e, "connection ended with an error");
            }
        }
    }
}

/// The error a request body's read fails with when no data came for the read timeout.
#[derive(Debug, thiserror::Error)]
#[error("no data of the request body arrived for {secs} s")]
pub struct BodyStalled {
    pub secs: u64,
}

/// `Some` when `e` (or an I/O error it wraps) is a stalled body's.
pub fn body_stalled(mut e: &io::Error) -> Option<&BodyStalled> {
    loop {
        let inner = e.get_ref()?;
        if let Some(stalled) = inner.downcast_ref::<BodyStalled>() {
            return Some(stalled);
        }
        e = inner.downcast_ref::<io::Error>()?;
    }
}

/// A request body whose read fails with [`BodyStalled`] once roster has waited `timeout` for
/// its next piece. The clock runs only while roster waits for data, so a handler that reads
/// slowly itself (a long upload written in batches) is never cut off, and a body as large as
/// the route allows may take as long as it needs while it keeps coming.
struct StallGuard<B> {
    inner: B,
    timeout: Duration,
    timer: Pin<Box<Sleep>>,
    waiting: bool,
}

impl<B> StallGuard<B> {
    fn new(inner: B, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            timer: Box::pin(tokio::time::sleep(timeout)),
            waiting: false,
        }
    }
}

impl<B> HttpBody for StallGuard<B>
where
    B: HttpBody<Data = Bytes, Error = io::Error> + Unpin,
{
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            this.waiting = false;
            return Poll::Ready(frame);
        }
        if !this.waiting {
            this.waiting = true;
            let deadline = tokio::time::Instant::now() + this.timeout;
            this.timer.as_mut().reset(deadline);
        }
        if this.timer.as_mut().poll(cx).is_ready() {
            this.waiting = false;
            let secs = this.timeout.as_secs();
            tracing::debug!(
                timeout_secs = secs,
                "slow client cut off: no request body data within the read timeout"
            );
            return Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                BodyStalled { secs },
            ))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stalled_body_is_recognised_through_wrapping_io_errors() {
        let stalled = io::Error::new(io::ErrorKind::TimedOut, BodyStalled { secs: 2 });
        assert_eq!(body_stalled(&stalled).map(|s| s.secs), Some(2));
        let wrapped = io::Error::other(stalled);
        assert_eq!(body_stalled(&wrapped).map(|s| s.secs), Some(2));
        assert!(body_stalled(&io::Error::other("reset")).is_none());
        assert!(body_stalled(&io::ErrorKind::TimedOut.into()).is_none());
    }

    #[tokio::test]
    async fn a_body_fails_after_the_timeout_without_data_and_not_while_data_comes() {
        use http_body_util::BodyExt;
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Frame<Bytes>, io::Error>>(4);
        let timeout = Duration::from_millis(800);
        let body = StallGuard::new(BoxBody::new(http_body_util::StreamBody::new(rx)), timeout);
        let mut body = std::pin::pin!(body);
        // Six pieces 200 ms apart: longer than the timeout in all, never that long without
        // data.
        let feeder = tokio::spawn(async move {
            for _ in 0..6 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let piece = Ok(Frame::data(Bytes::from_static(b"x")));
                if futures::SinkExt::send(&mut tx, piece).await.is_err() {
                    return;
                }
            }
            // Then nothing, with the body still open.
            std::future::pending::<()>().await;
        });
        for _ in 0..6 {
            let frame = body.frame().await.expect("a frame").expect("no error");
            assert_eq!(frame.into_data().ok(), Some(Bytes::from_static(b"x")));
        }
        let started = tokio::time::Instant::now();
        let err = body.frame().await.expect("an error").expect_err("stalled");
        assert!(started.elapsed() >= timeout);
        assert!(body_stalled(&err).is_some(), "{err}");
        feeder.abort();
    }
}
