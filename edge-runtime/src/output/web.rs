//! The local web live view: one page and a server-sent-event stream, served by `hyper` (HTTP/1
//! only) on a one-thread tokio runtime of its own, with explicit limits.
//!
//! Why hyper: it is the most widely used and maintained HTTP implementation in Rust (under
//! tokio, audited, fuzzed), it parses requests incrementally with caps on the header size and
//! count enforced while reading, it has a header-read timeout, and it lets the application own
//! the accept loop and the socket, which is where the connection cap and the write/idle timeouts
//! live (see [`server`]). A single-threaded runtime serves any number of connections on one
//! thread, so an attacker opening connections costs the cart memory for sockets, not threads.
//!
//! Routes: `GET /` (the page), `GET /events` (SSE: `started`, `prediction`, `status`, `summary`
//! with the JSON of `SCHEMA.md`, `frame` with a JPEG of the live video and the sector box, and
//! `trend`, the EF of the last [`TREND_WINDOW_S`] seconds replayed to a browser as it connects),
//! `GET /latest.json` (the newest prediction), `GET /health` (`ok`).
//!
//! Limits (board profile `[live_view]`, `edge-runtime --view-*`), see
//! [`boards::LiveViewSettings`]: connections at once (`503` past it), event streams at
//! once (`503`), request head bytes and header count (`431`), the head must arrive within the
//! header timeout, a connection where nothing moves for the idle timeout is closed, a write
//! that cannot proceed for the write timeout closes the connection, and a viewer whose queue
//! stays full that long is evicted (the others keep receiving).
//!
//! Access: the `Host` header must be a loopback name (`localhost`), an IP address, or a name in
//! `allowed_hosts`; anything else gets `421` (a page of another site whose DNS name was
//! rebound to the cart's address cannot read the view). Bound beyond loopback (or with a token
//! configured), every request needs the token: `?token=` (the page then sets a cookie so its
//! event stream carries it), the `live_view_token` cookie, or `Authorization: Bearer`; without
//! it, `403`. Unless configured, the token is generated at start and is part of
//! [`WebServer::url`].
//!
//! Nothing here can slow the pipeline down:
//! - frames reach the view through a one-slot mailbox (newest wins) at most `max_fps` times a
//!   second, and are JPEG-encoded on the view's own thread;
//! - each browser has a bounded queue of messages; a browser that does not keep up loses
//!   messages (counted), a browser that stays stalled is evicted, a browser that disconnects is
//!   forgotten.

mod server;

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use boards::LiveViewSettings;
use hyper::body::Bytes;
use tokio::sync::mpsc::error::TrySendError;

use crate::clinical::EfStatus;
use crate::events::Event;
use crate::pipeline::{DisplayFrame, DisplayTap, Sink};

const INDEX_HTML: &str = include_str!("web/index.html");

/// Seconds of EF history (source time) a browser that connects gets, so its trend is not empty.
pub const TREND_WINDOW_S: f64 = 300.0;
/// At most this many predictions are kept for the trend (about 6 a second fill the window).
const TREND_MAX_POINTS: usize = 2400;

/// One prediction's EF as the trend shows it.
#[derive(Debug, Clone, Copy, serde::Serialize)]
struct TrendPoint {
    /// Source time, seconds.
    t: f64,
    status: EfStatus,
    value: Option<f32>,
    spread: Option<f32>,
}

/// Why the live view could not start.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    #[error("live view setting live_view.{field} (--view-{}): {reason}", field.replace('_', "-"))]
    Setting { field: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the live view: {0}")]
    Start(#[source] std::io::Error),
    #[error("cannot generate the live view token: {0}")]
    Token(String),
}

/// Everything the live view is started with.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Video frames per second passed to browsers.
    pub max_fps: f64,
    /// Limits and allowed host names.
    pub limits: LiveViewSettings,
    /// The access token; `None`: none on loopback, a generated one beyond loopback.
    pub token: Option<String>,
}

impl WebConfig {
    /// The defaults of [`LiveViewSettings`] and no configured token.
    pub fn new(max_fps: f64) -> Self {
        Self {
            max_fps,
            limits: LiveViewSettings::default(),
            token: None,
        }
    }

    fn check(&self) -> Result<(), WebError> {
        if let Err(e) = self.limits.check() {
            return Err(WebError::Setting {
                field: e.field,
                reason: e.reason,
            });
        }
        if let Some(t) = &self.token {
            let ok = (16..=256).contains(&t.len())
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !ok {
                return Err(WebError::Setting {
                    field: "token".into(),
                    reason: "must be 16 to 256 ASCII letters, digits, '-' or '_'".into(),
                });
            }
        }
        Ok(())
    }
}

