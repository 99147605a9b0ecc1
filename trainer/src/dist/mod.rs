//! Data-parallel training across processes: who this process is in the job ([`world`], read from
//! the launcher's variables), which samples each rank reads ([`shard`]), the collective interface
//! the engines implement ([`collective`]; MPI for CPU ranks, NCCL for GPU ranks, which meet
//! through [`rendezvous`]), a check of the engine on the launched job ([`check`]), and the SLURM
//! script that starts the job ([`slurm`]). docs/DISTRIBUTED.md says what runs today and what
//! does not yet.

pub mod check;
pub mod collective;
#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;
// used by the NCCL engine; compiled and tested in every build
#[cfg_attr(not(feature = "nccl"), allow(dead_code))]
pub mod rendezvous;
pub mod shard;
pub mod slurm;
#[cfg_attr(not(any(feature = "mpi", feature = "nccl")), allow(dead_code))]
mod watchdog;
pub mod world;

pub use collective::{Collective, SingleProcess};
pub use world::{EnvMap, Launcher, Topology, World};

use std::path::Path;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context;

use crate::device::DeviceSpec;

/// The device a rank of `world` computes on. `cuda` without an index (`DeviceSpec::CudaAny`)
/// names the local rank's GPU, `cuda:LOCAL_RANK`, when a launcher started the process (torchrun,
/// srun and mpirun start one process per GPU); an explicit `cuda:N` and `cpu` are kept as given,
/// and a process of its own keeps `cuda` (GPU 0). Commands call this once, right after reading
/// the world, and use the result both to open their device and for [`open`].
pub fn device_for(world: &World, device: DeviceSpec) -> DeviceSpec {
    match device {
        DeviceSpec::CudaAny if world.launcher != Launcher::None => {
            DeviceSpec::Cuda(world.local_rank)
        }
        d => d,
    }
}

/// Which engine a launched world gets on `device`, as this build can offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Single,
    /// CPU ranks under mpirun (the `mpi` feature).
    Mpi,
    /// GPU ranks, any launcher that gives a rendezvous (the `nccl` feature), on this GPU.
    Nccl {
        ordinal: usize,
    },
}

/// The engine for `world` on `device` (resolved with [`device_for`] here), or why there is none:
/// several ranks without an engine are refused, since each would train alone, N different models
/// writing the same folder.
pub fn engine_for(world: &World, device: DeviceSpec) -> anyhow::Result<Engine> {
    if world.size == 1 {
        return Ok(Engine::Single);
    }
    let device = device_for(world, device);
    let why = match (device.cuda_index(), world.launcher) {
        (Some(ordinal), _) if cfg!(feature = "nccl") => return Ok(Engine::Nccl { ordinal }),
        (Some(_), _) => {
            "GPU ranks average through NCCL, which this build lacks: rebuild with \
             `--features cuda` (NCCL included)"
        }
        (None, Launcher::Mpirun) if cfg!(feature = "mpi") => return Ok(Engine::Mpi),
        (None, Launcher::Mpirun) => "CPU ranks under mpirun need a build with `--features mpi`",
        (None, _) => {
            "CPU ranks average through MPI only, so start them with mpirun (a build with \
             `--features mpi`); ranks started by torchrun or SLURM are GPU ranks: pass \
             `--devices cuda` (each rank takes cuda:LOCAL_RANK) to a build with `--features cuda`"
        }
    };
    anyhow::bail!(
        "launched by {} as rank {} of {} on {}, but this build has no collective engine for it: \
         {why} (docs/DISTRIBUTED.md)",
        world.launcher,
        world.rank,
        world.size,
        device.label()
    )
}

/// The engine this process's ranks average through. A launched world must match the config's
/// `nodes` x `tasks_per_node` (`want`, the error names `config`); then as [`open_launched`].
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
    open_launched(world, device, timeout)
}

