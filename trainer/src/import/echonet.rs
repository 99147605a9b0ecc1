//! `trainer import echonet`: EchoNet-Dynamic, as Stanford distributes it, into the trainer's
//! list formats.
//!
//! # Input (`--root`)
//!
//! * `FileList.csv`, header `FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split`
//!   (columns found by name, any order; only `FileName`, `EF` and `Split` are required).
//!   `FileName` may lack the `.avi` extension (the released file has none); `Split` is `TRAIN`,
//!   `VAL` or `TEST` in any case.
//! * `VolumeTracings.csv`, header `FileName,X1,Y1,X2,Y2,Frame` (`FileName` with `.avi`): per video
//!   two traced frames, end-diastole and end-systole, each as consecutive rows of line segments in
//!   pixels of the video. The first row of a frame is the LV long axis, the others are chords
//!   across the LV. Optional: without it the LV lists are empty.
//! * `Videos/`: the videos, EchoNet-Dynamic's `.avi` files or any file the trainer reads (MP4, AVI,
//!   DICOM; `FileName` then names it with its extension).
//!
//! # Output (`--out`)
//!
//! * `ef/{train,val,test}.csv`: `path z`, space-delimited, no header (the reference
//!   `VideoDataset` format), absolute video paths, `z = (EF − mean) / std` with the mean and the
//!   population std (`ddof = 0`) of the EF of the rows written to `ef/train.csv` only.
//! * `ef/scaler.json`: `mean`, `std`, `target` (`ef_percent`), `units` (`%`), `fitted_on`
//!   (`train`), `count`, `ddof`, `note`, as `trainer synth` writes it.
//! * `pretrain.csv`: `path 0` for every usable video, whatever its split or EF (the reference
//!   pretraining list format; label 0).
//! * `lv/{train,val,test}.csv`: `path ed_frame es_frame`, space-delimited, no header. Frame
//!   indices are `VolumeTracings.csv`'s `Frame`, 0-based as EchoNet's own loader uses them.
//!   A `path label` reader sees `ed_frame` as the label and ignores the last column.
//! * `lv/tracings.json`: `{"format": "echojepa-lv-tracings/1", …, "videos": [...]}` with, per
//!   video of the LV lists, `file_name`, `path`, `split`, `frame_count` and `ed` / `es`, each
//!   `{frame, area_px, long_axis: [x1, y1, x2, y2], polygon: [[x, y], …]}`. The polygon is the
//!   LV outline in pixel coordinates (x right, y down): the chords' `(X1, Y1)` ends in file
//!   order, then their `(X2, Y2)` ends in reverse order (the long axis is not part of it);
//!   `area_px` is its shoelace area in square pixels. ED is the traced frame with the larger
//!   area, ES the one with the smaller.
//! * `import-report.csv`: header `source,file_name,split,reason,dropped_from,detail`, one row per
//!   thing left out of an output: the `FileList.csv` line (or `VolumeTracings.csv` line, or
//!   `Videos/` file) it concerns, a reason (`video_missing`, `unreadable` with the decoder's
//!   message, `duplicate`, `bad_row`, `unusable_path`, `bad_split`, `no_ef`, `bad_ef`,
//!   `no_tracings`, `bad_tracings`, `tracings_without_row`, `not_in_filelist`) and the outputs it
//!   is missing from (`all`, `ef+lv`, `ef`, `lv`).
//! * `README.txt`: this format, briefly, and how the folder was made.
//!
//! "Usable" means the file exists and, unless `--no-check`, decodes completely (every video is
//! opened and read once, in parallel). With `--no-check` only existence is checked, so
//! unreadable files stay in the lists; `trainer check-data OUT/pretrain.csv` finds them later.
//! Traced frame indices are checked against the decoded frame count (with `--no-check`, against
//! `NumberOfFrames`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::{csv_cell, split_csv_line};
use crate::check_data::{VideoCheck, check_videos, default_jobs};
use crate::data::csv::{VideoEntry, fit_scaler, write_atomic, write_video_csv};

/// Import EchoNet-Dynamic (FileList.csv, VolumeTracings.csv, Videos/) into reference lists.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// The EchoNet-Dynamic folder as distributed: FileList.csv, VolumeTracings.csv, Videos/.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Output folder for the lists and the report (created; files with the same names are replaced).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Decode every video once and leave unreadable ones out (the default).
    #[arg(long, overrides_with = "no_check")]
    pub check: bool,
    /// Skip decoding: only check that each video file exists (fast, but unreadable files stay in
    /// the lists; `trainer check-data OUT/pretrain.csv` finds them).
    #[arg(long, overrides_with = "check")]
    pub no_check: bool,
    /// Videos decoded in parallel (default: all cores).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Print a machine-readable JSON summary on stdout.
    #[arg(long)]
    pub json: bool,
}

const NOTE: &str = "patient data: if this is EchoNet-Dynamic, its Stanford research use agreement \
                    forbids redistribution; keep these lists and videos where the agreement allows";

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_uppercase().as_str() {
            "TRAIN" => Some(Split::Train),
            "VAL" => Some(Split::Val),
            "TEST" => Some(Split::Test),
            _ => None,
        }
    }
}

