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

fn rect_iou(a: echojepa_input::Rect, b: echojepa_input::Rect) -> f64 {
    let ix = (a.x + a.width)
        .min(b.x + b.width)
        .saturating_sub(a.x.max(b.x));
    let iy = (a.y + a.height)
        .min(b.y + b.height)
        .saturating_sub(a.y.max(b.y));
    let inter = (ix * iy) as f64;
    inter / ((a.width * a.height + b.width * b.height) as f64 - inter)
}

/// The trainer and `quantize` estimate the sector offline from a clip; the cart online, from the
/// frames since its last detection. Fed the same frames, the estimator gives the same sector
/// (and the crop the same bytes) on both call sites; online after 8 frames it is close to the
/// offline estimate over the whole clip.
#[test]
fn offline_and_online_estimates_agree() {
    use echojepa_input::preprocess::{SectorMask, apply_sector};
    use echojepa_input::sector::SectorEstimator;
    use echojepa_input::{GrayImage, SectorHandling};

    for (seed, view) in [(11u64, View::A4c), (12, View::Plax), (13, View::Subcostal)] {
        let p = Phantom::new(PhantomParams::sample(seed, view)).unwrap();
        let clip = p.render_clip(24, 30.0, 0.0, 320, 240).unwrap();
        let frame = |t: usize| GrayImage {
            width: 320,
            height: 240,
            data: clip.frame(t).unwrap().to_vec(),
        };
        let offline = SectorMask::estimate(&clip).unwrap().sector;

        let mut online = SectorEstimator::default();
        for t in 0..clip.frames {
            online.accumulate(&frame(t));
        }
        assert_eq!(
            online.estimate().unwrap(),
            offline,
            "{view}: same frames, same sector"
        );

        let mut cart = SectorEstimator::default();
        for t in 0..8 {
            cart.accumulate(&frame(t));
        }
        let early = cart.take().unwrap();
        let iou = rect_iou(early.rect, offline.rect);
        assert!(iou >= 0.95, "{view}: online after 8 frames, box IoU {iou}");

        // The trainer's crop of the clip equals the cart's crop of each frame.
        let mut clips = vec![clip.clone()];
        apply_sector(&mut clips, SectorHandling::CropAndMaskOutside).unwrap();
        for t in 0..clip.frames {
            assert_eq!(
                clips[0].frame(t).unwrap(),
                offline.apply(&frame(t), true).data.as_slice(),
                "{view}: frame {t}"
            );
        }
    }
}
