//! The one interface the trainer needs from a communication engine (NCCL on GPUs, MPI on CPUs):
//! an all-reduce, a barrier, and who is who. Training code calls only this trait, so the
//! one-process run and the tests use stand-ins that run here: [`SingleProcess`] (the identity)
//! and, in tests, `LocalGroup` (ranks as threads of one process, for equivalence tests).

#[cfg(test)]
use std::sync::{Arc, Barrier, Mutex};

use anyhow::{Context, Result};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};

use crate::optim::Param;

/// A group of ranks that reduce together. Every rank must make the same calls in the same
/// order with buffers of the same length; engines check what they can.
pub trait Collective {
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// Replaces `buf` on every rank with the element-wise sum over ranks.
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// Waits until every rank arrives.
    fn barrier(&self) -> Result<()>;
    /// Replaces `buf` on every rank with the element-wise mean over ranks.
    fn all_reduce_mean(&self, buf: &mut [f32]) -> Result<()> {
        if self.world() == 1 {
            return Ok(());
        }
        self.all_reduce_sum(buf)?;
        let inv = 1.0 / self.world() as f32;
        buf.iter_mut().for_each(|x| *x *= inv);
        Ok(())
    }
    /// What runs the reductions, for logs and plans.
    fn engine(&self) -> &'static str;
}

/// One process alone: every reduction is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn engine(&self) -> &'static str {
        "single process"
    }
}

#[cfg(test)]
struct Shared {
    slots: Mutex<Vec<Vec<f32>>>,
    barrier: Barrier,
}

/// Ranks as threads of one process, reducing through shared memory. The sum is taken in rank
/// order on every rank, so all ranks get bit-identical results (as NCCL's ring and MPI's
/// reductions also guarantee).
#[cfg(test)]
#[derive(Clone)]
pub struct LocalGroup {
    rank: usize,
    world: usize,
    shared: Arc<Shared>,
}

#[cfg(test)]
impl LocalGroup {
    /// The `world` members of one group; hand one to each thread.
    pub fn new(world: usize) -> Vec<Self> {
        let shared = Arc::new(Shared {
            slots: Mutex::new(vec![Vec::new(); world]),
            barrier: Barrier::new(world),
        });
        (0..world)
            .map(|rank| Self {
                rank,
                world,
                shared: shared.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
impl Collective for LocalGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        {
            let mut slots = self
                .shared
                .slots
                .lock()
                .map_err(|_| anyhow::anyhow!("a rank panicked during an all-reduce"))?;
            slots[self.rank] = buf.to_vec();
        }
        self.shared.barrier.wait();
        {
            let slots = self
                .shared
                .slots
                .lock()
                .map_err(|_| anyhow::anyhow!("a rank panicked during an all-reduce"))?;
            if let Some((r, s)) = slots.iter().enumerate().find(|(_, s)| s.len() != buf.len()) {
                anyhow::bail!(
                    "all-reduce of {} values on rank {} but {} on rank {r}",
                    buf.len(),
                    self.rank,
                    s.len()
                );
            }
            for (i, x) in buf.iter_mut().enumerate() {
                *x = slots.iter().map(|s| s[i]).sum();
            }
        }
        // nobody overwrites a slot before every rank has read them all
        self.shared.barrier.wait();
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.shared.barrier.wait();
        Ok(())
    }
    fn engine(&self) -> &'static str {
        "threads of one process"
    }
}

/// Averages the gradients of `params` over the ranks, in place, with one all-reduce of one flat
/// buffer (in the optimiser's parameter order, the same on every rank). A rank where a parameter
/// has no gradient (a head with no sample in this rank's share of the batch) contributes zeros,
/// which is its share of the global batch's gradient; the parameter gets the average on every
/// rank as soon as one rank had a gradient for it, and stays without one only where no rank had
/// (frozen blocks), so every rank's optimiser steps the same parameters.
/// With one rank nothing is touched, so the one-process step is unchanged bit for bit.
pub fn average_grads(coll: &dyn Collective, params: &[Param], grads: &mut GradStore) -> Result<()> {
    if coll.world() == 1 {
        return Ok(());
    }
    let mut flat: Vec<f32> = Vec::new();
    let mut layout = Vec::with_capacity(params.len());
    for p in params {
        let n = p.var.as_tensor().elem_count();
        match grads.get(p.var.as_tensor()) {
            Some(g) => flat.extend(g.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            None => flat.extend(std::iter::repeat_n(0.0, n)),
        }
        layout.push(n);
    }
    // one presence flag per parameter, after the gradients
    let at_flags = flat.len();
    flat.extend(
        params
            .iter()
            .map(|p| f32::from(u8::from(grads.get(p.var.as_tensor()).is_some()))),
    );
    coll.all_reduce_mean(&mut flat)
        .with_context(|| format!("averaging gradients on rank {}", coll.rank()))?;
    let mut at = 0;
    for (i, (p, n)) in params.iter().zip(layout).enumerate() {
        let t = p.var.as_tensor();
        if flat[at_flags + i] > 0.0 {
            let dtype = grads.get(t).map_or(t.dtype(), |g| g.dtype());
            let avg =
                Tensor::from_slice(&flat[at..at + n], t.shape(), t.device())?.to_dtype(dtype)?;
            grads.insert(t, avg);
        }
        at += n;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::optim::AdamW;
    use candle_core::{Device, Var};

    #[test]
    fn threads_reduce_to_the_same_sum() {
        let group = LocalGroup::new(3);
        let handles: Vec<_> = group
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || {
                    let mut b = vec![c.rank() as f32 + 1.0, 10.0];
                    c.all_reduce_sum(&mut b).unwrap();
                    let mut m = vec![c.rank() as f32];
                    c.all_reduce_mean(&mut m).unwrap();
                    c.barrier().unwrap();
                    (b, m)
                })
            })
            .collect();
        for h in handles {
            let (b, m) = h.join().unwrap();
            assert_eq!(b, vec![6.0, 30.0]);
            assert_eq!(m, vec![1.0]);
        }
    }

