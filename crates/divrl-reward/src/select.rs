//! Post-sampling selection: the most (or least) diverse M-subset of O candidates.
//!
//! Exhaustive search walks the subsets in lexicographic order along a search tree, carrying
//! incremental state (MMD: running kernel sums; GP-MI: two bordered Cholesky factors), so a
//! subset costs O(M) (MMD) or O(M²) (GP-MI) instead of a fresh evaluation. Ties keep the
//! lexicographically smallest subset. Greedy selection grows the subset one candidate at a
//! time for O too large to enumerate; it evaluates gains lazily (Minoux) whenever the gains
//! provably shrink as the subset grows, and re-evaluates all of them otherwise.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use faer::Mat;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::linalg::BorderedCholesky;
use crate::reward::SetStats;
use crate::{DiversityReward, Error, Features, Result, RewardKind};

/// Keep the subset with the largest or the smallest reward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Criterion {
    Max,
    Min,
}

impl Criterion {
    #[inline]
    fn better(self, a: f64, b: f64) -> bool {
        match self {
            Criterion::Max => a > b,
            Criterion::Min => a < b,
        }
    }
    fn worst(self) -> f64 {
        match self {
            Criterion::Max => f64::NEG_INFINITY,
            Criterion::Min => f64::INFINITY,
        }
    }
}

/// How to search.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Every C(O, M) subset; exact.
    Exhaustive,
    /// Greedy growth with lazy gain evaluation where valid; approximate.
    Greedy,
}

/// The chosen subset of one candidate set.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Selection {
    /// Candidate indices, ascending.
    pub subset: Vec<usize>,
    /// The set reward of the subset.
    pub reward: f64,
    /// Subsets scored (exhaustive) or marginal gains evaluated (greedy).
    pub evaluations: u64,
}

/// Largest C(O, M) exhaustive search accepts for one set.
pub const MAX_EXHAUSTIVE_SUBSETS: u64 = 50_000_000;

/// Number of M-subsets of O items (saturating).
pub fn binomial(o: usize, m: usize) -> u64 {
    if m > o {
        return 0;
    }
    let m = m.min(o - m);
    let mut acc: u128 = 1;
    for i in 0..m {
        acc = acc * (o - i) as u128 / (i + 1) as u128;
        if acc > u64::MAX as u128 {
            return u64::MAX;
        }
    }
    acc as u64
}

/// Selects the best `size`-subset of the rows of `candidates` under `reward`.
pub fn select(
    reward: &DiversityReward,
    candidates: &Features,
    size: usize,
    criterion: Criterion,
    method: Method,
) -> Result<Selection> {
    let mut v = select_sets(
        reward,
        candidates,
        candidates.rows(),
        size,
        criterion,
        method,
    )?;
    Ok(v.pop().expect("one set"))
}

