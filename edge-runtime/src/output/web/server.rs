//! The live view's HTTP side: the accept loop with its connection cap, the socket wrapper with
//! the idle and write timeouts, hyper's HTTP/1 connection with the header caps and header-read
//! timeout, the routes, the `Host` allow-list, the token check and the event-stream body.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use boards::LiveViewSettings;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};

use super::{INDEX_HTML, WebHub};

/// The cookie the page gets when it was opened with `?token=`, so that its event stream (which
/// cannot set headers) carries the token.
const TOKEN_COOKIE: &str = "live_view_token";

/// Server-sent-event comments at most this far apart keep proxies and the idle timeout quiet.
const MAX_HEARTBEAT: Duration = Duration::from_secs(15);

/// What the connections share.
pub(super) struct State {
    pub hub: Arc<WebHub>,
    pub limits: LiveViewSettings,
    pub token: Option<String>,
}

/// Accepts connections until the hub is closed. At most `max_connections` are served at once;
/// one more is answered `503` and closed at once, without reading it.
pub(super) async fn serve(listener: std::net::TcpListener, state: Arc<State>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("live view: cannot use the listening socket: {e}");
            return;
        }
    };
    let slots = Arc::new(Semaphore::new(state.limits.max_connections));
    loop {
        let accepted = tokio::select! {
            biased;
            () = state.hub.shutdown.notified() => break,
            r = listener.accept() => r,
        };
        if state.hub.closed.load(Ordering::Relaxed) {
            break;
        }
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait rather than spin.
                tracing::warn!("live view: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            state
                .hub
                .connections_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::debug!("live view: {peer} refused, max_connections open");
            // Best effort, never waits: the socket buffer of a fresh connection takes it.
            let _ = stream.try_write(BUSY);
            // Whatever the client already sent is read away (without waiting), so that closing
            // sends a FIN after the 503 rather than a reset that may discard it.
            let mut discard = [0u8; 1024];
            while matches!(stream.try_read(&mut discard), Ok(n) if n > 0) {}
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = serve_connection(stream, &state).await {
                tracing::debug!("live view: {peer}: {e}");
            }
        });
    }
}

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 26\r\nConnection: close\r\n\r\ntoo many connections open\n";

async fn serve_connection(stream: TcpStream, state: &Arc<State>) -> Result<(), hyper::Error> {
    let _ = stream.set_nodelay(true);
    let l = &state.limits;
    let io = TimedIo::new(
        stream,
        Duration::from_millis(l.idle_timeout_ms),
        Duration::from_millis(l.write_timeout_ms),
    );
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(l.header_timeout_ms))
        // hyper never buffers more than max_buf_size of an unfinished head (8 KiB at least),
        // and refuses a finished one over max_header_size.
        .max_buf_size(l.max_header_bytes.max(8192))
        .max_header_size(l.max_header_bytes)
        .max_headers(l.max_headers)
        // One request per connection, as the view always did: no idle keep-alive connections.
        .keep_alive(false);
    let st = state.clone();
    let service = hyper::service::service_fn(move |req| {
        let response = respond(&st, &req);
        async move { Ok::<_, Infallible>(response) }
    });
    http.serve_connection(TokioIo::new(io), service).await
}

