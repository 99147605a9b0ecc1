//! The live view's HTTP request path, through a real loopback socket: the bytes are sent as
//! one connection's request stream to a `WebServer` started once per process (default limits,
//! loopback, no token), and the answer's status line is the outcome.
//!
//! Found as bugs: a server that neither answers nor closes within 5 s of the request ending, a
//! server that stops accepting connections afterwards (checked with `GET /health` after every
//! input), or a panic or over-cap allocation inside the server (the allocator sees those in
//! the server's threads too).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use edge_runtime::output::web::WebServer;

pub(crate) static DICT: &[&[u8]] = &[
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"OPTIONS ",
    b" HTTP/1.1\r\n",
    b" HTTP/1.0\r\n",
    b"HTTP/2.0",
    b"\r\n",
    b"\r\n\r\n",
    b"\n",
    b"Host: localhost\r\n",
    b"Host: 127.0.0.1:8080\r\n",
    b"Host: evil.example\r\n",
    b"Content-Length: ",
    b"Content-Length: 18446744073709551616\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Connection: keep-alive\r\n",
    b"Connection: close\r\n",
    b"Upgrade: websocket\r\n",
    b"Cookie: live_view_token=",
    b"Authorization: Bearer ",
    b"Expect: 100-continue\r\n",
    b"/events",
    b"/latest.json",
    b"/health",
    b"/?token=",
    b"%00",
    b"%",
    b"0\r\n\r\n",
    b"ffffffffffffffff\r\n",
    b": ",
    b"\t",
    b"\0",
    b"\xff",
];

const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

fn server() -> SocketAddr {
    static ADDR: OnceLock<Result<SocketAddr, String>> = OnceLock::new();
    let addr = ADDR.get_or_init(|| {
        let server = WebServer::start("127.0.0.1:0", 5.0).map_err(|e| e.to_string())?;
        let addr = server.addr;
        // The server lives as long as the process.
        Box::leak(Box::new(server));
        Ok(addr)
    });
    match addr {
        Ok(a) => *a,
        Err(e) => panic!("fuzz harness: cannot start the live view server: {e}"),
    }
}

/// How long an answer to a request that may be incomplete is awaited before the write side is
/// shut (hyper then either answers or closes; it does not answer half-closed connections in
/// general, so the write side stays open as long as an answer may come).
const FIRST_WAIT: Duration = Duration::from_millis(100);

/// Sends `request` and reads until the response head is complete or the server closes; if
/// nothing came back within [`FIRST_WAIT`], the write side is shut and the server must answer
/// or close within [`ANSWER_TIMEOUT`]. Returns the status line (or how the exchange ended).
fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = match TcpStream::connect_timeout(&addr, ANSWER_TIMEOUT) {
        Ok(s) => s,
        Err(e) => panic!("the live view server refuses connections: {e}"),
    };
    let _ = s.set_read_timeout(Some(FIRST_WAIT));
    let _ = s.set_write_timeout(Some(ANSWER_TIMEOUT));
    let wrote = s.write_all(request);
    let mut shut = false;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.windows(4).any(|w| w == b"\r\n\r\n") || got.len() > 64 * 1024 {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if !shut && got.is_empty() {
                    shut = true;
                    let _ = s.shutdown(Shutdown::Write);
                    let _ = s.set_read_timeout(Some(ANSWER_TIMEOUT));
                    continue;
                }
                panic!(
                    "the live view server neither answered nor closed within {} s ({} bytes of answer)",
                    ANSWER_TIMEOUT.as_secs(),
                    got.len()
                );
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            // reset by the server: a way of refusing
            Err(_) => break,
        }
    }
    let status = got
        .split(|&b| b == b'\r')
        .next()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .unwrap_or_default();
    match (status.is_empty(), wrote.is_err()) {
        (true, true) => "closed while the request was written".into(),
        (true, false) => "closed without an answer".into(),
        (false, _) => status,
    }
}

pub(crate) fn http(data: &[u8]) -> String {
    let addr = server();
    let outcome = exchange(addr, data);
    let health = exchange(addr, b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(
        health.starts_with("HTTP/1.1 "),
        "GET /health after this input got `{health}`"
    );
    outcome
}
