//! Sources and their failure paths: stdin-style raw frames over a real OS pipe that closes, a
//! device that vanishes and comes back (reconnect with backoff on a test clock), real-time pacing,
//! and the phantom through the whole pipeline.

use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edge_runtime::clock::Clock;
use edge_runtime::events::Level;
use edge_runtime::frame::Frame;
use edge_runtime::pipeline::Pipeline;
use edge_runtime::source::phantom::{PhantomSchedule, PhantomSource};
use edge_runtime::source::{
    Backoff, FrameSource, Paced, RawFormat, RawSource, RawTiming, ReconnectEvent, Reconnecting,
    SourceError,
};

use crate::common::*;

#[test]
fn stdin_closing_mid_frame_reports_the_truncated_frame_and_ends_the_run() {
    let (reader, mut writer) = std::io::pipe().unwrap();
    let format = RawFormat::parse("32x24:GREY").unwrap();
    let producer = std::thread::spawn(move || {
        for i in 0..120u32 {
            let v = if i % 2 == 0 { 200u8 } else { 210 };
            writer.write_all(&[v; 32 * 24]).unwrap();
        }
        // Half a frame, then the producer exits: the pipe closes.
        writer.write_all(&[200u8; 32 * 12]).unwrap();
    });
    let source = RawSource::new(reader, "stdin", format, RawTiming::Fps(50.0)).unwrap();
    let (_, clock) = test_clock();
    let collect = Collect::default();
    let p = Pipeline::new(test_model_info(), options(64), clock);
    let summary = p.run(
        Box::new(source),
        Box::new(TestEngine::new()),
        vec![Box::new(collect.clone())],
        Arc::new(AtomicBool::new(false)),
    );
    producer.join().unwrap();
    assert_eq!(summary.counters.captured, 120);
    assert_eq!(summary.counters.corrupt, 1);
    assert!(
        summary.reason.contains("stdin") && summary.reason.contains("ended"),
        "{}",
        summary.reason
    );
    let events = collect.events();
    let trunc = statuses(&events, "corrupt_frame");
    assert!(
        trunc[0].message.contains("frame 120") && trunc[0].message.contains("384 of 768 bytes"),
        "{}",
        trunc[0].message
    );
    assert_eq!(statuses(&events, "source_ended").len(), 1);
    // Every clip built before the end was run (the queue is drained, not dropped).
    assert_eq!(
        summary.counters.clips_inferred,
        summary.counters.clips_built
    );
    assert!(summary.counters.clips_inferred > 20);
}

/// A fake device: yields `frames` frames then reports that it vanished.
struct Device {
    session: u32,
    left: u32,
    seq: u64,
}

