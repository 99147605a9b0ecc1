//! Loader tests over real H.264 files written by the phantom + encoder, including a corrupt
//! file and a missing one that must be skipped and counted.

use std::path::PathBuf;
use std::sync::Arc;

use echojepa::bundle::SectorHandling;
use echojepa_phantom::{Phantom, PhantomParams, View};
use echojepa_video::{ColorMode, EncoderSettings, write_mp4};

use super::augment::RandomResizedCrop;
use super::csv::{MultiViewEntry, VideoEntry};
use super::dataset::{ClipPipeline, MultiViewDataset, Transform, VideoDataset};
use super::loader::{Loader, LoaderConfig};
use super::sampling::StepRule;

fn videos(dir: &std::path::Path, n: usize) -> Vec<PathBuf> {
    (0..n)
        .map(|i| {
            let p = Phantom::new(PhantomParams::sample(i as u64, View::ALL[i % 6])).unwrap();
            let clip = p.render_clip(24, 30.0, 0.0, 96, 80).unwrap();
            write_mp4(
                dir.join(format!("v{i}.mp4")),
                &clip,
                EncoderSettings::default(),
            )
            .unwrap()
        })
        .collect()
}

fn collect(loader: &Loader, epoch: u64) -> (Vec<(Vec<usize>, Vec<f32>, Vec<f32>)>, usize) {
    let mut e = loader.epoch(epoch);
    let mut out = Vec::new();
    for b in e.by_ref() {
        let b = b.unwrap();
        let clips = b.clips[0].flatten_all().unwrap().to_vec1::<f32>().unwrap();
        out.push((b.indices.clone(), b.labels.to_vec1::<f32>().unwrap(), clips));
    }
    (out, e.stats().skipped.len())
}

#[test]
fn loads_batches_skips_bad_files_and_is_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let mut paths = videos(dir.path(), 7);
    // a corrupt file (text with an .mp4 name) and a missing file
    let bad = dir.path().join("corrupt.mp4");
    std::fs::write(
        &bad,
        b"\0\0\0\x18ftypisom but then garbage, no moov anywhere",
    )
    .unwrap();
    paths.insert(2, bad);
    paths.insert(5, dir.path().join("vanished.mp4"));
    let entries: Vec<VideoEntry> = paths
        .iter()
        .enumerate()
        .map(|(i, p)| VideoEntry {
            path: p.clone(),
            label: i as f64,
        })
        .collect();
    let mut pipeline = ClipPipeline::eval(8, 2, 2, 64);
    pipeline.sector = SectorHandling::CropAndMaskOutside;
    let ds = Arc::new(VideoDataset {
        entries,
        pipeline,
        list: None,
    });
    let cfg = LoaderConfig {
        batch_size: 3,
        workers: 3,
        prefetch: 2,
        shuffle: true,
        drop_last: false,
        seed: 7,
    };
    let loader = Loader::new(ds.clone(), cfg);
    let (a, skipped) = collect(&loader, 0);
    assert_eq!(
        skipped, 2,
        "the corrupt and the missing file are skipped and counted"
    );
    let n: usize = a.iter().map(|b| b.0.len()).sum();
    assert_eq!(n, 7);
    assert!(a.iter().all(|b| !b.0.contains(&2) && !b.0.contains(&5)));
    for (idx, labels, clips) in &a {
        assert_eq!(labels, &idx.iter().map(|&i| i as f32).collect::<Vec<_>>());
        assert_eq!(clips.len(), idx.len() * 3 * 8 * 64 * 64);
    }
    // same seed and epoch -> identical batches, whatever the number of workers
    let one = Loader::new(ds.clone(), LoaderConfig { workers: 1, ..cfg });
    assert_eq!(collect(&one, 0).0, a);
    // another epoch -> another order
    let (b, _) = collect(&loader, 1);
    assert_ne!(
        b.iter().map(|x| x.0.clone()).collect::<Vec<_>>(),
        a.iter().map(|x| x.0.clone()).collect::<Vec<_>>()
    );
    // shapes: two segments -> two slot tensors [B, 3, 8, 64, 64]
    let batch = loader.epoch(0).next().unwrap().unwrap();
    assert_eq!(batch.clips.len(), 2);
    assert_eq!(batch.clips[0].dims(), &[batch.len(), 3, 8, 64, 64]);
    assert_eq!(batch.present.dims(), &[batch.len(), 2]);
}

#[test]
fn training_transform_and_early_drop() {
    let dir = tempfile::tempdir().unwrap();
    let paths = videos(dir.path(), 4);
    let entries: Vec<VideoEntry> = paths
        .iter()
        .map(|p| VideoEntry {
            path: p.clone(),
            label: 0.0,
        })
        .collect();
    let mut pipeline = ClipPipeline::eval(16, 1, 1, 48);
    pipeline.transform = Transform::Train(RandomResizedCrop::echojepa(48));
    pipeline.sampling.random_clip_sampling = true;
    pipeline.color = ColorMode::Gray;
    let ds = Arc::new(VideoDataset {
        entries,
        pipeline,
        list: None,
    });
    let loader = Loader::new(
        ds,
        LoaderConfig {
            batch_size: 2,
            workers: 2,
            prefetch: 1,
            shuffle: false,
            drop_last: true,
            seed: 1,
        },
    );
    assert_eq!(loader.batches_per_epoch(), 2);
    let mut e = loader.epoch(0);
    let first = e.next().unwrap().unwrap();
    assert_eq!(first.clips[0].dims(), &[2, 3, 16, 48, 48]);
    drop(e); // dropping mid-epoch stops the workers cleanly
}

#[test]
fn multiview_with_missing_views() {
    let dir = tempfile::tempdir().unwrap();
    let paths = videos(dir.path(), 3);
    let entries = vec![
        MultiViewEntry {
            views: vec![Some(paths[0].clone()), Some(paths[1].clone())],
            label: 0.5,
        },
        MultiViewEntry {
            views: vec![None, Some(paths[2].clone())],
            label: -1.0,
        },
        MultiViewEntry {
            views: vec![None, None],
            label: 2.0,
        },
    ];
    let mut pipeline = ClipPipeline::eval(4, 2, 2, 32);
    pipeline.sampling.step = StepRule::FrameStep(2);
    let ds = Arc::new(MultiViewDataset {
        entries,
        pipeline,
        list: None,
    });
    let loader = Loader::new(
        ds,
        LoaderConfig {
            batch_size: 3,
            workers: 2,
            prefetch: 2,
            shuffle: false,
            drop_last: false,
            seed: 0,
        },
    );
    let mut e = loader.epoch(0);
    let b = e.next().unwrap().unwrap();
    assert!(e.next().is_none());
    assert_eq!(
        e.stats().skipped.len(),
        1,
        "a row whose views are all missing is skipped"
    );
    assert_eq!(b.indices, vec![0, 1]);
    assert_eq!(b.clips.len(), 4, "2 views x 2 clips");
    let present = b.present.to_vec2::<u8>().unwrap();
    assert_eq!(present, vec![vec![1, 1, 1, 1], vec![0, 0, 1, 1]]);
    // a missing view is a normalised black clip
    let missing = b.clips[0]
        .get(1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let want = -0.485f32 / 0.229;
    assert!((missing[0] - want).abs() < 1e-5);
}
