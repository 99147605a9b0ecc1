//! The live view's layout in headless Chromium, from a fixed state: a phantom frame and a scripted
//! run of predictions fed to the server's hub directly (no engine, no clock), shown at a desktop
//! (1280x800) and a tablet portrait (768x1024) viewport.
//!
//! Checked in the page (Runtime.evaluate): the echo keeps its aspect ratio (within 1 %), it is
//! the largest element and covers a good part of the screen, the notice is said exactly once and
//! nothing covers it, the withheld EF names the model's EF views, and the page loads nothing from
//! elsewhere. Then each screenshot is compared with its golden PNG in `tests/golden/` within a
//! pixel tolerance (fonts and anti-aliasing may differ a little between Chromium builds).
//!
//! `UPDATE_GOLDEN=1 cargo test -p edge-runtime --test runtime web_layout` rewrites the goldens and
//! their copies in `docs/` (shown in the README). Without Chromium the test is skipped, except
//! under CI (`CI=true`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use edge_runtime::clinical::EfStatus;
use edge_runtime::convert::to_gray;
use edge_runtime::events::{
    EfOut, Event, ModelRef, Prediction, Started, ViewOut, ViewProb, top_views,
};
use edge_runtime::output::web::{WebServer, WebSink};
use edge_runtime::pipeline::{DisplayFrame, DisplayTap, Sink};
use edge_runtime::source::FrameSource;
use edge_runtime::source::phantom::{PhantomSchedule, PhantomSource};
use edge_runtime::stats::CounterSnapshot;
use serde_json::{Value, json};

use crate::web::{Browser, chromium_for_test};

const CLASSES: [&str; 4] = ["A4C", "A2C", "PLAX", "PSAX"];
const NOTICE: &str = "Trained on synthetic (phantom) data. Not for diagnostic use.";

/// A pixel differs when one of its channels differs by more than this.
const CHANNEL_TOLERANCE: u8 = 48;
/// The screenshot matches when at most this fraction of its pixels differ.
const MAX_DIFFERING: f64 = 0.01;

fn model() -> ModelRef {
    ModelRef {
        id: "echojepa-demo-phantom".into(),
        version: "2026.12.6".into(),
    }
}

fn started() -> Started {
    Started {
        schema: edge_runtime::events::SCHEMA_VERSION,
        model: model(),
        board: "x86-cart".into(),
        source: "phantom 320x240 @ 30 fps (synthetic)".into(),
        runs_on: "cpu int8 (2 threads)".into(),
        view_classes: CLASSES.map(String::from).to_vec(),
        ef_views: vec!["A4C".into()],
        ef_min_confidence: Some(0.6),
        ef_min_cycle_s: 1.5,
        view_confidence_calibrated: true,
        clip_frames: 8,
        clip_interval_ms: 133.3,
        resolution: 112,
        clip_every: 8,
        synthetic_training_data: true,
        notice: NOTICE.into(),
    }
}

/// One prediction at source time `t` (seconds) of `view` with `confidence` (the rest of the
/// probability spread over the other classes) and the EF decision.
fn prediction(
    clip: u64,
    t: f64,
    view: &str,
    confidence: f32,
    status: EfStatus,
    ef: Option<(f32, f32)>,
    warmup: Option<f32>,
) -> Prediction {
    let i = CLASSES.iter().position(|c| *c == view).unwrap();
    let rest = 1.0 - confidence;
    let shares = [0.6, 0.3, 0.1];
    let mut probs = [0f32; 4];
    let mut k = 0;
    for (j, p) in probs.iter_mut().enumerate() {
        if j == i {
            *p = confidence;
        } else {
            *p = rest * shares[k];
            k += 1;
        }
    }
    let classes: Vec<String> = CLASSES.map(String::from).to_vec();
    let ok = status == EfStatus::Ok;
    Prediction {
        model: model(),
        clip,
        time_s: t,
        frames: [clip * 8, clip * 8 + 7],
        view: ViewOut {
            label: view.into(),
            confidence,
            probs: classes.iter().cloned().zip(probs).collect(),
            top: top_views(&classes, &probs),
        },
        ef: EfOut {
            status,
            value: ef.filter(|_| ok).map(|e| e.0),
            spread: ef.filter(|_| ok).map(|e| e.1),
            clips: ok.then_some(11),
            window_s: ok.then_some(5.5),
            beats: None,
            unit: "%".into(),
            clip_estimate: ef.map(|e| e.0),
            warmup_remaining_s: warmup,
        },
        lv_outline: None,
        latency_ms: [(
            "capture_to_prediction".to_string(),
            180.0 + (clip % 7) as f32,
        )]
        .into_iter()
        .collect(),
        counters: CounterSnapshot {
            captured: clip * 8 + 40,
            processed: clip * 8 + 40,
            clips_built: clip + 1,
            clips_inferred: clip + 1 - clip / 100,
            clips_dropped: clip / 100,
            ..CounterSnapshot::default()
        },
        synthetic_training_data: true,
        notice: NOTICE.into(),
        truth: None,
    }
}

