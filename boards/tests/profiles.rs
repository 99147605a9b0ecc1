//! Board profiles: every built-in profile loads and validates, files load with relative paths
//! resolved, and every kind of mistake is refused with an error that names the field.

use boards::{
    BUILTIN_NAMES, BoardError, BoardProfile, ComputeDevice, LumaRange, SectorMode, SourceKind,
};

/// A minimal valid profile that tests edit one line of.
const BASE: &str = r#"
name = "test-board"
description = "a board for tests"

[capture]
source = "v4l2"
device = "/dev/video0"
width = 640
height = 480
fps = 30.0

[compute]
device = "cpu"
threads = 2
precision = "int8"
"#;

fn parse(text: &str) -> Result<BoardProfile, BoardError> {
    BoardProfile::from_toml_str(text, "test.toml".into(), Some(".".into()))
}

/// Parses, expects an error, and returns its message.
fn error_of(text: &str) -> String {
    match parse(text) {
        Ok(p) => panic!("expected an error, got a profile named {}", p.name),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_builtin_profile_loads() {
    for name in BUILTIN_NAMES {
        let p = BoardProfile::builtin(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(&p.name, name, "file name and `name` field differ");
        assert!(p.base_dir.is_none());
        assert_eq!(p.origin, format!("built-in {name}"));
    }
}

#[test]
fn builtin_profiles_say_what_each_board_is() {
    let generic = BoardProfile::builtin("generic-cpu").unwrap();
    assert_eq!(generic.capture.source, SourceKind::Phantom);
    assert_eq!(generic.compute.device, ComputeDevice::Cpu);
    assert!(generic.serial.is_none());
    for name in ["jetson-orin-nano", "jetson-orin-nx", "jetson-agx-orin"] {
        let p = BoardProfile::builtin(name).unwrap();
        assert_eq!(p.capture.source, SourceKind::V4l2, "{name}");
        let serial = p
            .serial
            .as_ref()
            .unwrap_or_else(|| panic!("{name} has no serial"));
        assert_eq!(serial.port, "/dev/echojepa-mcu");
        // Carts trust the device maker's key and never the demo key.
        assert!(
            p.trust.keys.iter().all(|k| k.name != "echojepa-demo"),
            "{name}"
        );
        assert!(!p.trust.keys.is_empty(), "{name}");
    }
    // What a profile says it runs is what the runtime runs: no built-in profile asks for CUDA
    // (the runtime has no GPU code and would only log it) or claims the GPU in its description.
    for name in BUILTIN_NAMES {
        let p = BoardProfile::builtin(name).unwrap();
        assert_eq!(p.compute.device, ComputeDevice::Cpu, "{name}");
        let d = p.description.to_lowercase();
        assert!(
            d.contains("cpu") && !d.contains("on the gpu"),
            "{name}: {}",
            p.description
        );
    }
    let nano = BoardProfile::builtin("jetson-orin-nano").unwrap();
    let agx = BoardProfile::builtin("jetson-agx-orin").unwrap();
    assert!(nano.model.max_resolution < agx.model.max_resolution);
}

#[test]
fn unknown_name_lists_the_builtin_profiles() {
    let e = BoardProfile::resolve("jetson-tx1").unwrap_err().to_string();
    assert!(e.contains("jetson-tx1"), "{e}");
    for name in BUILTIN_NAMES {
        assert!(e.contains(name), "{e}");
    }
}

#[test]
fn resolve_reads_files_and_resolves_relative_paths() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("my-cart.toml");
    let text = format!(
        "{BASE}\n[trust]\nkeys = [{{ name = \"lab\", file = \"keys/lab.pub\" }}]\n[bundles]\nslots_dir = \"slots\"\n"
    );
    std::fs::write(&path, text).unwrap();
    let p = BoardProfile::resolve(path.to_str().unwrap()).unwrap();
    assert_eq!(p.name, "test-board");
    assert_eq!(p.origin, path.display().to_string());
    let key_file = p.trust.keys[0].file.as_ref().unwrap();
    assert_eq!(p.resolve_path(key_file), dir.path().join("keys/lab.pub"));
    assert_eq!(
        p.resolve_path(&p.bundles.slots_dir),
        dir.path().join("slots")
    );
    // Absolute paths stay as they are.
    assert_eq!(
        p.resolve_path(std::path::Path::new("/etc/x")),
        std::path::PathBuf::from("/etc/x")
    );
}

#[test]
fn missing_file_names_the_path() {
    let e = BoardProfile::resolve("/nonexistent/cart.toml")
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/cart.toml"), "{e}");
    assert!(e.contains("cannot read"), "{e}");
}

#[test]
fn defaults_fill_optional_tables() {
    let p = parse(BASE).unwrap();
    assert_eq!(p.sector.mode, SectorMode::Detect);
    assert_eq!(p.model.clip_every, 8);
    assert_eq!(p.model.inference_queue, 1);
    assert_eq!(p.capture.buffers, 4);
    assert_eq!(p.capture.pixel_formats.len(), 3);
    assert!(p.trust.keys.is_empty());
}

#[test]
fn unknown_field_is_named() {
    let e = error_of(&BASE.replace("fps = 30.0", "fsp = 30.0"));
    assert!(e.contains("fsp"), "{e}");
    assert!(e.contains("test.toml"), "{e}");
}

#[test]
fn wrong_type_is_named() {
    let e = error_of(&BASE.replace("width = 640", "width = \"wide\""));
    assert!(e.contains("width"), "{e}");
}

#[test]
fn luma_range_defaults_to_full_and_reads_limited() {
    assert_eq!(parse(BASE).unwrap().capture.luma_range, LumaRange::Full);
    let p = parse(&BASE.replace("fps = 30.0", "fps = 30.0\nluma_range = \"limited\"")).unwrap();
    assert_eq!(p.capture.luma_range, LumaRange::Limited);
    let e = error_of(&BASE.replace("fps = 30.0", "fps = 30.0\nluma_range = \"tv\""));
    assert!(e.contains("tv") && e.contains("limited"), "{e}");
}

#[test]
fn unknown_pixel_format_is_refused() {
    let e = error_of(&BASE.replace("fps = 30.0", "fps = 30.0\npixel_formats = [\"NV12\"]"));
    assert!(e.contains("NV12"), "{e}");
}

/// Each case: one edit to BASE (or an appended table) and the field the error must name.
#[test]
fn invalid_values_name_their_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("fps = 30.0", "fps = 0.0", "capture.fps"),
        ("fps = 30.0", "fps = 1000.0", "capture.fps"),
        ("width = 640", "width = 4", "capture.width"),
        ("height = 480", "height = 100000", "capture.height"),
        ("device = \"/dev/video0\"\n", "", "capture.device"),
        (
            "fps = 30.0",
            "fps = 30.0\npixel_formats = []",
            "capture.pixel_formats",
        ),
        (
            "fps = 30.0",
            "fps = 30.0\npixel_formats = [\"YUYV\", \"YUYV\"]",
            "capture.pixel_formats[1]",
        ),
        ("fps = 30.0", "fps = 30.0\nbuffers = 1", "capture.buffers"),
        (
            "fps = 30.0",
            "fps = 30.0\nreconnect_initial_ms = 500\nreconnect_max_ms = 100",
            "capture.reconnect_max_ms",
        ),
        ("threads = 2", "threads = 5000", "compute.threads"),
        (
            "threads = 2",
            "threads = 2\ncuda_device = 1",
            "compute.cuda_device",
        ),
    ];
    for (from, to, field) in cases {
        assert!(BASE.contains(from), "bad test case {from}");
        let e = error_of(&BASE.replacen(from, to, 1));
        assert!(
            e.contains(field),
            "edit {to:?}: error does not name {field}: {e}"
        );
    }
    let appended: &[(&str, &str)] = &[
        (
            "[sector]\nmode = \"fixed\"\nx = 0\ny = 0\nwidth = 100",
            "sector.height",
        ),
        (
            "[sector]\nmode = \"fixed\"\nx = 600\ny = 0\nwidth = 100\nheight = 100",
            "sector.width",
        ),
        (
            "[sector]\nmode = \"fixed\"\nx = 0\ny = 400\nwidth = 100\nheight = 100",
            "sector.height",
        ),
        ("[sector]\nmode = \"detect\"\nx = 3", "sector.x"),
        ("[sector]\nredetect_every = 0", "sector.redetect_every"),
        ("[model]\nmax_resolution = 100", "model.max_resolution"),
        ("[model]\nmax_frames = 15", "model.max_frames"),
        ("[model]\nclip_every = 0", "model.clip_every"),
        ("[model]\ninference_queue = 64", "model.inference_queue"),
        (
            "[clinical]\nef_min_confidence = 1.5",
            "clinical.ef_min_confidence",
        ),
        (
            "[clinical]\nmin_cycle_seconds = 0.0",
            "clinical.min_cycle_seconds",
        ),
        (
            "[clinical]\nef_window_seconds = 1000.0",
            "clinical.ef_window_seconds",
        ),
        (
            "[serial]\nport = \"/dev/ttyTHS1\"\nbaud = 12345",
            "serial.baud",
        ),
        ("[serial]\nport = \"\"\nbaud = 115200", "serial.port"),
        (
            "[trust]\nkeys = [{ name = \"k\", ed25519 = \"abc\" }]",
            "trust.keys[0].ed25519",
        ),
        (
            "[trust]\nkeys = [{ name = \"k\" }]",
            "trust.keys[0].ed25519",
        ),
        (
            "[trust]\nkeys = [{ name = \"k\", file = \"a\" }, { name = \"k\", file = \"b\" }]",
            "trust.keys[1].name",
        ),
        (
            "[trust]\nkeys = [{ name = \"k\", file = \"a\", ed25519 = \"00\" }]",
            "trust.keys[0].file",
        ),
        ("[bundles]\nslots_dir = \"\"", "bundles.slots_dir"),
        (
            "[trust]\nkeys = [{ name = \"my key\", file = \"a\" }]",
            "trust.keys[0].name",
        ),
    ];
    for (table, field) in appended {
        let e = error_of(&format!("{BASE}\n{table}\n"));
        assert!(
            e.contains(field),
            "{table:?}: error does not name {field}: {e}"
        );
    }
}

