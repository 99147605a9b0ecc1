//! Data-parallel training across processes: who this process is in the job ([`world`], read from
//! the launcher's variables), which samples each rank reads ([`shard`]), the collective interface
//! the engines implement ([`collective`]), and the SLURM script that starts the job ([`slurm`]).
//! docs/DISTRIBUTED.md says what runs today and what does not yet.

pub mod collective;
pub mod shard;
pub mod slurm;
pub mod world;

pub use collective::{Collective, SingleProcess};
pub use world::{EnvMap, Launcher, Topology, World};
