//! The pipeline end to end with the stand-in engine: one prediction per clip carrying the model
//! and the notice, the clinical statuses, the drop-oldest queue under a slow model, corrupt frames,
//! engine failures, and stopping.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use edge_runtime::clinical::EfStatus;
use edge_runtime::events::Event;
use edge_runtime::frame::{Frame, PixelFormat};
use edge_runtime::output::JsonLines;
use edge_runtime::pipeline::Pipeline;
use edge_runtime::source::SourceError;

use crate::common::*;

#[test]
fn every_clip_gets_a_prediction_with_model_version_and_notice() {
    let (_, clock) = test_clock();
    let buf = SharedBuf::default();
    let collect = Collect::default();
    let frames: Vec<_> = (0..200).map(|i| flat_frame(i, 200)).collect();
    let p = Pipeline::new(test_model_info(), options(64), clock);
    let summary = p.run(
        Box::new(ScriptSource::frames(frames)),
        Box::new(TestEngine::new()),
        vec![
            Box::new(JsonLines::new(buf.clone())),
            Box::new(collect.clone()),
        ],
        Arc::new(AtomicBool::new(false)),
    );
    let c = summary.counters;
    assert_eq!(
        (c.captured, c.processed, c.corrupt, c.frame_overruns),
        (200, 200, 0, 0)
    );
    assert!(c.clips_built > 40, "{c:?}");
    assert_eq!(c.clips_dropped, 0);
    assert_eq!(c.clips_inferred, c.clips_built);

    // JSON lines: started first, summary last, every line names the model.
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.first().unwrap()["type"], "started");
    assert_eq!(lines.last().unwrap()["type"], "summary");
    for l in &lines {
        assert_eq!(l["model"]["id"], "test-engine", "{l}");
        assert_eq!(l["model"]["version"], "0.0-test", "{l}");
    }
    let preds: Vec<_> = lines.iter().filter(|l| l["type"] == "prediction").collect();
    assert_eq!(preds.len() as u64, c.clips_inferred);
    for p in &preds {
        let notice = p["notice"].as_str().unwrap();
        assert!(notice.contains("Not for diagnostic use."), "{notice}");
        assert!(notice.contains("synthetic"), "{notice}");
        assert_eq!(p["view"]["label"], "A4C");
        assert!((p["view"]["confidence"].as_f64().unwrap() - 0.9).abs() < 1e-6);
    }

    // EF: warming up for one cycle (300 ms), then shown with its spread.
    let events = collect.events();
    let ps = predictions(&events);
    assert_eq!(ps[0].ef.status, EfStatus::WarmingUp);
    assert!(ps[0].ef.value.is_none());
    let ok: Vec<_> = ps.iter().filter(|p| p.ef.status == EfStatus::Ok).collect();
    assert!(ok.len() > 30);
    let expected = 20.0 + 200.0 / 4.0;
    for p in ok {
        assert!((p.ef.value.unwrap() - expected).abs() < 1e-4);
        assert_eq!(p.ef.spread, Some(0.0));
    }
    // Ground truth rides along and is scored.
    assert_eq!(summary.accuracy.view_accuracy, Some(1.0));
    assert!(summary.accuracy.ef_mae.unwrap() < 1e-4);
    // the baseline: always saying the training mean (50 %) on clips whose truth is 70 %
    let base = summary.accuracy.ef_mean_predictor_mae.unwrap();
    assert!((base - 20.0).abs() < 1e-4, "{base}");
    assert_eq!(summary.accuracy.ef_shown_on_other_views, 0);
    assert_eq!(summary.accuracy.ef_shown_on_other_views_share, Some(0.0));
    let a4c = &summary.accuracy.per_view["A4C"];
    assert_eq!(
        (a4c.clips, a4c.correct),
        (summary.accuracy.clips, summary.accuracy.clips)
    );
}

