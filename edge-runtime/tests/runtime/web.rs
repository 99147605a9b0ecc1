//! The web live view: its HTTP routes over a real socket, and the page in a real headless
//! Chromium (driven over the DevTools protocol) showing predictions that keep updating, the video,
//! the model version and the notices.
//!
//! Chromium is a system package (`apt-get install chromium`). Without it the browser test prints
//! a note and passes, except under CI (`CI=true`), where a missing browser fails the test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use edge_runtime::clock::SystemClock;
use edge_runtime::output::web::{WebServer, WebSink};
use edge_runtime::pipeline::Pipeline;
use edge_runtime::source::Paced;
use serde_json::{Value, json};

use crate::common::*;

/// A pipeline feeding a live view until the returned flag is set.
fn serve_live() -> (WebServer, Arc<AtomicBool>, std::thread::JoinHandle<()>) {
    let server = WebServer::start("127.0.0.1:0", 20.0).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let clock = SystemClock::shared();
    let pipeline = Pipeline::new(test_model_info(), options(2), clock.clone())
        .with_display(server.hub.clone());
    let sink = WebSink::new(server.hub.clone());
    let s = stop.clone();
    let runner = std::thread::spawn(move || {
        let source = Paced::new(EndlessSource { seq: 0, value: 200 }, clock);
        pipeline.run(
            Box::new(source),
            Box::new(TestEngine::new()),
            vec![Box::new(sink)],
            s,
        );
    });
    (server, stop, runner)
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    (head.to_string(), body.to_string())
}

#[test]
fn http_routes_serve_the_page_the_event_stream_and_errors() {
    let (server, stop, runner) = serve_live();
    let (head, body) = http_get(server.addr, "/");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("Not for diagnostic use."));
    assert!(body.contains("EventSource(\"/events\")"));
    // Carts are offline: the page loads nothing from elsewhere (no CDN, no web fonts).
    for external in [
        "http://",
        "https://",
        "src=\"//",
        "@import",
        "@font-face",
        "url(",
    ] {
        assert!(!body.contains(external), "the page refers to {external}");
    }
    let (head, _) = http_get(server.addr, "/nope");
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let mut s = TcpStream::connect(server.addr).unwrap();
    write!(s, "POST / HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");

    // The event stream: headers, then started/prediction/frame events as they happen.
    let s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut w = s.try_clone().unwrap();
    write!(w, "GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    let mut seen = std::collections::BTreeSet::new();
    let mut prediction: Option<Value> = None;
    while prediction.is_none() || !seen.contains("frame") {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(name) = line.strip_prefix("event: ") {
            seen.insert(name.trim().to_string());
        }
        if let Some(data) = line.strip_prefix("data: ")
            && data.contains("\"type\":\"prediction\"")
        {
            prediction = Some(serde_json::from_str(data).unwrap());
        }
    }
    let p = prediction.expect("a prediction event");
    assert_eq!(p["model"]["id"], "test-engine");
    assert_eq!(p["view"]["label"], "A4C");
    assert_eq!(p["view"]["top"][0]["label"], "A4C");
    assert_eq!(p["view"]["top"][0]["p"], p["view"]["confidence"]);
    assert_eq!(p["view"]["top"].as_array().unwrap().len(), 2);
    let (_, latest) = http_get(server.addr, "/latest.json");
    assert!(latest.contains("\"type\":\"prediction\""), "{latest}");
    stop.store(true, Ordering::Relaxed);
    runner.join().unwrap();
    server.hub.close();
}

pub(crate) fn find_chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser", "google-chrome", "chrome"] {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// The browser for a test: `None` (with a note) when there is none, a failure under CI
/// (`CI=true`), where a missing browser must not pass silently.
pub(crate) fn chromium_for_test(what: &str) -> Option<PathBuf> {
    let exe = find_chromium();
    if exe.is_none() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("Chromium is required under CI (apt-get install chromium)");
        }
        eprintln!("note: Chromium not found; {what} is skipped");
    }
    exe
}

