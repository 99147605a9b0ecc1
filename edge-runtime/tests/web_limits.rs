//! The live view's limits, attacked over real sockets: a huge request line, more slow
//! connections than the cap, event-stream viewers that never read, a foreign `Host` header, and
//! a view bound beyond loopback without and with its token.
//!
//! Its own test binary, and one test at a time (a lock), so that the thread and memory counts
//! read from `/proc/self` are this server's and not another test's. The limits are set small so
//! that every test takes seconds.

#[path = "runtime/common.rs"]
#[allow(dead_code)]
mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use boards::LiveViewSettings;
use echojepa_input::GrayImage;
use edge_runtime::clock::SystemClock;
use edge_runtime::output::web::{WebConfig, WebError, WebServer, WebSink};
use edge_runtime::pipeline::{DisplayFrame, DisplayTap, Pipeline};
use edge_runtime::source::Paced;

use common::*;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn config(edit: impl FnOnce(&mut LiveViewSettings)) -> WebConfig {
    let mut c = WebConfig::new(20.0);
    edit(&mut c.limits);
    c
}

/// A pipeline (stand-in engine, endless source) feeding `server` until the flag is set.
fn feed(server: &WebServer) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
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
    (stop, runner)
}

/// A full HTTP exchange; the server closes after one response. Returns the head and the body.
fn exchange(addr: SocketAddr, request: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    match text.split_once("\r\n\r\n") {
        Some((h, b)) => (h.to_string(), b.to_string()),
        None => (text, String::new()),
    }
}

fn get(addr: SocketAddr, path: &str, host: &str) -> (String, String) {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    )
}

fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").unwrap().count()
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_huge_request_line_is_cut_off_at_the_cap() {
    let _one = one_at_a_time();
    let server = WebServer::start("127.0.0.1:0", 20.0).unwrap();
    let cap = LiveViewSettings::default().max_header_bytes;
    let rss_before = rss_kib();

    // 256 MiB of request line, no newline, as fast as the server takes it.
    let mut s = TcpStream::connect(server.addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    let chunk = vec![b'a'; 64 * 1024];
    s.write_all(b"GET /").unwrap();
    let mut sent = 0usize;
    let stopped = loop {
        if sent >= 256 << 20 {
            break None;
        }
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(e) => break Some(e),
        }
    };
    let e =
        stopped.unwrap_or_else(|| panic!("the server read all {sent} bytes of one request line"));
    assert!(
        matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::BrokenPipe),
        "the server should close the connection, not just stop reading: {e}"
    );
    // The cap is 16 KiB; what got through on top is the two kernels' socket buffers.
    assert!(
        sent < 32 << 20,
        "{sent} bytes were taken before the server gave up (cap {cap})"
    );
    let grown_mib = rss_kib().saturating_sub(rss_before) / 1024;
    assert!(grown_mib < 64, "the test process grew by {grown_mib} MiB");

    let (head, body) = get(server.addr, "/", "localhost");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("Not for diagnostic use."));
    server.hub.close();
}

