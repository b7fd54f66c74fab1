//! The Diversity Rewards of a generated set against a cached reference set, and the
//! per-image marginal-utility rewards `r(X_g) − r(X_g \ {x_m})` in closed form.

use faer::{Accum, Mat, Par};
use serde::{Deserialize, Serialize};

use crate::kernel::{median_pairwise_distance, Kernel};
use crate::linalg::{
    cholesky, dot_products, logdet_and_inverse_diag, logdet_from_cholesky, matmul_into,
    solve_lower_in_place,
};
use crate::{Error, Features, Result};

/// Which Diversity Reward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RewardKind {
    /// Minus the unbiased MMD² with the polynomial kernel (paper eq. 11).
    Mmd,
    /// Gaussian-process mutual information with the RBF kernel (paper eq. 16).
    GpMi,
    /// Improved recall of the reference set by k-NN balls around generated points (appendix A).
    Recall,
}

impl RewardKind {
    pub fn name(self) -> &'static str {
        match self {
            RewardKind::Mmd => "mmd",
            RewardKind::GpMi => "gp-mi",
            RewardKind::Recall => "recall",
        }
    }
}

impl std::fmt::Display for RewardKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for RewardKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "mmd" => Ok(RewardKind::Mmd),
            "gp-mi" | "gpmi" | "mi" => Ok(RewardKind::GpMi),
            "recall" => Ok(RewardKind::Recall),
            _ => Err(Error::param(format!(
                "unknown reward kind '{s}' (expected mmd, gp-mi or recall)"
            ))),
        }
    }
}

/// Everything that defines a reward; unset kernel parameters take the documented defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RewardSpec {
    pub kind: RewardKind,
    /// Polynomial kernel degree (MMD), default 3.
    pub degree: Option<u32>,
    /// Polynomial kernel scale (MMD), default 1/D.
    pub gamma: Option<f64>,
    /// Polynomial kernel offset (MMD), default 1.
    pub coef0: Option<f64>,
    /// RBF bandwidth (GP-MI, and MMD with the RBF kernel), default `sigma_scale` × the median
    /// pairwise distance of the references.
    pub sigma: Option<f64>,
    /// Multiple of the references' median pairwise distance used as the RBF bandwidth when
    /// `sigma` is not given (default 1).
    pub sigma_scale: f64,
    /// Kernel of the MMD reward: the KID polynomial kernel (default) or the RBF kernel.
    pub mmd_kernel: MmdKernel,
    /// Added to the kernel diagonal before log-determinants (GP-MI).
    pub jitter: f64,
    /// Nearest-neighbour rank of the ball radius (Recall).
    pub k: usize,
}

/// The kernel of the MMD reward. The polynomial (KID) kernel compares low-order moments of the
/// two sets; the RBF kernel, at a bandwidth near the references' typical distance, compares the
/// sets point by point, so a generated set is rewarded for sitting near *many* references.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MmdKernel {
    #[default]
    Polynomial,
    Rbf,
}

impl MmdKernel {
    pub fn name(self) -> &'static str {
        match self {
            MmdKernel::Polynomial => "polynomial",
            MmdKernel::Rbf => "rbf",
        }
    }
}

impl std::fmt::Display for MmdKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for MmdKernel {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "polynomial" | "poly" => Ok(MmdKernel::Polynomial),
            "rbf" => Ok(MmdKernel::Rbf),
            _ => Err(Error::param(format!(
                "unknown MMD kernel {s:?}: expected polynomial or rbf"
            ))),
        }
    }
}

impl Default for RewardSpec {
    fn default() -> Self {
        RewardSpec {
            kind: RewardKind::Mmd,
            degree: None,
            gamma: None,
            coef0: None,
            sigma: None,
            sigma_scale: 1.0,
            mmd_kernel: MmdKernel::Polynomial,
            jitter: 1e-6,
            k: 3,
        }
    }
}

impl RewardSpec {
    pub fn new(kind: RewardKind) -> Self {
        RewardSpec {
            kind,
            ..Default::default()
        }
    }

    /// The RBF bandwidth for `reference`: `sigma`, or `sigma_scale` × the median pairwise
    /// distance of the references.
    pub fn rbf_sigma(&self, reference: &Features) -> Result<f64> {
        match self.sigma {
            Some(s) => Ok(s),
            None => {
                if !(self.sigma_scale.is_finite() && self.sigma_scale > 0.0) {
                    return Err(Error::param(format!(
                        "sigma_scale must be a positive number, got {}",
                        self.sigma_scale
                    )));
                }
                Ok(self.sigma_scale * median_pairwise_distance(reference)?)
            }
        }
    }
}

