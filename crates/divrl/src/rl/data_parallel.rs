//! Data parallelism across processes (torchrun-style ranks) on libtorch's c10d
//! ([`divrl_dist`]): how an epoch's samples are split between ranks, and the three exchanges
//! Algorithm 1 needs — ϕ-features of every image (the set reward needs the whole set), the
//! trainable gradients before each optimizer step, and the PPO phase's diagnostics.
//!
//! The split is by sampling chunk: an epoch's labels are cut into chunks of `sample_batch_size`,
//! chunk `i` is drawn from the run's `i`-th seed of the epoch (every rank draws every seed, so the
//! run's random stream is the same on every rank and for any world size), and rank `r` samples
//! the chunks with `i % world == r`. After the exchange every rank holds the features of the whole
//! epoch in the single-process order, so rewards, advantages and the advantage tracker are the
//! same on every rank as in one process; each rank then trains on its own trajectories, with the
//! loss scaled by the global minibatch size, and the gradients are summed over ranks (in rank
//! order, so every rank holds the same bits and the weights never diverge) before clipping and
//! the optimizer step. The result is the single-process run's, up to the order of float sums.
use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

use divrl_dist::Comm;

use crate::optim::AdamW;

/// This process's rank in a data-parallel run, with its collectives.
pub struct DataParallel {
    comm: Comm,
}

/// The chunks (of `chunk` samples, the last one shorter) of an epoch of `n` samples that `rank`
/// of `world` samples: `i % world == rank`.
pub fn owned_chunks(n: usize, chunk: usize, rank: usize, world: usize) -> Vec<usize> {
    (0..n.div_ceil(chunk.max(1)))
        .filter(|i| i % world == rank)
        .collect()
}

/// The sample indices (in the epoch's order) that `rank` holds, in the order it holds them.
pub fn owned_samples(n: usize, chunk: usize, rank: usize, world: usize) -> Vec<usize> {
    let chunk = chunk.max(1);
    owned_chunks(n, chunk, rank, world)
        .into_iter()
        .flat_map(|c| c * chunk..((c + 1) * chunk).min(n))
        .collect()
}

/// Puts rows gathered from every rank (`parts[r]`: rank `r`'s rows of `dim` values, in the order
/// it holds them) back into the epoch's order of `n` rows.
pub fn interleave_rows<T: Copy>(
    parts: &[Vec<T>],
    dim: usize,
    n: usize,
    chunk: usize,
) -> Result<Vec<T>> {
    let world = parts.len();
    let mut out = Vec::with_capacity(n * dim);
    let mut at = vec![0usize; world];
    let chunk = chunk.max(1);
    for c in 0..n.div_ceil(chunk) {
        let r = c % world;
        let rows = ((c + 1) * chunk).min(n) - c * chunk;
        let (from, to) = (at[r], at[r] + rows * dim);
        if to > parts[r].len() {
            bail!(
                "rank {r} sent {} values, fewer than its chunks need ({to})",
                parts[r].len()
            );
        }
        out.extend_from_slice(&parts[r][from..to]);
        at[r] = to;
    }
    for (r, (&used, p)) in at.iter().zip(parts).enumerate() {
        if used != p.len() {
            bail!("rank {r} sent {} values, its chunks hold {used}", p.len());
        }
    }
    Ok(out)
}

impl DataParallel {
    pub fn new(comm: Comm) -> Self {
        Self { comm }
    }

    pub fn rank(&self) -> usize {
        self.comm.rank()
    }

    pub fn world(&self) -> usize {
        self.comm.world()
    }

    /// Waits for every rank (e.g. until rank 0 has written a checkpoint).
    pub fn barrier(&mut self) -> Result<()> {
        Ok(self.comm.barrier()?)
    }

    /// Leaves the run (rank 0 waits until every rank has).
    pub fn finish(self) -> Result<()> {
        Ok(self.comm.finish()?)
    }

    /// `[n, D]` float rows of the whole epoch from this rank's `[n_local, D]` ones (its chunks of
    /// `chunk` samples, [`owned_samples`]), on the CPU.
    pub fn gather_rows(&mut self, local: &Tensor, n: usize, chunk: usize) -> Result<Tensor> {
        let local = local.to_device(tch::Device::Cpu).to_kind(Kind::Float);
        let size = local.size();
        let dim: usize = size[1..].iter().product::<i64>() as usize;
        let flat: Vec<f32> = Vec::<f32>::try_from(local.contiguous().view([-1]))?;
        // Each rank sends a different number of rows.
        let parts = self.comm.all_gather_f32_any(&flat)?;
        let rows = interleave_rows(&parts, dim, n, chunk)?;
        let mut shape = size.clone();
        shape[0] = n as i64;
        Ok(Tensor::from_slice(&rows).view(shape.as_slice()))
    }

