//! Which rank this process is, out of how many, and where the ranks meet: read from the variables
//! that torchrun, SLURM's srun and Open MPI's mpirun set. The library takes the variables as a
//! map (the binary snapshots the environment once), so every launcher is unit-tested here.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

/// The environment variables a launcher set, as the binary read them.
pub type EnvMap = BTreeMap<String, String>;

/// Who started the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Launcher {
    /// No launcher variables: a plain single process.
    None,
    Torchrun,
    Slurm,
    Mpirun,
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "no launcher",
            Self::Torchrun => "torchrun",
            Self::Slurm => "SLURM",
            Self::Mpirun => "mpirun (Open MPI)",
        })
    }
}

/// Where rank 0 listens, for engines that rendezvous over TCP (NCCL's unique id exchange).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rendezvous {
    pub addr: String,
    pub port: u16,
}

/// This process's place in the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct World {
    pub launcher: Launcher,
    pub rank: usize,
    pub size: usize,
    /// Rank among the processes on this machine; chooses the GPU.
    pub local_rank: usize,
    /// Processes on this machine, when the launcher says.
    pub local_size: Option<usize>,
    /// Machines in the job, when the launcher says.
    pub nodes: Option<usize>,
    pub rendezvous: Option<Rendezvous>,
}

/// A launcher variable that is missing or malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorldError {
    #[error("{launcher} launch: `{var}` is not set")]
    Missing {
        launcher: Launcher,
        var: &'static str,
    },
    #[error("{launcher} launch: `{var}={value}` is not a whole number")]
    NotANumber {
        launcher: Launcher,
        var: &'static str,
        value: String,
    },
    #[error("{launcher} launch: rank {rank} (`{var}`) is not below the world size {size}")]
    RankOutOfRange {
        launcher: Launcher,
        var: &'static str,
        rank: usize,
        size: usize,
    },
    #[error("{launcher} launch: world size 0")]
    EmptyWorld { launcher: Launcher },
}

/// What the config asks for: `nodes` × `tasks_per_node` processes (SLURM's keys in the reference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Topology {
    pub nodes: usize,
    pub tasks_per_node: usize,
}

impl Topology {
    pub fn ranks(&self) -> usize {
        self.nodes * self.tasks_per_node
    }
}

/// The config and the launcher disagree on the shape of the job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyMismatch {
    #[error(
        "the config asks for {nodes} node(s) x {tasks} task(s) per node = {want} rank(s), but {launcher} started {got}; \
         set `nodes`/`tasks_per_node` to match the launch, or launch {want} rank(s)"
    )]
    WorldSize {
        launcher: Launcher,
        nodes: usize,
        tasks: usize,
        want: usize,
        got: usize,
    },
    #[error(
        "the config asks for {want} task(s) per node (`tasks_per_node`), but {launcher} started {got} on this node"
    )]
    TasksPerNode {
        launcher: Launcher,
        want: usize,
        got: usize,
    },
    #[error("the config asks for {want} node(s) (`nodes`), but {launcher} spans {got}")]
    Nodes {
        launcher: Launcher,
        want: usize,
        got: usize,
    },
}

struct Reader<'a> {
    env: &'a EnvMap,
    launcher: Launcher,
}

impl Reader<'_> {
    fn opt(&self, var: &'static str) -> Result<Option<usize>, WorldError> {
        match self.env.get(var) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse::<usize>()
                .map(Some)
                .map_err(|_| WorldError::NotANumber {
                    launcher: self.launcher,
                    var,
                    value: v.clone(),
                }),
        }
    }

    /// `MASTER_ADDR` and `MASTER_PORT` when both are set (torchrun's; exported by hand for NCCL
    /// ranks under mpirun).
    fn master(&self) -> Result<Option<Rendezvous>, WorldError> {
        Ok(
            match (self.env.get("MASTER_ADDR"), self.opt("MASTER_PORT")?) {
                (Some(addr), Some(port)) => Some(Rendezvous {
                    addr: addr.clone(),
                    port: u16::try_from(port).map_err(|_| WorldError::NotANumber {
                        launcher: self.launcher,
                        var: "MASTER_PORT",
                        value: port.to_string(),
                    })?,
                }),
                _ => None,
            },
        )
    }

    fn req(&self, var: &'static str) -> Result<usize, WorldError> {
        self.opt(var)?.ok_or(WorldError::Missing {
            launcher: self.launcher,
            var,
        })
    }
}

