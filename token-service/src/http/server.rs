//! The HTTP/1.1 server of `authstamp serve`: hyper with a header read
//! timeout, a request timeout answered as JSON, an idle keep-alive timeout
//! and a cap on open connections, so that slow or idle clients cannot hold
//! the service's file descriptors.

use crate::http::error::ApiError;
use authstamp_protocol::ErrorCode;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt as _;

/// Limits of the HTTP server (flags of `authstamp serve`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Args)]
pub struct HttpLimits {
    /// A client must send a request's headers within this time, counted from
    /// when the connection opens or, on a kept-alive connection, from the
    /// request's first byte; else the connection is closed (slowloris).
    #[arg(long, env = "AUTHSTAMP_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// A request not answered within this time gets 408 `request_timeout`
    /// (longer than a refresh lease, so a lookup waiting for a refresh fits).
    #[arg(long, env = "AUTHSTAMP_REQUEST_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// A kept-alive connection waiting for its next request, no byte of it
    /// sent yet, is closed after this time.
    #[arg(long, env = "AUTHSTAMP_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Open connections at most; further clients wait in the listen backlog.
    /// Keep it below the process's file descriptor limit (`ulimit -n`).
    #[arg(long, env = "AUTHSTAMP_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
        }
    }
}

impl HttpLimits {
    pub fn validate(&self) -> anyhow::Result<()> {
        for (flag, value) in [
            ("--header-read-timeout", self.header_read_timeout),
            ("--request-timeout", self.request_timeout),
            ("--idle-timeout", self.idle_timeout),
        ] {
            if value.is_zero() {
                anyhow::bail!("{flag} must be longer than 0s");
            }
        }
        let most = u32::try_from(Semaphore::MAX_PERMITS).unwrap_or(u32::MAX);
        if self.max_connections == 0 || self.max_connections > most {
            anyhow::bail!("--max-connections must be between 1 and {most}");
        }
        Ok(())
    }
}

/// Adds the request timeout to `router` and serves it on `listener` until
/// `shutdown` completes; then waits for the open connections to finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let router = router.layer(axum::middleware::from_fn_with_state(
        limits.request_timeout,
        request_timeout,
    ));
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut accept_errors = AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.map_err(io::Error::other)?,
        };
        let stream = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    accept_errors.wait(&err).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            stream,
            router.clone(),
            limits,
            stop_rx.clone(),
            slot,
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a slot until it is closed.
    let _all = slots.acquire_many(limits.max_connections).await;
    Ok(())
}

/// Out of descriptors (EMFILE) and the like: wait a little instead of
/// spinning, and log at most once a second.
#[derive(Default)]
struct AcceptErrors {
    last_logged: Option<Instant>,
}

impl AcceptErrors {
    async fn wait(&mut self, err: &io::Error) {
        if matches!(
            err.kind(),
            io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
        ) {
            return;
        }
        if self
            .last_logged
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(error = %err, "could not accept a connection (out of file descriptors? lower --max-connections or raise ulimit -n)");
            self.last_logged = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn serve_connection(
    stream: TcpStream,
    router: Router,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
    _slot: OwnedSemaphorePermit,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked {
        inner: stream,
        activity: activity.clone(),
    });
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let router = router.clone();
        let in_flight = InFlight::enter(requests.clone());
        async move {
            let _in_flight = in_flight;
            router.oneshot(request.map(Body::new)).await
        }
    });
    // Header and idle timeouts are ours (below): hyper's header read timeout
    // would also run while a kept-alive connection waits for its next request.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.header_read_timeout(None).keep_alive(true);
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        let deadline = activity.deadline(&limits);
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(err) = served {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                break;
            }
            _ = stop.wait_for(|stop| *stop), if !closing => {
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = activity.changed.notified() => {}
            // Also while closing: a graceful shutdown waits for a started
            // request head, which a slow client would never finish.
            () = tokio::time::sleep_until(deadline.at.into()) => {
                // Re-checked: a request may have begun meanwhile.
                if activity.deadline(&limits).at <= Instant::now() {
                    match deadline.kind {
                        // Dropping the connection closes the socket at once.
                        Wait::Head => break,
                        Wait::Idle if closing => break,
                        Wait::Idle => {
                            connection.as_mut().graceful_shutdown();
                            closing = true;
                        }
                        Wait::Request => {}
                    }
                }
            }
        }
    }
}

/// What a connection is waiting for, and until when.
#[derive(Clone, Copy)]
struct Deadline {
    at: Instant,
    kind: Wait,
}

#[derive(Clone, Copy)]
enum Wait {
    /// The head of a request: the first one, or one whose first bytes came.
    Head,
    /// The next request on a kept-alive connection, no bytes yet.
    Idle,
    /// A request in flight (bounded by the request timeout layer).
    Request,
}

/// A connection's timeline: milliseconds since it opened.
struct Activity {
    opened: Instant,
    /// Last byte read or written.
    last_ms: AtomicU64,
    /// When the first byte of a request head not yet complete arrived, plus
    /// one; 0: none pending.
    head_started_ms: AtomicU64,
    /// Requests begun on this connection.
    requests: AtomicU64,
    in_flight: AtomicUsize,
    /// Wakes the connection's timer when what it waits for changes.
    changed: tokio::sync::Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            opened: Instant::now(),
            last_ms: AtomicU64::new(0),
            head_started_ms: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn at(&self, ms: u64) -> Instant {
        self.opened + Duration::from_millis(ms)
    }

