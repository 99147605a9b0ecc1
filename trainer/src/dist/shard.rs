//! Which samples each rank reads. The epoch's sample order is one permutation for the whole job
//! (a function of the seed and the epoch, never of the world size); global batch `k` is the
//! k-th run of `B` samples of that order, and rank `r` reads the r-th contiguous share of it.
//! So the union over ranks of step `k` is exactly the batch a single process with batch `B`
//! reads at step `k`: N ranks follow the one-process run, every sample is read once per epoch,
//! and a run resumed at a global step with another world size reads the same samples on.

use std::ops::Range;

/// The shape of a sharded epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardPlan {
    /// Samples in the epoch.
    pub len: usize,
    /// Samples per global step, summed over ranks.
    pub global_batch: usize,
    pub world: usize,
    /// Drop a final global batch shorter than `global_batch` (then some samples are not read
    /// that epoch, as with one process and `drop_last`).
    pub drop_last: bool,
}

/// Why a sharding cannot be set up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("global batch {global} is not divisible by the {world} ranks; choose a multiple")]
    Indivisible { global: usize, world: usize },
    #[error("world size 0 or global batch 0")]
    Empty,
}

impl ShardPlan {
    pub fn new(
        len: usize,
        global_batch: usize,
        world: usize,
        drop_last: bool,
    ) -> Result<Self, ShardError> {
        if world == 0 || global_batch == 0 {
            return Err(ShardError::Empty);
        }
        if !global_batch.is_multiple_of(world) {
            return Err(ShardError::Indivisible {
                global: global_batch,
                world,
            });
        }
        Ok(Self {
            len,
            global_batch,
            world,
            drop_last,
        })
    }

    /// Global steps in one epoch.
    pub fn steps_per_epoch(&self) -> usize {
        if self.drop_last {
            self.len / self.global_batch
        } else {
            self.len.div_ceil(self.global_batch)
        }
    }

    /// Positions in the epoch order of global batch `step` (`step < steps_per_epoch`).
    pub fn global_range(&self, step: usize) -> Range<usize> {
        let start = (step * self.global_batch).min(self.len);
        start..(start + self.global_batch).min(self.len)
    }

    /// Positions in the epoch order that `rank` reads at `step`. A short final batch of `n`
    /// samples is split as evenly as whole samples allow (`floor(r·n/N)..floor((r+1)·n/N)`), so
    /// a rank may read fewer, or none (training drops it, `drop_last`, so that every rank's
    /// gradient counts the same).
    pub fn rank_range(&self, step: usize, rank: usize) -> Range<usize> {
        let g = self.global_range(step);
        let n = g.len();
        let lo = g.start + rank * n / self.world;
        let hi = g.start + (rank + 1) * n / self.world;
        lo..hi
    }
}

/// An order for the tests: a permutation of `0..len` seeded by `(seed, epoch)` only, as the
/// loader's own order (`Loader::order`) is.
#[cfg(test)]
pub fn epoch_order(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut order: Vec<usize> = (0..len).collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(crate::rng::mix(&[seed, 0x5_4a2d, epoch]));
    order.shuffle(&mut rng);
    order
}

