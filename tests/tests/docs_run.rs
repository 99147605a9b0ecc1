//! Docs that run: every shell block (```` ```sh ````, ```` ```bash ````, ```` ```console ````) of
//! `README.md` and `docs/*.md` is executed, so an example cannot drift from the code.
//!
//! Each page runs in a fresh working copy of its own (a temporary directory holding copies of
//! `configs/`, `docs/`, `scripts/`, `deploy/`, `boards/profiles/`, `edge-runtime/demo/`,
//! `fuzz/corpus/` and `fuzz/crashes/`, and a link to the read-only `tests/fixtures/`), so
//! nothing a page writes lands in the repository. Its
//! blocks run in order in one `bash -euo pipefail` process, as a reader would type them into one
//! shell: a variable or a file made by one block is there for the next. `PATH` starts with the
//! directory of the workspace binaries that `cargo test --workspace` built (`trainer`,
//! `quantize`, `edge-runtime`, `firmware-host`, `echojepa-fuzz`), and `cargo` is a shell function
//! that stands in for the real one: `cargo run [--release] -p NAME [-- ARGS]` runs that binary,
//! `cargo build [--release] -p NAME` links it to `target/{debug,release}/NAME` in the working copy,
//! and anything else it refuses (a `--features` build or a nested `cargo test` must be annotated).
//!
//! Where a page shows a long run, an HTML comment directly above the block (invisible when the
//! page is rendered) turns the sizes down; the block itself stays as printed:
//!
//! | directive | effect |
//! |---|---|
//! | `<!-- doc-run: env NAME=VALUE … -->` | exported before the block (and so for the blocks after it) |
//! | `<!-- doc-run: replace "FROM" "TO" -->` | every `FROM` in the block becomes `TO`; `FROM` must occur |
//! | `<!-- doc-run: before COMMANDS -->` | shell run just before the block (may span lines), e.g. `sed` on the working copy's configs |
//! | `<!-- doc-run: fixture echonet DIR -->` | a small dataset in EchoNet-Dynamic's layout at `DIR` (phantom videos as `trainer synth` writes them); `echonet-ffmpeg` re-encodes them with ffmpeg (H.264 High MP4 and Motion JPEG AVI; without ffmpeg the page stops there, with a note, and fails under `CI=true`) |
//! | `<!-- doc-run: needs TOOL-or-PATH … -->` | the block is skipped, with a note, when a tool is not on `PATH` or a path is missing (a missing tool fails under `CI=true`: `.ci/run` installs them) |
//! | `<!-- doc-run: skip-line "TEXT" REASON -->` | lines containing `TEXT` are not run (listed with the reason) |
//! | `<!-- doc-run: skip REASON -->` | the block is not run (listed with the reason) |
//!
//! `DOC_RUN_KEEP=1` keeps each page's directory (its path is printed): `checkout/` is the
//! working copy, `doc-run/` holds the script that ran (`page.sh`) and each block's stdout and
//! stderr (`N.out`, `N.err`).
//!
//! Skips are few and each says why; `docs_inventory` lists them all and caps their number. A
//! block that fails stops its page, and the test names the page and line of the block and shows
//! the block and its stderr.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e_tests::{repo, run};

/// At most this many whole blocks and single lines may be skipped across all pages.
const MAX_SKIPS: usize = 4;
/// A page that runs longer than this is killed and fails.
const PAGE_TIMEOUT: Duration = Duration::from_secs(900);
/// What the working copy gets from the repository (copied: a page may write into them).
const COPIED: &[&str] = &[
    "configs",
    "docs",
    "scripts",
    "deploy",
    "boards/profiles",
    "edge-runtime/demo",
    "fuzz/corpus",
    "fuzz/crashes",
];
/// Large inputs the pages only read (linked).
const LINKED: &[&str] = &["tests/fixtures"];

// ---------------------------------------------------------------------------------------------
// Pages, blocks and directives

#[derive(Debug, Clone, PartialEq)]
enum Directive {
    Skip(String),
    Env(Vec<(String, String)>),
    Replace(String, String),
    SkipLine(String, String),
    Before(String),
    Needs(Vec<String>),
    Fixture(String, String),
}

