//! The local web live view: a small HTTP/1.1 server on std threads (no async runtime on the cart)
//! that serves one page and a server-sent-event stream.
//!
//! Routes: `GET /` (the page), `GET /events` (SSE: `started`, `prediction`, `status`, `summary`
//! with the JSON of `SCHEMA.md`, and `frame` with a JPEG of the live video and the sector box),
//! `GET /latest.json` (the newest prediction), `GET /health` (`ok`).
//!
//! Nothing here can slow the pipeline down:
//! - frames reach the view through a one-slot mailbox (newest wins) at most `max_fps` times a
//!   second, and are JPEG-encoded on the view's own thread;
//! - each browser has a bounded queue of messages; a browser that does not keep up loses
//!   messages (counted), a browser that disconnects is forgotten;
//! - at most [`MAX_CLIENTS`] browsers at once; more get `503`.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use base64::Engine as _;

use crate::events::Event;
use crate::pipeline::{DisplayFrame, DisplayTap, Sink};

/// Browsers served at once.
pub const MAX_CLIENTS: usize = 16;
/// Messages queued per browser before it starts losing them.
const CLIENT_QUEUE: usize = 64;

const INDEX_HTML: &str = include_str!("web/index.html");

/// Shared state between the pipeline (events, frames) and the HTTP threads.
pub struct WebHub {
    clients: Mutex<Vec<SyncSender<Arc<str>>>>,
    /// Replayed to a browser that connects late.
    started: Mutex<Option<Arc<str>>>,
    latest: Mutex<Option<Arc<str>>>,
    latest_json: Mutex<Option<String>>,
    frame: Mutex<FrameSlot>,
    frame_ready: Condvar,
    min_frame_interval: Duration,
    closed: AtomicBool,
    /// Messages not delivered because a browser's queue was full.
    pub messages_dropped: AtomicU64,
    /// Frames encoded and sent.
    pub frames_sent: AtomicU64,
}

#[derive(Default)]
struct FrameSlot {
    pending: Option<DisplayFrame>,
    last_ts: Option<Duration>,
}

impl WebHub {
    /// A hub that passes at most `max_fps` video frames a second to browsers.
    pub fn new(max_fps: f64) -> Arc<Self> {
        Arc::new(Self {
            clients: Mutex::new(Vec::new()),
            started: Mutex::new(None),
            latest: Mutex::new(None),
            latest_json: Mutex::new(None),
            frame: Mutex::new(FrameSlot::default()),
            frame_ready: Condvar::new(),
            min_frame_interval: Duration::from_secs_f64(1.0 / max_fps.max(0.1)),
            closed: AtomicBool::new(false),
            messages_dropped: AtomicU64::new(0),
            frames_sent: AtomicU64::new(0),
        })
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends an SSE message to every browser without waiting.
    fn broadcast(&self, msg: Arc<str>) {
        Self::lock(&self.clients).retain(|c| match c.try_send(msg.clone()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.messages_dropped.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
    }

    /// Number of connected browsers.
    pub fn clients(&self) -> usize {
        Self::lock(&self.clients).len()
    }

    /// Stops the frame encoder and ends every event stream.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        self.frame_ready.notify_all();
        Self::lock(&self.clients).clear();
    }

    fn sse(event: &str, data: &str) -> Arc<str> {
        Arc::from(format!("event: {event}\ndata: {data}\n\n"))
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
            match encode_frame(&frame) {
                Ok(json) => {
                    self.frames_sent.fetch_add(1, Ordering::Relaxed);
                    self.broadcast(Self::sse("frame", &json));
                }
                Err(e) => tracing::warn!("live view: cannot encode a frame: {e}"),
            }
        }
    }
}

fn encode_frame(f: &DisplayFrame) -> Result<String, String> {
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
            Event::Prediction(_) => {
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
}

impl WebServer {
    /// Binds `addr` (port 0 picks a free port) and serves on background threads.
    pub fn start(addr: &str, max_fps: f64) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let hub = WebHub::new(max_fps);
        let h = hub.clone();
        std::thread::Builder::new()
            .name("web-frames".into())
            .spawn(move || h.encode_frames())?;
        let h = hub.clone();
        std::thread::Builder::new()
            .name("web-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if h.closed.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(stream) = stream else { continue };
                    let h2 = h.clone();
                    let spawned =
                        std::thread::Builder::new()
                            .name("web-client".into())
                            .spawn(move || {
                                if let Err(e) = serve(stream, &h2) {
                                    tracing::debug!("live view client: {e}");
                                }
                            });
                    if let Err(e) = spawned {
                        tracing::warn!("live view: cannot start a client thread: {e}");
                    }
                }
            })?;
        Ok(Self { addr, hub })
    }

    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }
}

fn respond(stream: &mut TcpStream, status: &str, ctype: &str, body: &[u8]) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    stream.flush()
}

fn serve(mut stream: TcpStream, hub: &WebHub) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip headers (bounded).
    let mut header_bytes = 0usize;
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line)?;
        header_bytes += n;
        if n == 0 || line == "\r\n" || line == "\n" || header_bytes > 16 * 1024 {
            break;
        }
    }
    let mut parts = request_line.split_whitespace();
    let method = parts.next().unwrap_or("");
    let target = parts.next().unwrap_or("");
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            b"only GET\n",
        );
    }
    match path {
        "/" | "/index.html" => respond(
            &mut stream,
            "200 OK",
            "text/html; charset=utf-8",
            INDEX_HTML.as_bytes(),
        ),
        "/health" => respond(&mut stream, "200 OK", "text/plain", b"ok\n"),
        "/latest.json" => {
            let body = WebHub::lock(&hub.latest_json)
                .clone()
                .unwrap_or_else(|| "null".into());
            respond(&mut stream, "200 OK", "application/json", body.as_bytes())
        }
        "/events" => stream_events(stream, hub),
        _ => respond(&mut stream, "404 Not Found", "text/plain", b"not found\n"),
    }
}

fn stream_events(mut stream: TcpStream, hub: &WebHub) -> std::io::Result<()> {
    let rx: Receiver<Arc<str>> = {
        let mut clients = WebHub::lock(&hub.clients);
        if clients.len() >= MAX_CLIENTS {
            drop(clients);
            return respond(
                &mut stream,
                "503 Service Unavailable",
                "text/plain",
                b"too many live views open\n",
            );
        }
        let (tx, rx) = sync_channel(CLIENT_QUEUE);
        clients.push(tx);
        rx
    };
    stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: keep-alive\r\n\r\nretry: 1000\n\n",
    )?;
    for m in [&hub.started, &hub.latest] {
        let msg = WebHub::lock(m).clone();
        if let Some(msg) = msg {
            stream.write_all(msg.as_bytes())?;
        }
    }
    stream.flush()?;
    loop {
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(msg) => stream.write_all(msg.as_bytes())?,
            Err(RecvTimeoutError::Timeout) => stream.write_all(b": keep-alive\n\n")?,
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
        stream.flush()?;
    }
}