/// EF shown while the true view is not an EF view (the model misread it) is counted, and the
/// mean-predictor baseline is only computed on clips of an EF view.
#[test]
fn ef_shown_on_a_misread_view_is_counted() {
    let (_, clock) = test_clock();
    let collect = Collect::default();
    // bright frames: the engine says A4C and shows EF, but the truth is PLAX
    let frames: Vec<Frame> = (0..200)
        .map(|i| {
            let mut f = flat_frame(i, 200);
            if let Some(t) = f.truth.as_mut() {
                t.view = "PLAX".into();
            }
            f
        })
        .collect();
    let p = Pipeline::new(test_model_info(), options(64), clock);
    let summary = p.run(
        Box::new(ScriptSource::frames(frames)),
        Box::new(TestEngine::new()),
        vec![Box::new(collect.clone())],
        Arc::new(AtomicBool::new(false)),
    );
    let a = &summary.accuracy;
    assert!(a.ef_shown > 30, "{a:?}");
    assert_eq!(a.ef_shown_on_other_views, a.ef_shown);
    assert_eq!(a.ef_shown_on_other_views_share, Some(1.0));
    assert_eq!(a.ef_clips, 0);
    assert_eq!(a.ef_mean_predictor_mae, None);
    // the confusion row of the true view says what it was read as
    assert_eq!(a.per_view.len(), 1, "{:?}", a.per_view);
    let plax = &a.per_view["PLAX"];
    assert_eq!(
        (plax.clips, plax.correct, plax.accuracy),
        (a.clips, 0, Some(0.0))
    );
    assert_eq!(plax.predicted.get("A4C"), Some(&a.clips));
}

#[test]
fn ef_is_withheld_for_a_wrong_view_and_restarts_when_the_view_changes() {
    let (_, clock) = test_clock();
    let collect = Collect::default();
    // 2 s of PLAX (dark), then 2 s of A4C (bright).
    let frames: Vec<Frame> = (0..200)
        .map(|i| flat_frame(i, if i < 100 { 60 } else { 200 }))
        .collect();
    let p = Pipeline::new(test_model_info(), options(64), clock);
    p.run(
        Box::new(ScriptSource::frames(frames)),
        Box::new(TestEngine::new()),
        vec![Box::new(collect.clone())],
        Arc::new(AtomicBool::new(false)),
    );
    let events = collect.events();
    let ps = predictions(&events);
    let plax: Vec<_> = ps.iter().filter(|p| p.frames[1] < 100).collect();
    assert!(!plax.is_empty());
    for p in &plax {
        assert_eq!(p.view.label, "PLAX");
        assert_eq!(p.ef.status, EfStatus::WrongView);
        assert!(p.ef.value.is_none());
    }
    // After the switch: warming up first, then ok.
    let a4c: Vec<_> = ps
        .iter()
        .filter(|p| p.frames[0] >= 100)
        .map(|p| p.ef.status)
        .collect();
    assert_eq!(a4c[0], EfStatus::WarmingUp);
    assert_eq!(*a4c.last().unwrap(), EfStatus::Ok);
}

#[test]
fn a_slow_model_drops_the_oldest_clips_and_capture_never_waits() {
    let (_, clock) = test_clock();
    let (mut engine, gate) = TestEngine::gated();
    let seen = engine.seen.clone();
    let (entered_tx, entered_rx) = crossbeam_channel::unbounded();
    engine.entered = Some(entered_tx);
    let (done_tx, done_rx) = crossbeam_channel::bounded(1);
    let mut source = ScriptSource::frames((0..400).map(|i| flat_frame(i, 200)));
    source.done = Some(done_tx);
    // The first clip (frames up to 6) is complete by frame 12: the source pauses there until the
    // model has started on a clip, so the model is provably busy for the rest of the stream.
    source.hold = Some((12, entered_rx));
    let collect = Collect::default();
    let p = Pipeline::new(test_model_info(), options(1), clock);
    let counters = p.counters();
    let runner = std::thread::spawn(move || {
        p.run(
            Box::new(source),
            Box::new(engine),
            vec![Box::new(collect.clone())],
            Arc::new(AtomicBool::new(false)),
        )
    });
    // The model is stuck on its first clip, yet the source is read to its end...
    done_rx.recv().unwrap();
    // ...and every frame is preprocessed (nothing waits on the model).
    while counters.snapshot().processed < 400 {
        std::thread::yield_now();
    }
    let before = counters.snapshot();
    assert_eq!(before.clips_inferred, 0, "the gate is still closed");
    drop(gate);
    let summary = runner.join().unwrap();
    let c = summary.counters;
    assert_eq!((c.captured, c.processed, c.frame_overruns), (400, 400, 0));
    // One clip was in the model, one waited in the queue; all the others were evicted.
    assert_eq!(c.clips_inferred, 2, "{c:?}");
    assert_eq!(c.clips_dropped, c.clips_built - 2);
    // The second clip the model saw is the newest one (clips end every 4 frames from frame 6,
    // the last at 398): latency did not pile up.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(seen[0] <= 11, "{seen:?}");
    assert_eq!(seen[1], 398);
}