impl World {
    /// One process, nobody else.
    pub fn single() -> Self {
        Self {
            launcher: Launcher::None,
            rank: 0,
            size: 1,
            local_rank: 0,
            local_size: Some(1),
            nodes: Some(1),
            rendezvous: None,
        }
    }

    /// Reads the world from launcher variables. torchrun is looked for first because it also runs
    /// inside SLURM allocations (then `RANK` is the truth, not `SLURM_PROCID`); Open MPI before
    /// SLURM for the same reason (`mpirun` inside `salloc`).
    pub fn from_env(env: &EnvMap) -> Result<Self, WorldError> {
        let w = if env.contains_key("RANK") && env.contains_key("WORLD_SIZE") {
            Self::torchrun(env)?
        } else if env.contains_key("OMPI_COMM_WORLD_RANK") {
            Self::mpirun(env)?
        } else if env.contains_key("SLURM_PROCID") && env.contains_key("SLURM_NTASKS") {
            Self::slurm(env)?
        } else {
            return Ok(Self::single());
        };
        if w.size == 0 {
            return Err(WorldError::EmptyWorld {
                launcher: w.launcher,
            });
        }
        Ok(w)
    }

    fn torchrun(env: &EnvMap) -> Result<Self, WorldError> {
        let r = Reader {
            env,
            launcher: Launcher::Torchrun,
        };
        let (rank, size) = (r.req("RANK")?, r.req("WORLD_SIZE")?);
        check_rank(Launcher::Torchrun, "RANK", rank, size)?;
        let local_size = r.opt("LOCAL_WORLD_SIZE")?;
        let rendezvous = r.master()?;
        Ok(Self {
            launcher: Launcher::Torchrun,
            rank,
            size,
            local_rank: r.opt("LOCAL_RANK")?.unwrap_or(0),
            local_size,
            nodes: r.opt("GROUP_WORLD_SIZE")?,
            rendezvous,
        })
    }

    fn mpirun(env: &EnvMap) -> Result<Self, WorldError> {
        let r = Reader {
            env,
            launcher: Launcher::Mpirun,
        };
        let (rank, size) = (
            r.req("OMPI_COMM_WORLD_RANK")?,
            r.req("OMPI_COMM_WORLD_SIZE")?,
        );
        check_rank(Launcher::Mpirun, "OMPI_COMM_WORLD_RANK", rank, size)?;
        let local_size = r.opt("OMPI_COMM_WORLD_LOCAL_SIZE")?;
        // Open MPI says nothing of nodes directly; with the same number on every node it follows.
        let nodes = local_size
            .filter(|&l| l > 0 && size % l == 0)
            .map(|l| size / l);
        Ok(Self {
            launcher: Launcher::Mpirun,
            rank,
            size,
            local_rank: r.opt("OMPI_COMM_WORLD_LOCAL_RANK")?.unwrap_or(0),
            local_size,
            nodes,
            // MPI needs none; NCCL ranks under mpirun meet where MASTER_ADDR/MASTER_PORT say
            rendezvous: r.master()?,
        })
    }