    fn touch(&self) {
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Bytes came in: between requests they start a request head.
    fn read(&self) {
        let now = self.now_ms();
        self.last_ms.store(now, Ordering::Relaxed);
        if self.in_flight.load(Ordering::Relaxed) == 0
            && self
                .head_started_ms
                .compare_exchange(
                    0,
                    now.saturating_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
        {
            self.changed.notify_one();
        }
    }

    fn deadline(&self, limits: &HttpLimits) -> Deadline {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Deadline {
                at: Instant::now() + limits.header_read_timeout,
                kind: Wait::Request,
            };
        }
        let head_started = self.head_started_ms.load(Ordering::Relaxed);
        if self.requests.load(Ordering::Relaxed) == 0 {
            return Deadline {
                at: self.opened + limits.header_read_timeout,
                kind: Wait::Head,
            };
        }
        if head_started > 0 {
            return Deadline {
                at: self.at(head_started - 1) + limits.header_read_timeout,
                kind: Wait::Head,
            };
        }
        Deadline {
            at: self.at(self.last_ms.load(Ordering::Relaxed)) + limits.idle_timeout,
            kind: Wait::Idle,
        }
    }
}

/// Counts a request as in flight until its response is ready.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: Arc<Activity>) -> Self {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.requests.fetch_add(1, Ordering::Relaxed);
        activity.head_started_ms.store(0, Ordering::Relaxed);
        activity.changed.notify_one();
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.0.touch();
        self.0.changed.notify_one();
    }
}

/// A stream that records its last read or write in [`Activity`].
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// 408 `request_timeout` for a request not answered within the limit. A
/// refresh the request started goes on in its own task.
async fn request_timeout(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            ErrorCode::RequestTimeout,
            format!(
                "the request was not answered within {}",
                humantime::format_duration(limit)
            ),
        )
        .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::AsyncWriteExt as _;

    async fn start(router: Router, limits: HttpLimits) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener, router, limits, std::future::pending()));
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_request_over_the_request_timeout_is_answered_408_in_json() {
        let router = Router::new().route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        );
        let limits = HttpLimits {
            request_timeout: Duration::from_millis(200),
            ..HttpLimits::default()
        };
        let url = start(router, limits).await;
        let started = Instant::now();
        let reply = reqwest::get(format!("{url}/slow")).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(reply.status(), 408);
        assert_eq!(reply.headers()["x-authstamp-error"], "request_timeout");
        let body: serde_json::Value = reply.json().await.unwrap();
        assert_eq!(body["error"], "request_timeout");
        assert!(body["message"].as_str().unwrap().contains("200ms"));
    }

    #[tokio::test]
    async fn past_max_connections_a_client_waits_for_a_free_slot() {
        let router = Router::new().route("/", get(|| async { "ok" }));
        let limits = HttpLimits {
            max_connections: 1,
            header_read_timeout: Duration::from_millis(500),
            ..HttpLimits::default()
        };
        let url = start(router, limits).await;
        // First in the listen backlog, so it takes the only slot, until the
        // header timeout closes it.
        let mut slow = TcpStream::connect(url.trim_start_matches("http://"))
            .await
            .unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let started = Instant::now();
        let reply = reqwest::get(&url).await.unwrap();
        assert_eq!(reply.status(), 200);
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(300), "waited {waited:?}");
    }

    /// The header timeout counts from a request's first byte: a kept-alive
    /// connection waits for its next request up to the idle timeout, and a
    /// request head started but not finished is cut at the header timeout.
    #[tokio::test]
    async fn kept_alive_connections_wait_idle_but_slow_heads_are_cut() {
        use tokio::io::AsyncReadExt as _;
        let router = Router::new().route("/", get(|| async { "ok" }));
        let limits = HttpLimits {
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(10),
            ..HttpLimits::default()
        };
        let url = start(router, limits).await;
        let mut stream = TcpStream::connect(url.trim_start_matches("http://"))
            .await
            .unwrap();
        let mut buf = vec![0u8; 1024];
        for _ in 0..2 {
            stream
                .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap();
            let n = stream.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
            // Three header timeouts of keep-alive, well inside the idle one.
            tokio::time::sleep(Duration::from_millis(900)).await;
        }
        stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let started = Instant::now();
        let end = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .unwrap();
        assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn shutdown_does_not_wait_for_a_slow_client() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let limits = HttpLimits {
            header_read_timeout: Duration::from_secs(1),
            ..HttpLimits::default()
        };
        let router = Router::new().route("/", get(|| async { "ok" }));
        let server = tokio::spawn(serve(listener, router, limits, async {
            let _ = stopped.await;
        }));
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        // Served once: the slow connection was accepted before it.
        let reply = reqwest::get(format!("http://{addr}/")).await.unwrap();
        assert_eq!(reply.status(), 200);
        let started = Instant::now();
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("shutdown finishes")
            .unwrap()
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[test]
    fn limits_are_validated() {
        assert!(HttpLimits::default().validate().is_ok());
        let zero = HttpLimits {
            max_connections: 0,
            ..HttpLimits::default()
        };
        assert!(zero.validate().is_err());
        let instant = HttpLimits {
            header_read_timeout: Duration::ZERO,
            ..HttpLimits::default()
        };
        assert!(instant.validate().is_err());
    }
}
