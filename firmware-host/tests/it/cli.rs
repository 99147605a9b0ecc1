//! The `firmware-host` binary end to end: `simulate` on a pty, `ping` and `status` against it,
//! and the errors a newcomer would hit.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{DEADLINE, wait_for};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_firmware-host"))
}

#[test]
fn simulate_then_ping_and_status_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let port = dir.path().join("cart-mcu");
    let mut sim = bin()
        .args(["simulate", "--json", "--link"])
        .arg(&port)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = sim.stdout.take().unwrap();
    let (tx, lines) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (listening, _) = wait_for(&lines, DEADLINE, |l: &String| l.contains("listening"));
    let listening: serde_json::Value = serde_json::from_str(&listening.unwrap()).unwrap();
    assert_eq!(listening["port"], port.to_str().unwrap());
    assert!(listening["pty"].as_str().unwrap().starts_with("/dev/pts/"));

    let out = bin()
        .args(["ping", "--json", "-c", "2", "--port"])
        .arg(&port)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pings: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(pings.len(), 2);
    for p in &pings {
        assert_eq!(p["cart_id"], "sim-cart-0001");
        assert!(p["rtt_ms"].as_f64().unwrap() >= 0.0);
    }

    let out = bin()
        .args(["status", "--json", "--port"])
        .arg(&port)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["peer"]["cart_id"], "sim-cart-0001");
    assert_eq!(
        st["peer"]["authenticated"], false,
        "no key, nothing verified"
    );
    assert_eq!(st["status"]["active_slot"], "A");
    assert!(st["status"]["boot_count"].as_u64().unwrap() >= 1);

    // With the cart key (the simulator's default test key) the replies are verified.
    let key_file = dir.path().join("cart.key");
    std::fs::write(&key_file, "5a".repeat(32)).unwrap();
    let out = bin()
        .args(["status", "--json", "--port"])
        .arg(&port)
        .arg("--link-key")
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["peer"]["authenticated"], true);
    assert_eq!(st["link"]["rx_auth_failed"], 0);

    // With the wrong key the handshake answer does not verify: a clear failure, not a session.
    std::fs::write(&key_file, "11".repeat(32)).unwrap();
    let out = bin()
        .args(["status", "--timeout", "1.5", "--port"])
        .arg(&port)
        .arg("--link-key")
        .arg(&key_file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("HandshakeAuthFailed") && err.contains("BadTag"),
        "{err}"
    );

    // The simulator saw the pings (its JSON report stream).
    let (ping_seen, _) = wait_for(&lines, DEADLINE, |l: &String| l.contains("\"Ping\""));
    assert!(ping_seen.is_some());

    sim.stdin.as_mut().unwrap().write_all(b"quit\n").unwrap();
    let (done_tx, done) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = done_tx.send(sim.wait());
    });
    let status = done
        .recv_timeout(Duration::from_secs(10))
        .expect("simulate quits on `quit`")
        .unwrap();
    assert!(status.success());
}

#[test]
fn a_missing_port_is_a_clear_error() {
    let out = bin()
        .args([
            "ping",
            "--port",
            "/dev/no-such-cart-mcu",
            "--timeout",
            "0.3",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/dev/no-such-cart-mcu"), "{err}");
    assert!(err.contains("no answer"), "{err}");

    let out = bin().args(["status"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pass --port"), "{err}");

    let out = bin()
        .args(["status", "--board", "generic-cpu"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no [serial] table"), "{err}");
}

#[test]
fn help_lists_the_subcommands() {
    let out = bin().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for cmd in ["monitor", "ping", "status", "simulate"] {
        assert!(help.contains(cmd), "{help}");
    }
}