    fn slurm(env: &EnvMap) -> Result<Self, WorldError> {
        let r = Reader {
            env,
            launcher: Launcher::Slurm,
        };
        let (rank, size) = (r.req("SLURM_PROCID")?, r.req("SLURM_NTASKS")?);
        check_rank(Launcher::Slurm, "SLURM_PROCID", rank, size)?;
        // SLURM_NTASKS_PER_NODE may read `8(x2)`; the leading count is the per-node one.
        let local_size = env
            .get("SLURM_NTASKS_PER_NODE")
            .and_then(|v| v.split(['(', ',']).next()?.trim().parse().ok());
        let nodelist = env
            .get("SLURM_JOB_NODELIST")
            .or_else(|| env.get("SLURM_NODELIST"));
        let rendezvous = nodelist.and_then(|l| first_host(l)).map(|addr| Rendezvous {
            addr,
            port: env
                .get("MASTER_PORT")
                .and_then(|p| p.parse().ok())
                .unwrap_or(DEFAULT_PORT),
        });
        Ok(Self {
            launcher: Launcher::Slurm,
            rank,
            size,
            local_rank: r.opt("SLURM_LOCALID")?.unwrap_or(0),
            local_size,
            nodes: r.opt("SLURM_JOB_NUM_NODES")?.or(r.opt("SLURM_NNODES")?),
            rendezvous,
        })
    }

    /// Compares the launched world with the config's `nodes` × `tasks_per_node`; a plain process
    /// (no launcher) is not compared, since it cannot be more than one rank.
    pub fn check(&self, want: Topology) -> Result<(), TopologyMismatch> {
        if self.launcher == Launcher::None {
            return Ok(());
        }
        if self.size != want.ranks() {
            return Err(TopologyMismatch::WorldSize {
                launcher: self.launcher,
                nodes: want.nodes,
                tasks: want.tasks_per_node,
                want: want.ranks(),
                got: self.size,
            });
        }
        if let Some(got) = self.nodes.filter(|&n| n != want.nodes) {
            return Err(TopologyMismatch::Nodes {
                launcher: self.launcher,
                want: want.nodes,
                got,
            });
        }
        if let Some(got) = self.local_size.filter(|&l| l != want.tasks_per_node) {
            return Err(TopologyMismatch::TasksPerNode {
                launcher: self.launcher,
                want: want.tasks_per_node,
                got,
            });
        }
        Ok(())
    }
}

/// torchrun's default rendezvous port, used when SLURM gives the host but no port.
pub const DEFAULT_PORT: u16 = 29500;

fn check_rank(
    launcher: Launcher,
    var: &'static str,
    rank: usize,
    size: usize,
) -> Result<(), WorldError> {
    if size == 0 {
        return Err(WorldError::EmptyWorld { launcher });
    }
    if rank >= size {
        return Err(WorldError::RankOutOfRange {
            launcher,
            var,
            rank,
            size,
        });
    }
    Ok(())
}