/// A set reward and the marginal utility of each member.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RewardOutput {
    pub kind: RewardKind,
    pub set_reward: f64,
    pub individual: Vec<f64>,
}

/// A Diversity Reward bound to one reference set.
///
/// Everything that depends only on the references (the kernel bandwidth, the mean of
/// `K_rr`, the Cholesky factor of `K_rr + λI`, squared norms) is computed once here.
#[derive(Clone, Debug)]
pub struct DiversityReward {
    kind: RewardKind,
    kernel: Option<Kernel>,
    k: usize,
    jitter: f64,
    reference: Features,
    ref_sq: Vec<f64>,
    /// MMD: mean of `K_rr` over i ≠ j.
    mean_rr: f64,
    /// GP-MI: lower Cholesky factor of `K_rr + λI` and its log-determinant.
    l_rr: Option<Mat<f64>>,
    logdet_rr: f64,
}

/// What a reward needs to know about one generated (or candidate) set: its kernel or
/// distance matrices against itself and the references. Subsets are scored from these
/// without touching the features again.
#[derive(Clone, Debug)]
pub(crate) enum SetStats {
    /// `k`: K_gg; `q[i]`: Σ_n k(g_i, r_n).
    Mmd { k: Mat<f64>, q: Vec<f64> },
    /// `a`: K_gg + λI; `s`: its Schur complement in the joint matrix,
    /// `K_gg + λI − K_gr (K_rr + λI)⁻¹ K_rg` (the covariance of g given the references).
    GpMi { a: Mat<f64>, s: Mat<f64> },
    /// Squared distances generated–generated and generated–reference.
    Recall { d_gg: Mat<f64>, d_gr: Mat<f64> },
}

impl DiversityReward {
    /// Binds the reward described by `spec` to `reference` (N × D).
    pub fn new(spec: &RewardSpec, reference: Features) -> Result<Self> {
        let n = reference.rows();
        let ref_sq = reference.checked_sq_norms("reference")?;
        let mut out = DiversityReward {
            kind: spec.kind,
            kernel: None,
            k: spec.k,
            jitter: spec.jitter,
            reference,
            ref_sq,
            mean_rr: 0.0,
            l_rr: None,
            logdet_rr: 0.0,
        };
        match spec.kind {
            RewardKind::Mmd => {
                if n < 2 {
                    return Err(Error::too_few(format!(
                        "the unbiased MMD needs at least 2 reference samples, got {n}"
                    )));
                }
                let kernel = match spec.mmd_kernel {
                    MmdKernel::Polynomial => Kernel::polynomial(
                        out.reference.dim(),
                        spec.degree,
                        spec.gamma,
                        spec.coef0,
                    )?,
                    MmdKernel::Rbf => Kernel::rbf(spec.rbf_sigma(&out.reference)?)?,
                };
                let k_rr = kernel.cross(&out.reference, &out.reference);
                kernel.check_finite(&k_rr, "the reference features")?;
                let mut off = 0.0;
                for i in 0..n {
                    for j in 0..n {
                        if i != j {
                            off += k_rr[(i, j)];
                        }
                    }
                }
                out.mean_rr = off / (n * (n - 1)) as f64;
                if !out.mean_rr.is_finite() {
                    return Err(Error::param(format!(
                        "the mean of the reference kernel matrix is not finite with the {}: {}",
                        kernel.describe(),
                        kernel.overflow_hint()
                    )));
                }
                out.kernel = Some(kernel);
            }
            RewardKind::GpMi => {
                if !(spec.jitter.is_finite() && spec.jitter >= 0.0) {
                    return Err(Error::param(format!(
                        "jitter must be a non-negative number, got {}",
                        spec.jitter
                    )));
                }
                if n < 1 {
                    return Err(Error::too_few(
                        "the GP-MI reward needs at least 1 reference sample, got 0",
                    ));
                }
                let kernel = Kernel::rbf(spec.rbf_sigma(&out.reference)?)?;
                let mut a_rr = kernel.cross(&out.reference, &out.reference);
                kernel.check_finite(&a_rr, "the reference features")?;
                for i in 0..n {
                    a_rr[(i, i)] += spec.jitter;
                }
                let l = cholesky(
                    a_rr.as_ref(),
                    "the reference kernel matrix K_rr",
                    spec.jitter,
                )?;
                out.logdet_rr = logdet_from_cholesky(l.as_ref());
                out.l_rr = Some(l);
                out.kernel = Some(kernel);
            }
            RewardKind::Recall => {
                if spec.k == 0 {
                    return Err(Error::param("k must be at least 1"));
                }
                if n < 1 {
                    return Err(Error::too_few(
                        "the recall reward needs at least 1 reference sample, got 0",
                    ));
                }
            }
        }
        Ok(out)
    }

