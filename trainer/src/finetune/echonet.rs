//! Fine-tuning data from a folder in EchoNet-Dynamic's layout (`experiment.data.dataset_type:
//! EchoNet`, `experiment.data.root`).
//!
//! * `FileList.csv`: columns found by name (any order, any case); `FileName` (with or without
//!   `.avi` / `.mp4`), `EF` (percent) and `Split` (`TRAIN`, `VAL`, `TEST`) are required. A
//!   malformed EF or split is an error naming the file and the line.
//! * `VolumeTracings.csv` (`FileName,X1,Y1,X2,Y2,Frame`; `FileName` with or without extension):
//!   per traced frame, the first row is the long axis and the following rows are chords across
//!   the LV. The outline is the chords' `(X1, Y1)` ends in file order, then their `(X2, Y2)` ends
//!   in reverse order; the long axis is not part of it (as EchoNet's own code and `trainer import
//!   echonet` do). Coordinates are pixels of the video with pixel centres at integer coordinates
//!   (EchoNet's convention: its masks come from `skimage.draw.polygon`). Of a video's traced
//!   frames, the one with the largest outline is end-diastole (ED), the smallest end-systole
//!   (ES). A row naming a video that `FileList.csv` does not list, or a number that does not
//!   parse, is an error naming the file and the line. A traced frame with fewer than two chords,
//!   no area or past the video's end is left out with a warning. Without the file, every video
//!   trains the EF head only (an LV head then has nothing to learn: refused).
//! * `Videos/<FileName>.avi` (or `.mp4`, or `FileName` as written): read by `echojepa_video`
//!   (Motion JPEG AVI as EchoNet ships it, H.264 MP4, DICOM; other codecs need the `ffmpeg`
//!   feature). A missing or unreadable video is skipped with a warning naming the file, and
//!   counted.
//!
//! Every selected video is decoded once when the run starts (in parallel). Its frames are
//! prepared as the phantom stream's and the edge runtime's are (antialiased short-side resize to
//! `resolution·256/224`, centre crop; [`echojepa_input`]) and kept in memory up to
//! `experiment.data.cache_mb`; videos beyond that are decoded again for each clip. Each traced
//! outline is rasterised at the video's own size and goes through the same resize and crop, so
//! mask and frame stay aligned; the resampled mask is a soft target in `[0, 1]`.
//!
//! Clips are `frames` frames `frame_step` apart. A training clip is a pure function of the run
//! seed and its index: a TRAIN video drawn at random and, when an LV head trains and the video
//! has tracings, a traced frame drawn at random that the clip contains at a random position;
//! other clips start at random. Evaluation clips are fixed: per traced video one clip centred on
//! the ED frame and one on the ES frame, per untraced video one clip centred in the video. Only
//! traced frames carry an LV target (weight 1); the others weigh 0.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use echojepa_input::{GrayImage, resize_short_side_and_center_crop};
use echojepa_phantom::View;
use echojepa_video::{self as video, ColorMode};
use rand::Rng;
use serde::Serialize;

use super::eval::{Phase, Pixels, Rendered};
use crate::import::echonet::{outline, polygon_area};
use crate::import::split_csv_line;
use crate::phantom_stream::Split;

/// Where the data is and how clips are cut.
#[derive(Debug, Clone)]
pub struct EchoNetSpec {
    pub root: PathBuf,
    /// Only the first N `FileList.csv` rows of each split (file order).
    pub max_videos_per_split: Option<usize>,
    /// Memory for decoded, prepared frames (MB); videos beyond it are decoded per clip.
    pub cache_mb: usize,
    pub frames: usize,
    pub frame_step: usize,
    pub resolution: usize,
    /// Run seed: which training clips are drawn.
    pub seed: u64,
    /// An LV head trains: `VolumeTracings.csv` is required.
    pub need_tracings: bool,
}

/// One traced frame of a video.
#[derive(Debug, Clone)]
pub struct Tracing {
    pub frame: usize,
    /// `VolumeTracings.csv` line of the frame's first row.
    pub line: usize,
    /// Shoelace area of the outline, square pixels of the video.
    pub area_px: f64,
    pub polygon: Vec<[f64; 2]>,
}