/// The engine for the launched world as it is (no config to compare it with), chosen by
/// [`engine_for`]. A collective call that waits longer than `timeout` ends the rank with an
/// error naming it.
#[cfg_attr(
    not(any(feature = "mpi", feature = "nccl")),
    allow(unused_variables, unreachable_code)
)]
pub fn open_launched(
    world: &World,
    device: DeviceSpec,
    timeout: Duration,
) -> anyhow::Result<Rc<dyn Collective>> {
    match engine_for(world, device)? {
        Engine::Single => Ok(Rc::new(SingleProcess)),
        #[cfg(feature = "mpi")]
        Engine::Mpi => Ok(Rc::new(mpi::MpiCollective::init(world, timeout)?)),
        #[cfg(feature = "nccl")]
        Engine::Nccl { ordinal } => Ok(Rc::new(nccl::NcclCollective::init(
            world, ordinal, timeout,
        )?)),
        #[allow(unreachable_patterns)]
        e => anyhow::bail!("{e:?} is not built in"),
    }
}

/// For the commands that have nothing to average (evaluation, embedding): a launch of several
/// ranks is refused, since each rank would do the whole job alone and all of them would write the
/// same files.
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

    fn world(pairs: &[(&str, &str)]) -> World {
        let env: EnvMap = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        World::from_env(&env).unwrap()
    }

    #[test]
    fn cuda_without_an_index_is_the_local_ranks_gpu_under_a_launcher() {
        let torchrun = world(&[("RANK", "5"), ("WORLD_SIZE", "8"), ("LOCAL_RANK", "3")]);
        assert_eq!(
            device_for(&torchrun, DeviceSpec::CudaAny),
            DeviceSpec::Cuda(3)
        );
        // an explicit index and the CPU are kept
        assert_eq!(
            device_for(&torchrun, DeviceSpec::Cuda(1)),
            DeviceSpec::Cuda(1)
        );
        assert_eq!(device_for(&torchrun, DeviceSpec::Cpu), DeviceSpec::Cpu);
        let slurm = world(&[
            ("SLURM_PROCID", "1"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "1"),
        ]);
        assert_eq!(device_for(&slurm, DeviceSpec::CudaAny), DeviceSpec::Cuda(1));
        // one process of its own: `cuda` stays GPU 0, as before
        let alone = World::single();
        assert_eq!(device_for(&alone, DeviceSpec::CudaAny), DeviceSpec::CudaAny);
        assert_eq!(DeviceSpec::CudaAny.label(), "cuda:0");
    }

    #[test]
    fn engines_by_launcher_and_device() {
        let one = World::single();
        assert_eq!(engine_for(&one, DeviceSpec::Cpu).unwrap(), Engine::Single);
        assert_eq!(
            engine_for(&one, DeviceSpec::CudaAny).unwrap(),
            Engine::Single
        );
        let torchrun = world(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")]);
        // CPU ranks under torchrun are refused whatever the build
        let e = engine_for(&torchrun, DeviceSpec::Cpu)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("torchrun as rank 1 of 2 on cpu") && e.contains("start them with mpirun"),
            "{e}"
        );
        let gpu = engine_for(&torchrun, DeviceSpec::CudaAny);
        if cfg!(feature = "nccl") {
            assert_eq!(gpu.unwrap(), Engine::Nccl { ordinal: 1 });
        } else {
            let e = gpu.unwrap_err().to_string();
            assert!(
                e.contains("on cuda:1") && e.contains("--features cuda"),
                "{e}"
            );
        }
        let mpirun = world(&[("OMPI_COMM_WORLD_RANK", "0"), ("OMPI_COMM_WORLD_SIZE", "2")]);
        let cpu = engine_for(&mpirun, DeviceSpec::Cpu);
        if cfg!(feature = "mpi") {
            assert_eq!(cpu.unwrap(), Engine::Mpi);
        } else {
            let e = cpu.unwrap_err().to_string();
            assert!(e.contains("--features mpi"), "{e}");
        }
    }
}
