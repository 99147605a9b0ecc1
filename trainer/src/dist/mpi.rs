//! MPI as a [`Collective`] for CPU ranks started by `mpirun` (the `mpi` feature, through rsmpi and
//! the system's Open MPI). Reductions are `MPI_Allreduce` with `MPI_SUM` on f32, which Open MPI
//! computes so that every rank receives the same bits.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

use super::watchdog::Watchdog;
use super::{Collective, World};

/// The job's `MPI_COMM_WORLD`; MPI is finalised when this is dropped.
pub struct MpiCollective {
    world: SimpleCommunicator,
    watchdog: Watchdog,
    // dropped after `world`: finalising first would invalidate the communicator
    _universe: Universe,
}

impl MpiCollective {
    /// Initialises MPI and checks that its ranks are the launcher's (`expect`, from the
    /// environment), so that a process started outside `mpirun` is not silently a world of one.
    /// A collective call that waits longer than `timeout` ends the process with an error.
    pub fn init(expect: &World, timeout: Duration) -> Result<Self> {
        let universe = mpi::initialize().context("MPI was already initialised in this process")?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        if (rank, size) != (expect.rank, expect.size) {
            bail!(
                "MPI says rank {rank} of {size}, but {} set rank {} of {}; start the ranks with mpirun",
                expect.launcher,
                expect.rank,
                expect.size
            );
        }
        Ok(Self {
            world,
            watchdog: Watchdog::start(timeout, rank, size),
            _universe: universe,
        })
    }
}

impl Collective for MpiCollective {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }
    fn world(&self) -> usize {
        self.world.size() as usize
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        // MPI_IN_PLACE is not exposed by rsmpi's safe API; one copy per step is small next to
        // the backward pass.
        let send = buf.to_vec();
        self.watchdog.guard(|| {
            self.world
                .all_reduce_into(&send[..], buf, SystemOperation::sum())
        });
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.watchdog.guard(|| self.world.barrier());
        Ok(())
    }
    fn engine(&self) -> &'static str {
        "MPI"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::SingleProcess;
    use crate::dist::collective::tests::train_linear;

    /// Set in the environment of the ranks that `mpirun` starts for the test below.
    const CHILD: &str = "TRAINER_MPI_TEST_RANK";

    fn data() -> (Vec<f32>, Vec<f32>) {
        let x: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0).collect();
        let y: Vec<f32> = (0..8).map(|i| (i as f32 * 0.3).sin()).collect();
        (x, y)
    }

    /// One rank of the test below: half the batch each, gradients averaged by MPI.
    #[test]
    #[ignore = "a rank of two_mpi_ranks_follow_one_process, started by mpirun"]
    fn mpi_rank_body() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let env: crate::dist::EnvMap = std::env::vars().collect();
        let world = World::from_env(&env).unwrap();
        let c = MpiCollective::init(&world, Duration::from_secs(60)).unwrap();
        assert_eq!(c.world(), 2);
        let (x, y) = data();
        let r = c.rank();
        let mine = train_linear(&c, &x[r * 12..(r + 1) * 12], &y[r * 4..(r + 1) * 4], 20);
        let one = train_linear(&SingleProcess, &x, &y, 20);
        for (a, b) in mine.iter().zip(&one) {
            assert!(
                (a - b).abs() < 1e-5,
                "rank {r}: {mine:?} vs one process {one:?}"
            );
        }
        c.barrier().unwrap();
        println!("mpi-rank {r} weights {mine:?}");
    }

    #[test]
    fn two_mpi_ranks_follow_one_process() {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = std::process::Command::new("mpirun");
        // containers and CI run as root; Open MPI refuses that unless told
        if std::env::var("USER").as_deref() == Ok("root")
            || std::env::var("HOME").as_deref() == Ok("/root")
        {
            cmd.arg("--allow-run-as-root");
        }
        cmd.args(["--oversubscribe", "-np", "2", "--mca", "btl", "self,vader"])
            .arg(&exe)
            .args([
                "--exact",
                "dist::mpi::tests::mpi_rank_body",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, "1");
        let out = cmd
            .output()
            .expect("mpirun (openmpi-bin) must be installed");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "mpirun failed:\n{text}");
        let weights: Vec<&str> = text
            .lines()
            .filter_map(|l| l.split_once("mpi-rank ").map(|(_, w)| w))
            .collect();
        assert_eq!(weights.len(), 2, "{text}");
        // both ranks hold the same weights, bit for bit
        let strip = |w: &str| w.split_once(" weights ").map(|(_, v)| v.to_string());
        assert_eq!(strip(weights[0]), strip(weights[1]), "{text}");
    }
}