    pub fn kind(&self) -> RewardKind {
        self.kind
    }

    /// The kernel in use (with defaults resolved), if the reward has one.
    pub fn kernel(&self) -> Option<Kernel> {
        self.kernel
    }

    pub fn reference(&self) -> &Features {
        &self.reference
    }

    /// Nearest-neighbour rank of the Recall reward.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Smallest generated-set size the set reward is defined for.
    pub fn min_set_size(&self) -> usize {
        match self.kind {
            RewardKind::Mmd => 2,
            RewardKind::GpMi => 1,
            RewardKind::Recall => self.k.saturating_add(1),
        }
    }

    /// Smallest generated-set size the leave-one-out (individual) rewards are defined for.
    pub fn min_individual_size(&self) -> usize {
        match self.kind {
            RewardKind::GpMi => 1,
            _ => self.min_set_size().saturating_add(1),
        }
    }

    fn check_size(&self, m: usize, need: usize, what: &str) -> Result<()> {
        if m < need {
            let why = match self.kind {
                RewardKind::Mmd => "the unbiased MMD estimator".to_string(),
                RewardKind::GpMi => "the GP-MI reward".to_string(),
                RewardKind::Recall => format!("k-NN balls with k = {}", self.k),
            };
            return Err(Error::too_few(format!(
                "{what} for {why} needs at least {need} generated samples, got {m}"
            )));
        }
        Ok(())
    }

    /// The set reward `r(X_g; X_r)`.
    pub fn set_reward(&self, generated: &Features) -> Result<f64> {
        self.reference
            .check_same_dim(generated, "the reference", "generated")?;
        self.check_size(generated.rows(), self.min_set_size(), "the set reward")?;
        let stats = self.stats(generated)?;
        let all: Vec<usize> = (0..generated.rows()).collect();
        let r = self.subset_reward(&stats, &all)?;
        self.check_finite(r, "the set reward")
    }

    /// The marginal utility of every generated image, `r(X_g) − r(X_g \ {x_m})`.
    pub fn individual(&self, generated: &Features) -> Result<Vec<f64>> {
        Ok(self.evaluate(generated)?.individual)
    }

    /// The set reward and every individual reward, sharing one pass over the features.
    pub fn evaluate(&self, generated: &Features) -> Result<RewardOutput> {
        self.reference
            .check_same_dim(generated, "the reference", "generated")?;
        let m = generated.rows();
        self.check_size(
            m,
            self.min_individual_size(),
            "leave-one-out (individual) rewards",
        )?;
        let stats = self.stats(generated)?;
        let all: Vec<usize> = (0..m).collect();
        let set_reward = self.subset_reward(&stats, &all)?;
        self.check_finite(set_reward, "the set reward")?;
        let individual: Vec<f64> = match &stats {
            SetStats::Mmd { k, q } => {
                // r = −[P/(M(M−1)) + C_rr − 2Q/(MN)] with P = Σ_{i≠j} K_ij, Q = Σ_i q_i.
                // Removing m: P − 2·s_m and Q − q_m, with s_m = Σ_{j≠m} K_mj.
                let n = self.reference.rows() as f64;
                let mf = m as f64;
                let s: Vec<f64> = (0..m)
                    .map(|i| (0..m).filter(|&j| j != i).map(|j| k[(i, j)]).sum())
                    .collect();
                let p: f64 = s.iter().sum();
                let q_tot: f64 = q.iter().sum();
                (0..m)
                    .map(|i| {
                        let p_loo = p - 2.0 * s[i];
                        let q_loo = q_tot - q[i];
                        let r_loo = -(p_loo / ((mf - 1.0) * (mf - 2.0)) + self.mean_rr
                            - 2.0 * q_loo / ((mf - 1.0) * n));
                        set_reward - r_loo
                    })
                    .collect()
            }
            SetStats::GpMi { a, s } => {
                // ln det(A without m) = ln det A + ln (A⁻¹)_mm, and the g-block of the joint
                // inverse is S⁻¹, so r̂_m = ln (S⁻¹)_mm − ln (A⁻¹)_mm.
                let (_, inv_a) = logdet_and_inverse_diag(
                    a.as_ref(),
                    "the generated kernel matrix K_gg",
                    self.jitter,
                )?;
                let (_, inv_s) =
                    logdet_and_inverse_diag(s.as_ref(), "the joint kernel matrix", self.jitter)?;
                inv_s
                    .iter()
                    .zip(&inv_a)
                    .map(|(s, a)| s.ln() - a.ln())
                    .collect()
            }
            SetStats::Recall { .. } => (0..m)
                .map(|i| {
                    let rest: Vec<usize> = (0..m).filter(|&j| j != i).collect();
                    self.subset_reward(&stats, &rest).map(|r| set_reward - r)
                })
                .collect::<Result<Vec<_>>>()?,
        };
        for (i, &v) in individual.iter().enumerate() {
            self.check_finite(v, &format!("the individual reward of image {i}"))?;
        }
        Ok(RewardOutput {
            kind: self.kind,
            set_reward,
            individual,
        })
    }

