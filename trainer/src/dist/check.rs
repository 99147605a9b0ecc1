//! `trainer collective-check`: does the collective engine of a launched job add up? Every rank
//! fills buffers of several sizes with rank-dependent whole numbers whose sum over the ranks is
//! known exactly (small enough to be exact in f32), all-reduces them, and checks every element;
//! the largest is timed. There is no config: the launched world is the topology wanted. The
//! verdict is agreed by all ranks (one more all-reduce of the mismatch counts), so every rank
//! exits non-zero when any element on any rank is wrong.

use std::io::Write;
use std::process::ExitCode;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::{Collective, EnvMap, World, device_for, open_launched};
use crate::device::DeviceSpec;

/// Check the collective engine of a launched job (hidden; for cluster bring-up).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Floats in the largest all-reduce, which is timed (1 and 1000 floats are always checked).
    #[arg(long, default_value_t = 16 << 20)]
    pub floats: usize,
    /// Timed repetitions of the largest all-reduce; the fastest is reported.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Seconds one all-reduce may wait for the other ranks before this rank stops the job with
    /// an error.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub collective_timeout: u64,
    /// Device: `cpu` (MPI ranks under mpirun) or `cuda` / `cuda:N` (NCCL ranks; `cuda` takes
    /// the local rank's GPU).
    #[arg(long, num_args = 1.., default_value = "cpu")]
    pub devices: Vec<String>,
    /// `auto`: the engine `trainer pretrain` would use for this launch; `nccl`: NCCL even for
    /// a world of one (a machine with one GPU, where NCCL cannot put two ranks).
    #[arg(long, default_value = "auto", value_parser = ["auto", "nccl"])]
    pub engine: String,
    /// Print the report as JSON (rank 0) instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One buffer size, over all ranks.
#[derive(Debug, Clone, Serialize)]
pub struct SizeReport {
    pub floats: usize,
    pub bytes: usize,
    /// Elements that differ from the exact sum, over all ranks and repetitions.
    pub mismatches: u64,
    pub repeats: usize,
    /// Fastest repetition on rank 0, seconds.
    pub best_s: f64,
    /// Bytes of the buffer over the fastest time (nccl-tests' algbw), GB/s (1e9 bytes).
    pub algbw_gbs: f64,
    /// The algorithm bandwidth times 2(N-1)/N, the traffic of a ring all-reduce per rank
    /// (nccl-tests' busbw), GB/s.
    pub busbw_gbs: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub engine: String,
    pub launcher: String,
    pub world: usize,
    pub device: String,
    pub sizes: Vec<SizeReport>,
    pub pass: bool,
}

/// The device of the check: the check needs NCCL, not candle's CUDA kernels, so a build with
/// `nccl` alone (no nvcc at build time) runs it on GPUs.
fn device(list: &[String]) -> Result<DeviceSpec> {
    let dev = match list {
        [] => DeviceSpec::Cpu,
        [one] => DeviceSpec::parse(one)?,
        many => bail!("--devices {}: one device per rank", many.join(" ")),
    };
    if !cfg!(feature = "nccl") {
        dev.check_built()?;
    }
    Ok(dev)
}

/// NCCL whatever the world size (`--engine nccl`).
#[cfg(feature = "nccl")]
fn nccl_always(world: &World, dev: DeviceSpec, timeout: Duration) -> Result<Rc<dyn Collective>> {
    let Some(ordinal) = dev.cuda_index() else {
        bail!("--engine nccl needs a GPU: pass --devices cuda");
    };
    Ok(Rc::new(super::nccl::NcclCollective::init(
        world, ordinal, timeout,
    )?))
}

#[cfg(not(feature = "nccl"))]
fn nccl_always(_: &World, _: DeviceSpec, _: Duration) -> Result<Rc<dyn Collective>> {
    bail!("--engine nccl: this build has no NCCL; rebuild with `--features cuda` (or `nccl`)")
}