/// Selects in each of the `candidates.rows() / per_set` consecutive candidate sets, all
/// scored against the same reference, in parallel over sets.
pub fn select_sets(
    reward: &DiversityReward,
    candidates: &Features,
    per_set: usize,
    size: usize,
    criterion: Criterion,
    method: Method,
) -> Result<Vec<Selection>> {
    check_request(reward, candidates, per_set, size, method)?;
    let sets = candidates.rows() / per_set;
    // Chunks of sets share one candidates×reference product.
    let chunk = 64usize;
    let chunks: Vec<Vec<Selection>> = (0..sets.div_ceil(chunk))
        .into_par_iter()
        .map(|c| {
            let s0 = c * chunk;
            let s1 = ((c + 1) * chunk).min(sets);
            let stats = reward.stats_batch(candidates, s0 * per_set, s1 - s0, per_set)?;
            stats
                .iter()
                .map(|st| select_in(reward, st, per_set, size, criterion, method))
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(chunks.into_iter().flatten().collect())
}

/// Like [`select_sets`] with one reference set (one reward) per candidate set.
pub fn select_sets_each(
    rewards: &[DiversityReward],
    candidates: &Features,
    per_set: usize,
    size: usize,
    criterion: Criterion,
    method: Method,
) -> Result<Vec<Selection>> {
    let first = rewards
        .first()
        .ok_or_else(|| Error::too_few("selection needs at least one candidate set"))?;
    check_request(first, candidates, per_set, size, method)?;
    let sets = candidates.rows() / per_set;
    if rewards.len() != sets {
        return Err(Error::Shape {
            what: "per-set reference sets".into(),
            expected: format!("{sets} (one per candidate set)"),
            got: rewards.len().to_string(),
        });
    }
    rewards
        .par_iter()
        .enumerate()
        .map(|(s, reward)| {
            let mut stats = reward.stats_batch(candidates, s * per_set, 1, per_set)?;
            let stats = stats.pop().expect("one set");
            select_in(reward, &stats, per_set, size, criterion, method)
        })
        .collect()
}

fn check_request(
    reward: &DiversityReward,
    candidates: &Features,
    per_set: usize,
    size: usize,
    method: Method,
) -> Result<()> {
    reward
        .reference()
        .check_same_dim(candidates, "the reference", "candidate")?;
    if per_set == 0 || candidates.rows() % per_set != 0 || candidates.rows() == 0 {
        return Err(Error::Shape {
            what: "candidate sets".into(),
            expected: "a positive whole number of sets of O candidates".into(),
            got: format!("{} rows in sets of {per_set}", candidates.rows()),
        });
    }
    if size > per_set {
        return Err(Error::too_few(format!(
            "cannot select {size} of {per_set} candidates per set (O < M)"
        )));
    }
    if size < reward.min_set_size() {
        let why = match reward.kind() {
            RewardKind::Recall => {
                format!(" (k-NN balls with k = {} need k + 1 members)", reward.k())
            }
            _ => String::new(),
        };
        return Err(Error::too_few(format!(
            "the {} reward needs subsets of at least {} samples{why}, asked for {size}",
            reward.kind(),
            reward.min_set_size()
        )));
    }
    match method {
        Method::Exhaustive => {
            let count = binomial(per_set, size);
            if count > MAX_EXHAUSTIVE_SUBSETS {
                return Err(Error::param(format!(
                    "C({per_set}, {size}) = {count} subsets per set is too many to enumerate (limit {MAX_EXHAUSTIVE_SUBSETS}); use greedy selection"
                )));
            }
        }
        Method::Greedy => {
            if reward.kind() == RewardKind::Recall {
                return Err(Error::param(
                    "greedy selection is defined for the mmd and gp-mi rewards (recall's balls need k+1 members before any gain exists); use exhaustive selection",
                ));
            }
        }
    }
    Ok(())
}

fn select_in(
    reward: &DiversityReward,
    stats: &SetStats,
    o: usize,
    m: usize,
    criterion: Criterion,
    method: Method,
) -> Result<Selection> {
    let sel = match method {
        Method::Exhaustive => exhaustive(reward, stats, o, m, criterion),
        Method::Greedy => greedy(reward, stats, o, m, criterion),
    }?;
    reward.check_finite(sel.reward, "the selected subset's reward")?;
    Ok(sel)
}

struct Best {
    criterion: Criterion,
    reward: f64,
    subset: Vec<usize>,
    evaluations: u64,
    /// A non-finite reward met on the way (the ranking is then meaningless).
    non_finite: Option<f64>,
}

impl Best {
    fn new(criterion: Criterion, m: usize) -> Self {
        Best {
            criterion,
            reward: criterion.worst(),
            subset: Vec::with_capacity(m),
            evaluations: 0,
            non_finite: None,
        }
    }
    #[inline]
    fn offer(&mut self, reward: f64, subset: &[usize]) {
        self.evaluations += 1;
        if !reward.is_finite() {
            self.non_finite.get_or_insert(reward);
        }
        // Strictly better only: the lexicographically first of tied subsets is kept,
        // because subsets arrive in lexicographic order.
        if self.criterion.better(reward, self.reward) || self.subset.is_empty() {
            self.reward = reward;
            self.subset.clear();
            self.subset.extend_from_slice(subset);
        }
    }
    fn finish(self, reward: &DiversityReward) -> Result<Selection> {
        if let Some(v) = self.non_finite {
            reward.check_finite(v, "the reward of a candidate subset")?;
        }
        Ok(Selection {
            subset: self.subset,
            reward: self.reward,
            evaluations: self.evaluations,
        })
    }
}

fn exhaustive(
    reward: &DiversityReward,
    stats: &SetStats,
    o: usize,
    m: usize,
    criterion: Criterion,
) -> Result<Selection> {
    let mut best = Best::new(criterion, m);
    let mut chosen = Vec::with_capacity(m);
    match stats {
        SetStats::Mmd { k, q } => mmd_dfs(reward, k, q, o, m, 0, &mut chosen, 0.0, 0.0, &mut best),
        SetStats::GpMi { a, s } => {
            let mut st = GpState::new(m);
            gp_dfs(reward, a, s, o, m, 0, &mut chosen, &mut st, 0.0, &mut best)?
        }
        SetStats::Recall { d_gg, d_gr } => recall_exhaustive(reward, d_gg, d_gr, m, &mut best),
    }
    best.finish(reward)
}

#[allow(clippy::too_many_arguments)]
fn mmd_dfs(
    reward: &DiversityReward,
    k: &Mat<f64>,
    q: &[f64],
    o: usize,
    m: usize,
    start: usize,
    chosen: &mut Vec<usize>,
    pair_sum: f64,
    q_sum: f64,
    best: &mut Best,
) {
    if chosen.len() == m {
        best.offer(reward.mmd_from_sums(2.0 * pair_sum, q_sum, m), chosen);
        return;
    }
    let last = o - (m - chosen.len());
    for j in start..=last {
        let add: f64 = chosen.iter().map(|&c| k[(c, j)]).sum();
        chosen.push(j);
        mmd_dfs(
            reward,
            k,
            q,
            o,
            m,
            j + 1,
            chosen,
            pair_sum + add,
            q_sum + q[j],
            best,
        );
        chosen.pop();
    }
}

struct GpState {
    a: BorderedCholesky,
    s: BorderedCholesky,
    /// Solved rows for `A` and `S` from the last [`GpState::peek`].
    ya: Vec<f64>,
    ys: Vec<f64>,
}

impl GpState {
    fn new(m: usize) -> Self {
        GpState {
            a: BorderedCholesky::new(m),
            s: BorderedCholesky::new(m),
            ya: vec![0.0; m],
            ys: vec![0.0; m],
        }
    }

    /// Conditional variances of `j` given the chosen set under `A` (= K_gg + λI) and under
    /// its Schur complement `S` (given the references), without changing the factors.
    #[inline]
    fn peek(
        &mut self,
        a: &Mat<f64>,
        s: &Mat<f64>,
        chosen: &[usize],
        j: usize,
        jitter: f64,
    ) -> Result<(f64, f64)> {
        let var_a = self
            .a
            .conditional_variance(|t| a[(chosen[t], j)], a[(j, j)], &mut self.ya);
        let var_s = self
            .s
            .conditional_variance(|t| s[(chosen[t], j)], s[(j, j)], &mut self.ys);
        if var_a.is_nan() || var_s.is_nan() || var_a <= 0.0 || var_s <= 0.0 {
            return Err(Error::Singular {
                what: "the kernel matrices of a candidate subset".into(),
                jitter,
            });
        }
        Ok((var_a, var_s))
    }

    /// [`GpState::peek`], then appends `j` to both factors.
    fn extend(
        &mut self,
        a: &Mat<f64>,
        s: &Mat<f64>,
        chosen: &[usize],
        j: usize,
        jitter: f64,
    ) -> Result<(f64, f64)> {
        let (var_a, var_s) = self.peek(a, s, chosen, j, jitter)?;
        // Both variances are positive, so both pushes succeed.
        self.a.push(&self.ya, var_a);
        self.s.push(&self.ys, var_s);
        Ok((var_a, var_s))
    }

    fn retract(&mut self) {
        self.a.pop();
        self.s.pop();
    }
}

/// `log_prefix` is `Σ ln(var_A / var_S)` over the chosen prefix, which equals
/// `ln det A_SS − ln det S_SS`; the reward of a full subset is that minus `ln det A_rr`.
/// The last level only needs the two conditional variances, not a factor update.
#[allow(clippy::too_many_arguments)]
fn gp_dfs(
    reward: &DiversityReward,
    a: &Mat<f64>,
    s: &Mat<f64>,
    o: usize,
    m: usize,
    start: usize,
    chosen: &mut Vec<usize>,
    st: &mut GpState,
    log_prefix: f64,
    best: &mut Best,
) -> Result<()> {
    let last = o - (m - chosen.len());
    if chosen.len() + 1 == m {
        for j in start..=last {
            let (va, vs) = st.peek(a, s, chosen, j, reward.jitter())?;
            chosen.push(j);
            best.offer(log_prefix + (va / vs).ln() - reward.logdet_rr(), chosen);
            chosen.pop();
        }
        return Ok(());
    }
    for j in start..=last {
        let (va, vs) = st.extend(a, s, chosen, j, reward.jitter())?;
        chosen.push(j);
        let r = gp_dfs(
            reward,
            a,
            s,
            o,
            m,
            j + 1,
            chosen,
            st,
            log_prefix + (va / vs).ln(),
            best,
        );
        chosen.pop();
        st.retract();
        r?;
    }
    Ok(())
}

/// Precomputed coverage bitsets for the Recall reward of one candidate set.
///
/// A member's ball radius is its distance to the k-th nearest other member, so it is always
/// one of the O − 1 distances to the other candidates. For candidate `i` and each of those
/// radii (others in ascending distance), `mask` holds the references within (≤) that
/// radius as a bitset; a subset's recall is then the popcount of an OR of M bitsets.
struct RecallMasks {
    o: usize,
    words: usize,
    /// `order[i * (o - 1) + r]`: the other candidate at distance rank `r` from `i`.
    order: Vec<usize>,
    /// `mask[((i * (o - 1)) + r) * words ..]`: references covered by `i` at radius rank `r`.
    mask: Vec<u64>,
}

impl RecallMasks {
    fn new(d_gg: &Mat<f64>, d_gr: &Mat<f64>) -> Self {
        let (o, n) = (d_gg.nrows(), d_gr.ncols());
        let words = n.div_ceil(64);
        let mut order = Vec::with_capacity(o * o.saturating_sub(1));
        let mut mask = vec![0u64; o * o.saturating_sub(1) * words];
        for i in 0..o {
            let mut others: Vec<usize> = (0..o).filter(|&j| j != i).collect();
            others.sort_by(|&a, &b| d_gg[(i, a)].total_cmp(&d_gg[(i, b)]));
            for (r, &j) in others.iter().enumerate() {
                let radius = d_gg[(i, j)];
                let m = &mut mask[(i * (o - 1) + r) * words..(i * (o - 1) + r + 1) * words];
                for t in 0..n {
                    if d_gr[(i, t)] <= radius {
                        m[t / 64] |= 1 << (t % 64);
                    }
                }
            }
            order.extend(others);
        }
        RecallMasks {
            o,
            words,
            order,
            mask,
        }
    }

    /// Number of references covered by the subset (members flagged in `in_set`) with
    /// k-NN balls: a member's radius rank is where its k-th fellow member appears in its
    /// distance order.
    fn covered(&self, subset: &[usize], in_set: &[bool], k: usize, acc: &mut [u64]) -> u32 {
        acc.iter_mut().for_each(|w| *w = 0);
        let stride = self.o - 1;
        for &i in subset {
            let order = &self.order[i * stride..(i + 1) * stride];
            let mut seen = 0;
            let mut rank = 0;
            for (r, &j) in order.iter().enumerate() {
                if in_set[j] {
                    seen += 1;
                    if seen == k {
                        rank = r;
                        break;
                    }
                }
            }
            let m = &self.mask[(i * stride + rank) * self.words..][..self.words];
            acc.iter_mut().zip(m).for_each(|(a, b)| *a |= b);
        }
        acc.iter().map(|w| w.count_ones()).sum()
    }
}

fn recall_exhaustive(
    reward: &DiversityReward,
    d_gg: &Mat<f64>,
    d_gr: &Mat<f64>,
    m: usize,
    best: &mut Best,
) {
    struct Walk<'a> {
        masks: RecallMasks,
        k: usize,
        n: f64,
        m: usize,
        chosen: Vec<usize>,
        in_set: Vec<bool>,
        acc: Vec<u64>,
        best: &'a mut Best,
    }
    impl Walk<'_> {
        fn rec(&mut self, start: usize) {
            if self.chosen.len() == self.m {
                let c = self
                    .masks
                    .covered(&self.chosen, &self.in_set, self.k, &mut self.acc);
                self.best.offer(f64::from(c) / self.n, &self.chosen);
                return;
            }
            for j in start..=self.masks.o - (self.m - self.chosen.len()) {
                self.chosen.push(j);
                self.in_set[j] = true;
                self.rec(j + 1);
                self.in_set[j] = false;
                self.chosen.pop();
            }
        }
    }
    let masks = RecallMasks::new(d_gg, d_gr);
    let mut walk = Walk {
        k: reward.k(),
        n: d_gr.ncols() as f64,
        m,
        chosen: Vec::with_capacity(m),
        in_set: vec![false; masks.o],
        acc: vec![0u64; masks.words],
        masks,
        best,
    };
    walk.rec(0);
}