    /// The statistics of one set.
    pub(crate) fn stats(&self, generated: &Features) -> Result<SetStats> {
        let mut v = self.stats_batch(generated, 0, 1, generated.rows())?;
        Ok(v.pop().expect("one set"))
    }

    /// The statistics of `count` consecutive sets of `per_set` rows each, starting at row
    /// `first_row` of `sets`, computing the set-against-reference products for all of them
    /// in one matrix product.
    pub(crate) fn stats_batch(
        &self,
        sets: &Features,
        first_row: usize,
        count: usize,
        per_set: usize,
    ) -> Result<Vec<SetStats>> {
        let block = sets.as_mat().subrows(first_row, count * per_set);
        // Each set's Gram matrix; its diagonal gives the squared norms.
        let grams: Vec<Mat<f64>> = (0..count)
            .map(|s| {
                let rows = block.subrows(s * per_set, per_set);
                dot_products(rows, rows, Par::Seq)
            })
            .collect();
        let g_sq: Vec<f64> = grams
            .iter()
            .flat_map(|g| (0..per_set).map(move |i| g[(i, i)]))
            .collect();
        crate::features::check_sq_norms(&g_sq, first_row, "generated (or candidate)")?;
        let dots_gr = dot_products(block, self.reference.as_mat(), Par::Seq);
        let kernel_gr = match self.kernel {
            Some(k) => {
                let m = k.from_dots(&dots_gr, &g_sq, &self.ref_sq);
                k.check_finite(&m, "the generated and the reference features")?;
                Some(m)
            }
            None => None,
        };
        // GP-MI: W = L_rr⁻¹ K_rg for every row at once.
        let w = match (&self.l_rr, &kernel_gr) {
            (Some(l), Some(k_gr)) => {
                let mut w = k_gr.transpose().to_owned();
                solve_lower_in_place(l.as_ref(), &mut w, Par::Seq);
                Some(w)
            }
            _ => None,
        };
        let mut out = Vec::with_capacity(count);
        for (s, dots_gg) in grams.iter().enumerate() {
            let r0 = s * per_set;
            let sq = &g_sq[r0..r0 + per_set];
            out.push(match self.kind {
                RewardKind::Mmd => {
                    let kernel = self.kernel.expect("mmd kernel");
                    let k_gr = kernel_gr.as_ref().expect("mmd cross kernel");
                    let q = (r0..r0 + per_set)
                        .map(|i| (0..k_gr.ncols()).map(|j| k_gr[(i, j)]).sum())
                        .collect();
                    let k = kernel.from_dots(dots_gg, sq, sq);
                    kernel.check_finite(&k, "the generated features")?;
                    SetStats::Mmd { k, q }
                }
                RewardKind::GpMi => {
                    let kernel = self.kernel.expect("gp-mi kernel");
                    let mut a = kernel.from_dots(dots_gg, sq, sq);
                    kernel.check_finite(&a, "the generated features")?;
                    for i in 0..per_set {
                        a[(i, i)] += self.jitter;
                    }
                    let w_s = w.as_ref().expect("gp-mi solve").subcols(r0, per_set);
                    let mut s_mat = a.clone();
                    matmul_into(
                        s_mat.as_mut(),
                        Accum::Add,
                        w_s.transpose(),
                        w_s,
                        -1.0,
                        Par::Seq,
                    );
                    SetStats::GpMi { a, s: s_mat }
                }
                RewardKind::Recall => SetStats::Recall {
                    d_gg: crate::linalg::sq_dists_from_dots(dots_gg, sq, sq),
                    d_gr: crate::linalg::sq_dists_from_dots(
                        &dots_gr.subrows(r0, per_set).to_owned(),
                        sq,
                        &self.ref_sq,
                    ),
                },
            });
        }
        Ok(out)
    }

