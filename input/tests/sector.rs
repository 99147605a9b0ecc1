//! Sector estimation on the synthetic phantom, whose fan is known to the pixel.

use echojepa_input::preprocess::SectorMask;
use echojepa_phantom::{Phantom, PhantomParams, View};

#[test]
fn sector_estimate_finds_the_phantom_fan_and_drops_overlays() {
    for (seed, view) in [
        (1u64, View::A4c),
        (2, View::Psax),
        (3, View::Subcostal),
        (4, View::Plax),
    ] {
        let p = Phantom::new(PhantomParams::sample(seed, view)).unwrap();
        let clip = p.render_clip(8, 30.0, 0.0, 128, 112).unwrap();
        let est = SectorMask::estimate(&clip).unwrap();
        let truth = p.sector_mask(128, 112).unwrap();
        let iou = est.iou(&truth);
        assert!(iou > 0.93, "{view}: IoU {iou}");
        let masked = est.mask_and_crop(&clip).unwrap();
        assert!(masked.width <= 128 && masked.height < 112);
        // the overlays (ECG, text) are gone
        let mut m = clip.clone();
        est.apply(&mut m).unwrap();
        for i in 0..128 * 112 {
            if truth[i] == 0 && est.mask[i] == 0 {
                assert_eq!(m.data[i], 0);
            }
        }
        let bright_outside = (0..128 * 112)
            .filter(|&i| truth[i] == 0 && m.data[i] > 100)
            .count();
        assert!(
            bright_outside < 40,
            "{view}: {bright_outside} bright pixels left outside the fan"
        );
    }
}