/// Why something was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    VideoMissing,
    Unreadable,
    Duplicate,
    BadRow,
    UnusablePath,
    BadSplit,
    NoEf,
    BadEf,
    NoTracings,
    BadTracings,
    TracingsWithoutRow,
    NotInFilelist,
}

impl Reason {
    pub fn name(self) -> &'static str {
        match self {
            Reason::VideoMissing => "video_missing",
            Reason::Unreadable => "unreadable",
            Reason::Duplicate => "duplicate",
            Reason::BadRow => "bad_row",
            Reason::UnusablePath => "unusable_path",
            Reason::BadSplit => "bad_split",
            Reason::NoEf => "no_ef",
            Reason::BadEf => "bad_ef",
            Reason::NoTracings => "no_tracings",
            Reason::BadTracings => "bad_tracings",
            Reason::TracingsWithoutRow => "tracings_without_row",
            Reason::NotInFilelist => "not_in_filelist",
        }
    }
}

/// One line of `import-report.csv`.
#[derive(Debug, Clone, Serialize)]
pub struct Dropped {
    pub source: String,
    pub file_name: String,
    pub split: String,
    pub reason: Reason,
    pub dropped_from: &'static str,
    pub detail: String,
}

/// One data row of `FileList.csv`.
#[derive(Debug, Clone)]
struct Row {
    line: usize,
    file_name: String,
    ef: String,
    split: String,
    number_of_frames: Option<usize>,
}

/// The name both CSV files agree on: `FileName` without a trailing `.avi`.
fn video_key(name: &str) -> String {
    let n = name.trim();
    match n.len().checked_sub(4) {
        Some(i) if n.is_char_boundary(i) && n[i..].eq_ignore_ascii_case(".avi") => n[..i].into(),
        _ => n.into(),
    }
}

fn read_text(path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text.trim_start_matches('\u{feff}').to_string())
}

/// Data lines (1-based line numbers) and the header's column index of each wanted name.
fn table(
    path: &Path,
    text: &str,
    wanted: &[&str],
    required: &[&str],
) -> Result<(BTreeMap<String, usize>, Vec<(usize, Vec<String>)>)> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        bail!("{} is empty", path.display());
    };
    let header = split_csv_line(header);
    let mut cols = BTreeMap::new();
    for w in wanted {
        if let Some(i) = header.iter().position(|h| h.eq_ignore_ascii_case(w)) {
            cols.insert((*w).to_string(), i);
        }
    }
    let missing: Vec<&str> = required
        .iter()
        .filter(|r| !cols.contains_key(**r))
        .copied()
        .collect();
    if !missing.is_empty() {
        bail!(
            "{}: the header has no {} column (header: `{}`)",
            path.display(),
            missing.join(", "),
            header.join(",")
        );
    }
    Ok((cols, lines.map(|(no, l)| (no, split_csv_line(l))).collect()))
}

/// The traced segments of one video, in file order.
#[derive(Debug, Default)]
struct Traced {
    first_line: usize,
    /// `(frame, [x1, y1, x2, y2] per row)`, frames in order of first appearance.
    frames: Vec<(usize, Vec<[f64; 4]>)>,
    problems: Vec<String>,
}

fn read_tracings(path: &Path) -> Result<BTreeMap<String, Traced>> {
    let text = read_text(path)?;
    let names = ["FileName", "X1", "Y1", "X2", "Y2", "Frame"];
    let (cols, rows) = table(path, &text, &names, &names)?;
    let mut out: BTreeMap<String, Traced> = BTreeMap::new();
    for (no, cells) in rows {
        let cell = |name: &str| cells.get(cols[name]).map(String::as_str).unwrap_or("");
        let key = video_key(cell("FileName"));
        let t = out.entry(key).or_insert_with(|| Traced {
            first_line: no,
            ..Traced::default()
        });
        let mut seg = [0.0; 4];
        let mut bad = None;
        for (v, name) in seg.iter_mut().zip(["X1", "Y1", "X2", "Y2"]) {
            match cell(name).parse::<f64>() {
                Ok(x) if x.is_finite() => *v = x,
                _ => bad = Some(format!("{name} `{}` is not a number", cell(name))),
            }
        }
        let frame = match cell("Frame").parse::<f64>() {
            Ok(f) if f >= 0.0 && f.fract() == 0.0 && f < 1e9 => Some(f as usize),
            _ => {
                bad = Some(format!("Frame `{}` is not a frame index", cell("Frame")));
                None
            }
        };
        match (bad, frame) {
            (None, Some(f)) => match t.frames.iter_mut().find(|(g, _)| *g == f) {
                Some((_, segs)) => segs.push(seg),
                None => t.frames.push((f, vec![seg])),
            },
            (Some(why), _) => t
                .problems
                .push(format!("VolumeTracings.csv line {no}: {why}")),
            (None, None) => {}
        }
    }
    Ok(out)
}