#[test]
fn a_request_head_over_the_cap_gets_431() {
    let _one = one_at_a_time();
    let server =
        WebServer::start_with("127.0.0.1:0", config(|l| l.max_header_bytes = 4096)).unwrap();
    let long = "x".repeat(6000);
    let (head, _) = exchange(
        server.addr,
        &format!("GET / HTTP/1.1\r\nHost: localhost\r\nX-Long: {long}\r\n\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");
    let (head, _) = exchange(
        server.addr,
        &format!(
            "GET / HTTP/1.1\r\nHost: localhost\r\nX-Short: {}\r\n\r\n",
            &long[..1000]
        ),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    server.hub.close();
}

#[test]
fn slow_connections_beyond_the_cap_are_refused_and_the_rest_time_out() {
    let _one = one_at_a_time();
    let threads_before = threads();
    let header_timeout = Duration::from_millis(1500);
    let server = WebServer::start_with(
        "127.0.0.1:0",
        config(|l| {
            l.max_connections = 4;
            l.max_viewers = 4;
            l.header_timeout_ms = header_timeout.as_millis() as u64;
        }),
    )
    .unwrap();

    // 40 clients that each send one byte of a request head and then a byte every 200 ms.
    let opened = Instant::now();
    let mut conns: Vec<TcpStream> = (0..40)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            let _ = s.write_all(b"G");
            s
        })
        .collect();
    let mut closed_at: Vec<Option<Duration>> = vec![None; conns.len()];
    let mut refused = 0;
    let mut buf = [0u8; 256];
    let mut most_threads = 0;
    while opened.elapsed() < Duration::from_secs(8) && closed_at.iter().any(Option::is_none) {
        for (i, s) in conns.iter_mut().enumerate() {
            if closed_at[i].is_some() {
                continue;
            }
            let _ = s.write_all(b"E");
            s.set_read_timeout(Some(Duration::from_millis(5))).unwrap();
            match s.read(&mut buf) {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Ok(n) => {
                    if buf[..n].starts_with(b"HTTP/1.1 503") {
                        refused += 1;
                    }
                    closed_at[i] = Some(opened.elapsed());
                }
                Err(_) => closed_at[i] = Some(opened.elapsed()),
            }
        }
        most_threads = most_threads.max(threads());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Every connection is closed by the server, the held ones by the header timeout even though
    // they kept sending.
    let closed: Vec<Duration> = closed_at.iter().map(|c| c.expect("closed")).collect();
    let late = closed
        .iter()
        .filter(|c| **c > Duration::from_millis(1000))
        .count();
    assert!(
        late <= 4,
        "{late} connections were held (cap 4): {closed:?}"
    );
    assert!(
        closed
            .iter()
            .all(|c| *c < header_timeout + Duration::from_secs(3)),
        "slow connections were not timed out: {closed:?}"
    );
    // Closed at once (a 503 first, unless the client's own bytes made the close a reset).
    let early = closed.len() - late;
    assert!(
        early >= 36,
        "only {early} of 36 extra connections were refused at once"
    );
    assert!(refused > 0, "no refused connection got a 503");
    assert!(server.hub.connections_refused.load(Ordering::Relaxed) >= 36);
    // One thread serves all connections (plus the frame encoder).
    assert!(
        most_threads <= threads_before + 3,
        "threads: {threads_before} before, {most_threads} under 40 connections"
    );

    // With the slots free again, a normal viewer gets the page.
    let (head, _) = get(server.addr, "/", "localhost");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    server.hub.close();
}

/// Offers a large noisy frame (like real video, it does not compress) every 20 ms.
fn noisy_frames(hub: Arc<dyn DisplayTap>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let (w, h) = (480, 360);
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let start = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let ts = start.elapsed();
            if hub.wants(ts) {
                let data = (0..w * h)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                hub.offer(DisplayFrame {
                    time_s: ts.as_secs_f64(),
                    image: GrayImage {
                        width: w,
                        height: h,
                        data,
                    },
                    sector: None,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// Opens `/events` and counts the predictions it reads, until the server ends the stream.
fn viewer(addr: SocketAddr, predictions: Arc<AtomicU64>) -> std::thread::JoinHandle<String> {
    let s = TcpStream::connect(addr).unwrap();
    std::thread::spawn(move || {
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut w = s.try_clone().unwrap();
        write!(w, "GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
        let mut r = BufReader::new(s);
        let mut status = String::new();
        let _ = r.read_line(&mut status);
        let mut line = String::new();
        loop {
            line.clear();
            match r.read_line(&mut line) {
                Ok(0) | Err(_) => return status,
                Ok(_) => {
                    if line.starts_with("event: prediction") {
                        predictions.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
    })
}

fn wait_until(limit: Duration, what: &str, cond: impl Fn() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn viewers_that_never_read_are_evicted_and_the_others_keep_receiving() {
    let _one = one_at_a_time();
    let mut c = config(|l| {
        l.max_viewers = 3;
        l.write_timeout_ms = 1500;
        l.viewer_queue = 64;
    });
    c.max_fps = 50.0;
    let server = WebServer::start_with("127.0.0.1:0", c).unwrap();
    let (stop, runner) = feed(&server);
    let frames = noisy_frames(server.hub.clone(), stop.clone());

    let seen = Arc::new(AtomicU64::new(0));
    let normal = viewer(server.addr, seen.clone());
    wait_until(Duration::from_secs(20), "a first prediction", || {
        seen.load(Ordering::Relaxed) > 0
    });

    // Two viewers that ask for the stream and never read a byte. They are evicted once the
    // kernel's socket buffers for them are full (megabytes on loopback) and then a write has
    // stalled for the write timeout; on a loaded machine the frames fill them slowly, hence the
    // long limit below (it only matters when the eviction does not happen).
    let stalled: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = TcpStream::connect(server.addr).unwrap();
            write!(s, "GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
            s
        })
        .collect();
    wait_until(Duration::from_secs(5), "three viewers", || {
        server.hub.clients() == 3
    });
    wait_until(
        Duration::from_secs(90),
        "the stalled viewers evicted",
        || server.hub.clients() == 1,
    );

    // The normal viewer kept its stream and keeps receiving predictions.
    let n = seen.load(Ordering::Relaxed);
    wait_until(Duration::from_secs(20), "more predictions", || {
        seen.load(Ordering::Relaxed) > n + 3
    });
    assert!(!normal.is_finished(), "the normal viewer's stream ended");
    // The freed places take new viewers.
    let late = Arc::new(AtomicU64::new(0));
    let newcomer = viewer(server.addr, late.clone());
    wait_until(Duration::from_secs(20), "a newcomer's prediction", || {
        late.load(Ordering::Relaxed) > 0
    });
    // The stalled connections were closed by the server: reading them ends.
    for mut s in stalled {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
                Err(e) => panic!("a stalled viewer's connection is still open: {e}"),
            }
        }
    }

    stop.store(true, Ordering::Relaxed);
    runner.join().unwrap();
    frames.join().unwrap();
    server.hub.close();
    assert!(normal.join().unwrap().starts_with("HTTP/1.1 200"));
    assert!(newcomer.join().unwrap().starts_with("HTTP/1.1 200"));
}

#[test]
fn a_silent_connection_is_closed_after_the_idle_timeout_but_a_quiet_stream_is_not() {
    let _one = one_at_a_time();
    let server = WebServer::start_with(
        "127.0.0.1:0",
        config(|l| {
            l.header_timeout_ms = 60_000;
            l.idle_timeout_ms = 600;
        }),
    )
    .unwrap();
    // Connects and says nothing: closed by the idle timeout, long before the header timeout.
    let mut silent = TcpStream::connect(server.addr).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let r = silent.read(&mut buf);
    assert!(
        matches!(r, Ok(0)) || matches!(&r, Err(e) if e.kind() == ErrorKind::ConnectionReset),
        "{r:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );

    // An event stream with nothing to say sends comments often enough to stay open.
    let s = TcpStream::connect(server.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    write!(w, "GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let start = Instant::now();
    let mut comments = 0;
    let mut line = String::new();
    while start.elapsed() < Duration::from_millis(2500) {
        line.clear();
        let n = r.read_line(&mut line).unwrap();
        assert!(n > 0, "the stream was closed after {:?}", start.elapsed());
        if line.starts_with(": keep-alive") {
            comments += 1;
        }
    }
    assert!(comments >= 3, "{comments} keep-alive comments in 2.5 s");
    assert_eq!(server.hub.clients(), 1);
    server.hub.close();
}

#[test]
fn a_foreign_host_name_is_refused() {
    let _one = one_at_a_time();
    let server = WebServer::start_with(
        "127.0.0.1:0",
        config(|l| l.allowed_hosts = vec!["cart-7.ward.example".into()]),
    )
    .unwrap();
    for path in ["/", "/events", "/latest.json"] {
        let (head, _) = get(server.addr, path, "evil.example");
        assert!(head.starts_with("HTTP/1.1 421"), "{path}: {head}");
        let (head, _) = get(server.addr, path, "evil.example:8080");
        assert!(head.starts_with("HTTP/1.1 421"), "{path}: {head}");
    }
    assert_eq!(server.hub.clients(), 0);
    let (head, _) = exchange(server.addr, "GET / HTTP/1.0\r\n\r\n");
    assert!(head.contains(" 421 "), "no Host: {head}");
    let (head, _) = exchange(
        server.addr,
        "GET http://evil.example/ HTTP/1.1\r\nHost: localhost\r\n\r\n",
    );
    assert!(head.starts_with("HTTP/1.1 421"), "absolute form: {head}");
    for host in [
        "localhost".to_string(),
        server.addr.to_string(),
        "cart-7.ward.example:8080".into(),
    ] {
        let (head, _) = get(server.addr, "/", &host);
        assert!(head.starts_with("HTTP/1.1 200"), "{host}: {head}");
    }
    server.hub.close();
}

#[test]
fn beyond_loopback_every_request_needs_the_token() {
    let _one = one_at_a_time();
    let server = WebServer::start("0.0.0.0:0", 20.0).unwrap();
    let token = server.token.clone().expect("a generated token");
    assert!(token.len() >= 32, "{token}");
    assert!(server.url().ends_with(&format!("/?token={token}")));
    let addr = SocketAddr::from(([127, 0, 0, 1], server.addr.port()));
    let host = format!("Host: {addr}");

    for path in ["/", "/events", "/latest.json", "/health", "/?token=wrong"] {
        let (head, _) = get(addr, path, &addr.to_string());
        assert!(head.starts_with("HTTP/1.1 403"), "{path}: {head}");
    }
    let (head, _) = exchange(
        addr,
        &format!(
            "GET / HTTP/1.1\r\n{host}\r\nAuthorization: Bearer {}x\r\n\r\n",
            &token
        ),
    );
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(server.hub.clients(), 0);

    // The page with ?token= is served and sets the cookie its event stream will carry.
    let (head, body) = get(addr, &format!("/?token={token}"), &addr.to_string());
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("EventSource(\"/events\")"));
    let cookie = head
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .expect("a cookie");
    assert!(
        cookie.starts_with(&format!("live_view_token={token};")),
        "{cookie}"
    );
    assert!(cookie.contains("HttpOnly"), "{cookie}");

    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /events HTTP/1.1\r\n{host}\r\nCookie: theme=dark; live_view_token={token}\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    drop(r);

    let (head, body) = exchange(
        addr,
        &format!("GET /health HTTP/1.1\r\n{host}\r\nAuthorization: Bearer {token}\r\n\r\n"),
    );
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(body, "ok\n");
    server.hub.close();

    // A configured token is required on loopback too.
    let mut c = WebConfig::new(20.0);
    c.token = Some("a-configured-token-0123".into());
    let server = WebServer::start_with("127.0.0.1:0", c).unwrap();
    let (head, _) = get(server.addr, "/", "localhost");
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    let (head, _) = get(server.addr, "/?token=a-configured-token-0123", "localhost");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    server.hub.close();

    // On loopback with no token configured, none is needed.
    let server = WebServer::start("127.0.0.1:0", 20.0).unwrap();
    assert!(server.token.is_none());
    let (head, _) = get(server.addr, "/", "localhost");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    server.hub.close();
}

#[test]
fn bad_settings_are_errors_naming_the_setting() {
    let _one = one_at_a_time();
    let cases: Vec<(WebConfig, &str)> = vec![
        (config(|l| l.max_connections = 0), "max_connections"),
        (config(|l| l.max_header_bytes = 10), "max_header_bytes"),
        (config(|l| l.write_timeout_ms = 0), "write_timeout_ms"),
        (
            config(|l| l.allowed_hosts = vec!["evil.example:80".into()]),
            "allowed_hosts[0]",
        ),
        (
            WebConfig {
                token: Some("short".into()),
                ..WebConfig::new(20.0)
            },
            "token",
        ),
    ];
    for (c, field) in cases {
        let Err(e) = WebServer::start_with("127.0.0.1:0", c) else {
            panic!("{field}: accepted");
        };
        assert!(matches!(e, WebError::Setting { .. }), "{e}");
        assert!(e.to_string().contains(field), "{field}: {e}");
    }
}