    /// The set reward of the rows `subset` of a set whose statistics are `stats`.
    pub(crate) fn subset_reward(&self, stats: &SetStats, subset: &[usize]) -> Result<f64> {
        let m = subset.len();
        let n = self.reference.rows();
        match stats {
            SetStats::Mmd { k, q } => {
                let mut p = 0.0;
                for (a, &i) in subset.iter().enumerate() {
                    for &j in &subset[a + 1..] {
                        p += k[(i, j)];
                    }
                }
                let q_tot: f64 = subset.iter().map(|&i| q[i]).sum();
                Ok(self.mmd_from_sums(2.0 * p, q_tot, m))
            }
            SetStats::GpMi { a, s } => {
                let a_sub = faer::Mat::from_fn(m, m, |x, y| a[(subset[x], subset[y])]);
                let s_sub = faer::Mat::from_fn(m, m, |x, y| s[(subset[x], subset[y])]);
                let la = cholesky(
                    a_sub.as_ref(),
                    "the generated kernel matrix K_gg",
                    self.jitter,
                )?;
                let ls = cholesky(s_sub.as_ref(), "the joint kernel matrix", self.jitter)?;
                Ok(logdet_from_cholesky(la.as_ref())
                    - self.logdet_rr
                    - logdet_from_cholesky(ls.as_ref()))
            }
            SetStats::Recall { d_gg, d_gr } => {
                let radii = recall_radii(d_gg, subset, self.k);
                Ok(recall_from_radii(d_gr, subset, &radii, n))
            }
        }
    }

    /// `−[P/(M(M−1)) + mean K_rr − 2Q/(MN)]` from `P = Σ_{i≠j∈S} K_ij` and `Q = Σ_{i∈S} q_i`.
    #[inline]
    pub(crate) fn mmd_from_sums(&self, p_offdiag: f64, q_tot: f64, m: usize) -> f64 {
        let mf = m as f64;
        let nf = self.reference.rows() as f64;
        -(p_offdiag / (mf * (mf - 1.0)) + self.mean_rr - 2.0 * q_tot / (mf * nf))
    }

    /// `value` if finite, else an error naming `what` and the likely cause.
    pub(crate) fn check_finite(&self, value: f64, what: &str) -> Result<f64> {
        if value.is_finite() {
            return Ok(value);
        }
        let cause = match (self.kind, self.kernel) {
            (RewardKind::Mmd, Some(k)) => format!(
                "its kernel sums overflow f64 with the {}: {}",
                k.describe(),
                k.overflow_hint()
            ),
            (RewardKind::GpMi, Some(k)) => format!(
                "its log-determinants overflow with the {} and jitter {:e}: change --jitter or --sigma",
                k.describe(),
                self.jitter
            ),
            _ => "non-finite distances: rescale the features".to_string(),
        };
        Err(Error::param(format!(
            "{what} of the {} reward is not finite ({value}): {cause}",
            self.kind
        )))
    }

    /// `ln det(K_rr + λI)` (GP-MI).
    pub(crate) fn logdet_rr(&self) -> f64 {
        self.logdet_rr
    }

    pub(crate) fn jitter(&self) -> f64 {
        self.jitter
    }
}

/// Squared radius of each subset member's ball: the squared distance to its k-th nearest
/// *other* member.
pub(crate) fn recall_radii(d_gg: &Mat<f64>, subset: &[usize], k: usize) -> Vec<f64> {
    let mut buf = Vec::with_capacity(subset.len());
    subset
        .iter()
        .map(|&i| {
            buf.clear();
            buf.extend(subset.iter().filter(|&&j| j != i).map(|&j| d_gg[(i, j)]));
            let (_, kth, _) = buf.select_nth_unstable_by(k - 1, f64::total_cmp);
            *kth
        })
        .collect()
}

/// Share of the `n` references within (≤) the ball of at least one subset member.
pub(crate) fn recall_from_radii(d_gr: &Mat<f64>, subset: &[usize], radii: &[f64], n: usize) -> f64 {
    let covered = (0..n)
        .filter(|&r| {
            subset
                .iter()
                .zip(radii)
                .any(|(&i, &rad)| d_gr[(i, r)] <= rad)
        })
        .count();
    covered as f64 / n as f64
}