/// One traced frame, as written to `lv/tracings.json`.
#[derive(Debug, Clone, Serialize)]
pub struct TracedFrame {
    pub frame: usize,
    pub area_px: f64,
    pub long_axis: [f64; 4],
    pub polygon: Vec<[f64; 2]>,
}

/// The LV outline of a frame: chord starts in order, then chord ends in reverse.
pub fn outline(chords: &[[f64; 4]]) -> Vec<[f64; 2]> {
    chords
        .iter()
        .map(|c| [c[0], c[1]])
        .chain(chords.iter().rev().map(|c| [c[2], c[3]]))
        .collect()
}

/// Shoelace area of a closed polygon.
pub fn polygon_area(p: &[[f64; 2]]) -> f64 {
    let n = p.len();
    let twice: f64 = (0..n)
        .map(|i| {
            let (a, b) = (p[i], p[(i + 1) % n]);
            a[0] * b[1] - b[0] * a[1]
        })
        .sum();
    twice.abs() / 2.0
}

/// ED (larger area) and ES (smaller area) of a video's tracings.
fn ed_es(t: &Traced, frame_count: Option<usize>) -> Result<(TracedFrame, TracedFrame), String> {
    if !t.problems.is_empty() {
        return Err(t.problems.join("; "));
    }
    if t.frames.len() != 2 {
        let list: Vec<String> = t.frames.iter().map(|(f, _)| f.to_string()).collect();
        return Err(format!(
            "{} traced frame(s) ({}), expected 2 (ED and ES)",
            t.frames.len(),
            list.join(", ")
        ));
    }
    let mut traced = Vec::with_capacity(2);
    for (frame, segs) in &t.frames {
        if segs.len() < 3 {
            return Err(format!(
                "frame {frame} has {} row(s); an outline needs the long axis and at least 2 chords",
                segs.len()
            ));
        }
        if let Some(n) = frame_count
            && *frame >= n
        {
            return Err(format!(
                "traced frame {frame} is past the end of the video ({n} frames)"
            ));
        }
        let polygon = outline(&segs[1..]);
        let area_px = polygon_area(&polygon);
        if area_px.is_nan() || area_px <= 0.0 {
            return Err(format!("the outline of frame {frame} has no area"));
        }
        traced.push(TracedFrame {
            frame: *frame,
            area_px,
            long_axis: segs[0],
            polygon,
        });
    }
    let (b, a) = (traced.pop(), traced.pop());
    let (Some(a), Some(b)) = (a, b) else {
        return Err("expected 2 traced frames".into());
    };
    if a.area_px == b.area_px {
        return Err(format!(
            "frames {} and {} have the same area ({} px²); cannot tell ED from ES",
            a.frame, b.frame, a.area_px
        ));
    }
    Ok(if a.area_px > b.area_px {
        (a, b)
    } else {
        (b, a)
    })
}

/// One video of the LV lists.
#[derive(Debug, Clone, Serialize)]
pub struct LvVideo {
    pub file_name: String,
    pub path: String,
    pub split: Split,
    pub frame_count: Option<usize>,
    pub ed: TracedFrame,
    pub es: TracedFrame,
}

#[derive(Debug, Serialize)]
struct TracingsFile<'a> {
    format: &'static str,
    source: &'static str,
    coordinates: &'static str,
    frames: &'static str,
    polygon: &'static str,
    note: &'static str,
    videos: &'a [LvVideo],
}

/// Per-split counts.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct SplitCounts {
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

impl SplitCounts {
    fn add(&mut self, s: Split) {
        match s {
            Split::Train => self.train += 1,
            Split::Val => self.val += 1,
            Split::Test => self.test += 1,
        }
    }
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub dataset: &'static str,
    pub root: PathBuf,
    pub out: PathBuf,
    pub filelist_rows: usize,
    /// Whether every video was decoded (false with `--no-check`).
    pub decoded: bool,
    pub videos_found: usize,
    pub videos_usable: usize,
    pub ef: SplitCounts,
    pub lv: SplitCounts,
    pub pretrain: usize,
    pub ef_scaler: echojepa::checkpoint::Scaler,
    /// Rows left out of some output, by reason.
    pub dropped: BTreeMap<&'static str, usize>,
    pub report: PathBuf,
    pub seconds: f64,
    /// The decoder's message for each unreadable video (it names the file).
    pub unreadable: Vec<String>,
    pub note: &'static str,
}

fn drop_row(
    report: &mut Vec<Dropped>,
    r: &Row,
    reason: Reason,
    dropped_from: &'static str,
    detail: String,
) {
    report.push(Dropped {
        source: format!("FileList.csv:{}", r.line),
        file_name: r.file_name.clone(),
        split: r.split.clone(),
        reason,
        dropped_from,
        detail,
    })
}

/// Where a video stands after the existence / decoding check.
enum Usable {
    Yes { frame_count: Option<usize> },
    No(Reason, String),
}