/// A usable video.
#[derive(Debug)]
pub struct Video {
    /// `FileName` as `FileList.csv` writes it.
    pub name: String,
    pub path: PathBuf,
    pub split: Split,
    pub ef: f64,
    pub frame_count: usize,
    /// Valid traced frames, in frame order.
    pub tracings: Vec<Tracing>,
    /// Prepared mask `[R·R]` of each tracing, soft values in `[0, 1]` as bytes (`255` = 1).
    masks: Vec<Vec<u8>>,
    /// Indices into `tracings` of ED (largest outline) and ES (smallest).
    pub ed_es: Option<(usize, usize)>,
    /// Prepared frames `[frame_count][R·R]` when cached.
    frames: Option<Vec<u8>>,
}

/// Counts per split.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SplitCounts {
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

impl SplitCounts {
    fn get(&self, s: Split) -> usize {
        match s {
            Split::Train => self.train,
            Split::Val => self.val,
            Split::Test => self.test,
        }
    }

    fn add(&mut self, s: Split) {
        match s {
            Split::Train => self.train += 1,
            Split::Val => self.val += 1,
            Split::Test => self.test += 1,
        }
    }
}

/// What opening the dataset found (written into `summary.json`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DataCounts {
    pub root: PathBuf,
    pub filelist_rows: usize,
    /// Rows kept by `max_videos_per_split`.
    pub selected_rows: usize,
    /// Usable videos per split.
    pub videos: SplitCounts,
    /// Usable videos with both an ED and an ES tracing.
    pub traced_videos: SplitCounts,
    pub skipped_missing: usize,
    pub skipped_unreadable: usize,
    /// One line per skipped video: the file and why.
    pub skipped: Vec<String>,
    /// Usable videos without a valid tracing (EF head only).
    pub without_tracings: usize,
    /// Traced frames left out (too few chords, no area, past the video's end).
    pub tracing_frames_dropped: usize,
    pub cached_videos: usize,
    pub cached_mb: f64,
}

impl DataCounts {
    fn add_video(&mut self, v: &Video) {
        self.videos.add(v.split);
        if v.ed_es.is_some() {
            self.traced_videos.add(v.split);
        }
        if v.tracings.is_empty() {
            self.without_tracings += 1;
        }
        if v.frames.is_some() {
            self.cached_videos += 1;
        }
    }
}

/// The opened dataset.
#[derive(Debug)]
pub struct EchoNet {
    pub spec: EchoNetSpec,
    pub videos: Vec<Video>,
    train: Vec<usize>,
    val: Vec<usize>,
    test: Vec<usize>,
    pub counts: DataCounts,
}

/// One `FileList.csv` row.
#[derive(Debug, Clone)]
struct Row {
    line: usize,
    file_name: String,
    key: String,
    ef: f64,
    split: Split,
}

/// The rows of one traced video: `(frame, line of its first row, [x1, y1, x2, y2] per row)`.
type TracedRows = Vec<(usize, usize, Vec<[f64; 4]>)>;

/// `FileName` without a trailing `.avi` or `.mp4` (any case): the key both files agree on.
pub fn video_key(name: &str) -> String {
    let n = name.trim();
    for ext in [".avi", ".mp4"] {
        if let Some(i) = n.len().checked_sub(ext.len())
            && n.is_char_boundary(i)
            && n[i..].eq_ignore_ascii_case(ext)
        {
            return n[..i].to_string();
        }
    }
    n.to_string()
}

/// A CSV file's data lines (1-based line numbers) and the column of each required name.
struct Table {
    path: PathBuf,
    cols: HashMap<&'static str, usize>,
    rows: Vec<(usize, Vec<String>)>,
}

impl Table {
    fn read(path: &Path, required: &[&'static str]) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut lines = text
            .trim_start_matches('\u{feff}')
            .lines()
            .enumerate()
            .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
            .filter(|(_, l)| !l.trim().is_empty());
        let Some((_, header)) = lines.next() else {
            bail!("{} is empty", path.display());
        };
        let header = split_csv_line(header);
        let mut cols = HashMap::new();
        for &name in required {
            match header.iter().position(|h| h.eq_ignore_ascii_case(name)) {
                Some(i) => {
                    cols.insert(name, i);
                }
                None => bail!(
                    "{}: the header has no `{name}` column (header: `{}`)",
                    path.display(),
                    header.join(",")
                ),
            }
        }
        Ok(Self {
            path: path.to_path_buf(),
            cols,
            rows: lines.map(|(no, l)| (no, split_csv_line(l))).collect(),
        })
    }

    /// The cell of column `name` (a required one) in `row`; a short row is an error.
    fn cell<'a>(&self, no: usize, row: &'a [String], name: &'static str) -> Result<&'a str> {
        let i = self.cols.get(name).copied().unwrap_or(usize::MAX);
        row.get(i).map(String::as_str).with_context(|| {
            format!(
                "{} line {no}: no `{name}` cell ({} cells)",
                self.path.display(),
                row.len()
            )
        })
    }

    fn number(&self, no: usize, row: &[String], name: &'static str) -> Result<f64> {
        let c = self.cell(no, row, name)?;
        match c.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => bail!(
                "{} line {no}: {name} `{c}` is not a number",
                self.path.display()
            ),
        }
    }
}