#[derive(Debug, Clone)]
struct Block {
    /// Repository-relative path of the page.
    doc: String,
    /// 1-based line of the opening fence.
    line: usize,
    lang: String,
    /// The commands as printed (for `console` blocks: the `$ ` lines without the prompt).
    text: String,
    directives: Vec<Directive>,
}

impl Block {
    fn at(&self) -> String {
        format!("{}:{}", self.doc, self.line)
    }

    fn skip_reason(&self) -> Option<&str> {
        self.directives.iter().find_map(|d| match d {
            Directive::Skip(r) => Some(r.as_str()),
            _ => None,
        })
    }

    /// The block as it runs: replacements made, skipped lines commented out.
    fn script(&self) -> Result<String, String> {
        let mut text = self.text.clone();
        for d in &self.directives {
            match d {
                Directive::Replace(from, to) => {
                    if !text.contains(from.as_str()) {
                        return Err(format!("{}: `replace` finds no {from:?}", self.at()));
                    }
                    text = text.replace(from.as_str(), to);
                }
                Directive::SkipLine(what, reason) => {
                    if !text.contains(what.as_str()) {
                        return Err(format!("{}: `skip-line` finds no {what:?}", self.at()));
                    }
                    text = text
                        .lines()
                        .map(|l| {
                            if l.contains(what.as_str()) {
                                format!(
                                    ": {} {}",
                                    shell_quote(&format!("doc-run skipped this line ({reason}):")),
                                    shell_quote(l)
                                )
                            } else {
                                l.to_string()
                            }
                        })
                        .collect::<Vec<_>>()
                        .join("\n");
                    text.push('\n');
                }
                _ => {}
            }
        }
        Ok(text)
    }
}

const SHELL_LANGS: &[&str] = &["sh", "bash", "console", "shell"];

/// Splits a directive's words as a shell would, with double quotes only (`\"` and `\\` escapes
/// inside them): `A="two words"` is one word.
fn words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut w: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => out.extend(w.take()),
            '"' => {
                let w = w.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        None => return Err(format!("unterminated quote in {s:?}")),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\')) => w.push(e),
                            Some(e) => {
                                w.push('\\');
                                w.push(e);
                            }
                            None => return Err(format!("unterminated quote in {s:?}")),
                        },
                        Some(ch) => w.push(ch),
                    }
                }
            }
            c => w.get_or_insert_with(String::new).push(c),
        }
    }
    out.extend(w);
    Ok(out)
}