impl FrameSource for Device {
    fn describe(&self) -> String {
        format!("device session {}", self.session)
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, SourceError> {
        if self.left == 0 {
            return Err(SourceError::Disconnected {
                source_name: "/dev/video9".into(),
                reason: "No such device (os error 19)".into(),
            });
        }
        self.left -= 1;
        let f = flat_frame(self.seq, 200);
        self.seq += 1;
        Ok(Some(f))
    }
}

#[test]
fn a_vanished_device_is_reopened_with_exponential_backoff() {
    let (tclock, clock) = test_clock();
    // Open #1 works (30 frames, then the device vanishes); #2-#4 fail; #5 works (40 frames,
    // then it vanishes for good and the test stops the retries).
    let attempts = Arc::new(Mutex::new(0u32));
    let a = attempts.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let opener = Box::new(move || {
        let mut n = a.lock().unwrap();
        *n += 1;
        match *n {
            1 => Ok(Box::new(Device {
                session: 1,
                left: 30,
                seq: 0,
            }) as Box<dyn FrameSource>),
            2..=4 => Err(SourceError::Disconnected {
                source_name: "/dev/video9".into(),
                reason: "No such file or directory (os error 2)".into(),
            }),
            5 => Ok(Box::new(Device {
                session: 2,
                left: 40,
                seq: 0,
            }) as Box<dyn FrameSource>),
            _ => {
                stop2.store(true, std::sync::atomic::Ordering::Relaxed);
                Err(SourceError::Disconnected {
                    source_name: "/dev/video9".into(),
                    reason: "gone".into(),
                })
            }
        }
    });
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    let mut src = Reconnecting::new(
        "/dev/video9",
        opener,
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_millis(1000),
        },
        clock.clone(),
        stop.clone(),
        Box::new(move |e| ev.lock().unwrap().push(e)),
    )
    .unwrap();
    let mut frames = 0;
    while let Some(_f) = src.next_frame().unwrap() {
        frames += 1;
    }
    assert_eq!(frames, 70);
    // Waits before attempts 2, 3, 4, 5 (250, 500, 1000, capped at 1000), then 250 again after
    // the second loss before attempt 6.
    let sleeps: Vec<u64> = tclock
        .sleeps()
        .iter()
        .map(|d| d.as_millis() as u64)
        .collect();
    assert_eq!(sleeps, vec![250, 500, 1000, 1000, 250]);
    let events = events.lock().unwrap();
    assert!(matches!(events[0], ReconnectEvent::Lost { .. }));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, ReconnectEvent::RetryFailed { .. }))
            .count(),
        4
    );
    assert!(events.iter().any(|e| matches!(
        e,
        ReconnectEvent::Reopened { attempts: 4, description } if description == "device session 2"
    )));
}

#[test]
fn the_pipeline_reports_a_reconnect_and_restarts_its_clip_buffer() {
    let (tclock, clock) = test_clock();
    let collect = Collect::default();
    let p = Pipeline::new(test_model_info(), options(64), clock.clone());
    let reporter = p.reporter();
    let mut n = 0;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let opener = Box::new(move || {
        n += 1;
        match n {
            1 | 3 => Ok(Box::new(Device {
                session: n,
                left: 50,
                seq: 0,
            }) as Box<dyn FrameSource>),
            2 => Err(SourceError::Disconnected {
                source_name: "/dev/video9".into(),
                reason: "unplugged".into(),
            }),
            _ => {
                stop2.store(true, std::sync::atomic::Ordering::Relaxed);
                Err(SourceError::Disconnected {
                    source_name: "/dev/video9".into(),
                    reason: "unplugged".into(),
                })
            }
        }
    });
    let src = Reconnecting::new(
        "/dev/video9",
        opener,
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(400),
        },
        clock,
        stop.clone(),
        Box::new(move |e| reporter.reconnect_event(e)),
    )
    .unwrap();
    let summary = p.run(
        Box::new(src),
        Box::new(TestEngine::new()),
        vec![Box::new(collect.clone())],
        stop,
    );
    assert_eq!(summary.counters.captured, 100);
    assert_eq!(summary.counters.reconnects, 1);
    // The second session starts again at t = 0: the clip buffer restarts instead of mixing.
    assert_eq!(summary.counters.discontinuities, 1);
    let events = collect.events();
    let lost = statuses(&events, "source_lost");
    assert!(
        lost[0].message.contains("No such device"),
        "{}",
        lost[0].message
    );
    assert_eq!(lost[0].level, Level::Error);
    assert_eq!(statuses(&events, "source_reconnecting").len(), 1 + 1);
    assert!(
        statuses(&events, "source_reopened")[0]
            .message
            .contains("session 3")
    );
    assert!(tclock.now() >= Duration::from_millis(100));
}

#[test]
fn paced_sources_release_frames_at_their_timestamps() {
    let (tclock, clock) = test_clock();
    let mut paced = Paced::new(
        ScriptSource::frames((0..5).map(|i| flat_frame(i, 1))),
        clock.clone(),
    );
    while paced.next_frame().unwrap().is_some() {}
    // 50 fps: four waits of 20 ms after the first frame.
    assert_eq!(tclock.sleeps(), vec![Duration::from_millis(20); 4]);

    // A consumer more than a second late re-anchors instead of rushing.
    let mut paced = Paced::new(
        ScriptSource::frames((0..3).map(|i| flat_frame(i, 1))),
        clock.clone(),
    );
    let before = tclock.sleeps().len();
    paced.next_frame().unwrap();
    tclock.advance(Duration::from_secs(5));
    paced.next_frame().unwrap();
    paced.next_frame().unwrap();
    assert_eq!(tclock.sleeps()[before..], [Duration::from_millis(20)]);
}

