//! The reference YAML schemas (pretraining and frozen evaluation) as typed Rust structs, and the
//! loader that reads them: unknown keys become warnings that name the key path, wrong types are
//! errors that name the key path and the line, so an EchoJEPA config runs with only paths changed.

pub mod eval;
pub mod pretrain;

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

/// A parsed config plus the keys the schema does not know.
#[derive(Debug, Clone)]
pub struct Loaded<T> {
    pub config: T,
    /// `path.to.key` of every key the schema ignored.
    pub unknown_keys: Vec<String>,
    pub path: PathBuf,
}

/// Parses `text` (the contents of `path`) into `T`.
///
/// Unknown keys are collected (and logged as warnings); a value of the wrong type, a missing
/// required key or malformed YAML is an error naming the file and the key path.
pub fn parse_str<T: DeserializeOwned>(text: &str, path: &Path) -> Result<Loaded<T>> {
    let mut unknown = Vec::new();
    let err_path: RefCell<Option<String>> = RefCell::new(None);
    let parsed = serde_saphyr::with_deserializer_from_str(text, |de| {
        let mut on_ignored = |p: serde_ignored::Path| unknown.push(p.to_string());
        let de = serde_ignored::Deserializer::new(de, &mut on_ignored);
        serde_path_to_error::deserialize::<_, T>(de).map_err(|e| {
            let p = e.path().to_string();
            if p != "." {
                *err_path.borrow_mut() = Some(p);
            }
            e.into_inner()
        })
    });
    match parsed {
        Ok(config) => {
            for key in &unknown {
                tracing::warn!("{}: unknown key `{key}` (ignored)", path.display());
            }
            if let Some(msg) = multi_process_request(text)
                && LAUNCHED_RANKS.get().is_none_or(|&n| n <= 1)
            {
                tracing::warn!("{}: {msg}", path.display());
            }
            Ok(Loaded {
                config,
                unknown_keys: unknown,
                path: path.to_path_buf(),
            })
        }
        Err(e) => match err_path.into_inner() {
            Some(key) => bail!("{}: key `{key}`: {e}", path.display()),
            None => bail!("{}: {e}", path.display()),
        },
    }
}

/// How many ranks the launcher started this process among, as the binary read it at start (unset
/// in tests: one). A launched job is checked against the config by `World::check` instead of the
/// one-process warning below.
pub static LAUNCHED_RANKS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// The SLURM keys `nodes` and `tasks_per_node` ask for several processes; run without a launcher
/// the trainer is one process on one device, so the global batch is the config's per-process
/// batch. Said, not silently dropped.
fn multi_process_request(text: &str) -> Option<String> {
    let v: serde_json::Value = serde_saphyr::from_str(text).ok()?;
    let n = |k: &str| v.get(k).and_then(|x| x.as_u64()).unwrap_or(1);
    let (nodes, tasks) = (n("nodes"), n("tasks_per_node"));
    (nodes * tasks > 1).then(|| {
        format!(
            "the config asks for {nodes} node(s) x {tasks} task(s) per node = {} processes; unless launched as that many ranks (docs/DISTRIBUTED.md), this trainer runs ONE process on one device, so the global batch is the per-process batch_size and the learning rate is not rescaled",
            nodes * tasks
        )
    })
}

/// Reads and parses a YAML config file.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Loaded<T>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config {}", path.display()))?;
    parse_str(&text, path)
}

/// A value that SLURM-style keys carry (`mem_per_gpu: 80G` or `mem_per_gpu: 80`): kept verbatim.
pub type Opaque = Option<serde_json::Value>;

/// A SLURM count key (`nodes`, `tasks_per_node`, `cpus_per_task`) as a number: absent is 1, a
/// whole number (or a string of one, as YAML 1.1 files sometimes quote it) is that number, and
/// anything else is an error naming the key.
pub fn opaque_count(v: &Opaque, key: &str) -> Result<usize> {
    let n = match v {
        None | Some(serde_json::Value::Null) => return Ok(1),
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.trim().parse::<u64>().ok(),
        Some(_) => None,
    };
    match n {
        Some(n) if n >= 1 => Ok(n as usize),
        _ => bail!(
            "`{key}` must be a whole number >= 1, got {}",
            v.as_ref().map_or_else(String::new, |x| x.to_string())
        ),
    }
}

/// The job shape a config asks for (`nodes` x `tasks_per_node`).
pub fn topology(nodes: &Opaque, tasks_per_node: &Opaque) -> Result<crate::dist::Topology> {
    Ok(crate::dist::Topology {
        nodes: opaque_count(nodes, "nodes")?,
        tasks_per_node: opaque_count(tasks_per_node, "tasks_per_node")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn slurm_counts_are_read_from_numbers_and_strings() {
        let j = |t: &str| -> Opaque { Some(serde_json::from_str(t).unwrap()) };
        assert_eq!(opaque_count(&None, "nodes").unwrap(), 1);
        assert_eq!(opaque_count(&j("8"), "nodes").unwrap(), 8);
        assert_eq!(opaque_count(&j("\"4\""), "nodes").unwrap(), 4);
        let e = opaque_count(&j("0"), "tasks_per_node")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`tasks_per_node`"), "{e}");
        let e = opaque_count(&j("\"two\""), "nodes")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`nodes`") && e.contains("two"), "{e}");
        let t = topology(&j("2"), &j("8")).unwrap();
        assert_eq!(t.ranks(), 16);
    }

    #[test]
    fn several_nodes_or_tasks_are_said() {
        assert_eq!(multi_process_request("nodes: 1\ntasks_per_node: 1\n"), None);
        assert_eq!(multi_process_request("folder: x\n"), None);
        let m = multi_process_request("nodes: 2\ntasks_per_node: 8\n").unwrap();
        assert!(
            m.contains("16 processes") && m.contains("ONE process"),
            "{m}"
        );
    }

    #[derive(Debug, Deserialize)]
    struct Inner {
        batch_size: usize,
        #[serde(default)]
        flag: bool,
    }
    #[derive(Debug, Deserialize)]
    struct Outer {
        data: Inner,
    }

    #[test]
    fn unknown_keys_are_collected_with_their_path() {
        let y = "data:\n  batch_size: 4\n  colour: blue\nextra: 1\n";
        let l: Loaded<Outer> = parse_str(y, Path::new("x.yaml")).unwrap();
        assert_eq!(l.config.data.batch_size, 4);
        assert_eq!(
            l.unknown_keys,
            vec!["data.colour".to_string(), "extra".into()]
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let y = "data:\n  batch_size: lots\n";
        let e = parse_str::<Outer>(y, Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.yaml"), "{e}");
        assert!(e.contains("data.batch_size"), "{e}");
    }

    #[test]
    fn yaml11_booleans_are_accepted() {
        let y = "data:\n  batch_size: 2\n  flag: yes\n";
        let l: Loaded<Outer> = parse_str(y, Path::new("x.yaml")).unwrap();
        assert!(l.config.data.flag);
    }

    #[test]
    fn missing_key_is_an_error() {
        let e = parse_str::<Outer>("data:\n  flag: true\n", Path::new("x.yaml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_size"), "{e}");
    }
}