/// Four and a half minutes of a scan, two predictions a second: A4C warming up and then shown,
/// a detour to PLAX, A4C again with a stretch of low confidence.
fn scripted_run() -> Vec<Prediction> {
    let mut out = Vec::new();
    // when A4C (the EF view) was taken up
    let mut since_a4c = 10.0;
    for k in 0..540u64 {
        let t = 10.0 + k as f64 * 0.5;
        let rel = t - 10.0;
        // a slow drift and a beat-to-beat wobble, all deterministic
        let ef = 56.0 + 3.0 * (rel / 40.0).sin() as f32 + 0.7 * (rel * 0.45).sin() as f32;
        let spread = 2.2 + 0.6 * (rel / 13.0).cos() as f32;
        let (view, conf) = match rel {
            r if (90.0..120.0).contains(&r) => ("PLAX", 0.94),
            r if (190.0..204.0).contains(&r) => ("A4C", 0.48),
            _ => ("A4C", 0.93),
        };
        let status = if view != "A4C" {
            since_a4c = t + 0.5;
            EfStatus::WrongView
        } else if conf < 0.6 {
            EfStatus::LowConfidence
        } else if t - since_a4c < 1.5 {
            EfStatus::WarmingUp
        } else {
            EfStatus::Ok
        };
        let warmup = (status == EfStatus::WarmingUp).then_some((1.5 - (t - since_a4c)) as f32);
        out.push(prediction(
            k,
            t,
            view,
            conf,
            status,
            Some((ef, spread)),
            warmup,
        ));
    }
    out
}

/// A phantom A4C frame, 320x240, with its burned-in text.
fn phantom_frame() -> DisplayFrame {
    let schedule = PhantomSchedule {
        views: vec![echojepa_phantom::View::A4c],
        seconds_per_view: 3600.0,
        seed: 1,
    };
    let mut source = PhantomSource::new(schedule, 320, 240, 30.0).unwrap();
    let mut frame = None;
    for _ in 0..9 {
        frame = source.next_frame().unwrap();
    }
    let frame = frame.unwrap();
    DisplayFrame {
        time_s: frame.ts.as_secs_f64(),
        image: to_gray(&frame).unwrap(),
        sector: None,
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn set_viewport(b: &mut Browser, width: u32, height: u32) {
    b.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": false}),
    );
    b.call("Emulation.setScrollbarsHidden", json!({"hidden": true}));
    // The page has re-laid out and fitted the echo when the fit is the one the stage's current
    // size (read now, so laid out now) calls for, the same twice in a row, at the new size.
    let mut previous = Value::Null;
    wait_until("the page at the new size", Duration::from_secs(30), || {
        let now = b.eval(FITTED);
        let settled = now == previous
            && now
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("[{width},{height},true,")));
        previous = now;
        settled
    });
}

/// The viewport, whether the echo's size is the fit of the stage as laid out now, and that size.
const FITTED: &str = r#"(() => {
  const st = document.getElementById("stage");
  const [w, h] = (document.body.dataset.source || "320x240").split("x").map(Number);
  const s = Math.min(st.clientWidth / w, st.clientHeight / h);
  const fit = Math.floor(w * s) + "x" + Math.floor(h * s);
  return JSON.stringify([innerWidth, innerHeight, fit === document.body.dataset.fit, fit]);
})()"#;