#[test]
fn the_phantom_runs_through_the_pipeline_with_its_ground_truth() {
    let (_, clock) = test_clock();
    let schedule = PhantomSchedule {
        views: PhantomSchedule::parse_views("a4c,plax").unwrap(),
        seconds_per_view: 1.0,
        seed: 3,
    };
    let src = PhantomSource::new(schedule, 96, 72, 25.0)
        .unwrap()
        .with_max_frames(75);
    let collect = Collect::default();
    let mut opts = options(64);
    opts.sector = edge_runtime::pipeline::SectorConfig::Detect {
        threshold: 10,
        redetect_every: 25,
    };
    // A model trained on masked sector crops: the fan is detected and cropped.
    let mut info = test_model_info();
    info.sector = edge_runtime::engine::SectorUse::CropAndMask;
    let p = Pipeline::new(info, opts, clock);
    let summary = p.run(
        Box::new(src),
        Box::new(TestEngine::new()),
        vec![Box::new(collect.clone())],
        Arc::new(AtomicBool::new(false)),
    );
    assert_eq!(summary.counters.captured, 75);
    let events = collect.events();
    let ps = predictions(&events);
    assert!(!ps.is_empty());
    // Clips inside a segment carry that segment's truth; clips across a switch carry none.
    assert!(
        ps.iter()
            .any(|p| p.truth.as_ref().is_some_and(|t| t.view == "a4c"))
    );
    assert!(
        ps.iter()
            .any(|p| p.truth.as_ref().is_some_and(|t| t.view == "plax"))
    );
    assert!(summary.accuracy.clips > 0);
}

/// A file as ffmpeg writes it by default (libx264: High profile, CABAC, B-frames) plays through
/// the file source with every frame decoded, in presentation order, none counted corrupt; and
/// the same for a Motion JPEG AVI as EchoNet-Dynamic stores its videos.
#[test]
fn ffmpeg_written_files_play_without_corrupt_frames() {
    use edge_runtime::source::file::FileSource;
    let ffmpeg = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("ffmpeg"))
            .find(|f| f.is_file())
    });
    let Some(ffmpeg) = ffmpeg else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI needs ffmpeg (.ci/run)"
        );
        eprintln!("note: ffmpeg not found; skipping");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for (name, codec) in [
        (
            "b.mp4",
            &["-c:v", "libx264", "-bf", "3", "-pix_fmt", "yuv420p"][..],
        ),
        ("m.avi", &["-c:v", "mjpeg", "-pix_fmt", "yuvj420p"][..]),
    ] {
        let path = dir.path().join(name);
        let ok = std::process::Command::new(&ffmpeg)
            .args([
                "-v",
                "error",
                "-f",
                "lavfi",
                "-i",
                "testsrc2=size=112x112:rate=30:duration=3",
            ])
            .args(codec)
            .arg(&path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "ffmpeg failed to write {name}");
        let mut src = FileSource::open(&path, 30.0, false).unwrap();
        let (mut good, mut last) = (0, None);
        loop {
            match src.next_frame() {
                Ok(Some(f)) => {
                    if let Some(prev) = last {
                        assert!(f.ts > prev, "{name}: timestamps go forward");
                        assert_eq!(f.data.len(), 112 * 112, "{name}: a whole gray frame");
                    }
                    last = Some(f.ts);
                    good += 1;
                }
                Ok(None) => break,
                Err(e) => panic!("{name}: frame {good} failed: {e}"),
            }
        }
        assert_eq!(good, 90, "{name}: every frame plays");
    }
}