/// A gain in a max-heap: larger first, then the smaller candidate index.
#[derive(PartialEq)]
struct HeapItem {
    gain: f64,
    idx: usize,
    stamp: usize,
}
impl Eq for HeapItem {}
impl PartialOrd for HeapItem {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for HeapItem {
    fn cmp(&self, other: &Self) -> Ordering {
        self.gain
            .total_cmp(&other.gain)
            .then_with(|| other.idx.cmp(&self.idx))
    }
}

fn greedy(
    reward: &DiversityReward,
    stats: &SetStats,
    o: usize,
    m: usize,
    criterion: Criterion,
) -> Result<Selection> {
    // Signed so that larger is always better.
    let sign = match criterion {
        Criterion::Max => 1.0,
        Criterion::Min => -1.0,
    };
    let nref = reward.reference().rows() as f64;
    let mf = m as f64;
    let mut chosen: Vec<usize> = Vec::with_capacity(m);
    let mut in_set = vec![false; o];
    let mut evaluations = 0u64;
    let mut gp = GpState::new(m);
    // Gain of adding j to `chosen` for the size-m objective.
    //  MMD: f(S) = 2Σq/(MN) − Σ_{i≠j}K/(M(M−1)) − mean K_rr, so the gain is
    //       2q_j/(MN) − 2Σ_{i∈S}K_ij/(M(M−1)); exact at |S| = M.
    //  GP-MI: f(S) = ln det A_S − ln det A_rr − ln det S_S, so the gain is
    //       ln var_A(j | S) − ln var_S(j | S).
    let mut gain = |chosen: &[usize], j: usize, gp: &mut GpState| -> Result<f64> {
        evaluations += 1;
        match stats {
            SetStats::Mmd { k, q } => {
                let ks: f64 = chosen.iter().map(|&i| k[(i, j)]).sum();
                Ok(sign * (2.0 * q[j] / (mf * nref) - 2.0 * ks / (mf * (mf - 1.0))))
            }
            SetStats::GpMi { a, s } => {
                let (va, vs) = gp.peek(a, s, chosen, j, reward.jitter())?;
                Ok(sign * (va / vs).ln())
            }
            SetStats::Recall { .. } => unreachable!("rejected in check_request"),
        }
        .and_then(|g| reward.check_finite(g, "a greedy gain"))
    };
    // Lazy evaluation is exact when gains can only shrink as S grows: for MMD under the
    // max criterion that holds iff every kernel entry between candidates is ≥ 0.
    let lazy = match (stats, criterion) {
        (SetStats::Mmd { k, .. }, Criterion::Max) => {
            (0..o).all(|i| (0..o).all(|j| k[(i, j)] >= 0.0))
        }
        _ => false,
    };
    if lazy {
        let mut heap = BinaryHeap::with_capacity(o);
        for j in 0..o {
            heap.push(HeapItem {
                gain: gain(&chosen, j, &mut gp)?,
                idx: j,
                stamp: 0,
            });
        }
        while chosen.len() < m {
            let top = heap.pop().expect("enough candidates");
            if top.stamp == chosen.len() {
                chosen.push(top.idx);
            } else {
                heap.push(HeapItem {
                    gain: gain(&chosen, top.idx, &mut gp)?,
                    idx: top.idx,
                    stamp: chosen.len(),
                });
            }
        }
    } else {
        while chosen.len() < m {
            let mut best: Option<(f64, usize)> = None;
            for j in (0..o).filter(|&j| !in_set[j]) {
                let g = gain(&chosen, j, &mut gp)?;
                if best.is_none_or(|(bg, _)| g > bg) {
                    best = Some((g, j));
                }
            }
            let (_, j) = best.expect("enough candidates");
            if let SetStats::GpMi { a, s } = stats {
                gp.extend(a, s, &chosen, j, reward.jitter())?;
            }
            in_set[j] = true;
            chosen.push(j);
        }
    }
    chosen.sort_unstable();
    let value = reward.subset_reward(stats, &chosen)?;
    Ok(Selection {
        subset: chosen,
        reward: value,
        evaluations,
    })
}