/// The first host of a SLURM node list (`gpu[003-005,010],cpu1` → `gpu003`), which is where rank
/// 0 runs under the default block distribution. Only the compressed forms SLURM writes are read.
pub fn first_host(list: &str) -> Option<String> {
    let list = list.trim();
    if list.is_empty() {
        return None;
    }
    let end = list.find([',', '[']).unwrap_or(list.len());
    let prefix = &list[..end];
    if list[end..].starts_with('[') {
        let inner = &list[end + 1..list[end..].find(']')? + end];
        let first = inner.split(',').next()?.split('-').next()?;
        Some(format!("{prefix}{first}"))
    } else {
        Some(prefix.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvMap {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_launcher_is_one_process() {
        let w = World::from_env(&env(&[("HOME", "/root")])).unwrap();
        assert_eq!(w, World::single());
        // a plain process is never compared with the config
        let big = Topology {
            nodes: 2,
            tasks_per_node: 8,
        };
        assert!(w.check(big).is_ok());
    }

    #[test]
    fn torchrun_variables() {
        let w = World::from_env(&env(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "16"),
            ("LOCAL_RANK", "1"),
            ("LOCAL_WORLD_SIZE", "8"),
            ("GROUP_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "node07"),
            ("MASTER_PORT", "29400"),
            // torchrun inside an allocation: its own variables win
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
        ]))
        .unwrap();
        assert_eq!(w.launcher, Launcher::Torchrun);
        assert_eq!((w.rank, w.size, w.local_rank), (5, 16, 1));
        assert_eq!((w.local_size, w.nodes), (Some(8), Some(2)));
        assert_eq!(
            w.rendezvous,
            Some(Rendezvous {
                addr: "node07".into(),
                port: 29400
            })
        );
        let ok = Topology {
            nodes: 2,
            tasks_per_node: 8,
        };
        assert!(w.check(ok).is_ok());
    }

    #[test]
    fn slurm_variables() {
        let w = World::from_env(&env(&[
            ("SLURM_PROCID", "9"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "1"),
            ("SLURM_NTASKS_PER_NODE", "8(x2)"),
            ("SLURM_JOB_NUM_NODES", "2"),
            ("SLURM_JOB_NODELIST", "gpu[012-013]"),
        ]))
        .unwrap();
        assert_eq!(w.launcher, Launcher::Slurm);
        assert_eq!((w.rank, w.size, w.local_rank), (9, 16, 1));
        assert_eq!((w.local_size, w.nodes), (Some(8), Some(2)));
        assert_eq!(
            w.rendezvous,
            Some(Rendezvous {
                addr: "gpu012".into(),
                port: DEFAULT_PORT
            })
        );
    }

    #[test]
    fn open_mpi_variables() {
        let w = World::from_env(&env(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("OMPI_COMM_WORLD_LOCAL_SIZE", "2"),
        ]))
        .unwrap();
        assert_eq!(w.launcher, Launcher::Mpirun);
        assert_eq!((w.rank, w.size, w.local_rank, w.nodes), (1, 2, 1, Some(1)));
        assert!(w.rendezvous.is_none());
        // exported by hand (mpirun -x) for NCCL ranks
        let w = World::from_env(&env(&[
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("MASTER_ADDR", "10.0.0.1"),
            ("MASTER_PORT", "29501"),
        ]))
        .unwrap();
        assert_eq!(
            w.rendezvous,
            Some(Rendezvous {
                addr: "10.0.0.1".into(),
                port: 29501
            })
        );
    }

    #[test]
    fn malformed_variables_name_the_variable() {
        let e = World::from_env(&env(&[("RANK", "x"), ("WORLD_SIZE", "2")])).unwrap_err();
        assert!(e.to_string().contains("`RANK=x`"), "{e}");
        let e = World::from_env(&env(&[("SLURM_PROCID", "4"), ("SLURM_NTASKS", "4")])).unwrap_err();
        assert!(e.to_string().contains("SLURM_PROCID"), "{e}");
        let e = World::from_env(&env(&[("OMPI_COMM_WORLD_RANK", "0")])).unwrap_err();
        assert!(e.to_string().contains("OMPI_COMM_WORLD_SIZE"), "{e}");
        let e = World::from_env(&env(&[("RANK", "0"), ("WORLD_SIZE", "0")])).unwrap_err();
        assert!(e.to_string().contains("world size 0"), "{e}");
    }

    #[test]
    fn mismatches_say_which() {
        let w = World::from_env(&env(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_WORLD_SIZE", "4"),
            ("GROUP_WORLD_SIZE", "2"),
        ]))
        .unwrap();
        let one_by_eight = Topology {
            nodes: 1,
            tasks_per_node: 8,
        };
        let e = w.check(one_by_eight).unwrap_err().to_string();
        assert!(e.contains("`nodes`") && e.contains("spans 2"), "{e}");
        let two_by_eight = Topology {
            nodes: 2,
            tasks_per_node: 8,
        };
        let e = w.check(two_by_eight).unwrap_err().to_string();
        assert!(
            e.contains("2 node(s) x 8 task(s) per node = 16 rank(s)")
                && e.contains("torchrun started 8"),
            "{e}"
        );
        let w = World { nodes: None, ..w };
        let e = w
            .check(Topology {
                nodes: 4,
                tasks_per_node: 2,
            })
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`tasks_per_node`") && e.contains("started 4"),
            "{e}"
        );
    }

    #[test]
    fn first_host_of_slurm_node_lists() {
        assert_eq!(
            first_host("gpu[003-005,010],cpu1").as_deref(),
            Some("gpu003")
        );
        assert_eq!(first_host("node1,node2").as_deref(), Some("node1"));
        assert_eq!(first_host("solo").as_deref(), Some("solo"));
        assert_eq!(first_host("a[7,9]").as_deref(), Some("a7"));
        assert_eq!(first_host(""), None);
    }
}