fn find_video(videos: &Path, name: &str) -> Option<PathBuf> {
    let name = name.trim();
    if name.is_empty() || name.contains(['/', '\\']) {
        return None;
    }
    let exact = videos.join(name);
    if exact.is_file() {
        return Some(exact);
    }
    let avi = videos.join(format!("{name}.avi"));
    avi.is_file().then_some(avi)
}

fn list_path(p: &Path) -> Result<String, String> {
    match p.to_str() {
        Some(s) if !s.contains(char::is_whitespace) => Ok(s.to_string()),
        Some(s) => Err(format!(
            "path `{s}` contains whitespace, which the reference list format cannot hold"
        )),
        None => Err(format!("path {} is not UTF-8", p.display())),
    }
}

/// `FileList.csv`'s rows that name a video, an EF and a split; the other lines are already in
/// the report.
struct FileList {
    rows: Vec<Row>,
    /// Every data line, usable or not: the summary counts what the file holds.
    line_count: usize,
}

/// `VolumeTracings.csv`, by `video_key`.
struct Tracings {
    /// Named in the report when it is absent.
    file: PathBuf,
    present: bool,
    by_video: BTreeMap<String, Traced>,
}

/// The video file of each `FileList.csv` row.
struct Located {
    /// Parallel to the rows; `None` for a duplicate or a missing video (already reported).
    per_row: Vec<Option<PathBuf>>,
    /// The files found, in row order: what the decode check opens and the summary counts.
    found: Vec<PathBuf>,
}

/// The decode check's outcome.
struct Decoding {
    /// False with `--no-check`: only existence was checked and `checks` is empty.
    decoded: bool,
    checks: BTreeMap<PathBuf, VideoCheck>,
}

/// What the usable rows contribute to each output.
#[derive(Default)]
struct Lists {
    /// `(split, path, EF %)`: the z-scores wait until every TRAIN row is known.
    ef: Vec<(Split, PathBuf, f64)>,
    lv: Vec<LvVideo>,
    pretrain: Vec<VideoEntry>,
    /// The decoder's messages, for the summary.
    unreadable: Vec<String>,
}

/// What the written outputs leave for the summary.
struct Written {
    ef: SplitCounts,
    lv: SplitCounts,
    scaler: echojepa::checkpoint::Scaler,
    report: PathBuf,
}

/// Imports the folder and writes every output; returns the summary.
pub fn import(args: &Args) -> Result<Summary> {
    let t0 = Instant::now();
    let root = open_root(&args.root)?;
    let videos_dir = root.join("Videos");
    let mut report: Vec<Dropped> = Vec::new();
    let filelist = read_filelist(&root, &mut report)?;
    let tracings = read_tracings_if_present(&root)?;
    let located = locate_videos(&filelist.rows, &videos_dir, &mut report);
    let decoding = decode_check(&located.found, args);
    let lists = classify(&filelist.rows, &located, &decoding, &tracings, &mut report);
    report_strays(&filelist.rows, &tracings, &videos_dir, &mut report)?;
    let written = write_outputs(args, &root, decoding.decoded, &lists, &mut report)?;
    Ok(Summary {
        dataset: "EchoNet-Dynamic",
        root,
        out: args.out.clone(),
        filelist_rows: filelist.line_count,
        decoded: decoding.decoded,
        videos_found: located.found.len(),
        videos_usable: lists.pretrain.len(),
        ef: written.ef,
        lv: written.lv,
        pretrain: lists.pretrain.len(),
        ef_scaler: written.scaler,
        dropped: count_by_reason(&report),
        report: written.report,
        seconds: t0.elapsed().as_secs_f64(),
        unreadable: lists.unreadable,
        note: NOTE,
    })
}

/// Canonical, so that the lists hold absolute paths; a folder without `Videos/` is refused
/// before anything is read, as it is most likely the wrong folder.
fn open_root(dir: &Path) -> Result<PathBuf> {
    let root = dir
        .canonicalize()
        .with_context(|| format!("EchoNet-Dynamic folder {}", dir.display()))?;
    if !root.join("Videos").is_dir() {
        bail!(
            "{} has no Videos/ folder (expected the EchoNet-Dynamic layout: FileList.csv, VolumeTracings.csv, Videos/)",
            root.display()
        );
    }
    Ok(root)
}

/// A line without a file name, EF or split can reach no output, so it is reported here and
/// the later steps only see rows they can judge.
fn read_filelist(root: &Path, report: &mut Vec<Dropped>) -> Result<FileList> {
    let filelist = root.join("FileList.csv");
    let text = read_text(&filelist)?;
    let (cols, raw_rows) = table(
        &filelist,
        &text,
        &["FileName", "EF", "Split", "NumberOfFrames"],
        &["FileName", "EF", "Split"],
    )?;
    let mut rows: Vec<Row> = Vec::new();
    for (line, cells) in &raw_rows {
        let get = |name: &str| cols.get(name).and_then(|&i| cells.get(i)).cloned();
        match (get("FileName"), get("EF"), get("Split")) {
            (Some(file_name), Some(ef), Some(split)) if !file_name.is_empty() => rows.push(Row {
                line: *line,
                file_name,
                ef,
                split,
                number_of_frames: get("NumberOfFrames").and_then(|n| n.parse().ok()),
            }),
            _ => report.push(Dropped {
                source: format!("FileList.csv:{line}"),
                file_name: get("FileName").unwrap_or_default(),
                split: get("Split").unwrap_or_default(),
                reason: Reason::BadRow,
                dropped_from: "all",
                detail: format!(
                    "{} cell(s); no FileName, EF or Split (header has {} columns)",
                    cells.len(),
                    cols.values().max().map_or(0, |m| m + 1)
                ),
            }),
        }
    }
    Ok(FileList {
        rows,
        line_count: raw_rows.len(),
    })
}