    #[test]
    fn mismatched_lengths_are_an_error() {
        let group = LocalGroup::new(2);
        let handles: Vec<_> = group
            .into_iter()
            .map(|c| {
                std::thread::spawn(move || {
                    let mut b = vec![0.0; 1 + c.rank()];
                    c.all_reduce_sum(&mut b).map_err(|e| e.to_string())
                })
            })
            .collect();
        for h in handles {
            let e = h.join().unwrap().unwrap_err();
            assert!(e.contains("all-reduce of"), "{e}");
        }
    }

    /// Mean squared error of a linear model on rows `x`, targets `y`; returns the weights after
    /// `steps` AdamW steps in which the gradients are averaged over `coll`.
    pub(crate) fn train_linear(
        coll: &dyn Collective,
        x: &[f32],
        y: &[f32],
        steps: usize,
    ) -> Vec<f32> {
        let dev = Device::Cpu;
        let rows = y.len();
        let w = Var::from_tensor(&Tensor::new(&[[0.5f32], [-0.25], [0.1]], &dev).unwrap()).unwrap();
        let b = Var::from_tensor(&Tensor::new(&[0.0f32], &dev).unwrap()).unwrap();
        let mut opt = AdamW::new(
            vec![("w".into(), w.clone()), ("b".into(), b.clone())],
            [0.9, 0.999],
            1e-8,
        )
        .unwrap();
        let xt = Tensor::from_slice(x, (rows, 3), &dev).unwrap();
        let yt = Tensor::from_slice(y, (rows, 1), &dev).unwrap();
        for _ in 0..steps {
            let pred = xt
                .matmul(w.as_tensor())
                .unwrap()
                .broadcast_add(b.as_tensor())
                .unwrap();
            let loss = (pred - &yt).unwrap().sqr().unwrap().mean_all().unwrap();
            let mut g = loss.backward().unwrap();
            average_grads(coll, opt.params(), &mut g).unwrap();
            opt.step(&g, 0.05, 0.1, None).unwrap();
        }
        let mut out = w.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        out.extend(b.as_tensor().to_vec1::<f32>().unwrap());
        out
    }

