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
//! loss scaled by the global minibatch size. The gradient of an optimizer step is defined chunk
//! by chunk: each sampling chunk's members of a minibatch are forwarded together, their gradient
//! is kept apart ([`ChunkGrad`]), and the step's gradient is the chunks' sum in chunk order
//! ([`sum_in_chunk_order`]) — in one process as on any number of ranks. Every forward pass, every
//! float sum and so every weight is then the same bits whichever rank holds which chunk: a run on
//! N ranks is the one-process run with the same `sample_batch_size`.
use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

use divrl_dist::Comm;

use crate::optim::AdamW;

/// This process's rank in a data-parallel run, with its collectives.
pub struct DataParallel {
    comm: Comm,
}

/// The samples of chunk `c` when an epoch of `n` samples is cut into chunks of `chunk` (the last
/// one shorter).
pub fn chunk_range(n: usize, chunk: usize, c: usize) -> std::ops::Range<usize> {
    let chunk = chunk.max(1);
    c * chunk..((c + 1) * chunk).min(n)
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
    owned_chunks(n, chunk, rank, world)
        .into_iter()
        .flat_map(|c| chunk_range(n, chunk, c))
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
    for c in 0..n.div_ceil(chunk.max(1)) {
        let r = c % world;
        let rows = chunk_range(n, chunk, c).len();
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

    /// Every rank's chunk gradients of the step, on every rank. `mine` may be empty (no member of
    /// the step's minibatches is this rank's); `layout` is [`AdamW::grad_layout`].
    pub fn gather_chunk_grads(
        &mut self,
        mine: Vec<ChunkGrad>,
        layout: (usize, usize),
    ) -> Result<Vec<ChunkGrad>> {
        let (n, vars) = layout;
        if let Some(g) = mine
            .iter()
            .find(|g| g.values.len() != n || g.defined.len() != vars)
        {
            bail!("chunk {} has a gradient of another layout", g.chunk);
        }
        let mut flat = Vec::with_capacity(mine.len() * (1 + n + vars));
        for g in &mine {
            // The chunk index travels as the bits of an f32, exactly.
            flat.push(f32::from_bits(g.chunk as u32));
            flat.extend_from_slice(&g.values);
            flat.extend(g.defined.iter().map(|&d| if d { 1.0f32 } else { 0.0 }));
        }
        let parts = self
            .comm
            .all_gather_f32_any(&flat)
            .context("gathering the chunks' gradients from every rank")?;
        let mut all = Vec::new();
        for (r, p) in parts.iter().enumerate() {
            if p.len() % (1 + n + vars) != 0 {
                bail!(
                    "rank {r} sent {} gradient values, not a whole number of chunks of {}",
                    p.len(),
                    1 + n + vars
                );
            }
            for c in p.chunks_exact(1 + n + vars) {
                all.push(ChunkGrad {
                    chunk: c[0].to_bits() as usize,
                    values: c[1..1 + n].to_vec(),
                    defined: c[1 + n..].iter().map(|&d| d > 0.0).collect(),
                });
            }
        }
        Ok(all)
    }
}

/// The gradient that one sampling chunk's members of an optimizer step's minibatches
/// contributed, in [`AdamW::flat_grads`]' layout.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkGrad {
    pub chunk: usize,
    pub values: Vec<f32>,
    /// Which variables got a gradient.
    pub defined: Vec<bool>,
}

impl ChunkGrad {
    /// Takes the gradients `opt` holds as chunk `chunk`'s and zeroes them.
    pub fn take(opt: &mut AdamW, chunk: usize) -> Self {
        let (values, defined) = opt.flat_grads();
        opt.zero_grad();
        Self {
            chunk,
            values,
            defined,
        }
    }

    /// Adds another minibatch's gradient of the same chunk.
    pub fn add(&mut self, other: &ChunkGrad) {
        for (a, b) in self.values.iter_mut().zip(&other.values) {
            *a += b;
        }
        for (a, b) in self.defined.iter_mut().zip(&other.defined) {
            *a |= b;
        }
    }
}

/// Adds `g` to the list of `parts` (the chunk's entry if it has one).
pub fn accumulate(parts: &mut Vec<ChunkGrad>, g: ChunkGrad) {
    match parts.iter_mut().find(|p| p.chunk == g.chunk) {
        Some(p) => p.add(&g),
        None => parts.push(g),
    }
}

/// The step's gradient: the chunks' gradients added in chunk order (the same float sums in one
/// process and on any number of ranks); a variable is defined when any chunk defined it.
pub fn sum_in_chunk_order(mut parts: Vec<ChunkGrad>) -> Result<(Vec<f32>, Vec<bool>)> {
    parts.sort_by_key(|p| p.chunk);
    if let Some(w) = parts.windows(2).find(|w| w[0].chunk == w[1].chunk) {
        bail!("chunk {} has two gradients", w[0].chunk);
    }
    let mut it = parts.into_iter();
    let Some(mut total) = it.next() else {
        bail!("no gradient to sum");
    };
    for p in it {
        if p.values.len() != total.values.len() || p.defined.len() != total.defined.len() {
            bail!("chunk {} has a gradient of another layout", p.chunk);
        }
        total.add(&p);
    }
    Ok((total.values, total.defined))
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

    /// The chunks' sum does not depend on the order the parts arrive in (ranks) or on how a
    /// chunk's minibatches were split, and a chunk met twice is an error.
    #[test]
    fn chunk_gradients_add_in_chunk_order() {
        let g = |chunk, values: &[f32], defined: &[bool]| ChunkGrad {
            chunk,
            values: values.to_vec(),
            defined: defined.to_vec(),
        };
        // Values whose f32 sum depends on the order: 1e8 + 1 − 1e8.
        let parts = vec![
            g(2, &[-1e8, 0.0], &[true, false]),
            g(0, &[1e8, 0.0], &[true, false]),
            g(1, &[1.0, 2.0], &[true, true]),
        ];
        let (v, d) = sum_in_chunk_order(parts.clone()).unwrap();
        assert_eq!(v, vec![(1e8f32 + 1.0) - 1e8, 2.0]);
        assert_eq!(d, vec![true, true]);
        let mut rev = parts.clone();
        rev.reverse();
        assert_eq!(sum_in_chunk_order(rev).unwrap(), (v.clone(), d.clone()));
        // Chunk 1's gradient in two minibatches.
        let mut split = vec![parts[0].clone(), parts[1].clone()];
        accumulate(&mut split, g(1, &[0.5, 2.0], &[true, true]));
        accumulate(&mut split, g(1, &[0.5, 0.0], &[false, false]));
        assert_eq!(split.len(), 3);
        assert_eq!(sum_in_chunk_order(split).unwrap(), (v, d));
        let twice = vec![parts[1].clone(), parts[1].clone()];
        assert!(sum_in_chunk_order(twice).is_err());
        assert!(sum_in_chunk_order(Vec::new()).is_err());
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