/// The tracings are optional: the EF and pretraining lists are worth writing without them, so
/// a missing file is a warning and empty LV lists, not an error.
fn read_tracings_if_present(root: &Path) -> Result<Tracings> {
    let file = root.join("VolumeTracings.csv");
    let present = file.is_file();
    let by_video = if present {
        read_tracings(&file)?
    } else {
        tracing::warn!("{} not found: the LV lists will be empty", file.display());
        BTreeMap::new()
    };
    Ok(Tracings {
        file,
        present,
        by_video,
    })
}

/// A second row for the same video and a row whose file is missing get no file (and a report
/// line), so that no output lists a video twice or a file that is not there.
fn locate_videos(rows: &[Row], videos_dir: &Path, report: &mut Vec<Dropped>) -> Located {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut per_row: Vec<Option<PathBuf>> = Vec::with_capacity(rows.len());
    for r in rows {
        let key = video_key(&r.file_name);
        if let Some(first) = seen.get(&key) {
            drop_row(
                report,
                r,
                Reason::Duplicate,
                "all",
                format!("the same video as FileList.csv line {first}"),
            );
            per_row.push(None);
            continue;
        }
        seen.insert(key, r.line);
        match find_video(videos_dir, &r.file_name) {
            Some(p) => per_row.push(Some(p)),
            None => {
                drop_row(
                    report,
                    r,
                    Reason::VideoMissing,
                    "all",
                    format!(
                        "no {}.avi in {}",
                        video_key(&r.file_name),
                        videos_dir.display()
                    ),
                );
                per_row.push(None);
            }
        }
    }
    let found = per_row.iter().flatten().cloned().collect();
    Located { per_row, found }
}

/// Every video is decoded once, up front and in parallel, so that a file training would choke
/// on is left out now rather than found mid-run; `--no-check` trades that for speed.
fn decode_check(found: &[PathBuf], args: &Args) -> Decoding {
    let decoded = !args.no_check;
    let checks = if decoded {
        let jobs = args.jobs.unwrap_or_else(default_jobs);
        found
            .iter()
            .cloned()
            .zip(check_videos(found, jobs, "decoding"))
            .collect()
    } else {
        BTreeMap::new()
    };
    Decoding { decoded, checks }
}

/// A usable video is pretraining data whatever its labels; a bad split, EF or tracing only
/// keeps it out of the outputs that need them, and the report says which.
fn classify(
    rows: &[Row],
    located: &Located,
    decoding: &Decoding,
    tracings: &Tracings,
    report: &mut Vec<Dropped>,
) -> Lists {
    let mut lists = Lists::default();
    for (r, path) in rows.iter().zip(&located.per_row) {
        let Some(path) = path else { continue };
        let frame_count = match usability(r, path, decoding) {
            Usable::Yes { frame_count } => frame_count,
            Usable::No(reason, detail) => {
                if reason == Reason::Unreadable {
                    lists.unreadable.push(detail.clone());
                }
                drop_row(report, r, reason, "all", detail);
                continue;
            }
        };
        lists.pretrain.push(VideoEntry {
            path: path.clone(),
            label: 0.0,
        });
        let Some(split) = Split::parse(&r.split) else {
            drop_row(
                report,
                r,
                Reason::BadSplit,
                "ef+lv",
                format!("Split `{}` is not TRAIN, VAL or TEST", r.split),
            );
            continue;
        };
        match ef_percent(&r.ef) {
            Ok(v) => lists.ef.push((split, path.clone(), v)),
            Err((reason, detail)) => drop_row(report, r, reason, "ef", detail),
        }
        match lv_video(r, path, split, frame_count, tracings) {
            Ok(v) => lists.lv.push(v),
            Err((reason, detail)) => drop_row(report, r, reason, "lv", detail),
        }
    }
    lists
}