/// One event-stream viewer: its queue, and since when that queue has been full.
struct Viewer {
    tx: tokio::sync::mpsc::Sender<Bytes>,
    full_since: Option<Instant>,
}

/// Shared state between the pipeline (events, frames) and the HTTP threads.
pub struct WebHub {
    clients: Mutex<Vec<Viewer>>,
    /// Replayed to a browser that connects late.
    started: Mutex<Option<Bytes>>,
    latest: Mutex<Option<Bytes>>,
    latest_json: Mutex<Option<String>>,
    /// EF of the last [`TREND_WINDOW_S`] seconds, oldest first.
    trend: Mutex<std::collections::VecDeque<TrendPoint>>,
    frame: Mutex<FrameSlot>,
    frame_ready: Condvar,
    min_frame_interval: Duration,
    closed: AtomicBool,
    /// Wakes the server's accept loop on [`WebHub::close`].
    shutdown: tokio::sync::Notify,
    /// A viewer whose queue stays full this long is evicted.
    evict_after: Duration,
    /// Messages not delivered because a browser's queue was full.
    pub messages_dropped: AtomicU64,
    /// Frames encoded and sent.
    pub frames_sent: AtomicU64,
    /// Viewers evicted because their queue stayed full.
    pub viewers_evicted: AtomicU64,
    /// Connections refused because `max_connections` were open.
    pub connections_refused: AtomicU64,
}

#[derive(Default)]
struct FrameSlot {
    pending: Option<DisplayFrame>,
    last_ts: Option<Duration>,
}

impl WebHub {
    /// A hub that passes at most `max_fps` video frames a second to browsers and evicts a
    /// viewer whose queue stays full for `evict_after`.
    pub fn new(max_fps: f64, evict_after: Duration) -> Arc<Self> {
        Arc::new(Self {
            clients: Mutex::new(Vec::new()),
            started: Mutex::new(None),
            latest: Mutex::new(None),
            latest_json: Mutex::new(None),
            trend: Mutex::new(std::collections::VecDeque::new()),
            frame: Mutex::new(FrameSlot::default()),
            frame_ready: Condvar::new(),
            min_frame_interval: Duration::from_secs_f64(1.0 / max_fps.max(0.1)),
            closed: AtomicBool::new(false),
            shutdown: tokio::sync::Notify::new(),
            evict_after,
            messages_dropped: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
            viewers_evicted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
        })
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends an SSE message to every browser without waiting; evicts a browser whose queue has
    /// been full for `evict_after` (its stream ends, its connection closes).
    fn broadcast(&self, msg: Bytes) {
        let now = Instant::now();
        Self::lock(&self.clients).retain_mut(|v| match v.tx.try_send(msg.clone()) {
            Ok(()) => {
                v.full_since = None;
                true
            }
            Err(TrySendError::Full(_)) => {
                self.messages_dropped.fetch_add(1, Ordering::Relaxed);
                let since = *v.full_since.get_or_insert(now);
                if now.duration_since(since) >= self.evict_after {
                    self.viewers_evicted.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "live view: a viewer has read nothing for {:?}; evicted",
                        self.evict_after
                    );
                    false
                } else {
                    true
                }
            }
            Err(TrySendError::Closed(_)) => false,
        });
    }

    /// Registers an event-stream viewer unless `max` are open.
    fn add_viewer(&self, max: usize, queue: usize) -> Option<tokio::sync::mpsc::Receiver<Bytes>> {
        let mut clients = Self::lock(&self.clients);
        clients.retain(|v| !v.tx.is_closed());
        if clients.len() >= max || self.closed.load(Ordering::Relaxed) {
            return None;
        }
        let (tx, rx) = tokio::sync::mpsc::channel(queue.max(1));
        clients.push(Viewer {
            tx,
            full_since: None,
        });
        Some(rx)
    }

    /// Number of connected browsers (event streams).
    pub fn clients(&self) -> usize {
        let mut clients = Self::lock(&self.clients);
        clients.retain(|v| !v.tx.is_closed());
        clients.len()
    }

