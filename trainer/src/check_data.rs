//! `trainer check-data`: decodes every video of one or more dataset lists once and says which
//! files fail and why, then how the readable ones are encoded.
//!
//! Lists are the reference formats the data loader reads (`crate::data::csv`): `path label`, or
//! multi-view `view_0 … view_{V-1} label` (`MISS`, an empty cell or `NaN` = missing view, not
//! checked). A list is read as `path label` first and as multi-view when that fails. Paths are
//! used as written, so relative paths resolve against the working directory, exactly as the
//! loader resolves them. A video listed several times (in one list or several) is decoded once.
//!
//! Every file is opened and all its frames are decoded (gray) in parallel; a decoder panic counts
//! as a failure of that file, not of the run. The summary groups the videos by container, codec,
//! profile, frame size and rounded frame rate, with the readable and failed count of each group.
//! The exit status is non-zero when any file fails.
//!
//! [`check_videos`] is also the decoding check of `trainer import`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context, Result, bail};
use echojepa_video::{self as video, ColorMode, Format, VideoInfo, VideoReader};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::data::csv::{read_multiview_csv, read_video_csv};

/// Decode every video of dataset lists once; report the failures and the formats.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Dataset lists (`path label`, or multi-view `view_0 … label` with `MISS`); relative video
    /// paths resolve against the working directory, as in the data loader.
    #[arg(required = true, value_name = "LIST")]
    pub lists: Vec<PathBuf>,
    /// Print a machine-readable JSON summary on stdout instead of the text report.
    #[arg(long)]
    pub json: bool,
    /// Videos decoded in parallel (default: all cores).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
}

/// Where a video failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Opening the file or reading its headers.
    Open,
    /// Decoding its frames.
    Decode,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Open => "open",
            Stage::Decode => "decode",
        })
    }
}

/// The outcome of opening and decoding one video.
#[derive(Debug, Clone, Serialize)]
pub struct VideoCheck {
    pub path: PathBuf,
    /// What the reader says once the file is open; `None` when opening failed.
    pub info: Option<InfoSummary>,
    /// The container guessed from the first bytes when the file could not be opened
    /// (`mp4`, `avi`, `dicom`, `unknown`), or `no file`.
    pub sniffed: Option<String>,
    /// Frames decoded (all of them when the check passed).
    pub decoded_frames: Option<usize>,
    pub failure: Option<Failure>,
}

/// The parts of [`VideoInfo`] a report needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InfoSummary {
    pub frame_count: usize,
    pub fps: Option<f64>,
    pub width: usize,
    pub height: usize,
    pub codec: String,
    pub container: String,
    pub profile: Option<String>,
}

impl From<&VideoInfo> for InfoSummary {
    fn from(i: &VideoInfo) -> Self {
        Self {
            frame_count: i.frame_count,
            fps: i.fps,
            width: i.width,
            height: i.height,
            codec: i.codec.clone(),
            container: i.container.clone(),
            profile: i.profile.clone(),
        }
    }
}

/// Why a video could not be read; `error` is the decoder's message, which names the file.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub stage: Stage,
    pub error: String,
}

impl VideoCheck {
    /// The summary group: container, codec, profile, `WxH`, rounded frame rate.
    pub fn group(&self) -> GroupKey {
        match &self.info {
            Some(i) => GroupKey {
                container: i.container.clone(),
                codec: i.codec.clone(),
                profile: i.profile.clone().unwrap_or_else(|| "-".into()),
                size: format!("{}x{}", i.width, i.height),
                fps: i.fps.map_or_else(|| "?".into(), |f| format!("{f:.0}")),
            },
            None => GroupKey {
                container: self.sniffed.clone().unwrap_or_else(|| "?".into()),
                codec: "?".into(),
                profile: "?".into(),
                size: "?".into(),
                fps: "?".into(),
            },
        }
    }
}

/// Videos with the same container, codec, profile, frame size and rounded frame rate.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct GroupKey {
    pub container: String,
    pub codec: String,
    pub profile: String,
    pub size: String,
    pub fps: String,
}

fn sniff_container(path: &Path) -> String {
    use std::io::Read;
    let mut head = Vec::with_capacity(132);
    let read = std::fs::File::open(path).and_then(|f| f.take(132).read_to_end(&mut head));
    match read {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "no file".into(),
        Err(_) => "unreadable file".into(),
        Ok(_) => match video::sniff(&head) {
            Format::Mp4 => "mp4",
            Format::Avi => "avi",
            Format::Dicom => "dicom",
            _ => "unknown",
        }
        .into(),
    }
}

