//! `trainer import`: turns public echocardiography datasets, as their publishers distribute them,
//! into the reference list formats the trainer reads (`crate::data::csv`), with a report of
//! every row that could not be used and why.
//!
//! * [`echonet`]: EchoNet-Dynamic (`FileList.csv`, `VolumeTracings.csv`, `Videos/*.avi`).

use std::io::Write;

use anyhow::Result;

pub mod echonet;

/// Import a public echo dataset into reference-format lists.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub dataset: Dataset,
}

/// The datasets `trainer import` knows.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Dataset {
    /// EchoNet-Dynamic: EF lists, a pretraining list and the LV tracings (ED/ES frames, outlines).
    Echonet(echonet::Args),
}

/// Runs the subcommand.
pub fn run(args: Args, out: &mut impl Write) -> Result<()> {
    match args.dataset {
        Dataset::Echonet(a) => echonet::run(a, out),
    }
}

/// Quotes a CSV cell when it needs it (RFC 4180).
pub(crate) fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Splits one CSV line into trimmed cells, honouring double quotes (RFC 4180, one line).
pub(crate) fn split_csv_line(line: &str) -> Vec<String> {
    let mut cells = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                cell.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if cell.trim().is_empty() => {
                cell.clear();
                quoted = true;
            }
            (',', false) => cells.push(std::mem::take(&mut cell).trim().to_string()),
            _ => cell.push(c),
        }
    }
    cells.push(cell.trim().to_string());
    cells
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_round_trip() {
        assert_eq!(split_csv_line("a, b ,c"), ["a", "b", "c"]);
        assert_eq!(split_csv_line("\"x, \"\"y\"\"\",2,"), ["x, \"y\"", "2", ""]);
        let tricky = "frame 3: bad \"marker\", giving up";
        assert_eq!(split_csv_line(&csv_cell(tricky)), [tricky]);
        assert_eq!(csv_cell("plain"), "plain");
    }
}