#[test]
fn corrupt_frames_are_skipped_counted_and_named() {
    let (tclock, clock) = test_clock();
    let mut items: Vec<Result<Option<Frame>, SourceError>> = Vec::new();
    for i in 0..150u64 {
        let item = match i {
            50 => {
                // Truncated grey frame.
                let mut f = flat_frame(i, 200);
                f.data.truncate(100);
                Ok(Some(f))
            }
            60 => {
                // An MJPEG frame that is not a JPEG.
                let mut f = flat_frame(i, 200);
                f.format = PixelFormat::Mjpg;
                f.data = vec![0x12; 64];
                Ok(Some(f))
            }
            70 => Err(SourceError::Corrupt {
                source_name: "script".into(),
                seq: 70,
                reason: "bad checksum".into(),
            }),
            _ => Ok(Some(flat_frame(i, 200))),
        };
        items.push(item);
    }
    let mut source = ScriptSource::frames([]);
    source.items = items.into();
    source.clock = Some(tclock);
    let collect = Collect::default();
    let p = Pipeline::new(test_model_info(), options(64), clock);
    let summary = p.run(
        Box::new(source),
        Box::new(TestEngine::new()),
        vec![Box::new(collect.clone())],
        Arc::new(AtomicBool::new(false)),
    );
    assert_eq!(summary.counters.corrupt, 3);
    assert_eq!(summary.counters.captured, 149);
    assert_eq!(summary.counters.processed, 147);
    let events = collect.events();
    // The first bad frame the source reports and the first that fails conversion are both named
    // (later ones within a second are counted into the next record).
    let reports = statuses(&events, "corrupt_frame");
    let named = |what: &str| reports.iter().any(|r| r.message.contains(what));
    assert!(
        named("frame 50 (GREY 32x24)") && named("truncated"),
        "{reports:?}"
    );
    assert!(
        named("script: frame 70 is corrupt: bad checksum"),
        "{reports:?}"
    );
    // Predictions carry on after the bad frames.
    assert!(predictions(&events).iter().any(|p| p.frames[0] > 70));
}

#[test]
fn an_engine_failure_is_reported_and_the_next_clip_runs() {
    let (_, clock) = test_clock();
    let mut engine = TestEngine::new();
    engine.fail_on = vec![3];
    let collect = Collect::default();
    let p = Pipeline::new(test_model_info(), options(64), clock);
    let summary = p.run(
        Box::new(ScriptSource::frames((0..100).map(|i| flat_frame(i, 200)))),
        Box::new(engine),
        vec![Box::new(collect.clone())],
        Arc::new(AtomicBool::new(false)),
    );
    assert_eq!(summary.counters.engine_errors, 1);
    assert_eq!(
        summary.counters.clips_inferred,
        summary.counters.clips_built - 1
    );
    let events = collect.events();
    let errs = statuses(&events, "engine_error");
    assert!(errs[0].message.contains("clip 3"), "{}", errs[0].message);
    assert!(predictions(&events).iter().all(|p| p.clip != 3));
}

#[test]
fn stop_ends_an_endless_source_with_a_summary() {
    let (_, clock) = test_clock();
    let stop = Arc::new(AtomicBool::new(false));
    let collect = Collect::default();
    let p = Pipeline::new(test_model_info(), options(64), clock);
    let summary = p.run(
        Box::new(EndlessSource { seq: 0, value: 200 }),
        Box::new(TestEngine::new()),
        vec![
            Box::new(collect.clone()),
            Box::new(StopAfter {
                n: 5,
                seen: AtomicU64::new(0),
                stop: stop.clone(),
            }),
        ],
        stop,
    );
    assert_eq!(summary.reason, "stopped");
    assert!(summary.counters.clips_inferred >= 5);
    assert!(matches!(collect.events().last(), Some(Event::Summary(_))));
}

#[test]
fn frame_limit_ends_the_run() {
    let (_, clock) = test_clock();
    let mut opts = options(64);
    opts.max_frames = Some(37);
    let p = Pipeline::new(test_model_info(), opts, clock);
    let summary = p.run(
        Box::new(EndlessSource { seq: 0, value: 200 }),
        Box::new(TestEngine::new()),
        vec![],
        Arc::new(AtomicBool::new(false)),
    );
    assert_eq!(summary.counters.captured, 37);
    assert_eq!(summary.reason, "frame limit reached");
}