fn parse_split(s: &str) -> Option<Split> {
    match s.trim().to_ascii_uppercase().as_str() {
        "TRAIN" => Some(Split::Train),
        "VAL" => Some(Split::Val),
        "TEST" => Some(Split::Test),
        _ => None,
    }
}

/// Every row of `FileList.csv`; a bad EF, split or duplicate name is an error naming the line.
fn read_filelist(path: &Path) -> Result<Vec<Row>> {
    let t = Table::read(path, &["FileName", "EF", "Split"])?;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut rows = Vec::with_capacity(t.rows.len());
    for (no, cells) in &t.rows {
        let no = *no;
        let file_name = t.cell(no, cells, "FileName")?.to_string();
        let key = video_key(&file_name);
        if key.is_empty() || key.contains(['/', '\\']) {
            bail!(
                "{} line {no}: FileName `{file_name}` is not a file name",
                path.display()
            );
        }
        let ef = t.number(no, cells, "EF")?;
        if !(0.0..=100.0).contains(&ef) {
            bail!(
                "{} line {no}: EF {ef} is outside 0 to 100 (percent)",
                path.display()
            );
        }
        let s = t.cell(no, cells, "Split")?;
        let split = parse_split(s).with_context(|| {
            format!(
                "{} line {no}: Split `{s}` is not TRAIN, VAL or TEST",
                path.display()
            )
        })?;
        if let Some(first) = seen.insert(key.clone(), no) {
            bail!(
                "{} line {no}: `{key}` is listed again (first on line {first})",
                path.display()
            );
        }
        rows.push(Row {
            line: no,
            file_name,
            key,
            ef,
            split,
        });
    }
    Ok(rows)
}

/// `VolumeTracings.csv` grouped by video and frame. A row naming a video that is not in
/// `FileList.csv`, or a malformed number, is an error naming the line.
fn read_tracings(
    path: &Path,
    known: &HashMap<String, usize>,
) -> Result<HashMap<String, TracedRows>> {
    let t = Table::read(path, &["FileName", "X1", "Y1", "X2", "Y2", "Frame"])?;
    let mut out: HashMap<String, TracedRows> = HashMap::new();
    for (no, cells) in &t.rows {
        let no = *no;
        let name = t.cell(no, cells, "FileName")?;
        let key = video_key(name);
        if !known.contains_key(&key) {
            bail!(
                "{} line {no}: video `{name}` is not in FileList.csv",
                path.display()
            );
        }
        let mut seg = [0.0; 4];
        for (v, c) in seg.iter_mut().zip(["X1", "Y1", "X2", "Y2"]) {
            *v = t.number(no, cells, c)?;
        }
        let f = t.number(no, cells, "Frame")?;
        if !(f >= 0.0 && f.fract() == 0.0 && f < 1e9) {
            bail!(
                "{} line {no}: Frame `{}` is not a frame index",
                path.display(),
                t.cell(no, cells, "Frame")?
            );
        }
        let frame = f as usize;
        let rows = out.entry(key).or_default();
        match rows.iter_mut().find(|(g, ..)| *g == frame) {
            Some((_, _, segs)) => segs.push(seg),
            None => rows.push((frame, no, vec![seg])),
        }
    }
    Ok(out)
}

/// The valid traced frames of a video (sorted by frame); the others are described in `warn`.
fn tracings_of(name: &str, rows: TracedRows, warn: &mut Vec<String>) -> Vec<Tracing> {
    let mut out = Vec::new();
    for (frame, line, segs) in rows {
        if segs.len() < 3 {
            warn.push(format!(
                "VolumeTracings.csv line {line}: {name} frame {frame} has {} row(s); an outline needs the long axis and at least 2 chords (frame left out)",
                segs.len()
            ));
            continue;
        }
        let polygon = outline(&segs[1..]);
        let area_px = polygon_area(&polygon);
        if !(area_px > 0.0) {
            warn.push(format!(
                "VolumeTracings.csv line {line}: {name} frame {frame}: the outline has no area (frame left out)"
            ));
            continue;
        }
        out.push(Tracing {
            frame,
            line,
            area_px,
            polygon,
        });
    }
    out.sort_by_key(|t| t.frame);
    out
}

