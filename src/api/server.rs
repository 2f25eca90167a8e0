//! The HTTP server: hyper's HTTP/1.1 under bounds, so that no client can hold a socket, a slot
//! or a buffer for long without sending a request (`[http]` in the config):
//!
//! - at most `max_connections` connections at once; one past it is answered `503` with
//!   `Connection: close` at once, without reading it, and closed;
//! - the head of each request must arrive within `header_timeout_secs`, counted from when the
//!   server waits for it: on a kept-alive connection that is also how long it may stay idle
//!   between requests (hyper's header-read timeout);
//! - a request's body must arrive within `body_timeout_secs` ([`bounded_body`]), else
//!   `408 request_timeout` and the connection closes;
//! - a connection on which no byte moves either way for `idle_timeout_secs` is closed, whatever
//!   it is doing (a client that stops reading our answer).
//!
//! At shutdown, requests under way finish and kept-alive connections close.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::Service;

use super::{ApiError, MAX_BODY_BYTES};
use crate::config::HttpSettings;
use crate::metrics::METRICS;
use crate::shutdown::{Shutdown, DRAIN_TIMEOUT};
use crate::tls::TlsAcceptor;

/// The bounds of `[http]`, as durations, and the connection slots that HTTP and HTTPS share
/// (`http.max_connections` is one cap for both).
#[derive(Debug, Clone)]
pub struct Bounds {
    pub slots: Arc<Semaphore>,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
}

impl Bounds {
    pub fn of(settings: &HttpSettings) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(settings.max_connections)),
            header_timeout: Duration::from_secs(settings.header_timeout_secs),
            body_timeout: Duration::from_secs(settings.body_timeout_secs),
            idle_timeout: Duration::from_secs(settings.idle_timeout_secs),
        }
    }
}

/// What a connection past `http.max_connections` is told before it is closed.
fn busy() -> Vec<u8> {
    let body = r#"{"error":{"code":"unavailable","message":"too many HTTP connections; retry in a moment"}}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nconnection: close\r\nretry-after: 1\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves `app` on `listener` under `bounds` until `shutdown`, then lets requests under way
/// finish (for up to [`DRAIN_TIMEOUT`]). With `tls`, each connection first completes a TLS
/// handshake, within the header timeout.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    bounds: Bounds,
    mut shutdown: Shutdown,
) {
    let app = app.layer(axum::middleware::from_fn_with_state(
        bounds.body_timeout,
        bounded_body,
    ));
    let busy = busy();
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.recv() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting an HTTP connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = bounds.slots.clone().try_acquire_owned() else {
            if tls.is_none() {
                // Never blocks: a client that does not read this loses it.
                let _ = tcp.try_write(&busy);
            }
            tracing::debug!(%peer, "HTTP connection refused: http.max_connections reached");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        METRICS.http_connections.fetch_add(1, Ordering::Relaxed);
        let (app, tls, watcher) = (app.clone(), tls.clone(), graceful.watcher());
        let bounds = bounds.clone();
        tokio::spawn(async move {
            match tls {
                None => connection(tcp, peer, app, bounds, watcher).await,
                Some(tls) => {
                    match tokio::time::timeout(bounds.header_timeout, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => connection(stream, peer, app, bounds, watcher).await,
                        _ => tracing::debug!(%peer, "HTTPS handshake failed or too slow"),
                    }
                }
            }
            METRICS.http_connections.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP requests still open after {DRAIN_TIMEOUT:?}; closing them");
    }
}

/// Serves one connection (plain or TLS) until it ends, goes idle, or the server stops.
async fn connection<S>(stream: S, peer: SocketAddr, app: Router, bounds: Bounds, watcher: Watcher)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = hyper::service::service_fn(move |mut request: Request<_>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        // A router is always ready; each request gets its own handle.
        app.clone().call(request.map(Body::new))
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_timeout)
        .serve_connection(io, service);
    tokio::select! {
        served = watcher.watch(connection) => {
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "HTTP connection ended");
            }
        }
        _ = activity.idle_for(bounds.idle_timeout) => {
            tracing::debug!(%peer, "HTTP connection closed: idle");
        }
    }
}

/// Reads a request's body within `timeout` (and at most [`MAX_BODY_BYTES`]) before the handler
/// runs; a body that does not come in time gets `408` and the connection closes.
async fn bounded_body(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return close(ApiError::payload_too_large().into_response());
    }
    let bytes =
        match tokio::time::timeout(timeout, axum::body::to_bytes(body, MAX_BODY_BYTES)).await {
            Ok(Ok(bytes)) => bytes,
            // Too long, or the client went away (then nobody reads this).
            Ok(Err(_)) => return close(ApiError::payload_too_large().into_response()),
            Err(_) => {
                let error = ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!("the request body did not arrive within {timeout:?}"),
                );
                return close(error.into_response());
            }
        };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Asks hyper to close the connection after this answer (its body may be half read).
fn close(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// When a byte last moved on a connection, in ms since it opened.
struct Activity {
    opened: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = self.opened.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + limit;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// A socket that notes each read and write that moved bytes.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