/// Rank `rank`'s value at element `i`: `(rank + 1) x (1 + i mod 13)`.
fn value(rank: usize, i: usize) -> f32 {
    ((rank + 1) * (1 + i % 13)) as f32
}

/// The exact sum over `world` ranks at element `i`.
fn expected(world: usize, i: usize) -> f32 {
    (world * (world + 1) / 2 * (1 + i % 13)) as f32
}

/// Largest world whose sums stay below 2^24, where every whole number is exact in f32.
const MAX_WORLD: usize = 1600;

/// `(mismatches, first wrong element)` of a reduced buffer.
fn verify(buf: &[f32], world: usize) -> (u64, Option<(usize, f32, f32)>) {
    let mut bad = 0u64;
    let mut first = None;
    for (i, &x) in buf.iter().enumerate() {
        let want = expected(world, i);
        if x != want {
            bad += 1;
            first.get_or_insert((i, x, want));
        }
    }
    (bad, first)
}

/// One size: `repeats` fills, all-reduces and checks; returns this rank's mismatches and the
/// fastest all-reduce.
fn one_size(coll: &dyn Collective, floats: usize, repeats: usize) -> Result<(u64, Duration)> {
    let (rank, world) = (coll.rank(), coll.world());
    let mut buf = vec![0f32; floats];
    let mut best = Duration::MAX;
    let mut bad = 0;
    for _ in 0..repeats {
        buf.iter_mut()
            .enumerate()
            .for_each(|(i, x)| *x = value(rank, i));
        coll.barrier()?;
        let t0 = Instant::now();
        coll.all_reduce_sum(&mut buf)
            .with_context(|| format!("all-reduce of {floats} floats on rank {rank}"))?;
        best = best.min(t0.elapsed());
        let (n, first) = verify(&buf, world);
        if let Some((i, got, want)) = first {
            tracing::error!(
                "rank {rank}: {n} of {floats} elements wrong; element {i} is {got}, the exact \
                 sum is {want}"
            );
        }
        bad += n;
    }
    Ok((bad, best))
}