    /// Stops the frame encoder and ends every event stream.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.frame_ready.notify_all();
        Self::lock(&self.clients).clear();
        self.shutdown.notify_one();
    }

    fn sse(event: &str, data: &str) -> Bytes {
        Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
    }

    /// Adds a prediction's EF to the trend; a source that starts over (time going back) starts
    /// the trend over.
    fn push_trend(&self, p: TrendPoint) {
        let mut trend = Self::lock(&self.trend);
        if trend.back().is_some_and(|last| p.t < last.t) {
            trend.clear();
        }
        trend.push_back(p);
        while trend
            .front()
            .is_some_and(|f| p.t - f.t > TREND_WINDOW_S || trend.len() > TREND_MAX_POINTS)
        {
            trend.pop_front();
        }
    }

    /// The `trend` message a browser gets as it connects (`None` before any prediction):
    /// `{"window_s", "points": [[time_s, status, value, spread], ...]}`.
    fn trend_message(&self) -> Option<Bytes> {
        let trend = Self::lock(&self.trend);
        if trend.is_empty() {
            return None;
        }
        let points: Vec<_> = trend
            .iter()
            .map(|p| serde_json::json!([p.t, p.status, p.value, p.spread]))
            .collect();
        drop(trend);
        let data = serde_json::json!({"window_s": TREND_WINDOW_S, "points": points});
        Some(Self::sse("trend", &data.to_string()))
    }

    /// Encodes pending frames until closed; runs on its own thread.
    fn encode_frames(&self) {
        loop {
            let frame = {
                let mut slot = Self::lock(&self.frame);
                loop {
                    if self.closed.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Some(f) = slot.pending.take() {
                        break f;
                    }
                    slot = self
                        .frame_ready
                        .wait(slot)
                        .unwrap_or_else(|e| e.into_inner());
                }
            };
            match encode_frame(&frame, self.messages_dropped.load(Ordering::Relaxed)) {
                Ok(json) => {
                    self.frames_sent.fetch_add(1, Ordering::Relaxed);
                    self.broadcast(Self::sse("frame", &json));
                }
                Err(e) => tracing::warn!("live view: cannot encode a frame: {e}"),
            }
        }
    }
}

/// A `frame` event: the JPEG, its size, the sector box, and how many messages the live view
/// could not deliver so far (all viewers together).
fn encode_frame(f: &DisplayFrame, view_dropped: u64) -> Result<String, String> {
    let img = image::GrayImage::from_raw(
        f.image.width as u32,
        f.image.height as u32,
        f.image.data.clone(),
    )
    .ok_or("frame buffer size mismatch")?;
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 75)
        .encode_image(&img)
        .map_err(|e| e.to_string())?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&jpeg);
    Ok(serde_json::json!({
        "time_s": f.time_s,
        "width": f.image.width,
        "height": f.image.height,
        "sector": f.sector,
        "view_dropped": view_dropped,
        "jpeg": b64,
    })
    .to_string())
}

impl DisplayTap for WebHub {
    fn wants(&self, ts: Duration) -> bool {
        if self.clients() == 0 {
            return false;
        }
        let slot = Self::lock(&self.frame);
        match slot.last_ts {
            None => true,
            Some(last) => ts < last || ts - last >= self.min_frame_interval,
        }
    }

    fn offer(&self, frame: DisplayFrame) {
        let mut slot = Self::lock(&self.frame);
        slot.last_ts = Some(Duration::from_secs_f64(frame.time_s.max(0.0)));
        slot.pending = Some(frame);
        drop(slot);
        self.frame_ready.notify_one();
    }
}

/// Forwards pipeline events to the browsers.
pub struct WebSink {
    hub: Arc<WebHub>,
}

impl WebSink {
    pub fn new(hub: Arc<WebHub>) -> Self {
        Self { hub }
    }
}

impl Sink for WebSink {
    fn emit(&mut self, event: &Event) -> std::io::Result<()> {
        let json = serde_json::to_string(event).map_err(std::io::Error::other)?;
        let name = match event {
            Event::Started(_) => "started",
            Event::Prediction(_) => "prediction",
            Event::Status(_) => "status",
            Event::Summary(_) => "summary",
        };
        let msg = WebHub::sse(name, &json);
        match event {
            Event::Started(_) => *WebHub::lock(&self.hub.started) = Some(msg.clone()),
            Event::Prediction(p) => {
                self.hub.push_trend(TrendPoint {
                    t: p.time_s,
                    status: p.ef.status,
                    value: p.ef.value,
                    spread: p.ef.spread,
                });
                *WebHub::lock(&self.hub.latest) = Some(msg.clone());
                *WebHub::lock(&self.hub.latest_json) = Some(json);
            }
            _ => {}
        }
        self.hub.broadcast(msg);
        Ok(())
    }