    /// `[n]` f64 values of the whole epoch from this rank's, as [`DataParallel::gather_rows`].
    pub fn gather_f64(&mut self, local: &[f64], n: usize, chunk: usize) -> Result<Vec<f64>> {
        let parts = self.comm.all_gather_f64_any(local)?;
        interleave_rows(&parts, 1, n, chunk)
    }

    /// The element-wise sum over ranks of `values` (same length on every rank), added in rank
    /// order so that every rank gets the same bits.
    pub fn sum_f64(&mut self, values: &[f64]) -> Result<Vec<f64>> {
        self.reduce_f64(values, |a, b| a + b, 0.0)
    }

    /// The element-wise maximum over ranks.
    pub fn max_f64(&mut self, values: &[f64]) -> Result<Vec<f64>> {
        self.reduce_f64(values, f64::max, f64::NEG_INFINITY)
    }

    fn reduce_f64(
        &mut self,
        values: &[f64],
        op: impl Fn(f64, f64) -> f64,
        init: f64,
    ) -> Result<Vec<f64>> {
        let parts = self.comm.all_gather_f64_any(values)?;
        let mut out = vec![init; values.len()];
        for (r, p) in parts.iter().enumerate() {
            if p.len() != values.len() {
                bail!(
                    "rank {r} sent {} statistics, this rank {}",
                    p.len(),
                    values.len()
                );
            }
            for (o, &v) in out.iter_mut().zip(p) {
                *o = op(*o, v);
            }
        }
        Ok(out)
    }

    /// Replaces the gradients of `opt`'s variables by their sum over ranks. A variable whose
    /// gradient no rank defined keeps none (the optimizer skips it, as in one process).
    pub fn all_sum_grads(&mut self, opt: &mut AdamW) -> Result<()> {
        let (mut flat, mut defined) = opt.flat_grads();
        let n = flat.len();
        // One exchange: the gradients, then one "defined" flag per variable.
        flat.extend(defined.iter().map(|&d| if d { 1.0f32 } else { 0.0 }));
        self.comm
            .all_sum_f32(&mut flat)
            .context("summing the gradients over ranks")?;
        for (d, s) in defined.iter_mut().zip(&flat[n..]) {
            *d = *s > 0.0;
        }
        opt.set_flat_grads(&flat[..n], &defined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every sample is held by exactly one rank, and the rows gathered from the ranks' shares
    /// come back in the epoch's order, for uneven last chunks and more ranks than chunks.
    #[test]
    fn shares_partition_the_epoch_and_interleave_back() {
        for (n, chunk, world) in [(10, 3, 2), (12, 4, 3), (5, 5, 2), (7, 2, 4), (9, 1, 3)] {
            let shares: Vec<Vec<usize>> = (0..world)
                .map(|r| owned_samples(n, chunk, r, world))
                .collect();
            let mut all: Vec<usize> = shares.iter().flatten().copied().collect();
            all.sort_unstable();
            assert_eq!(all, (0..n).collect::<Vec<_>>(), "{n} {chunk} {world}");
            // Rows of 2 values: (i, -i) for sample i.
            let parts: Vec<Vec<i64>> = shares
                .iter()
                .map(|s| s.iter().flat_map(|&i| [i as i64, -(i as i64)]).collect())
                .collect();
            let back = interleave_rows(&parts, 2, n, chunk).unwrap();
            let want: Vec<i64> = (0..n as i64).flat_map(|i| [i, -i]).collect();
            assert_eq!(back, want);
        }
        assert_eq!(owned_chunks(10, 3, 1, 2), vec![1, 3]);
    }

    #[test]
    fn a_share_of_the_wrong_size_is_an_error() {
        let parts = vec![vec![0, 1, 2], vec![3]];
        let e = interleave_rows(&parts, 1, 4, 1).unwrap_err().to_string();
        assert!(e.contains("rank"), "{e}");
        let parts = vec![vec![0, 2, 9], vec![1, 3]];
        let e = interleave_rows(&parts, 1, 4, 1).unwrap_err().to_string();
        assert!(e.contains("rank 0"), "{e}");
    }
}