/// What the page shows, measured in the page.
const LAYOUT: &str = r##"(() => {
  const c = document.getElementById("video"), r = c.getBoundingClientRect();
  const [sw, sh] = (document.body.dataset.source || "0x0").split("x").map(Number);
  const vw = innerWidth, vh = innerHeight;
  const visible = (b) => Math.max(0, Math.min(b.right, vw) - Math.max(b.left, 0))
    * Math.max(0, Math.min(b.bottom, vh) - Math.max(b.top, 0));
  let other = 0, otherName = "";
  for (const e of document.querySelectorAll("body *")) {
    if (e === c || e.contains(c)) continue;
    const a = visible(e.getBoundingClientRect());
    if (a > other) { other = a; otherName = e.tagName + "#" + e.id + "." + e.className; }
  }
  const text = document.body.innerText;
  const count = (re) => (text.match(re) || []).length;
  const bar = document.getElementById("notice-bar"), nb = bar.getBoundingClientRect();
  const probes = [0.1, 0.5, 0.9].map((f) => document.elementFromPoint(nb.left + 4, nb.top + nb.height * f));
  return JSON.stringify({
    canvas: [r.left, r.top, r.width, r.height], source: [sw, sh], viewport: [vw, vh],
    canvasArea: visible(r), largestOther: other, largestOtherName: otherName,
    notDiagnostic: count(/not for diagnostic use/gi), synthetic: count(/synthetic/gi),
    noticeUncovered: probes.every((e) => e && bar.contains(e)),
    noticeInView: nb.top >= 0 && nb.bottom <= vh && nb.height > 10,
    noticeVisible: getComputedStyle(bar).visibility === "visible" && getComputedStyle(bar).display !== "none"
      && Number(getComputedStyle(bar).opacity) === 1,
    noticeText: bar.innerText,
    canvasBelowNotice: r.top >= nb.bottom,
    horizontalOverflow: document.documentElement.scrollWidth > vw,
    external: [...document.querySelectorAll("[src],[href]")].map((e) => e.getAttribute("src") || e.getAttribute("href"))
      .filter((u) => /^(https?:)?\/\//i.test(u)),
    fonts: [...document.fonts].length,
    efStatus: document.getElementById("ef-status").textContent,
    efValue: document.getElementById("ef-value").textContent,
    efSpread: document.getElementById("ef-spread").textContent,
    efBasis: document.getElementById("ef-basis").textContent,
    top: [...document.querySelectorAll("#view-top li")].map((li) => li.innerText.replace(/\s+/g, " ")),
    trendPoints: Number(document.getElementById("trend").dataset.points),
    trendSpan: Number(document.getElementById("trend").dataset.span),
    axis: [...document.querySelectorAll("#trend text")].map((t) => t.textContent),
    stale: !document.getElementById("stale").hidden,
  });
})()"##;

fn layout(b: &mut Browser) -> Value {
    serde_json::from_str(b.eval(LAYOUT).as_str().unwrap()).unwrap()
}

/// The checks that hold at every size.
fn check_layout(l: &Value, what: &str) {
    let c: Vec<f64> = serde_json::from_value(l["canvas"].clone()).unwrap();
    let src: Vec<f64> = serde_json::from_value(l["source"].clone()).unwrap();
    let vp: Vec<f64> = serde_json::from_value(l["viewport"].clone()).unwrap();
    assert_eq!(src, [320.0, 240.0], "{what}: the source frame size: {l}");
    // The echo as drawn keeps the frame's aspect ratio (no object-fit: the canvas box is the
    // image).
    let drawn = c[2] / c[3];
    let source = src[0] / src[1];
    assert!(
        (drawn / source - 1.0).abs() < 0.01,
        "{what}: drawn {}x{} (aspect {drawn:.3}), source aspect {source:.3}",
        c[2],
        c[3]
    );
    // Inside the viewport, and the largest thing on the page by far.
    assert!(
        c[0] >= 0.0 && c[1] >= 0.0 && c[0] + c[2] <= vp[0] + 0.5 && c[1] + c[3] <= vp[1] + 0.5,
        "{what}: the echo leaves the viewport: {l}"
    );
    let area = l["canvasArea"].as_f64().unwrap();
    assert!(
        area > l["largestOther"].as_f64().unwrap(),
        "{what}: {} is larger than the echo: {l}",
        l["largestOtherName"]
    );
    let share = area / (vp[0] * vp[1]);
    assert!(
        share > 0.45,
        "{what}: the echo covers {:.0} % of the screen",
        share * 100.0
    );
    // The notice, once, in view, uncovered, and below it the echo.
    assert_eq!(l["notDiagnostic"], 1, "{what}: {}", l["noticeText"]);
    assert_eq!(l["synthetic"], 1, "{what}: {}", l["noticeText"]);
    assert_eq!(
        l["noticeText"],
        "Not for diagnostic use. Trained on synthetic (phantom) data."
    );
    assert_eq!(l["noticeUncovered"], true, "{what}: {l}");
    assert_eq!(l["noticeInView"], true, "{what}: {l}");
    assert_eq!(l["noticeVisible"], true, "{what}: {l}");
    assert_eq!(l["canvasBelowNotice"], true, "{what}: {l}");
    assert_eq!(l["horizontalOverflow"], false, "{what}: {l}");
    assert_eq!(l["external"], json!([]), "{what}: {l}");
    assert_eq!(l["fonts"], 0, "{what}: web fonts: {l}");
    assert_eq!(l["stale"], false, "{what}: {l}");
}