/// Decoded frames held at once per file: a long high-resolution video is read in pieces of at
/// most this many bytes (gray), so a worker never holds a whole file's frames.
const CHUNK_BYTES: usize = 64 << 20;

/// Decodes every frame, `CHUNK_BYTES` worth at a time; returns the number of frames decoded.
fn decode_in_chunks(reader: &mut dyn VideoReader) -> Result<usize, echojepa_video::VideoError> {
    let info = reader.info();
    let (n, frame) = (info.frame_count, (info.width * info.height).max(1));
    let chunk = (CHUNK_BYTES / frame).max(1);
    let mut done = 0;
    while done < n {
        let end = (done + chunk).min(n);
        let idx: Vec<usize> = (done..end).collect();
        done += reader.read_frames(&idx, ColorMode::Gray)?.frames;
    }
    Ok(done)
}

pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// Opens and fully decodes one video.
pub fn check_video(path: &Path) -> VideoCheck {
    let mut check = VideoCheck {
        path: path.to_path_buf(),
        info: None,
        sniffed: None,
        decoded_frames: None,
        failure: None,
    };
    let opened = std::panic::catch_unwind(|| video::open(path));
    let mut reader = match opened {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            check.sniffed = Some(sniff_container(path));
            check.failure = Some(Failure {
                stage: Stage::Open,
                error: e.to_string(),
            });
            return check;
        }
        Err(p) => {
            check.sniffed = Some(sniff_container(path));
            check.failure = Some(Failure {
                stage: Stage::Open,
                error: format!(
                    "{}: the decoder panicked: {}",
                    path.display(),
                    panic_message(p.as_ref())
                ),
            });
            return check;
        }
    };
    check.info = Some(InfoSummary::from(reader.info()));
    let decoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        decode_in_chunks(reader.as_mut())
    }));
    match decoded {
        Ok(Ok(frames)) => check.decoded_frames = Some(frames),
        Ok(Err(e)) => {
            check.failure = Some(Failure {
                stage: Stage::Decode,
                error: e.to_string(),
            })
        }
        Err(p) => {
            check.failure = Some(Failure {
                stage: Stage::Decode,
                error: format!(
                    "{}: the decoder panicked: {}",
                    path.display(),
                    panic_message(p.as_ref())
                ),
            })
        }
    }
    check
}