/// The frame count checks the traced frames: the decoded count when the video was decoded,
/// else what `FileList.csv` claims. A path the list format cannot hold makes the video as
/// unusable as a broken file.
fn usability(r: &Row, path: &Path, decoding: &Decoding) -> Usable {
    let usable = match decoding.checks.get(path) {
        _ if !decoding.decoded => Usable::Yes {
            frame_count: r.number_of_frames,
        },
        Some(c) => match &c.failure {
            None => Usable::Yes {
                frame_count: c
                    .decoded_frames
                    .or_else(|| c.info.as_ref().map(|i| i.frame_count)),
            },
            Some(f) => Usable::No(
                Reason::Unreadable,
                format!("{} failed: {}", f.stage, f.error),
            ),
        },
        None => Usable::No(Reason::Unreadable, "not checked".into()),
    };
    match (usable, list_path(path)) {
        (Usable::Yes { .. }, Err(why)) => Usable::No(Reason::UnusablePath, why),
        (u, _) => u,
    }
}

/// EchoNet-Dynamic marks a missing EF in several ways; they are all `no_ef`, not `bad_ef`.
fn ef_percent(ef: &str) -> Result<f64, (Reason, String)> {
    let ef = ef.trim();
    if ef.is_empty() || ef.eq_ignore_ascii_case("nan") || ef.eq_ignore_ascii_case("na") {
        return Err((Reason::NoEf, "EF is empty".into()));
    }
    match ef.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=100.0).contains(&v) => Ok(v),
        Ok(v) => Err((Reason::BadEf, format!("EF {v} is outside 0-100 %"))),
        Err(_) => Err((Reason::BadEf, format!("EF `{ef}` is not a number"))),
    }
}

/// The detail of a missing tracing tells a missing file from a video the file does not trace.
fn lv_video(
    r: &Row,
    path: &Path,
    split: Split,
    frame_count: Option<usize>,
    tracings: &Tracings,
) -> Result<LvVideo, (Reason, String)> {
    let Some(t) = tracings.by_video.get(&video_key(&r.file_name)) else {
        let detail = if tracings.present {
            "no rows in VolumeTracings.csv".into()
        } else {
            format!("no {}", tracings.file.display())
        };
        return Err((Reason::NoTracings, detail));
    };
    let (ed, es) = ed_es(t, frame_count).map_err(|why| (Reason::BadTracings, why))?;
    Ok(LvVideo {
        file_name: r.file_name.clone(),
        path: list_path(path).unwrap_or_default(),
        split,
        frame_count,
        ed,
        es,
    })
}