fn screenshot(b: &mut Browser) -> Vec<u8> {
    let r = b.call(
        "Page.captureScreenshot",
        json!({"format": "png", "captureBeyondViewport": false}),
    );
    base64::engine::general_purpose::STANDARD
        .decode(r["data"].as_str().unwrap())
        .unwrap()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Compares a screenshot with its golden, or rewrites the golden (and its copy in docs/) under
/// `UPDATE_GOLDEN=1`. On a mismatch the screenshot and a difference image are left in the
/// target directory.
fn compare_with_golden(png: &[u8], name: &str) {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.png"));
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
        std::fs::write(&golden, png).unwrap();
        std::fs::write(repo_root().join("docs").join(format!("{name}.png")), png).unwrap();
        eprintln!("wrote {} and docs/{name}.png", golden.display());
        return;
    }
    let expected = std::fs::read(&golden).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to create it",
            golden.display()
        )
    });
    let want = image::load_from_memory_with_format(&expected, image::ImageFormat::Png)
        .unwrap()
        .to_rgb8();
    let got = image::load_from_memory_with_format(png, image::ImageFormat::Png)
        .unwrap()
        .to_rgb8();
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("live-view");
    let keep = |diff: Option<&image::RgbImage>| {
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join(format!("{name}.png")), png).unwrap();
        if let Some(d) = diff {
            d.save(out.join(format!("{name}-diff.png"))).unwrap();
        }
    };
    if want.dimensions() != got.dimensions() {
        keep(None);
        panic!(
            "{name}: screenshot {:?}, golden {:?} (screenshot in {})",
            got.dimensions(),
            want.dimensions(),
            out.display()
        );
    }
    let mut diff = image::RgbImage::new(got.width(), got.height());
    let mut differing = 0u64;
    for ((a, b), d) in want.pixels().zip(got.pixels()).zip(diff.pixels_mut()) {
        let delta = (0..3).map(|i| a[i].abs_diff(b[i])).max().unwrap_or(0);
        if delta > CHANNEL_TOLERANCE {
            differing += 1;
            *d = image::Rgb([255, 0, 255]);
        } else {
            *d = image::Rgb([b[0] / 4, b[1] / 4, b[2] / 4]);
        }
    }
    let share = differing as f64 / (got.width() as u64 * got.height() as u64) as f64;
    eprintln!(
        "{name}: {differing} pixels ({:.3} %) differ by more than {CHANNEL_TOLERANCE}",
        share * 100.0
    );
    if share > MAX_DIFFERING {
        keep(Some(&diff));
        panic!(
            "{name}: {:.2} % of the pixels differ from {} (at most {:.2} % may); the screenshot \
             and a difference image are in {}; if the change is intended, rerun with \
             UPDATE_GOLDEN=1",
            share * 100.0,
            golden.display(),
            MAX_DIFFERING * 100.0,
            out.display()
        );
    }
}

