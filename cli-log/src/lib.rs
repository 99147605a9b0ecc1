//! One logging vocabulary for the four binaries (`trainer`, `quantize`, `edge-runtime`,
//! `firmware-host`): `--log LEVEL` (a level or a `tracing` filter such as `trainer=debug`), `-v`
//! and `-q` to step the default up or down, the same default everywhere (`info`), logs on stderr,
//! and ANSI colour only when stderr is a terminal and `NO_COLOR` is unset (journald and log files
//! get plain text).
//!
//! Precedence: `--log` if given, else `RUST_LOG` if set, else the default stepped by `-v`/`-q`.

use std::io::IsTerminal;

/// The default level of every binary.
pub const DEFAULT_LEVEL: &str = "info";

const LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// The logging flags, flattened into each binary's top-level arguments.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct LogArgs {
    /// Log filter: a level (error, warn, info, debug, trace) or a tracing filter such as
    /// `trainer=debug` [default: info; RUST_LOG is used when this is not given]
    #[arg(long, global = true, value_name = "LEVEL")]
    pub log: Option<String>,
    /// More log detail (-v debug, -vv trace)
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Less log detail (-q warnings and errors only, -qq errors only)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub quiet: u8,
}

impl LogArgs {
    /// The filter these flags ask for (`RUST_LOG` is the caller's `env` argument).
    pub fn filter(&self, env: Option<&str>) -> String {
        if let Some(f) = &self.log {
            return f.clone();
        }
        if let Some(e) = env.filter(|e| !e.trim().is_empty())
            && self.verbose == 0
            && self.quiet == 0
        {
            return e.to_string();
        }
        let base = LEVELS.iter().position(|l| *l == DEFAULT_LEVEL).unwrap_or(2) as i32;
        let i = (base + i32::from(self.verbose) - i32::from(self.quiet)).clamp(0, 4) as usize;
        LEVELS[i].to_string()
    }
}

/// Whether to colour stderr: a terminal, and `NO_COLOR` unset or empty (no-color.org).
pub fn colour(stderr_is_terminal: bool, no_color: Option<&str>) -> bool {
    stderr_is_terminal && no_color.is_none_or(str::is_empty)
}

/// Installs the global subscriber (a second call is a no-op). A filter that does not parse is
/// reported on stderr and the default level is used instead.
pub fn init(args: &LogArgs) {
    let env = std::env::var("RUST_LOG").ok();
    let wanted = args.filter(env.as_deref());
    let filter = tracing_subscriber::EnvFilter::try_new(&wanted).unwrap_or_else(|e| {
        eprintln!("warning: log filter `{wanted}` is not valid ({e}); using `{DEFAULT_LEVEL}`");
        tracing_subscriber::EnvFilter::new(DEFAULT_LEVEL)
    });
    let no_color = std::env::var("NO_COLOR").ok();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour(std::io::stderr().is_terminal(), no_color.as_deref()))
        .try_init();
}

/// What breaks the shared command-line vocabulary in `cmd` and its subcommands, one line per
/// problem naming the command path and the flag: a flag without help text, a `--json` that
/// takes a value (JSON files are written with `--out`/`--report`; `--json` is a switch), or a
/// key flag under an ambiguous name (`--key`, `--key-file`: the vocabulary is `--secret-key`,
/// `--trusted-key` and `--link-key`; old names may stay as aliases). Each binary's tests call it
/// on its `Cli::command()`.
pub fn vocabulary_problems(cmd: &clap::Command) -> Vec<String> {
    let mut problems = Vec::new();
    walk(cmd, cmd.get_name(), &mut problems);
    problems
}

/// For each binary's tests: clap's own consistency checks, then [`vocabulary_problems`]; panics
/// with every problem listed.
pub fn assert_vocabulary(cmd: clap::Command) {
    cmd.clone().debug_assert();
    let problems = vocabulary_problems(&cmd);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

fn walk(cmd: &clap::Command, path: &str, problems: &mut Vec<String>) {
    for arg in cmd.get_arguments() {
        let id = arg.get_id().as_str();
        if matches!(id, "help" | "version") {
            continue;
        }
        let name = arg
            .get_long()
            .map(|l| format!("--{l}"))
            .unwrap_or_else(|| format!("<{id}>"));
        let help = arg
            .get_help()
            .or(arg.get_long_help())
            .map(|h| h.to_string());
        if help.is_none_or(|h| h.trim().is_empty()) {
            problems.push(format!("{path} {name}: no help text"));
        }
        if arg.get_long() == Some("json") && arg.get_action().takes_values() {
            problems.push(format!(
                "{path} --json takes a value; make it a switch and write files with --out/--report"
            ));
        }
        if matches!(arg.get_long(), Some("key" | "key-file")) {
            problems.push(format!(
                "{path} {name}: name it --secret-key, --trusted-key or --link-key (keep the old \
                 name as an alias)"
            ));
        }
    }
    for sub in cmd.get_subcommands() {
        let sub_path = format!("{path} {}", sub.get_name());
        walk(sub, &sub_path, problems);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(log: Option<&str>, verbose: u8, quiet: u8) -> LogArgs {
        LogArgs {
            log: log.map(str::to_string),
            verbose,
            quiet,
        }
    }

    #[test]
    fn precedence_and_steps() {
        assert_eq!(args(None, 0, 0).filter(None), "info");
        assert_eq!(args(None, 1, 0).filter(None), "debug");
        assert_eq!(args(None, 5, 0).filter(None), "trace");
        assert_eq!(args(None, 0, 1).filter(None), "warn");
        assert_eq!(args(None, 0, 9).filter(None), "error");
        assert_eq!(
            args(None, 0, 0).filter(Some("trainer=debug")),
            "trainer=debug"
        );
        assert_eq!(args(None, 0, 0).filter(Some(" ")), "info");
        assert_eq!(args(Some("warn"), 2, 0).filter(Some("debug")), "warn");
        // -v/-q are explicit, so they win over RUST_LOG.
        assert_eq!(args(None, 1, 0).filter(Some("error")), "debug");
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("")));
        assert!(!colour(true, Some("1")));
        assert!(!colour(false, None));
    }

    #[derive(clap::Parser)]
    struct Bad {
        #[arg(long)]
        json: Option<String>,
        #[arg(long)]
        key: Option<String>,
        /// Documented.
        #[arg(long)]
        fine: bool,
        #[command(subcommand)]
        sub: Option<Sub>,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        /// A subcommand.
        Go {
            #[arg(long)]
            undocumented: bool,
        },
    }

    #[test]
    fn vocabulary_problems_name_the_command_and_flag() {
        use clap::CommandFactory;
        let problems = vocabulary_problems(&Bad::command());
        let text = problems.join("\n");
        assert!(text.contains("--json takes a value"), "{text}");
        assert!(text.contains("--key: name it --secret-key"), "{text}");
        assert!(text.contains("go --undocumented: no help text"), "{text}");
        assert!(!text.contains("--fine"), "{text}");
        assert!(!text.contains("--help"), "{text}");
    }
}