/// What the row-by-row pass cannot see: tracings of videos no row lists, and video files no
/// row names. Reported so that nothing in the folder is left out silently.
fn report_strays(
    rows: &[Row],
    tracings: &Tracings,
    videos_dir: &Path,
    report: &mut Vec<Dropped>,
) -> Result<()> {
    let listed: BTreeSet<String> = rows.iter().map(|r| video_key(&r.file_name)).collect();
    for (key, t) in &tracings.by_video {
        if !listed.contains(key) {
            report.push(Dropped {
                source: format!("VolumeTracings.csv:{}", t.first_line),
                file_name: key.clone(),
                split: String::new(),
                reason: Reason::TracingsWithoutRow,
                dropped_from: "lv",
                detail: "traced video has no FileList.csv row".into(),
            });
        }
    }
    let mut unlisted: Vec<String> = std::fs::read_dir(videos_dir)
        .with_context(|| format!("listing {}", videos_dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| !listed.contains(&video_key(n)) && !listed.contains(n.as_str()))
        .collect();
    unlisted.sort();
    for n in &unlisted {
        report.push(Dropped {
            source: "Videos/".into(),
            file_name: n.clone(),
            split: String::new(),
            reason: Reason::NotInFilelist,
            dropped_from: "all",
            detail: "video file has no FileList.csv row".into(),
        });
    }
    Ok(())
}

/// The report goes last, after every step that can add to it.
fn write_outputs(
    args: &Args,
    root: &Path,
    decoded: bool,
    lists: &Lists,
    report: &mut [Dropped],
) -> Result<Written> {
    let out = &args.out;
    for d in [out.clone(), out.join("ef"), out.join("lv")] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let (ef, scaler, n_train) = write_ef(out, &lists.ef)?;
    write_video_csv(&out.join("pretrain.csv"), &lists.pretrain)?;
    let lv = write_lv(out, &lists.lv)?;
    let report_path = write_report(out, report)?;
    write_readme(args, root, decoded, scaler, n_train)?;
    Ok(Written {
        ef,
        lv,
        scaler,
        report: report_path,
    })
}

/// The scaler is fitted on the TRAIN rows only, so that no VAL or TEST label leaks into the
/// z-scores. Returns the counts written, the scaler and how many rows it was fitted on.
fn write_ef(
    out: &Path,
    ef_rows: &[(Split, PathBuf, f64)],
) -> Result<(SplitCounts, echojepa::checkpoint::Scaler, usize)> {
    let train_ef: Vec<f64> = ef_rows
        .iter()
        .filter(|(s, _, _)| *s == Split::Train)
        .map(|(_, _, v)| *v)
        .collect();
    let scaler = fit_scaler(&train_ef).context(
        "fitting the EF scaler on the TRAIN rows that could be used (see import-report.csv)",
    )?;
    let mut ef_counts = SplitCounts::default();
    for s in Split::ALL {
        let e: Vec<VideoEntry> = ef_rows
            .iter()
            .filter(|(rs, _, _)| *rs == s)
            .map(|(_, p, v)| VideoEntry {
                path: p.clone(),
                label: scaler.normalize(*v),
            })
            .collect();
        for _ in &e {
            ef_counts.add(s);
        }
        write_video_csv(&out.join("ef").join(format!("{}.csv", s.name())), &e)?;
    }
    let scaler_json = serde_json::json!({
        "mean": scaler.mean,
        "std": scaler.std,
        "target": "ef_percent",
        "units": "%",
        "fitted_on": "train",
        "count": train_ef.len(),
        "ddof": 0,
        "note": NOTE,
    });
    write_atomic(
        &out.join("ef").join("scaler.json"),
        serde_json::to_string_pretty(&scaler_json)?.as_bytes(),
    )?;
    Ok((ef_counts, scaler, train_ef.len()))
}

/// The frame lists stay in the reference `path label` shape; the outlines, which that shape
/// cannot hold, go to `tracings.json`.
fn write_lv(out: &Path, lv_rows: &[LvVideo]) -> Result<SplitCounts> {
    let mut lv_counts = SplitCounts::default();
    for s in Split::ALL {
        let mut text = String::new();
        for v in lv_rows.iter().filter(|v| v.split == s) {
            text.push_str(&format!("{} {} {}\n", v.path, v.ed.frame, v.es.frame));
            lv_counts.add(s);
        }
        write_atomic(
            &out.join("lv").join(format!("{}.csv", s.name())),
            text.as_bytes(),
        )?;
    }
    let tracings_json = TracingsFile {
        format: "echojepa-lv-tracings/1",
        source: "EchoNet-Dynamic VolumeTracings.csv",
        coordinates: "pixels of the video frame, x to the right, y down, as in VolumeTracings.csv",
        frames: "0-based frame indices as in VolumeTracings.csv; ed = traced frame with the larger area, es = the smaller",
        polygon: "LV outline: the chords' (X1, Y1) in file order, then their (X2, Y2) in reverse; the long axis (first row of a frame) is long_axis, not part of the outline; area_px is its shoelace area",
        note: NOTE,
        videos: lv_rows,
    };
    write_atomic(
        &out.join("lv").join("tracings.json"),
        serde_json::to_string_pretty(&tracings_json)?.as_bytes(),
    )?;
    Ok(lv_counts)
}

/// Sorted so that the report reads in file order whichever step found each problem:
/// FileList.csv rows by line, then tracings, then stray video files.
fn write_report(out: &Path, report: &mut [Dropped]) -> Result<PathBuf> {
    report.sort_by_key(|d| {
        let (file, line) = d.source.split_once(':').unwrap_or((&d.source, ""));
        let kind = match file {
            "FileList.csv" => 0,
            "VolumeTracings.csv" => 1,
            _ => 2,
        };
        (kind, line.parse::<usize>().unwrap_or(0))
    });
    let mut csv = String::from("source,file_name,split,reason,dropped_from,detail\n");
    for d in report.iter() {
        csv.push_str(&format!(
            "{},{},{},{},{},{}\n",
            csv_cell(&d.source),
            csv_cell(&d.file_name),
            csv_cell(&d.split),
            d.reason.name(),
            d.dropped_from,
            csv_cell(&d.detail)
        ));
    }
    let report_path = out.join("import-report.csv");
    write_atomic(&report_path, csv.as_bytes())?;
    Ok(report_path)
}

/// Keyed by the reason's report name, as the JSON summary shows it.
fn count_by_reason(report: &[Dropped]) -> BTreeMap<&'static str, usize> {
    let mut dropped: BTreeMap<&'static str, usize> = BTreeMap::new();
    for d in report {
        *dropped.entry(d.reason.name()).or_default() += 1;
    }
    dropped
}

fn write_readme(
    args: &Args,
    root: &Path,
    decoded: bool,
    scaler: echojepa::checkpoint::Scaler,
    n_train: usize,
) -> Result<()> {
    let check = if decoded {
        "every listed video was opened and decoded once; unreadable ones are left out"
    } else {
        "videos were NOT decoded (--no-check): unreadable files may be listed; run `trainer check-data pretrain.csv`"
    };
    let pad = " ".repeat(27);
    let text = [
        format!(
            "EchoNet-Dynamic, imported by `trainer import echonet` from {}.",
            root.display()
        ),
        format!("{NOTE}."),
        String::new(),
        "ef/{train,val,test}.csv    `path z`, space-delimited, no header; z = (EF - mean) / std".into(),
        format!(
            "ef/scaler.json             mean {:.4} %, std {:.4} % (population std) of the {n_train} ef/train.csv rows only",
            scaler.mean, scaler.std
        ),
        "pretrain.csv               `path 0` for every usable video of FileList.csv, all splits".into(),
        "lv/{train,val,test}.csv    `path ed_frame es_frame`, space-delimited, no header; 0-based frames of VolumeTracings.csv".into(),
        "lv/tracings.json           per video of lv/*.csv: ed and es {frame, area_px, long_axis [x1,y1,x2,y2],".into(),
        format!("{pad}polygon [[x,y],...]}} in video pixels (x right, y down). The polygon is the chords'"),
        format!("{pad}(X1,Y1) in file order, then their (X2,Y2) reversed (the first row of a traced frame,"),
        format!("{pad}the long axis, is not part of it); ED = the traced frame with the larger area, ES = smaller."),
        "import-report.csv          everything left out of an output and why (FileList.csv rows, tracings, video files):".into(),
        format!("{pad}source,file_name,split,reason,dropped_from,detail"),
        String::new(),
        format!("Video paths are absolute. Decoding: {check}."),
        String::new(),
        format!(
            "Re-create: trainer import echonet --root {} --out {}{}",
            args.root.display(),
            args.out.display(),
            if decoded { "" } else { " --no-check" }
        ),
    ]
    .join("\n")
        + "\n";
    write_atomic(&args.out.join("README.txt"), text.as_bytes())
}