#[test]
fn valid_fixed_sector_and_inline_key_are_accepted() {
    let text = format!(
        "{BASE}\n[sector]\nmode = \"fixed\"\nx = 40\ny = 20\nwidth = 400\nheight = 400\n\
         [trust]\nkeys = [{{ name = \"k\", ed25519 = \"{}\" }}]\n[serial]\nport = \"/dev/ttyACM0\"\nbaud = 921600\n",
        "ab".repeat(32)
    );
    let p = parse(&text).unwrap();
    assert_eq!(p.sector.mode, SectorMode::Fixed);
    assert_eq!(p.sector.width, Some(400));
    assert_eq!(p.serial.unwrap().baud, 921_600);
}

#[test]
fn builtin_profiles_refuse_relative_paths() {
    let text = BASE.replace("/dev/video0", "video0");
    let e = BoardProfile::from_toml_str(&text, "built-in x".into(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("capture.device"), "{e}");
}

/// The default profile trusts exactly the demo key whose public half ships with the demo bundle.
#[test]
fn generic_cpu_trusts_the_published_demo_key() {
    let p = BoardProfile::builtin("generic-cpu").unwrap();
    assert_eq!(p.trust.keys.len(), 1);
    let k = &p.trust.keys[0];
    assert_eq!(k.name, "echojepa-demo");
    let pub_file = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../edge-runtime/demo/keys/echojepa-demo.pub");
    let text = std::fs::read_to_string(&pub_file).unwrap();
    let hex = text
        .lines()
        .find_map(|l| l.strip_prefix("key: "))
        .expect("key line");
    assert_eq!(k.ed25519.as_deref(), Some(hex.trim()));
}

#[test]
fn live_view_limits_have_safe_defaults_and_are_checked() {
    let p = parse(BASE).unwrap();
    let v = &p.live_view;
    assert_eq!(v.max_connections, 32);
    assert_eq!(v.max_viewers, 16);
    assert_eq!(v.max_header_bytes, 16 * 1024);
    assert_eq!(v.max_headers, 64);
    assert_eq!(v.header_timeout_ms, 10_000);
    assert_eq!(v.idle_timeout_ms, 60_000);
    assert_eq!(v.write_timeout_ms, 10_000);
    assert_eq!(v.viewer_queue, 64);
    assert!(v.allowed_hosts.is_empty());

    let p = parse(&format!(
        "{BASE}\n[live_view]\nmax_connections = 8\nmax_viewers = 4\nallowed_hosts = [\"cart-7.ward.example\"]\n"
    ))
    .unwrap();
    assert_eq!(p.live_view.max_connections, 8);
    assert_eq!(p.live_view.max_viewers, 4);
    assert_eq!(p.live_view.allowed_hosts, ["cart-7.ward.example"]);

    let cases: &[(&str, &str)] = &[
        ("max_connections = 0", "live_view.max_connections"),
        ("max_connections = 100000", "live_view.max_connections"),
        (
            "max_connections = 4\nmax_viewers = 8",
            "live_view.max_viewers",
        ),
        ("max_viewers = 0", "live_view.max_viewers"),
        ("max_header_bytes = 10", "live_view.max_header_bytes"),
        ("max_header_bytes = 268435456", "live_view.max_header_bytes"),
        ("max_headers = 0", "live_view.max_headers"),
        ("header_timeout_ms = 0", "live_view.header_timeout_ms"),
        ("idle_timeout_ms = 1", "live_view.idle_timeout_ms"),
        ("write_timeout_ms = 0", "live_view.write_timeout_ms"),
        ("write_timeout_ms = 99999999", "live_view.write_timeout_ms"),
        ("viewer_queue = 0", "live_view.viewer_queue"),
        ("allowed_hosts = [\"\"]", "live_view.allowed_hosts[0]"),
        (
            "allowed_hosts = [\"ok.example\", \"evil.example:80\"]",
            "live_view.allowed_hosts[1]",
        ),
    ];
    for (body, field) in cases {
        let e = error_of(&format!("{BASE}\n[live_view]\n{body}\n"));
        assert!(
            e.contains(field),
            "{body:?}: error does not name {field}: {e}"
        );
    }
    let e = error_of(&format!("{BASE}\n[live_view]\nmax_conections = 3\n"));
    assert!(e.contains("max_conections"), "{e}");
}
