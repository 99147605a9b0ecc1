//! NCCL as a [`Collective`] for GPU ranks, one process per GPU (torchrun, SLURM's srun, or mpirun
//! with `MASTER_ADDR`/`MASTER_PORT` exported), through cudarc (the `nccl` feature; `cuda` implies
//! it). Rank 0 makes NCCL's unique id and hands it to the others over TCP
//! ([`super::rendezvous`]), then every rank joins one communicator on its GPU.
//!
//! The [`Collective`] interface reduces host slices, so each all-reduce copies the buffer to the
//! GPU, reduces it there with `ncclAllReduce` (sum, f32) and copies it back. For gradients that
//! already live on the GPU (candle CUDA tensors) that is two PCIe copies per step more than
//! needed; the next step is a device-resident path that hands candle's CUDA storage to NCCL
//! directly (in bf16 or f32, bucketed and overlapped with the backward pass). It is not here
//! because it goes through candle's CUDA storage types, which exist only in a build with
//! `--features cuda`, and that build needs nvcc, which the machines this engine was written on do
//! not have: code that cannot be compiled is not added. NCCL's sum is computed in the same order
//! on every rank, so every rank receives the same bits, as with MPI.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream};
use cudarc::nccl::{Comm, Id, ReduceOp};

use super::rendezvous;
use super::watchdog::Watchdog;
use super::{Collective, World};

/// One rank's NCCL communicator on its GPU.
pub struct NcclCollective {
    // field order is drop order: the communicator before its stream and buffer
    comm: Comm,
    stream: Arc<CudaStream>,
    /// The device buffer of the last all-reduce, reused while the length stays (one gradient
    /// buffer per step, the same length every step).
    buf: RefCell<Option<CudaSlice<f32>>>,
    rank: usize,
    world: usize,
    watchdog: Watchdog,
}

fn nccl_err(e: cudarc::nccl::result::NcclError) -> anyhow::Error {
    anyhow!("NCCL error {:?}", e.0)
}

/// With dynamic loading (the `nccl` feature without `cuda`), a missing library would panic on
/// the first call; say which one instead. With `cuda` the libraries are linked, so a missing one
/// stops the process before `main`.
fn check_libraries() -> Result<()> {
    #[cfg(not(feature = "cuda"))]
    {
        // SAFETY: these only try to open the shared libraries.
        let (cuda, nccl) = unsafe {
            (
                cudarc::driver::sys::is_culib_present(),
                cudarc::nccl::sys::is_culib_present(),
            )
        };
        if !cuda {
            bail!(
                "the CUDA driver library (libcuda.so) is not found: NCCL ranks need an NVIDIA \
                 driver on this machine"
            );
        }
        if !nccl {
            bail!(
                "the NCCL library (libnccl.so.2) is not found: install NCCL (e.g. the \
                 libnccl2 package, or pip's nvidia-nccl-cu12 with its lib folder on \
                 LD_LIBRARY_PATH)"
            );
        }
    }
    Ok(())
}

impl NcclCollective {
    /// Joins the job's NCCL communicator as `world.rank` on GPU `ordinal` (normally the local
    /// rank). The id exchange and NCCL's own setup each wait at most `timeout` for the other
    /// ranks; later all-reduces that wait longer end the process with an error.
    pub fn init(world: &World, ordinal: usize, timeout: Duration) -> Result<Self> {
        let (rank, size) = (world.rank, world.size);
        // a world of one (`collective-check --engine nccl` on one GPU) meets nobody
        let rdv = world.rendezvous.as_ref().filter(|_| size > 1);
        if size > 1 && rdv.is_none() {
            bail!(
                "rank {rank} of {size} ({}): NCCL ranks meet at MASTER_ADDR:MASTER_PORT, which \
                 are not set (torchrun sets them; `trainer slurm` scripts export them; with \
                 mpirun, export both with -x)",
                world.launcher
            );
        }
        check_libraries()?;
        let ctx = CudaContext::new(ordinal)
            .with_context(|| format!("rank {rank} of {size}: cannot open cuda:{ordinal}"))?;
        let stream = ctx.new_stream().with_context(|| {
            format!("rank {rank}: cannot create a CUDA stream on cuda:{ordinal}")
        })?;
        let mine = if rank == 0 {
            let id = Id::new()
                .map_err(nccl_err)
                .context("rank 0: cannot make NCCL's unique id")?;
            Some(id.internal().map(|c| c as u8))
        } else {
            None
        };
        let bytes = match (rdv, mine) {
            (None, Some(id)) => id,
            (None, None) => bail!("rank {rank} of {size} without a rendezvous"),
            (Some(rdv), mine) => {
                let t0 = Instant::now();
                let bytes = rendezvous::exchange(rdv, rank, size, mine.as_ref(), timeout)?;
                tracing::debug!(
                    "rank {rank} of {size}: NCCL id from {}:{} in {:.2} s",
                    rdv.addr,
                    rdv.port,
                    t0.elapsed().as_secs_f64()
                );
                bytes
            }
        };
        let id = Id::uninit(bytes.map(|b| b as std::ffi::c_char));
        let watchdog = Watchdog::start(timeout, rank, size);
        // ncclCommInitRank returns once every rank has joined
        let comm = watchdog
            .guard(|| Comm::from_rank(stream.clone(), rank, size, id))
            .map_err(nccl_err)
            .with_context(|| {
                format!("rank {rank} of {size}: joining the NCCL communicator on cuda:{ordinal}")
            })?;
        if let Ok(v) = cudarc::nccl::result::get_nccl_version() {
            tracing::info!(
                "rank {rank} of {size}: NCCL {}.{}.{} on cuda:{ordinal}",
                v / 10000,
                v / 100 % 100,
                v % 100
            );
        }
        Ok(Self {
            comm,
            stream,
            buf: RefCell::new(None),
            rank,
            world: size,
            watchdog,
        })
    }

    /// The reduction itself: host to device, all-reduce in place, a wait for it, device to host.
    /// The all-reduce completes only once every rank has joined it, so its launch and the wait
    /// for it run under the watchdog. The copy back comes after that wait: a copy into pageable
    /// host memory blocks the calling thread until the stream's earlier work is done, and would
    /// otherwise wait for a dead rank outside the watchdog.
    fn reduce(&self, host: &mut [f32]) -> Result<()> {
        let mut slot = self.buf.borrow_mut();
        let mut dev = match slot.take() {
            Some(b) if b.len() == host.len() => {
                let mut b = b;
                self.stream.memcpy_htod(host, &mut b)?;
                b
            }
            _ => self.stream.clone_htod(host)?,
        };
        self.watchdog
            .guard(|| {
                self.comm
                    .all_reduce_in_place(&mut dev, &ReduceOp::Sum)
                    .map_err(nccl_err)?;
                self.stream.synchronize()?;
                anyhow::Ok(())
            })
            .with_context(|| {
                format!(
                    "rank {} of {}: NCCL all-reduce of {} values",
                    self.rank,
                    self.world,
                    host.len()
                )
            })?;
        self.stream.memcpy_dtoh(&dev, host)?;
        self.stream.synchronize()?;
        *slot = Some(dev);
        Ok(())
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.reduce(buf)
    }
    fn barrier(&self) -> Result<()> {
        // NCCL has no barrier; a one-value all-reduce returns only once every rank has called it
        let mut one = [0f32];
        self.reduce(&mut one)
    }
    fn engine(&self) -> &'static str {
        "NCCL"
    }
}