    fn name(&self) -> &str {
        "web"
    }
}

/// A running live-view server.
pub struct WebServer {
    pub addr: SocketAddr,
    pub hub: Arc<WebHub>,
    /// The token every request needs, if any.
    pub token: Option<String>,
}

impl WebServer {
    /// Binds `addr` (port 0 picks a free port) with the default limits.
    pub fn start(addr: &str, max_fps: f64) -> Result<Self, WebError> {
        Self::start_with(addr, WebConfig::new(max_fps))
    }

    /// Binds `addr` (port 0 picks a free port) and serves on background threads: the HTTP
    /// server (one thread, any number of connections) and the frame encoder.
    pub fn start_with(addr: &str, config: WebConfig) -> Result<Self, WebError> {
        config.check()?;
        let bind_err = |source| WebError::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let token = match config.token.clone() {
            Some(t) => Some(t),
            None if !local.ip().is_loopback() => Some(generate_token()?),
            None => None,
        };
        let limits = config.limits.clone();
        let hub = WebHub::new(
            config.max_fps,
            Duration::from_millis(limits.write_timeout_ms),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(WebError::Start)?;
        let h = hub.clone();
        std::thread::Builder::new()
            .name("web-frames".into())
            .spawn(move || h.encode_frames())
            .map_err(WebError::Start)?;
        let state = Arc::new(server::State {
            hub: hub.clone(),
            limits,
            token: token.clone(),
        });
        std::thread::Builder::new()
            .name("web-http".into())
            .spawn(move || runtime.block_on(server::serve(listener, state)))
            .map_err(WebError::Start)?;
        if token.is_some() {
            tracing::info!(
                "live view on {local}: requests need the token (open {})",
                url_of(local, token.as_deref())
            );
        }
        Ok(Self {
            addr: local,
            hub,
            token,
        })
    }

    /// The page's address, with the token when one is needed.
    pub fn url(&self) -> String {
        url_of(self.addr, self.token.as_deref())
    }
}

fn url_of(addr: SocketAddr, token: Option<&str>) -> String {
    match token {
        Some(t) => format!("http://{addr}/?token={t}"),
        None => format!("http://{addr}/"),
    }
}

/// 128 random bits, hex.
fn generate_token() -> Result<String, WebError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| WebError::Token(e.to_string()))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(t: f64) -> TrendPoint {
        TrendPoint {
            t,
            status: EfStatus::Ok,
            value: Some(55.0),
            spread: Some(2.0),
        }
    }

    fn trend_of(hub: &WebHub) -> serde_json::Value {
        let msg = hub.trend_message().expect("a trend");
        let text = std::str::from_utf8(&msg).unwrap();
        let data = text
            .strip_prefix("event: trend\ndata: ")
            .and_then(|d| d.strip_suffix("\n\n"))
            .unwrap();
        serde_json::from_str(data).unwrap()
    }

    #[test]
    fn the_trend_keeps_the_last_minutes_and_restarts_with_the_source() {
        let hub = WebHub::new(10.0, Duration::from_secs(1));
        assert!(hub.trend_message().is_none());
        for k in 0..700 {
            hub.push_trend(point(k as f64 * 0.5));
        }
        let v = trend_of(&hub);
        assert_eq!(v["window_s"], TREND_WINDOW_S);
        let points = v["points"].as_array().unwrap();
        // 349.5 s is the newest; 300 s before it is 49.5 s
        assert_eq!(points.len(), 601);
        assert_eq!(points[0], serde_json::json!([49.5, "ok", 55.0, 2.0]));
        // a source that starts over starts the trend over
        hub.push_trend(TrendPoint {
            status: EfStatus::WrongView,
            value: None,
            spread: None,
            ..point(1.0)
        });
        let v = trend_of(&hub);
        assert_eq!(
            v["points"],
            serde_json::json!([[1.0, "wrong_view", null, null]])
        );
        // never more than TREND_MAX_POINTS, however dense
        for k in 0..(TREND_MAX_POINTS + 100) {
            hub.push_trend(point(2.0 + k as f64 * 0.001));
        }
        assert_eq!(
            trend_of(&hub)["points"].as_array().unwrap().len(),
            TREND_MAX_POINTS
        );
    }
}