/// Headless Chromium driven over the DevTools protocol.
pub(crate) struct Browser {
    child: Child,
    ws: tungstenite::WebSocket<tungstenite::stream::MaybeTlsStream<TcpStream>>,
    next_id: u64,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub(crate) fn launch(exe: &PathBuf) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new(exe)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        // Chromium prints the browser's DevTools URL on stderr.
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(url) = line.split_whitespace().find(|w| w.starts_with("ws://")) {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("Chromium did not print its DevTools URL within 60 s");
        let (ws, _) = tungstenite::connect(url.as_str()).unwrap();
        if let tungstenite::stream::MaybeTlsStream::Plain(s) = ws.get_ref() {
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        }
        Browser {
            child,
            ws,
            next_id: 1,
            session: None,
            _profile: profile,
        }
    }

    /// Sends a DevTools command and waits for its answer (events in between are skipped).
    pub(crate) fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(tungstenite::Message::text(msg.to_string()))
            .unwrap();
        loop {
            let m = self.ws.read().expect("DevTools connection");
            let Ok(text) = m.to_text() else { continue };
            let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
            if v["id"] == json!(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    pub(crate) fn open(&mut self, url: &str) {
        let target = self.call("Target.createTarget", json!({"url": url}));
        let attached = self.call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        );
        self.session = attached["sessionId"].as_str().map(str::to_string);
    }

    /// Evaluates an expression in the page and returns its JSON value.
    pub(crate) fn eval(&mut self, expr: &str) -> Value {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "returnByValue": true}),
        );
        r["result"]["value"].clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PAGE_STATE: &str = r#"JSON.stringify({
  predictions: Number(document.body.dataset.predictions),
  frames: Number(document.body.dataset.frames),
  efStatus: document.body.dataset.efStatus || null,
  view: document.getElementById("view-label").textContent,
  confidence: document.getElementById("view-confidence").textContent,
  ef: document.getElementById("ef-value").textContent,
  model: document.getElementById("model").textContent,
  notDiagnostic: document.getElementById("not-diagnostic").textContent,
  syntheticShown: !document.getElementById("synthetic").hidden,
  synthetic: document.getElementById("synthetic").textContent,
  notices: (document.body.innerText.match(/not for diagnostic use/gi) || []).length,
  top: document.getElementById("view-top").children.length,
  efBasis: document.getElementById("ef-basis").textContent,
  efViews: document.getElementById("ef-views").textContent,
  conn: document.getElementById("conn").textContent,
})"#;

fn page_state(b: &mut Browser) -> Value {
    serde_json::from_str(b.eval(PAGE_STATE).as_str().unwrap_or("{}")).unwrap()
}

/// Polls the page until `pred` holds, or fails after `limit`. The browser is another process, so
/// the test re-reads its state rather than assuming any timing.
fn wait_for(b: &mut Browser, limit: Duration, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let s = page_state(b);
        if pred(&s) {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "{what} within {limit:?}; page: {s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_live_view_updates_in_headless_chromium() {
    let Some(exe) = chromium_for_test("the live-view browser test") else {
        return;
    };
    let (server, stop, runner) = serve_live();
    let mut browser = Browser::launch(&exe);
    browser.open(&server.url());
    let limit = Duration::from_secs(60);
    let first = wait_for(&mut browser, limit, "three predictions", |s| {
        s["predictions"].as_u64() >= Some(3)
    });
    // Predictions keep coming, and the video frames arrive.
    let n = first["predictions"].as_u64().unwrap();
    let later = wait_for(&mut browser, limit, "more predictions and frames", |s| {
        s["predictions"].as_u64() > Some(n + 3) && s["frames"].as_u64() > Some(2)
    });
    assert_eq!(later["view"], "A4C");
    assert_eq!(later["confidence"], "90%");
    assert_eq!(later["model"], "test-engine 0.0-test");
    assert_eq!(later["notDiagnostic"], "Not for diagnostic use.");
    assert_eq!(later["syntheticShown"], true);
    assert_eq!(later["synthetic"], "Trained on synthetic data.");
    assert_eq!(later["notices"], 1);
    assert_eq!(later["top"], 2);
    assert_eq!(later["efViews"], "(A4C)");
    assert_eq!(later["conn"], "live");
    // EF appears once the view was held for a cycle: 20 + 200/4 = 70%.
    let ef = wait_for(&mut browser, limit, "EF shown", |s| s["efStatus"] == "ok");
    assert_eq!(ef["ef"], "70.0%");
    assert!(
        ef["efBasis"].as_str().unwrap().starts_with("median of "),
        "{ef}"
    );
    stop.store(true, Ordering::Relaxed);
    runner.join().unwrap();
    server.hub.close();
}