#[test]
fn the_live_view_layout_matches_the_goldens() {
    let Some(exe) = chromium_for_test("the live-view layout test") else {
        return;
    };
    let server = WebServer::start("127.0.0.1:0", 20.0).unwrap();
    let mut sink = WebSink::new(server.hub.clone());
    sink.emit(&Event::Started(started())).unwrap();
    let run = scripted_run();
    let n = run.len();
    for p in run {
        sink.emit(&Event::Prediction(Box::new(p))).unwrap();
    }

    let mut b = Browser::launch(&exe);
    b.open(&server.url());
    // The page connects; then the frame (frames go to connected viewers only).
    wait_until("the page's event stream", Duration::from_secs(60), || {
        server.hub.clients() == 1
    });
    server.hub.offer(phantom_frame());
    wait_until("the frame drawn", Duration::from_secs(60), || {
        b.eval("Number(document.body.dataset.framesDrawn || 0)")
            .as_u64()
            .is_some_and(|n| n >= 1)
    });
    b.eval("liveView.freeze()");

    // Desktop: A4C with EF shown.
    set_viewport(&mut b, 1280, 800);
    let l = layout(&mut b);
    check_layout(&l, "1280x800");
    assert_eq!(l["efValue"], "58.0%", "{l}");
    assert!(l["efSpread"].as_str().unwrap().starts_with("± "), "{l}");
    assert_eq!(l["efBasis"], "median of 11 clips over 5.5 s", "{l}");
    assert_eq!(l["efStatus"], "", "{l}");
    assert_eq!(l["top"], json!(["A4C 93%", "A2C 4%", "PLAX 2%"]), "{l}");
    // The whole replayed history is in the trend, on a 5-minute axis.
    assert_eq!(l["trendPoints"], n, "{l}");
    assert_eq!(l["trendSpan"], 300, "{l}");
    let axis = l["axis"].to_string();
    assert!(
        axis.contains("\"-5 min\"") && axis.contains("\"now\""),
        "{axis}"
    );
    compare_with_golden(&screenshot(&mut b), "live-view-desktop");

    // The probe moves to A2C, an apical view this model has no EF for.
    let t = 10.0 + n as f64 * 0.5;
    for k in 0..4 {
        let p = prediction(
            (n + k) as u64,
            t + k as f64 * 0.5,
            "A2C",
            0.91,
            EfStatus::WrongView,
            Some((47.0, 0.0)),
            None,
        );
        sink.emit(&Event::Prediction(Box::new(p))).unwrap();
    }
    wait_until("the A2C predictions", Duration::from_secs(30), || {
        b.eval("document.getElementById('view-label').textContent") == "A2C"
            && b.eval("document.body.dataset.efStatus") == "wrong_view"
    });
    set_viewport(&mut b, 768, 1024);
    let l = layout(&mut b);
    check_layout(&l, "768x1024");
    assert_eq!(l["efValue"], "--", "{l}");
    assert_eq!(
        l["efStatus"], "EF is computed on A4C only; this is A2C.",
        "{l}"
    );
    assert_eq!(l["trendPoints"], n + 4, "{l}");
    compare_with_golden(&screenshot(&mut b), "live-view-tablet");

    // The other withheld reasons, in words from the start record.
    let reason = |b: &mut Browser, p: &Value, st: &Value| -> String {
        b.eval(&format!("liveView.efReason({p}, {st})"))
            .as_str()
            .unwrap()
            .to_string()
    };
    let st = json!({"ef_views": ["A4C", "A2C"], "ef_min_confidence": 0.6, "ef_min_cycle_s": 1.5});
    let p = |view: &str, conf: f64, status: &str, rem: Value| json!({"view": {"label": view, "confidence": conf}, "ef": {"status": status, "warmup_remaining_s": rem}});
    assert_eq!(
        reason(&mut b, &p("PLAX", 0.95, "wrong_view", Value::Null), &st),
        "EF is computed on A4C and A2C only; this is PLAX."
    );
    assert_eq!(
        reason(&mut b, &p("A4C", 0.52, "low_confidence", Value::Null), &st),
        "EF withheld: view confidence 52% is below the 60% EF needs."
    );
    assert_eq!(
        reason(&mut b, &p("A2C", 0.9, "warming_up", json!(1.04)), &st),
        "EF warming up: hold A2C 1.0 s more (one heart cycle, 1.5 s)."
    );
    assert_eq!(
        reason(&mut b, &p("A2C", 0.9, "warming_up", json!(0.0)), &st),
        "EF warming up: waiting for a whole beat in A2C."
    );
    assert_eq!(
        reason(
            &mut b,
            &p("A4C", 0.9, "no_ef_head", Value::Null),
            &json!({"ef_views": []})
        ),
        "This model does not estimate EF."
    );
    server.hub.close();
}

#[test]
fn scripted_run_is_what_the_goldens_show() {
    // The state behind the goldens: the desktop shot's newest prediction shows EF, and the run
    // holds each withheld status at least once.
    let run = scripted_run();
    let last = run.last().unwrap();
    assert_eq!(last.ef.status, EfStatus::Ok);
    for s in [
        EfStatus::WarmingUp,
        EfStatus::WrongView,
        EfStatus::LowConfidence,
    ] {
        assert!(run.iter().any(|p| p.ef.status == s), "{s:?}");
    }
    let top: Vec<&ViewProb> = last.view.top.iter().collect();
    assert_eq!(top.len(), 3);
    assert_eq!(top[0].label, "A4C");
}