/// ED (largest outline) and ES (smallest) among the tracings, when there are two distinct ones.
fn ed_es(t: &[Tracing]) -> Option<(usize, usize)> {
    if t.len() < 2 {
        return None;
    }
    let by_area = |a: &&Tracing, b: &&Tracing| a.area_px.total_cmp(&b.area_px);
    let ed = t.iter().enumerate().max_by(|a, b| by_area(&a.1, &b.1))?.0;
    let es = t.iter().enumerate().min_by(|a, b| by_area(&a.1, &b.1))?.0;
    (t[ed].area_px > t[es].area_px).then_some((ed, es))
}

/// 0/255 mask of a polygon at `w × h`: a pixel is inside when its centre, at integer
/// coordinates, is (even-odd rule).
pub fn rasterise(polygon: &[[f64; 2]], w: usize, h: usize) -> GrayImage {
    let mut img = GrayImage::new(w, h);
    let n = polygon.len();
    let mut xs = Vec::new();
    for y in 0..h {
        let yc = y as f64;
        xs.clear();
        for i in 0..n {
            let (a, b) = (polygon[i], polygon[(i + 1) % n]);
            if (a[1] <= yc && yc < b[1]) || (b[1] <= yc && yc < a[1]) {
                xs.push(a[0] + (yc - a[1]) * (b[0] - a[0]) / (b[1] - a[1]));
            }
        }
        xs.sort_by(f64::total_cmp);
        for pair in xs.chunks_exact(2) {
            let x0 = pair[0].ceil().max(0.0);
            let x1 = pair[1].floor().min(w as f64 - 1.0);
            if x1 < x0 {
                continue;
            }
            for x in x0 as usize..=x1 as usize {
                img.data[y * w + x] = 255;
            }
        }
    }
    img
}

/// The positions `j` (lowest, highest) frame `f` of a video of `n` frames can take in a clip of
/// `t` frames `s` apart that starts at `f − j·s` and stays inside the video. When the video is
/// shorter than the clip, the highest position that starts at or after frame 0 (the clip then
/// repeats the last frame).
pub fn positions(f: usize, n: usize, t: usize, s: usize) -> (usize, usize) {
    let (t, s) = (t.max(1), s.max(1));
    let span = (t - 1) * s;
    let jmax = (f / s).min(t - 1);
    let last = n.saturating_sub(1);
    let jmin = if f + span > last {
        (f + span - last).div_ceil(s)
    } else {
        0
    };
    (jmin.min(jmax), jmax)
}

/// The video file of a row: `FileName` as written when it has an extension, else
/// `<FileName>.avi`, `.mp4`, `.AVI`, `.MP4`.
fn find_video(videos: &Path, row: &Row) -> Option<PathBuf> {
    let mut names = Vec::new();
    if row.file_name.trim() != row.key {
        names.push(row.file_name.trim().to_string());
    }
    for ext in ["avi", "mp4", "AVI", "MP4"] {
        names.push(format!("{}.{ext}", row.key));
    }
    names
        .into_iter()
        .map(|n| videos.join(n))
        .find(|p| p.is_file())
}

/// A decoded video: frame count, size and the prepared frames `[count][R·R]` (`None` when
/// they did not fit in the cache).
struct Decoded {
    count: usize,
    width: usize,
    height: usize,
    frames: Option<Vec<u8>>,
}

/// Decodes every frame (grey) and prepares it; decoder errors and panics become the message.
fn decode(path: &Path, r: usize) -> Result<Decoded, String> {
    let run = || -> Result<Decoded, String> {
        let mut reader = video::open(path).map_err(|e| e.to_string())?;
        let clip = reader
            .read_all(ColorMode::Gray)
            .map_err(|e| e.to_string())?;
        if clip.frames == 0 {
            return Err(format!("{}: no frames", path.display()));
        }
        let mut frames = Vec::with_capacity(clip.frames * r * r);
        for i in 0..clip.frames {
            let f = clip
                .frame(i)
                .ok_or_else(|| format!("{}: frame {i} missing", path.display()))?;
            let img = GrayImage::from_vec(clip.width, clip.height, f.to_vec())
                .ok_or_else(|| format!("{}: frame {i} has the wrong size", path.display()))?;
            frames.extend_from_slice(&resize_short_side_and_center_crop(&img, r).data);
        }
        Ok(Decoded {
            count: clip.frames,
            width: clip.width,
            height: clip.height,
            frames: Some(frames),
        })
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
        Ok(r) => r,
        Err(p) => Err(format!(
            "{}: the decoder panicked: {}",
            path.display(),
            crate::check_data::panic_message(p.as_ref())
        )),
    }
}