fn parse_directive(body: &str) -> Result<Directive, String> {
    let body = body.trim();
    let (kind, rest) = body.split_once(char::is_whitespace).unwrap_or((body, ""));
    let rest = rest.trim();
    let need_text = |what: &str| {
        if rest.is_empty() {
            Err(format!("`{kind}` needs {what}"))
        } else {
            Ok(rest.to_string())
        }
    };
    match kind {
        "skip" => need_text("a reason").map(Directive::Skip),
        "before" => need_text("commands").map(Directive::Before),
        "env" => {
            let vars = words(rest)?
                .into_iter()
                .map(|w| match w.split_once('=') {
                    Some((k, v))
                        if !k.is_empty()
                            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
                    {
                        Ok((k.to_string(), v.to_string()))
                    }
                    _ => Err(format!("`env` takes NAME=VALUE, not {w:?}")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            if vars.is_empty() {
                return Err("`env` needs NAME=VALUE".into());
            }
            Ok(Directive::Env(vars))
        }
        "replace" => match words(rest)?.as_slice() {
            [from, to] if !from.is_empty() => Ok(Directive::Replace(from.clone(), to.clone())),
            _ => Err(r#"`replace` takes "FROM" "TO""#.into()),
        },
        "skip-line" => {
            let w = words(rest)?;
            match w.split_first() {
                Some((what, reason)) if !what.is_empty() && !reason.is_empty() => {
                    Ok(Directive::SkipLine(what.clone(), reason.join(" ")))
                }
                _ => Err(r#"`skip-line` takes "TEXT" REASON"#.into()),
            }
        }
        "needs" => {
            let w = words(rest)?;
            if w.is_empty() {
                return Err("`needs` takes tools or paths".into());
            }
            Ok(Directive::Needs(w))
        }
        "fixture" => match words(rest)?.as_slice() {
            [kind, dir] if kind == "echonet" || kind == "echonet-ffmpeg" => {
                Ok(Directive::Fixture(kind.clone(), dir.clone()))
            }
            _ => Err("`fixture` takes echonet|echonet-ffmpeg DIR".into()),
        },
        other => Err(format!("unknown directive `{other}`")),
    }
}

/// The shell blocks of a page with their directives. Errors: a malformed directive, or one that
/// is not directly above a shell block.
fn parse_page(doc: &str, markdown: &str) -> Result<Vec<Block>, String> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut blocks = Vec::new();
    let mut pending: Vec<(usize, Directive)> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        if let Some(body) = trimmed.strip_prefix("<!-- doc-run:") {
            let start = i;
            let mut text = String::new();
            let mut rest = body;
            loop {
                if let Some((inside, _)) = rest.split_once("-->") {
                    text.push_str(inside);
                    break;
                }
                text.push_str(rest);
                text.push('\n');
                i += 1;
                if i == lines.len() {
                    return Err(format!("{doc}:{}: unterminated doc-run comment", start + 1));
                }
                rest = lines[i];
            }
            let d = parse_directive(&text).map_err(|e| format!("{doc}:{}: {e}", start + 1))?;
            pending.push((start + 1, d));
            i += 1;
            continue;
        }
        if let Some(info) = trimmed.strip_prefix("```") {
            let indent = line.len() - trimmed.len();
            let lang = info
                .split(|c: char| c.is_whitespace() || c == ',' || c == '{')
                .next()
                .unwrap_or("")
                .to_string();
            let open = i;
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && lines[i].trim() != "```" {
                let l = lines[i];
                let cut = l.len() - l.trim_start().len();
                body.push(&l[cut.min(indent)..]);
                i += 1;
            }
            if i == lines.len() {
                return Err(format!("{doc}:{}: unclosed code block", open + 1));
            }
            i += 1;
            if !SHELL_LANGS.contains(&lang.as_str()) {
                if let Some((at, _)) = pending.first() {
                    return Err(format!(
                        "{doc}:{at}: a doc-run directive above a `{lang}` block (only shell blocks run)"
                    ));
                }
                continue;
            }
            let text = if lang == "console" {
                console_commands(&body)
            } else {
                body.iter().fold(String::new(), |mut s, l| {
                    s.push_str(l);
                    s.push('\n');
                    s
                })
            };
            blocks.push(Block {
                doc: doc.to_string(),
                line: open + 1,
                lang,
                text,
                directives: pending.drain(..).map(|(_, d)| d).collect(),
            });
            continue;
        }
        if let Some((at, _)) = pending.first() {
            return Err(format!(
                "{doc}:{at}: a doc-run directive must be directly above a shell block (line {} is in between)",
                i + 1
            ));
        }
        i += 1;
    }
    if let Some((at, _)) = pending.first() {
        return Err(format!(
            "{doc}:{at}: a doc-run directive with no block after it"
        ));
    }
    Ok(blocks)
}

/// The commands of a `console` block: lines after a `$ ` prompt, with their `\` continuations.
fn console_commands(body: &[&str]) -> String {
    let mut out = String::new();
    let mut continued = false;
    for l in body {
        if let Some(cmd) = l.strip_prefix("$ ") {
            out.push_str(cmd);
            out.push('\n');
            continued = cmd.trim_end().ends_with('\\');
        } else if continued {
            out.push_str(l);
            out.push('\n');
            continued = l.trim_end().ends_with('\\');
        }
    }
    out
}

/// `README.md` and `docs/*.md`, repository-relative, sorted.
fn pages() -> Vec<String> {
    let mut v = vec!["README.md".to_string()];
    let mut docs: Vec<String> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    v.extend(docs);
    v
}

fn page_blocks(doc: &str) -> Vec<Block> {
    let text = std::fs::read_to_string(repo().join(doc)).unwrap_or_else(|e| panic!("{doc}: {e}"));
    parse_page(doc, &text).unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------------------------------------
// Running a page

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

fn in_ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// `target/<profile>`, where cargo put the workspace binaries.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    for b in [
        "trainer",
        "quantize",
        "edge-runtime",
        "firmware-host",
        "echojepa-fuzz",
    ] {
        assert!(
            dir.join(b).is_file(),
            "{} is missing: run the tests with `cargo test --workspace` (it builds the binaries)",
            dir.join(b).display()
        );
    }
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if e.file_type().unwrap().is_dir() {
            copy_tree(&src, &dst);
        } else {
            std::fs::copy(&src, &dst).unwrap_or_else(|err| panic!("{}: {err}", src.display()));
        }
    }
}

/// The working copy a page runs in: `<tmp>/checkout`.
fn working_copy(tmp: &Path) -> PathBuf {
    let root = repo();
    let work = tmp.join("checkout");
    for p in COPIED {
        copy_tree(&root.join(p), &work.join(p));
    }
    for p in LINKED {
        let dst = work.join(p);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(root.join(p), dst).unwrap();
    }
    work
}

/// `cargo` inside the pages: runs and "builds" the binaries this test was built with.
const CARGO_STAND_IN: &str = r#"
cargo() {
    local sub=${1:-} profile=debug pkg= args=()
    shift || true
    case $sub in
        run|build) ;;
        *) echo "doc-run: \`cargo $sub $*\` is not run by the docs test; annotate the block (tests/tests/docs_run.rs)" >&2
           return 2 ;;
    esac
    while [ $# -gt 0 ]; do
        case $1 in
            --) shift; args=("$@"); break ;;
            --release) profile=release ;;
            -p|--package|--bin) pkg=$2; shift ;;
            -q|--quiet|--locked|--offline|--frozen) ;;
            *) echo "doc-run: cargo $sub: \`$1\` is not supported by the docs test's cargo stand-in (it runs the default build)" >&2
               return 2 ;;
        esac
        shift
    done
    if [ -z "$pkg" ] || [ ! -x "$DOC_RUN_BIN/$pkg" ]; then
        echo "doc-run: cargo $sub: no workspace binary \`$pkg\` in $DOC_RUN_BIN" >&2
        return 2
    fi
    if [ "$sub" = build ]; then
        [ ${#args[@]} -eq 0 ] || { echo "doc-run: cargo build takes no -- arguments" >&2; return 2; }
        mkdir -p "target/$profile"
        ln -sf "$DOC_RUN_BIN/$pkg" "target/$profile/$pkg"
    else
        "$DOC_RUN_BIN/$pkg" "${args[@]}"
    fi
}
"#;

/// What happened to each block of a page.
#[derive(Debug)]
struct PageRun {
    work: PathBuf,
    ran: Vec<(String, f64)>,
    skipped: Vec<(String, String)>,
    _tmp: Option<tempfile::TempDir>,
}

fn needs_unmet(needs: &[String], work: &Path) -> Option<String> {
    for n in needs {
        if n.contains('/') {
            if !work.join(n).exists() {
                return Some(format!("{n} is missing"));
            }
        } else if !on_path(n) {
            assert!(
                !in_ci(),
                "CI needs `{n}` for the docs (install it in .ci/run)"
            );
            return Some(format!("`{n}` is not installed"));
        }
    }
    None
}

/// Why a block's fixture cannot be made here (ffmpeg missing), if so.
fn fixture_unavailable(b: &Block) -> Option<String> {
    let ffmpeg = b
        .directives
        .iter()
        .any(|d| matches!(d, Directive::Fixture(k, _) if k == "echonet-ffmpeg"));
    if ffmpeg && !on_path("ffmpeg") {
        assert!(!in_ci(), "CI needs ffmpeg for the docs (.ci/run)");
        return Some("the fixture needs ffmpeg, which is not installed".into());
    }
    None
}

/// Runs every shell block of `doc` in order in one shell in a fresh working copy; panics with the
/// block's page and line, the block and its output when one fails.
fn run_page(doc: &str) -> PageRun {
    run_blocks(doc, &page_blocks(doc)).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `blocks` (of page `doc`) in order in one shell in a fresh working copy; the error names
/// the failing block's page and line and shows the block, its stderr and its stdout.
// A page's run reads best as one sequence: prepare, run each block, collect.
#[allow(clippy::too_many_lines)]
fn run_blocks(doc: &str, blocks: &[Block]) -> Result<PageRun, String> {
    let bins = bin_dir();
    let tmp = tempfile::tempdir().unwrap();
    let work = working_copy(tmp.path());
    let state = tmp.path().join("doc-run");
    std::fs::create_dir_all(&state).unwrap();

    let mut script = String::from("exec </dev/null\n");
    script.push_str(CARGO_STAND_IN);
    let mut skipped = Vec::new();
    let mut runs: Vec<&Block> = Vec::new();
    for b in blocks {
        if let Some(r) = b.skip_reason() {
            skipped.push((b.at(), r.to_string()));
            continue;
        }
        let needs: Vec<String> = b
            .directives
            .iter()
            .flat_map(|d| match d {
                Directive::Needs(n) => n.clone(),
                _ => Vec::new(),
            })
            .collect();
        if let Some(why) = needs_unmet(&needs, &work) {
            eprintln!("note: {} skipped: {why}", b.at());
            skipped.push((b.at(), why));
            continue;
        }
        if let Some(why) = fixture_unavailable(b) {
            // the rest of the page works on the fixture
            eprintln!("note: {} and the blocks after it skipped: {why}", b.at());
            skipped.push((b.at(), why));
            break;
        }
        for d in &b.directives {
            if let Directive::SkipLine(what, reason) = d {
                skipped.push((format!("{} (lines with {what:?})", b.at()), reason.clone()));
            }
        }
        let n = runs.len();
        runs.push(b);
        let _ = writeln!(script, "\n# ---- block {n}: {}", b.at());
        let _ = writeln!(
            script,
            "printf '%s %s\\n' {n} \"$EPOCHREALTIME\" >> \"$DOC_RUN_STATE/log\""
        );
        let _ = writeln!(
            script,
            "exec >\"$DOC_RUN_STATE/{n}.out\" 2>\"$DOC_RUN_STATE/{n}.err\""
        );
        for d in &b.directives {
            match d {
                Directive::Env(vars) => {
                    for (k, v) in vars {
                        let _ = writeln!(script, "export {k}={}", shell_quote(v));
                    }
                }
                Directive::Fixture(kind, dir) => {
                    fixture(kind, &work.join(dir), &bins, &tmp.path().join("fixtures"));
                }
                _ => {}
            }
        }
        for d in &b.directives {
            if let Directive::Before(cmds) = d {
                script.push_str(cmds);
                script.push('\n');
            }
        }
        script.push_str(&b.script()?);
    }
    let _ = writeln!(
        script,
        "\nprintf '%s %s\\n' end \"$EPOCHREALTIME\" >> \"$DOC_RUN_STATE/log\""
    );
    let script_path = state.join("page.sh");
    std::fs::write(&script_path, &script).unwrap();

    let path = format!(
        "{}:{}",
        bins.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-e", "-u", "-o", "pipefail"])
        .arg(&script_path)
        .current_dir(&work)
        .env("PATH", path)
        .env("DOC_RUN_BIN", &bins)
        .env("DOC_RUN_STATE", &state)
        .env("RUST_LOG", "warn")
        .env_remove("ECHOJEPA_BOARD")
        .env_remove("ECHOJEPA_BUNDLE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(state.join("shell.err")).unwrap());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > PAGE_TIMEOUT {
            // the page's process group: bash and whatever its blocks started
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let outer = std::fs::read_to_string(state.join("shell.err")).unwrap_or_default();

    let log = std::fs::read_to_string(state.join("log")).unwrap_or_default();
    let marks: Vec<(String, f64)> = log
        .lines()
        .filter_map(|l| {
            let (k, t) = l.split_once(' ')?;
            Some((k.to_string(), t.parse().ok()?))
        })
        .collect();
    let finished = marks.last().is_some_and(|(k, _)| k == "end");
    if status.is_none_or(|s| !s.success()) || !finished {
        let last = marks
            .iter()
            .rev()
            .find_map(|(k, _)| k.parse::<usize>().ok());
        let why = match status {
            None => format!("did not finish within {} s", PAGE_TIMEOUT.as_secs()),
            Some(s) => format!("exited with {s}"),
        };
        let Some(n) = last else {
            return Err(format!(
                "{doc}: the page's shell {why} before its first block:\n{outer}"
            ));
        };
        let b = runs[n];
        let tail = |p: PathBuf, keep: usize| {
            let s = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(keep)..].join("\n")
        };
        return Err(format!(
            "{}: this block {why}\n--- block ({} as it ran) ---\n{}--- stderr (last 80 lines) ---\n{}\n--- stdout (last 30 lines) ---\n{}\n{outer}",
            b.at(),
            b.lang,
            b.script().unwrap(),
            tail(state.join(format!("{n}.err")), 80),
            tail(state.join(format!("{n}.out")), 30),
        ));
    }
    let ran: Vec<(String, f64)> = marks
        .windows(2)
        .map(|w| {
            let n: usize = w[0].0.parse().unwrap();
            (runs[n].at(), w[1].1 - w[0].1)
        })
        .collect();
    for (at, secs) in &ran {
        eprintln!("ran {at} ({secs:.1} s)");
    }
    for (at, why) in &skipped {
        eprintln!("skipped {at}: {why}");
    }
    if std::env::var_os("DOC_RUN_KEEP").is_some() {
        eprintln!("kept {} (DOC_RUN_KEEP)", tmp.keep().display());
        return Ok(PageRun {
            work,
            ran,
            skipped,
            _tmp: None,
        });
    }
    Ok(PageRun {
        work,
        ran,
        skipped,
        _tmp: Some(tmp),
    })
}

// ---------------------------------------------------------------------------------------------
// Fixtures

/// Ellipse outline as EchoNet's VolumeTracings rows: the long axis, then `n` chords across.
fn tracing_rows(name: &str, frame: usize, cx: f64, cy: f64, a: f64, b: f64) -> String {
    let n = 20;
    let mut s = format!(
        "{name},{cx:.2},{:.2},{cx:.2},{:.2},{frame}\n",
        cy - b,
        cy + b
    );
    for i in 0..n {
        let y = cy - b + (i as f64 + 0.5) * 2.0 * b / n as f64;
        let half = a * (1.0 - ((y - cy) / b).powi(2)).max(0.0).sqrt();
        let _ = writeln!(
            s,
            "{name},{:.2},{y:.2},{:.2},{y:.2},{frame}",
            cx - half,
            cx + half
        );
    }
    s
}

/// A small dataset in EchoNet-Dynamic's layout at `dir`: `FileList.csv` (EchoNet's columns,
/// extension-less names), `VolumeTracings.csv` (an ellipse at an ED and an ES frame per video) and
/// `Videos/`, from phantom A4C videos: as `trainer synth` writes them (H.264 MP4), or, with
/// `echonet-ffmpeg`, re-encoded by ffmpeg in turn as H.264 High with B-frames in MP4 and as
/// Motion JPEG in AVI (EchoNet-Dynamic's own format).
fn fixture(kind: &str, dir: &Path, bins: &Path, scratch: &Path) {
    let ffmpeg = kind == "echonet-ffmpeg";
    let src = scratch.join(dir.file_name().unwrap());
    let patients = if ffmpeg { "40" } else { "12" };
    let frames = if ffmpeg { "40" } else { "48" };
    let size = if ffmpeg { "96" } else { "112" };
    run(Command::new(bins.join("trainer"))
        .args(["-q", "synth", "--out"])
        .arg(&src)
        .args(["--patients", patients, "--frames", frames, "--views", "a4c"])
        .args(["--width", size, "--height", size, "--seed", "11"]));
    let truth = std::fs::read_to_string(src.join("ground_truth.csv")).unwrap();
    let mut lines = truth.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (c_path, c_split, c_ef, c_edv, c_esv) = (
        col("path"),
        col("split"),
        col("ef_percent"),
        col("edv_ml"),
        col("esv_ml"),
    );
    let videos = dir.join("Videos");
    std::fs::create_dir_all(&videos).unwrap();
    let mut list =
        String::from("FileName,EF,ESV,EDV,FrameHeight,FrameWidth,FPS,NumberOfFrames,Split\n");
    let mut tracings = String::from("FileName,X1,Y1,X2,Y2,Frame\n");
    for (n, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        let video = if Path::new(f[c_path]).is_absolute() {
            PathBuf::from(f[c_path])
        } else {
            src.join(f[c_path])
        };
        let name = format!("0X{n:04X}");
        let ext = if !ffmpeg {
            std::fs::copy(&video, videos.join(format!("{name}.mp4"))).unwrap();
            "mp4"
        } else {
            let (ext, codec): (&str, &[&str]) = if n % 2 == 0 {
                (
                    "mp4",
                    &[
                        "-c:v",
                        "libx264",
                        "-profile:v",
                        "high",
                        "-bf",
                        "3",
                        "-pix_fmt",
                        "yuv420p",
                    ],
                )
            } else {
                (
                    "avi",
                    &["-c:v", "mjpeg", "-q:v", "3", "-pix_fmt", "yuvj420p"],
                )
            };
            run(Command::new("ffmpeg")
                .args(["-v", "error", "-y", "-i"])
                .arg(&video)
                .args(codec)
                .arg(videos.join(format!("{name}.{ext}"))));
            ext
        };
        // EchoNet's own FileList names have no extension (`.avi` is assumed); ours say it when
        // the video is not an AVI.
        let listed = if ext == "avi" {
            name.clone()
        } else {
            format!("{name}.{ext}")
        };
        let _ = writeln!(
            list,
            "{listed},{},{},{},{size},{size},30,{frames},{}",
            f[c_ef],
            f[c_esv],
            f[c_edv],
            f[c_split].to_uppercase()
        );
        let s: f64 = size.parse().unwrap();
        tracings.push_str(&tracing_rows(&name, 6, s / 2.0, s / 2.0, s * 0.18, s * 0.3));
        tracings.push_str(&tracing_rows(
            &name,
            18,
            s / 2.0,
            s / 2.0,
            s * 0.13,
            s * 0.24,
        ));
    }
    std::fs::write(dir.join("FileList.csv"), list).unwrap();
    std::fs::write(dir.join("VolumeTracings.csv"), tracings).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Tests

/// Every page with a shell block has a test below.
const PAGES_RUN: &[&str] = &[
    "README.md",
    "docs/FUZZING.md",
    "docs/OWN_DATA.md",
    "docs/PHANTOM.md",
    "docs/TRAINING.md",
];

/// Parses every page, checks every directive and lists every block with what happens to it.
#[test]
fn docs_inventory() {
    let mut total = 0;
    let mut skips = Vec::new();
    let mut with_blocks = BTreeSet::new();
    for doc in pages() {
        let blocks = page_blocks(&doc);
        if !blocks.is_empty() {
            with_blocks.insert(doc.clone());
        }
        for b in &blocks {
            total += 1;
            b.script().unwrap_or_else(|e| panic!("{e}"));
            match b.skip_reason() {
                Some(r) => {
                    eprintln!("{:<24} {:<8} skip: {r}", b.at(), b.lang);
                    skips.push(b.at());
                }
                None => eprintln!("{:<24} {:<8} run", b.at(), b.lang),
            }
            for d in &b.directives {
                if let Directive::SkipLine(what, r) = d {
                    eprintln!("{:<24} {:<8} skip lines with {what:?}: {r}", b.at(), "");
                    skips.push(format!("{} ({what})", b.at()));
                }
            }
        }
    }
    eprintln!(
        "{total} shell blocks; {} skipped in whole or in part",
        skips.len()
    );
    let tested: BTreeSet<String> = PAGES_RUN.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        with_blocks.difference(&tested).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "pages with shell blocks but no test in tests/tests/docs_run.rs"
    );
    assert!(
        skips.len() <= MAX_SKIPS,
        "{} skips (at most {MAX_SKIPS}): {skips:?}",
        skips.len()
    );
}

#[test]
fn directives_parse() {
    let page = "text\n<!-- doc-run: env A=1 B=\"two words\" -->\n<!-- doc-run: replace \"--seconds 60\" \"--seconds 1\" -->\n```sh\nx --seconds 60\n```\n\n<!-- doc-run: before\nsed -i s/a/b/ f\n-->\n```console\n$ echo a \\\n  b\noutput\n```\n```rust\nfn main() {}\n```\n";
    let b = parse_page("p.md", page).unwrap();
    assert_eq!(b.len(), 2);
    assert_eq!(b[0].line, 4);
    assert_eq!(
        b[0].directives[0],
        Directive::Env(vec![
            ("A".into(), "1".into()),
            ("B".into(), "two words".into())
        ])
    );
    assert_eq!(b[0].script().unwrap(), "x --seconds 1\n");
    assert_eq!(
        b[1].directives,
        vec![Directive::Before("sed -i s/a/b/ f".into())]
    );
    assert_eq!(b[1].text, "echo a \\\n  b\n");
    // a directive must sit directly above a shell block
    let e = parse_page("p.md", "<!-- doc-run: skip why -->\n\n```sh\nx\n```\n").unwrap_err();
    assert!(e.contains("p.md:1"), "{e}");
    let e = parse_page("p.md", "<!-- doc-run: skip why -->\n```text\nx\n```\n").unwrap_err();
    assert!(e.contains("`text` block"), "{e}");
    let e = parse_page("p.md", "<!-- doc-run: frobnicate -->\n```sh\nx\n```\n").unwrap_err();
    assert!(e.contains("unknown directive"), "{e}");
    let e = Block {
        directives: vec![Directive::Replace("nope".into(), "x".into())],
        ..b[0].clone()
    }
    .script()
    .unwrap_err();
    assert!(e.contains("p.md:4"), "{e}");
}

/// Blocks share one shell and one working copy; a failing block is named with its stderr, and
/// the blocks after it do not run.
#[test]
fn a_failing_block_is_named_with_its_stderr() {
    let page = "# p\n\n```sh\nX=from-the-first-block\necho made > made.txt\n```\n\n```bash\ntest \"$X\" = from-the-first-block\ncat made.txt\necho to-stdout\necho to-stderr >&2\nfalse\necho not-here\n```\n\n```sh\ntouch never\n```\n";
    let blocks = parse_page("p.md", page).unwrap();
    let e = run_blocks("p.md", &blocks).unwrap_err();
    assert!(e.starts_with("p.md:8: this block exited with"), "{e}");
    assert!(e.contains("to-stderr") && e.contains("to-stdout"), "{e}");
    let stdout = e.split("--- stdout").nth(1).unwrap();
    assert!(
        stdout.contains("made\nto-stdout") && !stdout.contains("not-here"),
        "{e}"
    );
    // a nested `cargo test` is refused rather than run
    let blocks = parse_page("p.md", "```sh\ncargo test -p trainer\n```\n").unwrap();
    let e = run_blocks("p.md", &blocks).unwrap_err();
    assert!(e.contains("is not run by the docs test"), "{e}");
    // `cargo build` links the test's binaries where the page expects them
    let page = "```sh\ncargo build --release -p quantize\ntarget/release/quantize --help\ncargo run -p quantize -- --help\n```\n";
    let r = run_blocks("p.md", &parse_page("p.md", page).unwrap()).unwrap();
    assert_eq!(r.ran.len(), 1);
}

#[test]
fn readme_runs() {
    run_page("README.md");
}

#[test]
fn phantom_page_runs() {
    let r = run_page("docs/PHANTOM.md");
    assert!(r.work.join("docs/phantom-views.png").is_file());
}

#[test]
fn training_page_runs() {
    run_page("docs/TRAINING.md");
}

#[test]
fn fuzzing_page_runs() {
    run_page("docs/FUZZING.md");
}

/// `docs/OWN_DATA.md` on a folder of echo videos written by ffmpeg (H.264 High profile with
/// B-frames in MP4, and Motion JPEG in AVI), not by this project's own writer.
#[test]
fn own_data_page_runs() {
    let r = run_page("docs/OWN_DATA.md");
    if r.ran.is_empty() {
        return; // no ffmpeg here (noted above); CI has it
    }
    let work = &r.work;
    let rows = |p: &str| {
        std::fs::read_to_string(work.join(p))
            .unwrap_or_else(|e| panic!("{p}: {e}"))
            .lines()
            .count()
    };
    let videos = rows("my-echo/FileList.csv") - 1;
    assert!(videos >= 30, "only {videos} videos");
    // the lists cover every video, split as FileList.csv says
    assert_eq!(rows("my-echo/lists/pretrain.csv"), videos);
    let ef_rows = rows("my-echo/lists/ef/train.csv")
        + rows("my-echo/lists/ef/val.csv")
        + rows("my-echo/lists/ef/test.csv");
    assert_eq!(ef_rows, videos);
    // the probe trained and was evaluated on the test split, in EF points
    let summary = std::fs::read_to_string(work.join("runs/my-echo/evals/ef/summary.json"))
        .expect("probe summary");
    assert!(summary.contains("\"test\""), "{summary}");
    // a signed bundle that verifies
    assert!(work.join("my-bundle/manifest.json").is_file());
    assert!(work.join("my-bundle/manifest.sig").is_file());
    // the bundle built unsigned and signed by openssl, attached by `quantize sign` (the block
    // is skipped, with a note, where openssl is missing; CI has it)
    if r.skipped.is_empty() {
        assert!(work.join("my-bundle-unsigned/manifest.sig").is_file());
        assert!(work.join("keys/release.pub.pem").is_file());
    }
}