/// Runs the subcommand, writing the report (or JSON) to `out`.
pub fn run(args: Args, out: &mut impl Write) -> Result<()> {
    let s = import(&args)?;
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(());
    }
    let count = |r: Reason| s.dropped.get(r.name()).copied().unwrap_or(0);
    writeln!(
        out,
        "imported EchoNet-Dynamic from {} into {} in {:.1} s",
        s.root.display(),
        s.out.display(),
        s.seconds
    )?;
    writeln!(
        out,
        "  FileList.csv: {} rows; videos found {}, missing {}",
        s.filelist_rows,
        s.videos_found,
        count(Reason::VideoMissing)
    )?;
    if s.decoded {
        writeln!(
            out,
            "  decoded: {} readable, {} unreadable",
            s.videos_found - count(Reason::Unreadable),
            count(Reason::Unreadable)
        )?;
        for u in s.unreadable.iter().take(5) {
            writeln!(out, "    unreadable: {u}")?;
        }
        if s.unreadable.len() > 5 {
            writeln!(
                out,
                "    … {} more in import-report.csv",
                s.unreadable.len() - 5
            )?;
        }
    } else {
        writeln!(
            out,
            "  not decoded (--no-check): run `trainer check-data {}` to find unreadable files",
            s.out.join("pretrain.csv").display()
        )?;
    }
    writeln!(
        out,
        "  ef/:  train {} / val {} / test {}; EF scaler (train): mean {:.2} %, std {:.2} %",
        s.ef.train, s.ef.val, s.ef.test, s.ef_scaler.mean, s.ef_scaler.std
    )?;
    writeln!(
        out,
        "  lv/:  train {} / val {} / test {} (ED/ES frames and outlines in lv/tracings.json)",
        s.lv.train, s.lv.val, s.lv.test
    )?;
    writeln!(out, "  pretrain.csv: {} videos", s.pretrain)?;
    if s.dropped.is_empty() {
        writeln!(out, "  nothing left out")?;
    } else {
        let parts: Vec<String> = s.dropped.iter().map(|(k, v)| format!("{k} {v}")).collect();
        writeln!(out, "  left out: {}", parts.join(", "))?;
        writeln!(out, "  every row left out and why: {}", s.report.display())?;
    }
    writeln!(out, "  note: {NOTE}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_outlines_and_areas() {
        assert_eq!(video_key("0X1A.avi"), "0X1A");
        assert_eq!(video_key(" 0X1A.AVI "), "0X1A");
        assert_eq!(video_key("0X1A"), "0X1A");
        // a 4 x 2 rectangle from 3 chords
        let chords = [
            [0.0, 0.0, 4.0, 0.0],
            [0.0, 1.0, 4.0, 1.0],
            [0.0, 2.0, 4.0, 2.0],
        ];
        let p = outline(&chords);
        assert_eq!(p.len(), 6);
        assert_eq!(p[3], [4.0, 2.0]);
        assert!((polygon_area(&p) - 8.0).abs() < 1e-12);
    }

    #[test]
    fn ed_is_the_larger_outline() {
        let frame = |half: f64| -> Vec<[f64; 4]> {
            let mut v = vec![[50.0, 10.0, 50.0, 90.0]];
            for y in [20.0, 40.0, 60.0] {
                v.push([50.0 - half, y, 50.0 + half, y]);
            }
            v
        };
        let t = Traced {
            first_line: 2,
            frames: vec![(7, frame(5.0)), (30, frame(9.0))],
            problems: vec![],
        };
        let (ed, es) = ed_es(&t, Some(40)).unwrap();
        assert_eq!((ed.frame, es.frame), (30, 7));
        assert!((ed.area_px - 18.0 * 40.0).abs() < 1e-9);
        assert!(ed_es(&t, Some(30)).unwrap_err().contains("past the end"));
        let one = Traced {
            frames: vec![(7, frame(5.0))],
            ..Traced::default()
        };
        assert!(ed_es(&one, None).unwrap_err().contains("expected 2"));
    }
}