/// Decodes `paths` on all cores; results in order. Prepared frames are kept while they fit in
/// `cache_left` bytes (taken from it), and dropped as soon as a video is decoded otherwise, so
/// a dataset larger than the cache never sits in memory whole.
fn decode_all(
    paths: &[PathBuf],
    r: usize,
    cache_left: &AtomicUsize,
) -> Vec<Result<Decoded, String>> {
    let next = AtomicUsize::new(0);
    let keep = |mut d: Decoded| {
        let n = d.frames.as_ref().map_or(0, Vec::len);
        let fits = cache_left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(n)
            })
            .is_ok();
        if !fits {
            d.frames = None;
        }
        d
    };
    let threads = crate::check_data::default_jobs().min(paths.len()).max(1);
    let done: Vec<(usize, Result<Decoded, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(p) = paths.get(i) else {
                            break;
                        };
                        mine.push((i, decode(p, r).map(keep)));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut out: Vec<Result<Decoded, String>> = (0..paths.len())
        .map(|i| Err(format!("{}: not decoded", paths[i].display())))
        .collect();
    for (i, d) in done {
        if let Some(slot) = out.get_mut(i) {
            *slot = d;
        }
    }
    out
}

/// `FileList.csv` (the rows `max_videos_per_split` keeps) and `VolumeTracings.csv` (empty when
/// absent and no LV head trains).
fn read_lists(spec: &EchoNetSpec) -> Result<(Vec<Row>, HashMap<String, TracedRows>, DataCounts)> {
    let root = &spec.root;
    let filelist = root.join("FileList.csv");
    if !filelist.is_file() {
        bail!(
            "{}: no FileList.csv (expected EchoNet-Dynamic's layout: FileList.csv, VolumeTracings.csv, Videos/)",
            root.display()
        );
    }
    let rows = read_filelist(&filelist)?;
    let known: HashMap<String, usize> = rows.iter().map(|r| (r.key.clone(), r.line)).collect();
    let tracings_path = root.join("VolumeTracings.csv");
    let tracings = if tracings_path.is_file() {
        read_tracings(&tracings_path, &known)?
    } else if spec.need_tracings {
        bail!(
            "{}: no VolumeTracings.csv, which the lv_segmentation head needs (remove the head to train EF only)",
            root.display()
        );
    } else {
        HashMap::new()
    };
    let mut counts = DataCounts {
        root: root.clone(),
        filelist_rows: rows.len(),
        ..DataCounts::default()
    };
    let mut per_split = SplitCounts::default();
    let cap = spec.max_videos_per_split.unwrap_or(usize::MAX);
    let selected: Vec<Row> = rows
        .into_iter()
        .filter(|r| {
            let keep = per_split.get(r.split) < cap;
            if keep {
                per_split.add(r.split);
            }
            keep
        })
        .collect();
    counts.selected_rows = selected.len();
    Ok((selected, tracings, counts))
}

/// A decoded video with its valid tracings and their prepared masks, and how many traced frames
/// were left out; its frames are kept when they fit in what is left of the cache.
fn video_of(
    row: Row,
    path: PathBuf,
    d: Decoded,
    rows: TracedRows,
    spec: &EchoNetSpec,
    warn: &mut Vec<String>,
) -> (Video, usize) {
    let traced_frames = rows.len();
    let mut t = tracings_of(&row.file_name, rows, warn);
    t.retain(|x| {
        let ok = x.frame < d.count;
        if !ok {
            warn.push(format!(
                "VolumeTracings.csv line {}: {} frame {} is past the end of the video ({} frames; frame left out)",
                x.line, row.file_name, x.frame, d.count
            ));
        }
        ok
    });
    let r = spec.resolution;
    let masks = t
        .iter()
        .map(|x| {
            resize_short_side_and_center_crop(&rasterise(&x.polygon, d.width, d.height), r).data
        })
        .collect();
    let dropped = traced_frames - t.len();
    let v = Video {
        name: row.file_name,
        path,
        split: row.split,
        ef: row.ef,
        frame_count: d.count,
        ed_es: ed_es(&t),
        tracings: t,
        masks,
        frames: d.frames,
    };
    (v, dropped)
}

