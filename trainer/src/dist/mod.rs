//! Data-parallel training across processes: who this process is in the job ([`world`], read from
//! the launcher's variables), which samples each rank reads ([`shard`]), the collective interface
//! the engines implement ([`collective`]), and the SLURM script that starts the job ([`slurm`]).
//! docs/DISTRIBUTED.md says what runs today and what does not yet.

pub mod collective;
#[cfg(feature = "mpi")]
pub mod mpi;
pub mod shard;
pub mod slurm;
pub mod world;

pub use collective::{Collective, SingleProcess};
pub use world::{EnvMap, Launcher, Topology, World};

use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;

use crate::device::DeviceSpec;

/// The engine this process's ranks average through. A launched world must match the config's
/// `nodes` x `tasks_per_node` (`want`, the error names `config`); several ranks without an
/// engine for their launcher and device are refused, since each would train alone, N different
/// models writing the same folder. A collective call that waits longer than `timeout` ends the
/// rank with an error naming it.
#[cfg_attr(not(feature = "mpi"), allow(unused_variables))]
pub fn open(
    world: &World,
    want: Topology,
    config: &Path,
    device: DeviceSpec,
    timeout: Duration,
) -> anyhow::Result<Rc<dyn Collective>> {
    world
        .check(want)
        .with_context(|| format!("{}", config.display()))?;
    if world.size == 1 {
        return Ok(Rc::new(SingleProcess));
    }
    #[cfg(feature = "mpi")]
    if world.launcher == Launcher::Mpirun && !device.is_cuda() {
        return Ok(Rc::new(mpi::MpiCollective::init(world, timeout)?));
    }
    anyhow::bail!(
        "launched by {} as rank {} of {} on {}, but this build has no collective engine for it \
         (CPU ranks under mpirun need a build with `--features mpi`; NCCL is not built in yet; \
         docs/DISTRIBUTED.md)",
        world.launcher,
        world.rank,
        world.size,
        device.label()
    )
}

/// For the commands that do not average anything yet (probe, fine-tuning, evaluation, embedding):
/// a launch of several ranks is refused, since each rank would do the whole job alone and all of
/// them would write the same files.
pub fn one_rank_only(env: &EnvMap, command: &str) -> anyhow::Result<()> {
    let w = World::from_env(env)?;
    if w.size > 1 {
        anyhow::bail!(
            "`trainer {command}` runs as one process; it was launched by {} as rank {} of {} \
             (docs/DISTRIBUTED.md says which commands run on several ranks)",
            w.launcher,
            w.rank,
            w.size
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_ranks_are_refused_where_nothing_is_averaged() {
        let env: EnvMap = [("OMPI_COMM_WORLD_RANK", "1"), ("OMPI_COMM_WORLD_SIZE", "2")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let e = one_rank_only(&env, "probe").unwrap_err().to_string();
        assert!(
            e.contains("`trainer probe`") && e.contains("rank 1 of 2"),
            "{e}"
        );
        assert!(one_rank_only(&EnvMap::new(), "probe").is_ok());
    }
}