fn respond(state: &State, req: &Request<Incoming>) -> Response<LiveBody> {
    // Both the Host header and an absolute-form target's authority must name this cart.
    let allowed = &state.limits.allowed_hosts;
    let header_host = req.headers().get(header::HOST).map(|h| h.to_str().ok());
    let target_host = req.uri().authority().map(|a| a.as_str());
    let host_ok = match (header_host, target_host) {
        (None, None) | (Some(None), _) => false,
        (Some(Some(h)), t) => {
            host_allowed(h, allowed) && t.is_none_or(|t| host_allowed(t, allowed))
        }
        (None, Some(t)) => host_allowed(t, allowed),
    };
    if !host_ok {
        let host = header_host.flatten().or(target_host);
        tracing::debug!("live view: refused Host {host:?}");
        return plain(
            StatusCode::MISDIRECTED_REQUEST,
            "unknown host name; add it to live_view.allowed_hosts\n",
        );
    }
    let mut set_cookie = None;
    if let Some(token) = &state.token {
        match presented_token(req) {
            Some((given, from_query)) if same_secret(given, token) => {
                if from_query {
                    set_cookie = Some(token.clone());
                }
            }
            _ => return plain(StatusCode::FORBIDDEN, "a valid token is required\n"),
        }
    }
    if req.method() != Method::GET {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let hub = &state.hub;
    let mut response = match req.uri().path() {
        "/" | "/index.html" => full(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(INDEX_HTML.as_bytes()),
        ),
        "/health" => plain(StatusCode::OK, "ok\n"),
        "/latest.json" => {
            let body = WebHub::lock(&hub.latest_json)
                .clone()
                .unwrap_or_else(|| "null".into());
            full(StatusCode::OK, "application/json", Bytes::from(body))
        }
        "/events" => events(state),
        _ => plain(StatusCode::NOT_FOUND, "not found\n"),
    };
    if let Some(t) = set_cookie
        && let Ok(v) = HeaderValue::from_str(&format!(
            "{TOKEN_COOKIE}={t}; Path=/; HttpOnly; SameSite=Strict"
        ))
    {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

fn events(state: &State) -> Response<LiveBody> {
    let hub = &state.hub;
    let l = &state.limits;
    let Some(rx) = hub.add_viewer(l.max_viewers, l.viewer_queue) else {
        return plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many live views open\n",
        );
    };
    let mut prelude = VecDeque::from([Bytes::from_static(b"retry: 1000\n\n")]);
    // The trend before the newest prediction, so that the prediction is never older than the
    // trend's end (the page appends it unless the trend already holds it).
    let started = WebHub::lock(&hub.started).clone();
    let trend = hub.trend_message();
    let latest = WebHub::lock(&hub.latest).clone();
    prelude.extend(started);
    prelude.extend(trend);
    prelude.extend(latest);
    let every = MAX_HEARTBEAT
        .min(Duration::from_millis(l.idle_timeout_ms / 3).max(Duration::from_millis(10)));
    let body = SseBody {
        prelude,
        rx,
        every,
        heartbeat: Box::pin(tokio::time::sleep(every)),
    };
    let mut r = Response::new(LiveBody::Events(body));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn full(status: StatusCode, ctype: &'static str, body: Bytes) -> Response<LiveBody> {
    let mut r = Response::new(LiveBody::Full(Some(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn plain(status: StatusCode, text: &'static str) -> Response<LiveBody> {
    full(status, "text/plain", Bytes::from_static(text.as_bytes()))
}

/// Whether a `Host` header names this cart: a loopback name, an IP address (DNS rebinding needs a
/// DNS name, so a literal address is safe), or a configured name. The port is not compared.
pub(super) fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((v6, tail)) if tail.is_empty() || is_port(tail) => {
                return v6.parse::<std::net::Ipv6Addr>().is_ok();
            }
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if is_port(&format!(":{port}")) => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return false;
    }
    if name.parse::<IpAddr>().is_ok() {
        return true;
    }
    let lower = name.to_ascii_lowercase();
    lower == "localhost"
        || lower.ends_with(".localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

fn is_port(tail: &str) -> bool {
    tail.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The token a request carries: `?token=`, the cookie, or `Authorization: Bearer`; and whether it
/// came in the query (the page then gets the cookie).
fn presented_token(req: &Request<Incoming>) -> Option<(&str, bool)> {
    if let Some(q) = req.uri().query() {
        for pair in q.split('&') {
            if let Some(t) = pair.strip_prefix("token=") {
                return Some((t, true));
            }
        }
    }
    for v in req.headers().get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        for c in v.split(';') {
            if let Some(t) = c
                .trim()
                .strip_prefix(TOKEN_COOKIE)
                .and_then(|r| r.strip_prefix('='))
            {
                return Some((t, false));
            }
        }
    }
    let auth = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let t = auth.strip_prefix("Bearer ")?;
    Some((t.trim(), false))
}

/// Compares without an early exit on the first differing byte.
fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A response body: a whole page, or the event stream.
pub(super) enum LiveBody {
    Full(Option<Bytes>),
    Events(SseBody),
}

/// One viewer's event stream: the replayed prelude, then its queue, with a comment after
/// `every` of silence.
pub(super) struct SseBody {
    prelude: VecDeque<Bytes>,
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    every: Duration,
    heartbeat: Pin<Box<Sleep>>,
}

impl Body for LiveBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match self.get_mut() {
            LiveBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            LiveBody::Events(s) => {
                if let Some(b) = s.prelude.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(b))));
                }
                match s.rx.poll_recv(cx) {
                    Poll::Ready(Some(m)) => {
                        let next = Instant::now() + s.every;
                        s.heartbeat.as_mut().reset(next);
                        Poll::Ready(Some(Ok(Frame::data(m))))
                    }
                    // Closed or evicted.
                    Poll::Ready(None) => Poll::Ready(None),
                    Poll::Pending => {
                        if s.heartbeat.as_mut().poll(cx).is_ready() {
                            let next = Instant::now() + s.every;
                            s.heartbeat.as_mut().reset(next);
                            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(
                                b": keep-alive\n\n",
                            )))))
                        } else {
                            Poll::Pending
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, LiveBody::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            LiveBody::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            LiveBody::Full(None) => SizeHint::with_exact(0),
            LiveBody::Events(_) => SizeHint::default(),
        }
    }
}

/// A socket with two deadlines: no byte moving either way for `idle` fails a pending read, and a
/// write that cannot proceed for `write` fails. Either error ends the connection.
struct TimedIo {
    inner: TcpStream,
    idle: Duration,
    write: Duration,
    last_activity: Instant,
    idle_timer: Pin<Box<Sleep>>,
    write_timer: Pin<Box<Sleep>>,
    write_blocked: bool,
}

impl TimedIo {
    fn new(inner: TcpStream, idle: Duration, write: Duration) -> Self {
        let now = Instant::now();
        Self {
            inner,
            idle,
            write,
            last_activity: now,
            idle_timer: Box::pin(tokio::time::sleep_until(now + idle)),
            write_timer: Box::pin(tokio::time::sleep_until(now + write)),
            write_blocked: false,
        }
    }

    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let deadline = self.last_activity + self.idle;
        if self.idle_timer.deadline() != deadline {
            self.idle_timer.as_mut().reset(deadline);
        }
        match self.idle_timer.as_mut().poll(cx) {
            Poll::Ready(()) => {
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle timeout")))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.last_activity = Instant::now();
                    self.write_blocked = false;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if !self.write_blocked {
                    self.write_blocked = true;
                    let deadline = Instant::now() + self.write;
                    self.write_timer.as_mut().reset(deadline);
                }
                match self.write_timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "write timeout: the client reads nothing",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl AsyncRead for TimedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => this.poll_idle(cx),
        }
    }
}

impl AsyncWrite for TimedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, data);
        this.after_write(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, r)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_of_this_cart_pass_and_others_do_not() {
        let allowed = vec!["cart-7.ward.example".to_string()];
        for ok in [
            "localhost",
            "localhost:8080",
            "LOCALHOST.",
            "view.localhost:80",
            "127.0.0.1:8080",
            "10.1.2.3",
            "[::1]:8080",
            "[fe80::1]",
            "cart-7.ward.example",
            "CART-7.ward.example:8080",
        ] {
            assert!(host_allowed(ok, &allowed), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8080",
            "",
            ":8080",
            "[::1",
            "[evil]:80",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "cart-7.ward.example.evil",
            "localhost:http",
        ] {
            assert!(!host_allowed(bad, &allowed), "{bad}");
        }
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abcdef0123456789", "abcdef0123456789"));
        assert!(!same_secret("abcdef0123456789", "abcdef012345678"));
        assert!(!same_secret("abcdef0123456789", "Abcdef0123456789"));
    }
}