impl EchoNet {
    /// Reads the lists, decodes the selected videos once and prepares frames and masks. Also
    /// returns the warnings (each names its file, and the line where one is at fault).
    pub fn open(spec: EchoNetSpec) -> Result<(Self, Vec<String>)> {
        let (selected, mut tracings, mut counts) = read_lists(&spec)?;
        let mut warn = Vec::new();
        let videos_dir = spec.root.join("Videos");
        let mut found: Vec<(Row, PathBuf)> = Vec::new();
        for r in selected {
            match find_video(&videos_dir, &r) {
                Some(p) => found.push((r, p)),
                None => {
                    let msg = format!(
                        "{}: video missing (FileList.csv line {}), skipped",
                        videos_dir.join(format!("{}.avi", r.key)).display(),
                        r.line
                    );
                    counts.skipped_missing += 1;
                    counts.skipped.push(msg.clone());
                    warn.push(msg);
                }
            }
        }
        let paths: Vec<PathBuf> = found.iter().map(|(_, p)| p.clone()).collect();
        let budget = spec.cache_mb.saturating_mul(1 << 20);
        let cache_left = AtomicUsize::new(budget);
        let decoded = decode_all(&paths, spec.resolution, &cache_left);
        let mut videos = Vec::new();
        for ((row, path), d) in found.into_iter().zip(decoded) {
            let d = match d {
                Ok(d) => d,
                Err(e) => {
                    let msg = format!("{e} (FileList.csv line {}): unreadable, skipped", row.line);
                    counts.skipped_unreadable += 1;
                    counts.skipped.push(msg.clone());
                    warn.push(msg);
                    continue;
                }
            };
            let rows = tracings.remove(&row.key).unwrap_or_default();
            let (v, dropped) = video_of(row, path, d, rows, &spec, &mut warn);
            counts.tracing_frames_dropped += dropped;
            counts.add_video(&v);
            videos.push(v);
        }
        counts.cached_mb = videos
            .iter()
            .filter_map(|v| v.frames.as_ref().map(Vec::len))
            .sum::<usize>() as f64
            / (1u64 << 20) as f64;
        let of = |s: Split| -> Vec<usize> {
            (0..videos.len())
                .filter(|&i| videos[i].split == s)
                .collect()
        };
        let (train, val, test) = (of(Split::Train), of(Split::Val), of(Split::Test));
        for (name, v) in [("TRAIN", &train), ("VAL", &val), ("TEST", &test)] {
            if v.is_empty() {
                bail!(
                    "{}: no usable {name} video ({} FileList.csv rows, {} missing and {} unreadable videos skipped)",
                    spec.root.display(),
                    counts.filelist_rows,
                    counts.skipped_missing,
                    counts.skipped_unreadable
                );
            }
        }
        if spec.need_tracings && !train.iter().any(|&i| !videos[i].tracings.is_empty()) {
            bail!(
                "{}: no usable TRAIN video has a tracing in VolumeTracings.csv, so the lv_segmentation head cannot train",
                spec.root.display()
            );
        }
        let data = Self {
            spec,
            videos,
            train,
            val,
            test,
            counts,
        };
        Ok((data, warn))
    }