/// The sample indices `rank` reads at global step `step` of `order`.
#[cfg(test)]
pub fn rank_samples(order: &[usize], plan: &ShardPlan, step: usize, rank: usize) -> Vec<usize> {
    order[plan.rank_range(step, rank)].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sample of an epoch read by all ranks over all steps.
    fn read_all(plan: &ShardPlan, order: &[usize], from: usize, to: usize) -> Vec<usize> {
        let mut seen = Vec::new();
        for step in from..to {
            for r in 0..plan.world {
                seen.extend(rank_samples(order, plan, step, r));
            }
        }
        seen
    }

    #[test]
    fn every_sample_once_per_epoch_for_several_world_sizes() {
        for len in [1, 7, 64, 100, 257] {
            for world in [1, 2, 3, 4, 8] {
                let plan = ShardPlan::new(len, 8 * world, world, false).unwrap();
                for epoch in 0..3 {
                    let order = epoch_order(len, 11, epoch);
                    let mut seen = read_all(&plan, &order, 0, plan.steps_per_epoch());
                    seen.sort_unstable();
                    assert_eq!(
                        seen,
                        (0..len).collect::<Vec<_>>(),
                        "len {len} world {world}"
                    );
                }
            }
        }
    }

    #[test]
    fn drop_last_reads_each_sample_at_most_once_and_full_batches_only() {
        let plan = ShardPlan::new(100, 24, 4, true).unwrap();
        assert_eq!(plan.steps_per_epoch(), 4);
        let order = epoch_order(100, 3, 0);
        let mut seen = read_all(&plan, &order, 0, plan.steps_per_epoch());
        assert_eq!(seen.len(), 96);
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 96);
        for s in 0..4 {
            for r in 0..4 {
                assert_eq!(plan.rank_range(s, r).len(), 6);
            }
        }
    }

    #[test]
    fn ranks_together_read_the_single_process_batch() {
        let order = epoch_order(50, 7, 2);
        let one = ShardPlan::new(50, 12, 1, false).unwrap();
        for world in [2, 3, 4, 6] {
            let many = ShardPlan::new(50, 12, world, false).unwrap();
            assert_eq!(many.steps_per_epoch(), one.steps_per_epoch());
            for step in 0..one.steps_per_epoch() {
                let mut union: Vec<usize> = (0..world)
                    .flat_map(|r| rank_samples(&order, &many, step, r))
                    .collect();
                // concatenated in rank order, the shares are the batch itself
                assert_eq!(union, rank_samples(&order, &one, step, 0));
                union.sort_unstable();
                union.dedup();
                assert_eq!(union.len(), one.global_range(step).len());
            }
        }
    }

    #[test]
    fn the_order_depends_on_seed_and_epoch_only() {
        assert_eq!(epoch_order(300, 5, 1), epoch_order(300, 5, 1));
        assert_ne!(epoch_order(300, 5, 1), epoch_order(300, 5, 2));
        assert_ne!(epoch_order(300, 5, 1), epoch_order(300, 6, 1));
        let plan = ShardPlan::new(300, 16, 4, false).unwrap();
        let a = rank_samples(&epoch_order(300, 5, 1), &plan, 3, 2);
        let b = rank_samples(&epoch_order(300, 5, 1), &plan, 3, 2);
        assert_eq!(a, b);
        assert_eq!(a.len(), 4);
    }

    #[test]
    fn resuming_with_another_world_size_reads_the_rest_of_the_epoch() {
        let len = 203;
        let order = epoch_order(len, 42, 4);
        // 4 ranks for 5 steps, then the job restarts on 2 ranks (same global batch)
        let before = ShardPlan::new(len, 16, 4, false).unwrap();
        let after = ShardPlan::new(len, 16, 2, false).unwrap();
        let stop = 5;
        let mut seen = read_all(&before, &order, 0, stop);
        seen.extend(read_all(&after, &order, stop, after.steps_per_epoch()));
        let mut sorted = seen.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..len).collect::<Vec<_>>());
        // and the samples after the restart are those one process would read
        let one = ShardPlan::new(len, 16, 1, false).unwrap();
        assert_eq!(seen, read_all(&one, &order, 0, one.steps_per_epoch()));
    }

    #[test]
    fn a_short_final_batch_is_split_evenly() {
        let plan = ShardPlan::new(10, 8, 4, false).unwrap();
        // final batch has 2 samples for 4 ranks
        let lens: Vec<usize> = (0..4).map(|r| plan.rank_range(1, r).len()).collect();
        assert_eq!(lens.iter().sum::<usize>(), 2);
        assert_eq!(lens, vec![0, 1, 0, 1]);
    }

    #[test]
    fn an_indivisible_global_batch_is_refused() {
        let e = ShardPlan::new(10, 10, 4, false).unwrap_err();
        assert!(
            e.to_string().contains("not divisible by the 4 ranks"),
            "{e}"
        );
        assert_eq!(ShardPlan::new(10, 8, 0, false), Err(ShardError::Empty));
    }
}