/// The default number of parallel decoders: all cores.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// Checks `paths` with `jobs` threads and a progress bar (on stderr, hidden when it is not a
/// terminal). Results are in the order of `paths`.
pub fn check_videos(paths: &[PathBuf], jobs: usize, what: &str) -> Vec<VideoCheck> {
    let bar = ProgressBar::new(paths.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {what} {{bar:30}} {{pos}}/{{len}} videos {{elapsed}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let next = AtomicUsize::new(0);
    let threads = jobs.max(1).min(paths.len().max(1));
    let mut done: Vec<(usize, VideoCheck)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(path) = paths.get(i) else {
                            break;
                        };
                        mine.push((i, check_video(path)));
                        bar.inc(1);
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
    bar.finish_and_clear();
    done.sort_by_key(|(i, _)| *i);
    // A worker that died (it cannot: decoding is behind catch_unwind) would leave gaps; report
    // those files as failed rather than dropping them.
    let mut out: Vec<Option<VideoCheck>> = vec![None; paths.len()];
    for (i, c) in done {
        out[i] = Some(c);
    }
    out.into_iter()
        .zip(paths)
        .map(|(c, p)| {
            c.unwrap_or_else(|| VideoCheck {
                path: p.clone(),
                info: None,
                sniffed: None,
                decoded_frames: None,
                failure: Some(Failure {
                    stage: Stage::Open,
                    error: format!("{}: the checking thread died", p.display()),
                }),
            })
        })
        .collect()
}

/// The videos of one list; `missing_views` counts `MISS` cells (multi-view lists).
struct ListVideos {
    paths: Vec<PathBuf>,
    missing_views: usize,
    multiview: bool,
}

fn read_list(list: &Path) -> Result<ListVideos> {
    match read_video_csv(list) {
        Ok(entries) => Ok(ListVideos {
            paths: entries.into_iter().map(|e| e.path).collect(),
            missing_views: 0,
            multiview: false,
        }),
        Err(single) => match read_multiview_csv(list) {
            Ok(entries) => {
                let mut paths = Vec::new();
                let mut missing_views = 0;
                for v in entries.into_iter().flat_map(|e| e.views) {
                    match v {
                        Some(p) => paths.push(p),
                        None => missing_views += 1,
                    }
                }
                Ok(ListVideos {
                    paths,
                    missing_views,
                    multiview: true,
                })
            }
            Err(multi) => bail!(
                "{} is neither a `path label` list ({single}) nor a multi-view list ({multi:#})",
                list.display()
            ),
        },
    }
}

#[derive(Debug, Serialize)]
struct GroupRow {
    #[serde(flatten)]
    key: GroupKey,
    ok: usize,
    failed: usize,
}

#[derive(Debug, Serialize)]
struct FailureRow {
    path: PathBuf,
    listed_in: PathBuf,
    stage: Stage,
    error: String,
}

#[derive(Debug, Serialize)]
struct ListRow {
    list: PathBuf,
    format: &'static str,
    entries: usize,
    missing_views: usize,
}

#[derive(Debug, Serialize)]
struct Summary {
    lists: Vec<ListRow>,
    videos: usize,
    ok: usize,
    failed: usize,
    failures: Vec<FailureRow>,
    groups: Vec<GroupRow>,
}

/// Runs the subcommand; the exit code is non-zero when any video fails.
pub fn run(args: Args, out: &mut impl Write) -> Result<ExitCode> {
    let mut lists = Vec::new();
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut first_list: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for list in &args.lists {
        let v = read_list(list).with_context(|| format!("reading {}", list.display()))?;
        lists.push(ListRow {
            list: list.clone(),
            format: if v.multiview {
                "multi-view"
            } else {
                "path label"
            },
            entries: v.paths.len() + v.missing_views,
            missing_views: v.missing_views,
        });
        for p in v.paths {
            if !first_list.contains_key(&p) {
                first_list.insert(p.clone(), list.clone());
                paths.push(p);
            }
        }
    }
    let checks = check_videos(&paths, args.jobs.unwrap_or_else(default_jobs), "decoding");
    let mut groups: BTreeMap<GroupKey, (usize, usize)> = BTreeMap::new();
    let mut failures = Vec::new();
    for c in &checks {
        let g = groups.entry(c.group()).or_default();
        match &c.failure {
            None => g.0 += 1,
            Some(f) => {
                g.1 += 1;
                failures.push(FailureRow {
                    path: c.path.clone(),
                    listed_in: first_list.get(&c.path).cloned().unwrap_or_default(),
                    stage: f.stage,
                    error: f.error.clone(),
                });
            }
        }
    }
    let summary = Summary {
        lists,
        videos: checks.len(),
        ok: checks.len() - failures.len(),
        failed: failures.len(),
        failures,
        groups: groups
            .into_iter()
            .map(|(key, (ok, failed))| GroupRow { key, ok, failed })
            .collect(),
    };
    let code = if summary.failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    };
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
        return Ok(code);
    }
    for f in &summary.failures {
        writeln!(
            out,
            "FAILED {} (listed in {}): {} failed: {}",
            f.path.display(),
            f.listed_in.display(),
            f.stage,
            f.error
        )?;
    }
    if !summary.failures.is_empty() {
        writeln!(out)?;
    }
    for l in &summary.lists {
        write!(
            out,
            "{}: {} list, {} entries",
            l.list.display(),
            l.format,
            l.entries
        )?;
        if l.missing_views > 0 {
            write!(out, " ({} MISS views not checked)", l.missing_views)?;
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "{} distinct videos: {} readable, {} failed\n",
        summary.videos, summary.ok, summary.failed
    )?;
    write_table(out, &summary.groups)?;
    if summary.failed > 0 {
        writeln!(
            out,
            "\n{} of {} videos could not be read; the data loader skips them.",
            summary.failed, summary.videos
        )?;
    }
    Ok(code)
}

fn write_table(out: &mut impl Write, groups: &[GroupRow]) -> Result<()> {
    let header = [
        "container",
        "codec",
        "profile",
        "size",
        "fps",
        "ok",
        "failed",
    ];
    let rows: Vec<[String; 7]> = groups
        .iter()
        .map(|g| {
            [
                g.key.container.clone(),
                g.key.codec.clone(),
                g.key.profile.clone(),
                g.key.size.clone(),
                g.key.fps.clone(),
                g.ok.to_string(),
                g.failed.to_string(),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; 7]| -> String {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i >= 5 {
                s.push_str(&format!("{c:>w$}  "));
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        s.trim_end().to_string()
    };
    writeln!(out, "{}", line(header))?;
    for r in &rows {
        writeln!(out, "{}", line(r.each_ref().map(String::as_str)))?;
    }
    Ok(())
}