    /// Indices of the videos of a split.
    pub fn split(&self, s: Split) -> &[usize] {
        match s {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }

    /// Mean and population std of EF over the usable TRAIN videos.
    pub fn ef_stats(&self) -> (f64, f64) {
        let efs: Vec<f64> = self.train.iter().map(|&i| self.videos[i].ef).collect();
        let n = efs.len().max(1) as f64;
        let m = efs.iter().sum::<f64>() / n;
        let var = efs.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n;
        (m, var.sqrt().max(1e-6))
    }

    /// Prepared frames at `indices` of video `vi` (from the cache, or decoded now).
    fn frames_at(&self, vi: usize, indices: &[usize]) -> Result<Vec<u8>> {
        let v = &self.videos[vi];
        let rr = self.spec.resolution * self.spec.resolution;
        let mut out = Vec::with_capacity(indices.len() * rr);
        if let Some(all) = &v.frames {
            for &i in indices {
                out.extend_from_slice(&all[i * rr..(i + 1) * rr]);
            }
            return Ok(out);
        }
        let clip = video::read_frames(&v.path, indices, ColorMode::Gray)
            .with_context(|| format!("decoding {} (it decoded when the run started)", v.name))?;
        for i in 0..clip.frames {
            let f = clip.frame(i).context("a decoded frame is missing")?;
            let img = GrayImage::from_vec(clip.width, clip.height, f.to_vec())
                .context("a decoded frame has the wrong size")?;
            out.extend_from_slice(
                &resize_short_side_and_center_crop(&img, self.spec.resolution).data,
            );
        }
        Ok(out)
    }

    /// The clip of video `vi` whose frame `k` is `start + k·step` (the last frame repeated past
    /// the end), with the LV target on traced frames.
    fn clip(&self, vi: usize, start: usize) -> Result<Rendered> {
        let v = &self.videos[vi];
        let (t, s, r) = (self.spec.frames, self.spec.frame_step, self.spec.resolution);
        let rr = r * r;
        let last = v.frame_count.saturating_sub(1);
        let wanted: Vec<usize> = (0..t).map(|k| start + k * s).collect();
        let indices: Vec<usize> = wanted.iter().map(|&u| u.min(last)).collect();
        let pixels = self.frames_at(vi, &indices)?;
        let mut lv = vec![0u8; t * rr];
        let mut lv_weight = vec![0f32; t];
        let mut traced = Vec::new();
        for (k, &u) in wanted.iter().enumerate() {
            let Some(ti) = v.tracings.iter().position(|x| x.frame == u) else {
                continue;
            };
            lv[k * rr..(k + 1) * rr].copy_from_slice(&v.masks[ti]);
            lv_weight[k] = 1.0;
            match v.ed_es {
                Some((ed, _)) if ed == ti => traced.push((k, Phase::Ed)),
                Some((_, es)) if es == ti => traced.push((k, Phase::Es)),
                _ => {}
            }
        }
        Ok(Rendered {
            input: Pixels::Gray(pixels),
            view: View::A4c,
            ef: v.ef,
            lv,
            lv_weight,
            video: vi,
            traced,
        })
    }

    /// Training clip `index` (a pure function of the run seed and the index).
    pub fn train_clip(&self, index: u64, with_lv: bool) -> Result<Rendered> {
        let mut rng = crate::rng::rng_for(&[self.spec.seed, 0xec40_7a11, index]);
        let vi = self.train[rng.random_range(0..self.train.len())];
        let v = &self.videos[vi];
        let span = (self.spec.frames - 1) * self.spec.frame_step;
        let start = if with_lv && !v.tracings.is_empty() {
            let f = v.tracings[rng.random_range(0..v.tracings.len())].frame;
            let (lo, hi) = positions(f, v.frame_count, self.spec.frames, self.spec.frame_step);
            f - rng.random_range(lo..=hi) * self.spec.frame_step
        } else {
            rng.random_range(0..=v.frame_count.saturating_sub(1 + span))
        };
        self.clip(vi, start)
    }

    /// The fixed evaluation clips of a split: per traced video one clip centred on ED and one on
    /// ES, per other video one clip centred on the video (or on its only tracing).
    pub fn eval_clips(&self, split: Split) -> Result<Vec<Rendered>> {
        let (t, s) = (self.spec.frames, self.spec.frame_step);
        let span = (t - 1) * s;
        let mut out = Vec::new();
        for &vi in self.split(split) {
            let v = &self.videos[vi];
            let anchors: Vec<usize> = match (v.ed_es, v.tracings.first()) {
                (Some((ed, es)), _) => vec![v.tracings[ed].frame, v.tracings[es].frame],
                (None, Some(x)) => vec![x.frame],
                (None, None) => vec![],
            };
            if anchors.is_empty() {
                out.push(self.clip(vi, v.frame_count.saturating_sub(1 + span) / 2)?);
            }
            for f in anchors {
                let (lo, hi) = positions(f, v.frame_count, t, s);
                out.push(self.clip(vi, f - (t / 2).clamp(lo, hi) * s)?);
            }
        }
        Ok(out)
    }

    /// One line for the log: where the data is and what was usable.
    pub fn describe(&self) -> String {
        let c = &self.counts;
        format!(
            "EchoNet-layout dataset {}: videos train {} / val {} / test {} ({} / {} / {} with ED and ES tracings); {} missing and {} unreadable videos skipped; {} of {} videos cached ({:.0} MB)",
            c.root.display(),
            c.videos.train,
            c.videos.val,
            c.videos.test,
            c.traced_videos.train,
            c.traced_videos.val,
            c.traced_videos.test,
            c.skipped_missing,
            c.skipped_unreadable,
            c.cached_videos,
            self.videos.len(),
            c.cached_mb
        )
    }
}

/// Writes the tracing rows of one frame (for tests): long axis, then chords.
#[cfg(test)]
fn rows_of(frame: usize, segs: &[[f64; 4]]) -> (usize, usize, Vec<[f64; 4]>) {
    (frame, 1, segs.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_drop_either_extension() {
        assert_eq!(video_key("0X1A.avi"), "0X1A");
        assert_eq!(video_key(" 0X1A.MP4 "), "0X1A");
        assert_eq!(video_key("0X1A"), "0X1A");
        assert_eq!(video_key("a.b.avi"), "a.b");
    }

    #[test]
    fn a_square_rasterises_to_its_pixel_centres() {
        // corners at 2 and 5: centres 2, 3, 4 are inside (5 is on the half-open edge)
        let sq = [[2.0, 2.0], [5.0, 2.0], [5.0, 5.0], [2.0, 5.0]];
        let m = rasterise(&sq, 8, 8);
        let inside: usize = m.data.iter().filter(|&&v| v == 255).count();
        assert_eq!(inside, 3 * 4, "{:?}", m.data);
        assert_eq!(m.get(2, 2), 255);
        assert_eq!(m.get(1, 3), 0);
        assert_eq!(m.get(6, 3), 0);
    }

    #[test]
    fn the_chord_outline_of_an_ellipse_has_its_area() {
        // long axis vertical through (30, 30), semi-axes 10 (x) and 20 (y): 20 chords
        let (cx, cy, a, b) = (30.0f64, 30.0f64, 10.0f64, 20.0f64);
        let mut segs = vec![[cx, cy - b, cx, cy + b]];
        for i in 0..20 {
            let y = cy - b + 2.0 * b * (i as f64 + 0.5) / 20.0;
            let w = a * (1.0 - ((y - cy) / b).powi(2)).sqrt();
            segs.push([cx - w, y, cx + w, y]);
        }
        let mut warn = Vec::new();
        let t = tracings_of("v", vec![rows_of(7, &segs)], &mut warn);
        assert!(warn.is_empty(), "{warn:?}");
        let area = std::f64::consts::PI * a * b;
        assert!(
            (t[0].area_px - area).abs() < 0.06 * area,
            "{}",
            t[0].area_px
        );
        let m = rasterise(&t[0].polygon, 64, 64);
        let px = m.data.iter().filter(|&&v| v == 255).count() as f64;
        assert!((px - t[0].area_px).abs() < 0.1 * area, "{px}");
        // too few rows: left out with a warning that names the line
        let t = tracings_of("v", vec![rows_of(3, &segs[..2])], &mut warn);
        assert!(t.is_empty() && warn[0].contains("line 1"), "{warn:?}");
    }

    #[test]
    fn a_traced_frame_lands_in_a_clip_inside_the_video() {
        // 8 frames every 2 (span 14) in a 40-frame video
        for f in 0..40 {
            let (lo, hi) = positions(f, 40, 8, 2);
            assert!(lo <= hi, "frame {f}: {lo}..{hi}");
            for j in lo..=hi {
                let start = f - j * 2;
                assert!(start + 14 <= 39, "frame {f} at {j} runs past the end");
            }
        }
        assert_eq!(positions(20, 40, 8, 2), (0, 7));
        assert_eq!(positions(3, 40, 8, 2), (0, 1));
        assert_eq!(positions(38, 40, 8, 2), (7, 7));
        // a video shorter than the clip: start at or after 0, repeat the end
        assert_eq!(positions(5, 10, 8, 2), (2, 2));
    }

    #[test]
    fn ed_is_the_largest_outline() {
        let tr = |frame, area_px| Tracing {
            frame,
            line: 1,
            area_px,
            polygon: vec![],
        };
        assert_eq!(ed_es(&[tr(5, 10.0), tr(20, 30.0)]), Some((1, 0)));
        assert_eq!(ed_es(&[tr(5, 10.0), tr(20, 10.0)]), None);
        assert_eq!(ed_es(&[tr(5, 10.0)]), None);
    }
}
