//! `trainer slurm --config FILE`: the sbatch script for a config, with the resources the
//! reference's `app.main_distributed` (and `evals.main_distributed`) asks submitit for: `nodes`,
//! `tasks_per_node` tasks and as many GPUs per node, `cpus_per_task`, `mem_per_gpu`, a time limit
//! in minutes, and the partition, account and QoS when given. Each task runs one trainer
//! process on the GPU its local rank names; rank, world and rendezvous come from SLURM's
//! variables (see [`super::world`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::config::{self, Opaque};

/// Write the sbatch script that runs a config on a SLURM cluster (one task per GPU).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Pretraining or frozen-evaluation config in the reference YAML schema; its `nodes`,
    /// `tasks_per_node`, `cpus_per_task` and `mem_per_gpu` size the job.
    #[arg(long, short, visible_alias = "fname")]
    pub config: PathBuf,
    /// Write the script here instead of to standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// SLURM partition (`#SBATCH --partition`); left to the cluster's default when absent.
    #[arg(long)]
    pub partition: Option<String>,
    /// SLURM account to charge (`#SBATCH --account`).
    #[arg(long)]
    pub account: Option<String>,
    /// SLURM quality of service (`#SBATCH --qos`).
    #[arg(long)]
    pub qos: Option<String>,
    /// Time limit in minutes (the reference launcher's default is 4300).
    #[arg(long, default_value_t = 4300)]
    pub time: u64,
    /// Nodes to leave out (`#SBATCH --exclude`, a SLURM node list).
    #[arg(long)]
    pub exclude: Option<String>,
    /// The trainer binary the tasks run (a path visible on every node).
    #[arg(long, default_value = "trainer")]
    pub trainer: String,
}

/// Which subcommand a config belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    Pretrain,
    Probe,
    Finetune,
}

impl Job {
    fn subcommand(self) -> &'static str {
        match self {
            Self::Pretrain => "pretrain",
            Self::Probe => "probe",
            Self::Finetune => "finetune",
        }
    }
}

/// Everything the script says, resolved from the config and the flags.
#[derive(Debug, Clone, PartialEq)]
pub struct SbatchSpec {
    pub job: Job,
    pub name: String,
    pub config: PathBuf,
    pub folder: PathBuf,
    pub nodes: usize,
    pub tasks_per_node: usize,
    pub cpus_per_task: Option<usize>,
    pub mem_per_gpu: Option<String>,
    pub time_min: u64,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub exclude: Option<String>,
    pub trainer: String,
}

fn opaque_text(v: &Opaque) -> Option<String> {
    match v {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s.trim().to_string()),
        Some(other) => Some(other.to_string()),
    }
}

