//! The reference's dataset list formats, read and written.
//!
//! * `VideoDataset`: `path label` lists, read by `echojepa::datalist` (shared with `quantize`)
//!   and re-exported here.
//! * `VideoGroupDataset` (EchoJEPA multi-view): whitespace-delimited
//!   `view_0 … view_{V-1} label` without header, or a headered file with a `label` column
//!   (comma- or whitespace-separated). `MISS`, an empty cell or `NaN` marks a missing view.
//!   Unlike the reference, which casts the label with `int()`, float labels are kept.
//!
//! Paths are used as written (relative paths resolve against the working directory, as in the
//! reference); `trainer synth` writes absolute paths. Errors name the file and line.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use echojepa::datalist::parse_label;
pub use echojepa::datalist::{VideoEntry, read_video_csv};

/// One line of a multi-view list.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiViewEntry {
    /// One path per view; `None` = missing (`MISS`).
    pub views: Vec<Option<PathBuf>>,
    pub label: f64,
}

fn is_missing(cell: &str) -> bool {
    let c = cell.trim();
    c.is_empty() || c == "MISS" || c.eq_ignore_ascii_case("nan")
}

/// Reads a multi-view list (`view_0 … view_{V-1} label`, or headered with a `label` column).
pub fn read_multiview_csv(file: &Path) -> Result<Vec<MultiViewEntry>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading multi-view list {}", file.display()))?;
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((first_no, first)) = lines.next() else {
        return Ok(Vec::new());
    };
    let comma = first.contains(',');
    let split = |l: &str| -> Vec<String> {
        if comma {
            l.split(',').map(|c| c.trim().to_string()).collect()
        } else {
            l.split_whitespace().map(str::to_string).collect()
        }
    };
    let header = split(first);
    let label_col = header.iter().position(|c| c == "label");
    let mut out = Vec::new();
    let mut width = None;
    let mut push = |no: usize, cols: Vec<String>| -> Result<()> {
        let lc = label_col.unwrap_or(cols.len().saturating_sub(1));
        if cols.len() < 2 || lc >= cols.len() {
            bail!(
                "{}:{no}: expected `view_0 … label`, got {} column(s)",
                file.display(),
                cols.len()
            );
        }
        let views: Vec<Option<PathBuf>> = cols
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != lc)
            .map(|(_, c)| (!is_missing(c)).then(|| PathBuf::from(c)))
            .collect();
        match width {
            None => width = Some(views.len()),
            Some(w) if w != views.len() => bail!(
                "{}:{no}: {} views, earlier lines have {w}",
                file.display(),
                views.len()
            ),
            _ => {}
        }
        out.push(MultiViewEntry {
            views,
            label: parse_label(&cols[lc], file, no)?,
        });
        Ok(())
    };
    if label_col.is_none() {
        push(first_no, header.clone())?;
    }
    for (no, l) in lines {
        push(no, split(l))?;
    }
    Ok(out)
}

fn path_str(p: &Path) -> Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("path {} is not UTF-8", p.display()))?;
    if s.contains(char::is_whitespace) {
        bail!("path `{s}` contains whitespace, which the reference CSV format cannot hold");
    }
    Ok(s.to_string())
}

/// Writes a `path label` list (labels as integers when they are whole, as classes are).
pub fn write_video_csv(file: &Path, entries: &[VideoEntry]) -> Result<()> {
    let mut out = String::new();
    for e in entries {
        let label = if e.label.fract() == 0.0 && e.label.abs() < 1e15 {
            format!("{}", e.label as i64)
        } else {
            format!("{}", e.label)
        };
        out.push_str(&format!("{} {label}\n", path_str(&e.path)?));
    }
    write_atomic(file, out.as_bytes())
}

/// Writes a headerless multi-view list with `MISS` for missing views.
pub fn write_multiview_csv(file: &Path, entries: &[MultiViewEntry]) -> Result<()> {
    let mut out = String::new();
    for e in entries {
        for v in &e.views {
            match v {
                Some(p) => out.push_str(&path_str(p)?),
                None => out.push_str("MISS"),
            }
            out.push(' ');
        }
        out.push_str(&format!("{}\n", e.label));
    }
    write_atomic(file, out.as_bytes())
}

