//! Decoding the MCU's defmt log records with a firmware ELF, as a library and through
//! `firmware-host monitor --elf`. The ELF is assembled at test time with the system assembler
//! (`as`, part of the toolchain Rust already needs for linking): a `.defmt` section whose symbol
//! names are defmt's JSON-encoded format strings, exactly what a firmware build contains.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use cart_protocol::LogLevel;
use firmware_host::defmt_log::{DefmtError, DefmtTable};
use firmware_host::sim::{SimConfig, SimControl, SimMcu, SimReport};

use crate::support::{DEADLINE, wait_for};

const ASM: &str = r#"
.section .defmt,"",@progbits
"{\"package\":\"cart-fw\",\"tag\":\"defmt_info\",\"data\":\"pump {=u8} at {=u16} rpm\",\"disambiguator\":\"1\",\"crate_name\":\"cart_fw\"}":
    .byte 0
"{\"package\":\"cart-fw\",\"tag\":\"defmt_warn\",\"data\":\"battery low\",\"disambiguator\":\"2\",\"crate_name\":\"cart_fw\"}":
    .byte 0
.globl "_defmt_version_ = 4"
.set "_defmt_version_ = 4", 0
.globl "_defmt_encoding_ = raw"
.set "_defmt_encoding_ = raw", 0
"#;

/// Raw-encoded defmt frame for "pump {=u8} at {=u16} rpm" (index 0) with 7 and 1200.
const PUMP: [u8; 5] = [0x00, 0x00, 0x07, 0xb0, 0x04];

fn firmware_elf(dir: &Path) -> PathBuf {
    let src = dir.join("fw.s");
    let elf = dir.join("fw.elf");
    std::fs::write(&src, ASM).unwrap();
    let status = Command::new("as")
        .arg(&src)
        .arg("-o")
        .arg(&elf)
        .status()
        .expect("the system assembler `as` (binutils) is needed to build the test ELF");
    assert!(status.success(), "as failed on {}", src.display());
    elf
}

#[test]
fn defmt_frames_decode_with_the_firmware_table() {
    let dir = tempfile::tempdir().unwrap();
    let table = DefmtTable::from_elf(&firmware_elf(dir.path())).unwrap();
    let d = table.decode(&PUMP).unwrap();
    assert_eq!(d.message, "pump 7 at 1200 rpm");
    assert_eq!(d.level, "info");
    let d = table.decode(&[0x01, 0x00]).unwrap();
    assert_eq!(
        (d.message.as_str(), d.level.as_str()),
        ("battery low", "warn")
    );
    assert!(matches!(
        table.decode(&[0x09, 0x00]),
        Err(DefmtError::Frame { len: 2 })
    ));
    assert!(matches!(
        table.decode(&[]),
        Err(DefmtError::Frame { len: 0 })
    ));
}

#[test]
fn a_file_that_is_not_a_defmt_elf_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("not-firmware.elf");
    std::fs::write(&bogus, b"hello").unwrap();
    let e = DefmtTable::from_elf(&bogus).err().expect("refused");
    assert!(e.to_string().contains("not-firmware.elf"), "{e}");
    let missing = dir.path().join("missing.elf");
    let e = DefmtTable::from_elf(&missing).err().expect("refused");
    assert!(e.to_string().contains("missing.elf"), "{e}");
}

#[test]
fn monitor_decodes_defmt_logs_from_the_mcu() {
    let dir = tempfile::tempdir().unwrap();
    let elf = firmware_elf(dir.path());
    let sim = SimMcu::spawn(SimConfig::default()).unwrap();
    // Once the simulator answers, its power-on `Boot` frame is in the pty buffer, where the
    // monitor's open discards it; so the frames counted below are exactly three.
    sim.snapshot(DEADLINE).expect("simulator running");
    let mut child = Command::new(env!("CARGO_BIN_EXE_firmware-host"))
        .args([
            "monitor",
            "--json",
            "--count",
            "3",
            "--duration",
            "30",
            "--port",
        ])
        .arg(sim.port_path())
        .arg("--elf")
        .arg(&elf)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = crossbeam_channel::unbounded();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let (up, _) = wait_for(
        sim.reports(),
        DEADLINE,
        |r| matches!(r, SimReport::HostUp { host_name } if host_name == "firmware-host"),
    );
    assert!(up.is_some(), "monitor did not handshake");
    sim.control(SimControl::DefmtLog(LogLevel::Info, PUMP.to_vec()));
    let (line, seen) = wait_for(&lines, DEADLINE, |l: &String| l.contains("defmt"));
    let Some(line) = line else {
        let _ = child.kill();
        panic!("no defmt line from monitor; saw {seen:?}");
    };
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["dir"], "<-");
    assert_eq!(v["log"]["defmt"]["message"], "pump 7 at 1200 rpm");
    assert_eq!(v["log"]["defmt"]["level"], "info");
    // --count 3 (HelloAck, the text log, the defmt log) ends it.
    let (done_tx, done) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = done
        .recv_timeout(Duration::from_secs(10))
        .expect("monitor exits after --count frames")
        .unwrap();
    assert!(status.success());
}