/// Resolves the job from a config's text (`path` names it in errors and in the script).
pub fn spec_from_str(text: &str, path: &Path, args: &Args) -> Result<SbatchSpec> {
    // A `finetune:` block makes a fine-tuning config; otherwise the evaluation schema is the one
    // with `eval_name`, and everything else is pretraining. Read without the loader's warnings:
    // they speak of one process, and the run itself repeats the ones about unknown keys.
    let value: serde_json::Value = serde_saphyr::from_str(text)
        .with_context(|| format!("{}: not a YAML mapping", path.display()))?;
    let (job, folder, nodes, tasks, cpus, mem) = if value.get("finetune").is_some() {
        let c: crate::finetune::config::FinetuneConfig = serde_saphyr::from_str(text)
            .with_context(|| format!("{}: not a fine-tuning config", path.display()))?;
        let o = c.output_dir();
        (
            Job::Finetune,
            o,
            c.nodes,
            c.tasks_per_node,
            c.cpus_per_task,
            c.mem_per_gpu,
        )
    } else if value.get("eval_name").is_some() {
        let c: config::eval::EvalConfig = serde_saphyr::from_str(text)
            .with_context(|| format!("{}: not an evaluation config", path.display()))?;
        let o = c.output_dir();
        (
            Job::Probe,
            o,
            c.nodes,
            c.tasks_per_node,
            c.cpus_per_task,
            c.mem_per_gpu,
        )
    } else {
        let c: config::pretrain::PretrainConfig = serde_saphyr::from_str(text)
            .with_context(|| format!("{}: not a pretraining config", path.display()))?;
        let f = c.folder.clone();
        (
            Job::Pretrain,
            f,
            c.nodes,
            c.tasks_per_node,
            c.cpus_per_task,
            c.mem_per_gpu,
        )
    };
    let topo = config::topology(&nodes, &tasks).with_context(|| format!("{}", path.display()))?;
    let cpus_per_task = match cpus {
        None => None,
        c => Some(config::opaque_count(&c, "cpus_per_task")?),
    };
    let name = path.file_stem().map_or_else(
        || "trainer".to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    Ok(SbatchSpec {
        job,
        name,
        config: path.to_path_buf(),
        folder,
        nodes: topo.nodes,
        tasks_per_node: topo.tasks_per_node,
        cpus_per_task,
        mem_per_gpu: opaque_text(&mem),
        time_min: args.time,
        partition: args.partition.clone(),
        account: args.account.clone(),
        qos: args.qos.clone(),
        exclude: args.exclude.clone(),
        trainer: args.trainer.clone(),
    })
}

/// Quotes a word for bash when it holds anything beyond a safe set.
fn sh_quote(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The sbatch script.
pub fn script(s: &SbatchSpec) -> String {
    let mut o = String::new();
    let mut line = |t: String| {
        o.push_str(&t);
        o.push('\n');
    };
    line("#!/bin/bash".into());
    line(format!(
        "# `trainer slurm --config {}`: {} node(s) x {} task(s), one task per GPU; submit with sbatch.",
        s.config.display(),
        s.nodes,
        s.tasks_per_node
    ));
    line(format!("#SBATCH --job-name={}", sh_quote(&s.name)));
    line(format!("#SBATCH --nodes={}", s.nodes));
    line(format!("#SBATCH --ntasks-per-node={}", s.tasks_per_node));
    line(format!("#SBATCH --gpus-per-node={}", s.tasks_per_node));
    if let Some(c) = s.cpus_per_task {
        line(format!("#SBATCH --cpus-per-task={c}"));
    }
    if let Some(m) = &s.mem_per_gpu {
        line(format!("#SBATCH --mem-per-gpu={}", sh_quote(m)));
    }
    line(format!("#SBATCH --time={}", s.time_min));
    for (key, v) in [
        ("partition", &s.partition),
        ("account", &s.account),
        ("qos", &s.qos),
        ("exclude", &s.exclude),
    ] {
        if let Some(v) = v {
            line(format!("#SBATCH --{key}={}", sh_quote(v)));
        }
    }
    // sbatch does not create the folder of --output, so the job's own log goes to the submit
    // directory and the tasks' logs into the run folder once the script has made it.
    line("#SBATCH --output=%x-%j.out".into());
    line(String::new());
    line("set -euo pipefail".into());
    line(
        "# paths in the config and below are relative to the directory sbatch was run from".into(),
    );
    line("cd \"$SLURM_SUBMIT_DIR\"".into());
    let logs = s.folder.join("slurm");
    line(format!(
        "mkdir -p {}",
        sh_quote(&logs.display().to_string())
    ));
    line("# rank 0 runs on the first node; engines that rendezvous over TCP meet there".into());
    line(
        "export MASTER_ADDR=\"$(scontrol show hostnames \"$SLURM_JOB_NODELIST\" | head -n 1)\""
            .into(),
    );
    line("export MASTER_PORT=\"${MASTER_PORT:-29500}\"".into());
    line(
        "# each task reads SLURM_PROCID / SLURM_NTASKS / SLURM_LOCALID; the local id picks the GPU"
            .into(),
    );
    let cmd = format!(
        "exec {} {} --config {} --devices \"cuda:$SLURM_LOCALID\"",
        sh_quote(&s.trainer),
        s.job.subcommand(),
        sh_quote(&s.config.display().to_string())
    );
    line(format!(
        "srun --unbuffered --output={} bash -c {}",
        sh_quote(&logs.join("%j_%t.out").display().to_string()),
        sh_quote(&cmd)
    ));
    o
}

/// Reads the config, writes the script.
pub fn run(args: Args, out: &mut dyn Write) -> Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("cannot read config {}", args.config.display()))?;
    let spec = spec_from_str(&text, &args.config, &args)?;
    let text = script(&spec);
    match &args.out {
        Some(p) => {
            std::fs::write(p, &text).with_context(|| format!("cannot write {}", p.display()))?;
            writeln!(
                out,
                "wrote {} ({} x {} tasks); submit with `sbatch {}`",
                p.display(),
                spec.nodes,
                spec.tasks_per_node,
                p.display()
            )?;
        }
        None => out.write_all(text.as_bytes())?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(config: &str) -> Args {
        Args {
            config: config.into(),
            out: None,
            partition: None,
            account: None,
            qos: None,
            time: 4300,
            exclude: None,
            trainer: "trainer".into(),
        }
    }

    fn repo_file(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
    }

    #[test]
    fn the_vitl_pretraining_config_asks_for_one_node_of_eight_gpus() {
        let rel = "configs/train/vitl16/pretrain-phantom-224px-16f.yaml";
        let text = std::fs::read_to_string(repo_file(rel)).unwrap();
        let mut a = args(rel);
        a.partition = Some("gpu".into());
        a.account = Some("echo lab".into());
        let spec = spec_from_str(&text, Path::new(rel), &a).unwrap();
        assert_eq!(spec.job, Job::Pretrain);
        assert_eq!((spec.nodes, spec.tasks_per_node), (1, 8));
        let s = script(&spec);
        for want in [
            "#!/bin/bash\n",
            "#SBATCH --nodes=1\n",
            "#SBATCH --ntasks-per-node=8\n",
            "#SBATCH --gpus-per-node=8\n",
            "#SBATCH --cpus-per-task=16\n",
            "#SBATCH --mem-per-gpu=220G\n",
            "#SBATCH --time=4300\n",
            "#SBATCH --partition=gpu\n",
            "#SBATCH --account='echo lab'\n",
            "#SBATCH --job-name=pretrain-phantom-224px-16f\n",
            "#SBATCH --output=%x-%j.out\n",
            "mkdir -p runs/phantom224/pretrain/vjepa2_vitl_224px_16f/slurm\n",
            "srun --unbuffered --output=runs/phantom224/pretrain/vjepa2_vitl_224px_16f/slurm/%j_%t.out bash -c 'exec trainer pretrain --config configs/train/vitl16/pretrain-phantom-224px-16f.yaml --devices \"cuda:$SLURM_LOCALID\"'\n",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        assert!(!s.contains("--qos"), "{s}");
    }

    #[test]
    fn a_fine_tuning_config_runs_finetune_on_its_ranks() {
        let rel = "configs/quickstart/finetune-tiny.yaml";
        let text = std::fs::read_to_string(repo_file(rel)).unwrap().replace(
            "app: vjepa\n",
            "app: vjepa\nnodes: 2\ntasks_per_node: 4\ncpus_per_task: 8\n",
        );
        let spec = spec_from_str(&text, Path::new(rel), &args(rel)).unwrap();
        assert_eq!(spec.job, Job::Finetune);
        assert_eq!(
            (spec.nodes, spec.tasks_per_node, spec.cpus_per_task),
            (2, 4, Some(8))
        );
        assert_eq!(spec.folder, PathBuf::from("runs/phantom/finetune/tiny"));
        let s = script(&spec);
        assert!(
            s.contains("#SBATCH --nodes=2\n") && s.contains("#SBATCH --gpus-per-node=4\n"),
            "{s}"
        );
        assert!(
            s.contains("exec trainer finetune --config configs/quickstart/finetune-tiny.yaml"),
            "{s}"
        );
    }

    #[test]
    fn an_evaluation_config_runs_the_probe() {
        let rel = "configs/eval/vitl/phantom_view.yaml";
        let text = std::fs::read_to_string(repo_file(rel)).unwrap();
        let spec = spec_from_str(&text, Path::new(rel), &args(rel)).unwrap();
        assert_eq!(spec.job, Job::Probe);
        assert_eq!(spec.cpus_per_task, Some(32));
        assert_eq!(spec.mem_per_gpu.as_deref(), Some("80G"));
        assert!(script(&spec).contains("exec trainer probe --config"));
    }

    #[test]
    fn a_bad_count_names_the_key() {
        let rel = "configs/train/vitl16/pretrain-phantom-224px-16f.yaml";
        let text = std::fs::read_to_string(repo_file(rel))
            .unwrap()
            .replace("tasks_per_node: 8", "tasks_per_node: eight");
        let e = spec_from_str(&text, Path::new(rel), &args(rel)).unwrap_err();
        assert!(format!("{e:#}").contains("`tasks_per_node`"), "{e:#}");
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("a/b.yaml"), "a/b.yaml");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