    #[test]
    fn two_ranks_with_half_batches_follow_one_process_with_the_whole_batch() {
        let x: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32 - 5.0) / 5.0).collect();
        let y: Vec<f32> = (0..8).map(|i| (i as f32 * 0.3).sin()).collect();
        let one = train_linear(&SingleProcess, &x, &y, 20);
        let group = LocalGroup::new(2);
        let handles: Vec<_> = group
            .into_iter()
            .map(|c| {
                let (x, y) = (x.clone(), y.clone());
                std::thread::spawn(move || {
                    let r = c.rank();
                    train_linear(&c, &x[r * 12..(r + 1) * 12], &y[r * 4..(r + 1) * 4], 20)
                })
            })
            .collect();
        let ranks: Vec<Vec<f32>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        // every rank holds the same weights, bit for bit
        assert_eq!(ranks[0], ranks[1]);
        // and they follow the one-process run up to float rounding of the split mean
        for (a, b) in ranks[0].iter().zip(&one) {
            assert!((a - b).abs() < 1e-5, "{:?} vs {:?}", ranks[0], one);
        }
        // the step really moved the weights
        assert!((one[0] - 0.5).abs() > 1e-3);
    }

    /// `c` has a gradient on rank 0 only (a head with samples in one rank's share), `d` on no
    /// rank (a frozen block): every rank steps `c` with the averaged gradient, nobody touches `d`
    /// (weight decay would move it), and all ranks end bit-identical.
    #[test]
    fn a_gradient_present_on_one_rank_is_averaged_on_all() {
        let handles: Vec<_> = LocalGroup::new(2)
            .into_iter()
            .map(|coll| {
                std::thread::spawn(move || {
                    let dev = Device::Cpu;
                    let c = Var::new(&[0.5f32], &dev).unwrap();
                    let d = Var::new(&[2.0f32], &dev).unwrap();
                    let mut opt = AdamW::new(
                        vec![("c".into(), c.clone()), ("d".into(), d.clone())],
                        [0.9, 0.999],
                        1e-8,
                    )
                    .unwrap();
                    for _ in 0..5 {
                        // rank 1's share has no sample for the head that owns `c`: its loss
                        // does not involve `c` (a constant times an unrelated tensor)
                        let loss = if coll.rank() == 0 {
                            (c.as_tensor() - 1.0)
                                .unwrap()
                                .sqr()
                                .unwrap()
                                .sum_all()
                                .unwrap()
                        } else {
                            Tensor::new(0f32, &dev).unwrap()
                        };
                        let mut g = if coll.rank() == 0 {
                            loss.backward().unwrap()
                        } else {
                            // no parameter reached: an empty gradient store
                            (c.as_tensor().detach() * 0.0)
                                .unwrap()
                                .sum_all()
                                .unwrap()
                                .backward()
                                .unwrap()
                        };
                        average_grads(&coll, opt.params(), &mut g).unwrap();
                        opt.step(&g, 0.05, 0.1, None).unwrap();
                    }
                    (
                        c.as_tensor().to_vec1::<f32>().unwrap()[0],
                        d.as_tensor().to_vec1::<f32>().unwrap()[0],
                    )
                })
            })
            .collect();
        let r: Vec<(f32, f32)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(r[0], r[1]);
        assert!((r[0].0 - 0.5).abs() > 1e-3, "c did not move: {r:?}");
        assert_eq!(r[0].1, 2.0, "d moved without a gradient anywhere: {r:?}");
    }

    #[test]
    fn one_rank_leaves_the_gradients_untouched() {
        let x: Vec<f32> = (0..12).map(|i| i as f32 / 12.0).collect();
        let y = vec![1.0, 0.0, -1.0, 0.5];
        assert_eq!(
            train_linear(&SingleProcess, &x, &y, 5),
            train_linear(&LocalGroup::new(1)[0], &x, &y, 5)
        );
    }
}
