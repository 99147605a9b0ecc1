//! The serial link to the cart MCU over a real pseudo-terminal: predictions from the pipeline
//! reach the simulated MCU (`firmware-host`'s simulator, the same protocol crate as the
//! firmware), and a button pressed on the MCU comes back as a `button` status record.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cart_protocol::{Button, ButtonAction, EfStatus, HostMsg};
use edge_runtime::clock::SystemClock;
use edge_runtime::events::Event;
use edge_runtime::output::serial::SerialSink;
use edge_runtime::pipeline::Pipeline;
use edge_runtime::source::Paced;
use firmware_host::link::LinkConfig;
use firmware_host::sim::{SimConfig, SimMcu, SimReport};

use crate::common::*;

#[test]
fn predictions_reach_the_mcu_and_buttons_come_back() {
    let sim = SimMcu::spawn(SimConfig::default()).unwrap();
    let clock = SystemClock::shared();
    let pipeline = Pipeline::new(test_model_info(), options(2), clock.clone());
    let serial = SerialSink::start(
        LinkConfig::new(sim.port_path().display().to_string(), 115_200),
        "test-engine",
        None,
        pipeline.reporter(),
    )
    .unwrap();
    let (tx, events) = crossbeam_channel::unbounded();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let runner = std::thread::spawn(move || {
        let source = Paced::new(EndlessSource { seq: 0, value: 200 }, clock);
        pipeline.run(
            Box::new(source),
            Box::new(TestEngine::new()),
            vec![Box::new(serial), Box::new(ChannelSink(tx))],
            s,
        )
    });

    // The MCU receives predictions once the handshake is done; wait until one shows EF.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got_valid_ef = false;
    let mut got_prediction = false;
    while !got_valid_ef {
        let left = deadline.saturating_duration_since(Instant::now());
        let report = sim
            .reports()
            .recv_timeout(left)
            .expect("the MCU received predictions with EF within 30 s");
        if let SimReport::Received(env) = report
            && let HostMsg::Prediction(p) = env.msg
        {
            got_prediction = true;
            assert_eq!(p.view.as_str(), "A4C");
            assert!(
                p.synthetic,
                "the synthetic flag must reach the cart display"
            );
            assert!((p.confidence - 0.9).abs() < 1e-6);
            if p.ef_status == EfStatus::Valid {
                assert_eq!(p.ef_percent, Some(70.0));
                got_valid_ef = true;
            } else {
                assert_eq!(p.ef_percent, None);
            }
        }
    }
    assert!(got_prediction);

    // A button on the cart reaches the runtime's event stream.
    sim.button(Button::Freeze, ButtonAction::Press, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match events.recv_timeout(left) {
            Ok(Event::Status(s)) if s.code == "button" => {
                assert_eq!(s.message, "freeze press");
                break;
            }
            Ok(_) => {}
            Err(e) => panic!("no button event within 30 s: {e}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let summary = runner.join().unwrap();
    assert!(summary.counters.clips_inferred > 0);
    sim.stop();
}