/// Writes through a temporary file and a rename.
pub fn write_atomic(file: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = file.with_extension("partial");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, file)
        .with_context(|| format!("renaming {} to {}", tmp.display(), file.display()))
}

/// Mean and population standard deviation (numpy's default `ddof=0`) of regression labels.
pub fn fit_scaler(values: &[f64]) -> Result<echojepa::checkpoint::Scaler> {
    if values.is_empty() {
        bail!("cannot fit a label scaler on an empty training split");
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    let std = var.sqrt();
    if std.is_nan() || std <= 0.0 {
        bail!("training labels have zero spread (std {std}); cannot z-score");
    }
    Ok(echojepa::checkpoint::Scaler { mean, std })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_reference_lists() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("train.csv");
        std::fs::write(
            &p,
            "/data/a.mp4 3\n/data/b.avi -0.25 extra\n\n/data/c.mp4::1\n",
        )
        .unwrap();
        let e = read_video_csv(&p).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(
            e[0],
            VideoEntry {
                path: "/data/a.mp4".into(),
                label: 3.0
            }
        );
        assert_eq!(e[1].label, -0.25);
        assert_eq!(
            e[2],
            VideoEntry {
                path: "/data/c.mp4".into(),
                label: 1.0
            }
        );
        std::fs::write(&p, "/data/a.mp4 3\n/data/b.mp4 x\n").unwrap();
        let err = format!("{:#}", read_video_csv(&p).unwrap_err());
        assert!(err.contains("train.csv:2") && err.contains("`x`"), "{err}");
        std::fs::write(&p, "/data/only_a_path.mp4\n").unwrap();
        assert!(format!("{:#}", read_video_csv(&p).unwrap_err()).contains("train.csv:1"));
    }

    #[test]
    fn reads_multiview_lists_with_and_without_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mv.csv");
        std::fs::write(
            &p,
            "/a4c/1.mp4 /psax/1.mp4 0.5\nMISS /psax/2.mp4 -1.25\n/a4c/3.mp4 NaN 2\n",
        )
        .unwrap();
        let e = read_multiview_csv(&p).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[1].views, vec![None, Some(PathBuf::from("/psax/2.mp4"))]);
        assert_eq!(
            e[1].label, -1.25,
            "float labels are kept (the reference truncates them)"
        );
        assert_eq!(e[2].views[1], None);
        std::fs::write(&p, "view_0,view_1,label\n/a.mp4,,1.5\n/b.mp4,/c.mp4,2\n").unwrap();
        let e = read_multiview_csv(&p).unwrap();
        assert_eq!(e[0].views, vec![Some(PathBuf::from("/a.mp4")), None]);
        assert_eq!(e[1].label, 2.0);
        std::fs::write(&p, "/a.mp4 /b.mp4 1\n/a.mp4 2\n").unwrap();
        assert!(format!("{:#}", read_multiview_csv(&p).unwrap_err()).contains("mv.csv:2"));
    }

    #[test]
    fn round_trip_and_scaler() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.csv");
        let e = vec![
            VideoEntry {
                path: "/x/a.mp4".into(),
                label: 2.0,
            },
            VideoEntry {
                path: "/x/b.mp4".into(),
                label: -0.125,
            },
        ];
        write_video_csv(&p, &e).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "/x/a.mp4 2\n/x/b.mp4 -0.125\n"
        );
        assert_eq!(read_video_csv(&p).unwrap(), e);
        let mv = vec![MultiViewEntry {
            views: vec![None, Some("/v.mp4".into())],
            label: 0.5,
        }];
        write_multiview_csv(&p, &mv).unwrap();
        assert_eq!(read_multiview_csv(&p).unwrap(), mv);
        assert!(
            write_video_csv(
                &p,
                &[VideoEntry {
                    path: "/a b.mp4".into(),
                    label: 0.0
                }]
            )
            .is_err()
        );
        let s = fit_scaler(&[1.0, 2.0, 3.0, 4.0]).unwrap();
        assert_eq!(s.mean, 2.5);
        assert!((s.std - 1.25f64.sqrt()).abs() < 1e-12);
        assert!(fit_scaler(&[3.0, 3.0]).is_err());
    }
}