/// Opens the launched world's engine and checks it; the exit code says whether every sum was
/// exact on every rank.
pub fn run(args: Args, env: &EnvMap, out: &mut dyn Write) -> Result<ExitCode> {
    let dev = device(&args.devices)?;
    let world = World::from_env(env)?;
    if world.size > MAX_WORLD {
        bail!(
            "a world of {} is too large for exact f32 sums in this check (at most {MAX_WORLD})",
            world.size
        );
    }
    let dev = device_for(&world, dev);
    let timeout = Duration::from_secs(args.collective_timeout.max(1));
    let coll = if args.engine == "nccl" {
        nccl_always(&world, dev, timeout)?
    } else {
        open_launched(&world, dev, timeout)?
    };
    let n = coll.world();
    let mut sizes: Vec<usize> = vec![1, 1000, args.floats.max(1)];
    sizes.sort_unstable();
    sizes.dedup();
    let largest = sizes[sizes.len() - 1];
    let mut reports = Vec::new();
    let mut bad = Vec::new();
    for &floats in &sizes {
        let repeats = if floats == largest {
            args.repeats.max(1)
        } else {
            1
        };
        let (b, best) = one_size(coll.as_ref(), floats, repeats)?;
        bad.push(b as f32);
        let bytes = floats * 4;
        // one rank communicates nothing: no bandwidth to speak of
        let algbw = if n > 1 {
            bytes as f64 / best.as_secs_f64().max(1e-12) / 1e9
        } else {
            0.0
        };
        reports.push(SizeReport {
            floats,
            bytes,
            mismatches: 0,
            repeats,
            best_s: best.as_secs_f64(),
            algbw_gbs: algbw,
            busbw_gbs: algbw * 2.0 * (n - 1) as f64 / n as f64,
        });
    }
    // every rank learns every rank's mismatches (counts are exact in f32 far beyond a check's)
    coll.all_reduce_sum(&mut bad)
        .context("agreeing on the verdict")?;
    for (r, b) in reports.iter_mut().zip(&bad) {
        r.mismatches = *b as u64;
    }
    let pass = reports.iter().all(|r| r.mismatches == 0);
    let report = Report {
        engine: coll.engine().into(),
        launcher: world.launcher.to_string(),
        world: n,
        device: dev.label(),
        sizes: reports,
        pass,
    };
    if coll.rank() == 0 {
        if args.json {
            writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
        } else {
            print(&report, out)?;
        }
    }
    coll.barrier()?;
    Ok(if pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn human(bytes: usize) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

fn print(r: &Report, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "collective-check: {} over {} rank(s) ({}), rank 0 on {}",
        r.engine, r.world, r.launcher, r.device
    )?;
    for s in &r.sizes {
        let verdict = if s.mismatches == 0 {
            "exact on every rank".to_string()
        } else {
            format!("{} WRONG element(s)", s.mismatches)
        };
        write!(
            out,
            "  {:>10} float(s) ({}): {verdict}, {} {:.3} ms",
            s.floats,
            human(s.bytes),
            if s.repeats > 1 {
                format!("best of {}", s.repeats)
            } else {
                "took".into()
            },
            s.best_s * 1e3
        )?;
        if s.repeats > 1 && r.world > 1 {
            write!(
                out,
                ": algorithm bandwidth {:.2} GB/s, bus bandwidth {:.2} GB/s",
                s.algbw_gbs, s.busbw_gbs
            )?;
        }
        writeln!(out)?;
    }
    if r.world == 1 {
        writeln!(
            out,
            "  (one rank: nothing is communicated, so no bandwidth)"
        )?;
    }
    if r.engine == "NCCL" {
        writeln!(
            out,
            "  (host buffers: the times include the copies to and from the GPU)"
        )?;
    }
    writeln!(
        out,
        "verdict: {}",
        if r.pass {
            format!(
                "PASS: every element of every all-reduce is the exact sum over {} rank(s)",
                r.world
            )
        } else {
            "FAIL: some sums are wrong (the ranks' logs name the first wrong element)".into()
        }
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::collective::LocalGroup;

    #[test]
    fn the_expected_sums_are_exact_for_the_largest_world() {
        let n = MAX_WORLD;
        let worst = (n * (n + 1) / 2 * 13) as f64;
        assert!(worst < f64::from(1u32 << 24), "{worst}");
        let sum: f32 = (0..n).map(|r| value(r, 12)).sum();
        assert_eq!(sum, expected(n, 12));
    }

    #[test]
    fn three_thread_ranks_pass_and_a_wrong_sum_is_counted() {
        let handles: Vec<_> = LocalGroup::new(3)
            .into_iter()
            .map(|c| std::thread::spawn(move || one_size(&c, 1000, 2).unwrap().0))
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), 0);
        }
        let mut buf: Vec<f32> = (0..50).map(|i| expected(3, i)).collect();
        buf[7] += 1.0;
        buf[9] = f32::NAN;
        let (bad, first) = verify(&buf, 3);
        assert_eq!(bad, 2);
        assert_eq!(first.map(|f| f.0), Some(7));
    }

    #[test]
    fn one_process_runs_the_check_alone() {
        let args = Args {
            floats: 5000,
            repeats: 2,
            collective_timeout: 10,
            devices: vec!["cpu".into()],
            engine: "auto".into(),
            json: false,
        };
        let mut out = Vec::new();
        let code = run(args, &EnvMap::new(), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(
            text.contains("single process over 1 rank(s)")
                && text.contains("5000 float(s)")
                && text.contains("verdict: PASS"),
            "{text}"
        );
    }

    #[test]
    fn nccl_on_the_cpu_is_refused() {
        let args = Args {
            floats: 10,
            repeats: 1,
            collective_timeout: 10,
            devices: vec!["cpu".into()],
            engine: "nccl".into(),
            json: false,
        };
        let e = run(args, &EnvMap::new(), &mut Vec::new())
            .unwrap_err()
            .to_string();
        assert!(e.contains("--engine nccl"), "{e}");
    }
}
