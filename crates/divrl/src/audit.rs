//! The reward audit (`divrl audit`): before spending compute, can ϕ and the reward see the
//! attribute a user wants balanced?
//!
//! A base model's samples (labelled by the exact oracle) and real images of the evaluation pool
//! are scored in random sets of M against per-class balanced references, as the trainer scores
//! them. Reported per attribute value: the marginal rewards r(X) − r(X∖x) and the advantages
//! after the trainer's per-condition normalisation; the *minority test* (in sets of M−1
//! majority + 1 minority images, how often the minority image earns the highest marginal
//! reward, chance 1/M, and how often such a set out-scores the all-majority set it came from);
//! and nearest-neighbour distances in ϕ from generated images to real ones of each value.
//!
//! The set draws and statistics are pure functions on [`Features`] (no tensors); [`run_audit`]
//! loads the model, samples, labels and extracts features around them.
use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use tch::{Device, Kind, Tensor};

use divrl_reward::{DiversityReward, Features, MmdKernel, RewardKind, RewardSpec};

use crate::features::{Extractor, FeatureCache};
use crate::rl::advantage::{clip_advantages, mean_std, ConditionStatTracker};
use crate::rng::SplitMix64;

// ---------------------------------------------------------------------------------------------
// Pure maths
// ---------------------------------------------------------------------------------------------

/// Count, mean, population standard deviation and quartiles of a sample (NaN when empty).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub sd: f64,
    pub q1: f64,
    pub median: f64,
    pub q3: f64,
}

impl Summary {
    pub fn of(v: &[f64]) -> Self {
        let (mean, sd) = if v.is_empty() {
            (f64::NAN, f64::NAN)
        } else {
            mean_std(v)
        };
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        Summary {
            count: v.len(),
            mean,
            sd,
            q1: quantile(&s, 0.25),
            median: quantile(&s, 0.5),
            q3: quantile(&s, 0.75),
        }
    }
}

/// Quantile `q` of ascending `sorted` data, linearly interpolated (numpy's default); NaN when
/// empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// `m` distinct indices of `0..n`, uniformly at random (a partial Fisher–Yates shuffle).
pub fn draw_subset(rng: &mut SplitMix64, n: usize, m: usize) -> Vec<usize> {
    let m = m.min(n);
    let mut idx: Vec<usize> = (0..n).collect();
    for i in 0..m {
        let j = i + rng.below(n - i);
        idx.swap(i, j);
    }
    idx.truncate(m);
    idx
}

/// How member `pos` of a set stands among the set's marginal rewards: whether it is strictly
/// the highest, and its reward minus the best other member's.
pub fn standing(rewards: &[f64], pos: usize) -> (bool, f64) {
    let best_other = rewards
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != pos)
        .map(|(_, &r)| r)
        .fold(f64::NEG_INFINITY, f64::max);
    let margin = rewards[pos] - best_other;
    (margin > 0.0, margin)
}

/// Euclidean distance from `x` to its nearest row of `set` (infinite when `set` is empty).
pub fn nearest_distance(x: &[f64], set: &Features) -> f64 {
    (0..set.rows())
        .map(|i| {
            set.row(i)
                .iter()
                .zip(x)
                .map(|(a, b)| (a - b) * (a - b))
                .sum::<f64>()
        })
        .fold(f64::INFINITY, f64::min)
        .sqrt()
}

/// One class's images in ϕ's space with their attribute values (one per row).
#[derive(Debug, Clone)]
pub struct ClassSamples {
    pub class: i64,
    pub features: Features,
    pub attributes: Vec<u8>,
}

impl ClassSamples {
    /// Row indices whose attribute is `value`.
    pub fn with_value(&self, value: u8) -> Vec<usize> {
        (0..self.attributes.len())
            .filter(|&i| self.attributes[i] == value)
            .collect()
    }
}

/// How sets are drawn and rewards turned into advantages (the trainer's defaults).
#[derive(Debug, Clone, Serialize)]
pub struct DrawParams {
    /// Set size M.
    pub m: usize,
    /// Random sets per class (and minority-test sets per eligible class).
    pub draws: usize,
    pub seed: u64,
    /// The attribute value whose visibility is tested.
    pub minority: u8,
    /// [`ConditionStatTracker`] history and minimum count, and the advantage clip.
    pub tracker_buffer: usize,
    pub tracker_min_count: usize,
    pub adv_clip: f64,
}

/// Marginal rewards and advantages of the images of one attribute value.
#[derive(Debug, Clone, Serialize)]
pub struct ValueStats {
    pub value: u8,
    /// Images of this value in the population.
    pub images: usize,
    /// Over all drawn sets: r(X) − r(X∖x) of each member with this value.
    pub marginal: Summary,
    /// The same members' advantages after per-condition normalisation and clipping.
    pub advantage: Summary,
}

/// The minority test of one class.
#[derive(Debug, Clone, Serialize)]
pub struct ClassMinority {
    pub class: i64,
    pub minority_images: usize,
    pub majority_images: usize,
    pub draws: usize,
    pub top_share: f64,
}

/// Sets of M−1 majority + 1 minority images of one class: how often the minority image has the
/// highest marginal reward (chance 1/M), by how much, and how often the set out-scores the
/// all-majority set made by putting one more majority image in the minority image's place.
#[derive(Debug, Clone, Serialize)]
pub struct MinorityTest {
    /// Classes with at least one minority and M majority images (the others are skipped).
    pub classes: Vec<ClassMinority>,
    pub draws: usize,
    pub chance: f64,
    pub top_share: f64,
    /// Minority reward minus the best other member's, over all draws.
    pub margin: Summary,
    pub beats_majority_share: f64,
    /// Set reward of the mixed set minus that of the all-majority set.
    pub set_gain: Summary,
}

/// The audit of one image population (generated or real) under one reward.
#[derive(Debug, Clone, Serialize)]
pub struct PopulationAudit {
    pub values: Vec<ValueStats>,
    pub minority_test: MinorityTest,
}

/// Random M-sets of each class, scored as the trainer scores a rollout (one set per class a
/// round, the tracker updated with the round's rewards), summarised per attribute value; then
/// the minority test. `rewards` holds each class's reward bound to its references.
pub fn audit_population(
    samples: &[ClassSamples],
    rewards: &BTreeMap<i64, DiversityReward>,
    p: &DrawParams,
) -> Result<PopulationAudit> {
    if p.m < 2 || p.draws == 0 {
        bail!("the audit needs M >= 2 and at least one draw");
    }
    let reward_of = |c: i64| {
        rewards
            .get(&c)
            .with_context(|| format!("no reward for class {c}"))
    };
    let mut rng = SplitMix64(p.seed);
    let mut tracker = ConditionStatTracker::new(p.tracker_buffer, p.tracker_min_count);
    let mut marginal: BTreeMap<u8, Vec<f64>> = BTreeMap::new();
    let mut advantage: BTreeMap<u8, Vec<f64>> = BTreeMap::new();
    let usable: Vec<&ClassSamples> = samples
        .iter()
        .filter(|s| s.attributes.len() >= p.m)
        .collect();
    for _ in 0..p.draws {
        let mut conds = Vec::new();
        let mut rs = Vec::new();
        let mut vals = Vec::new();
        for s in &usable {
            let idx = draw_subset(&mut rng, s.attributes.len(), p.m);
            let r = reward_of(s.class)?
                .individual(&s.features.select_rows(&idx))
                .with_context(|| format!("marginal rewards of class {}", s.class))?;
            for (k, &i) in idx.iter().enumerate() {
                conds.push(s.class);
                rs.push(r[k]);
                vals.push(s.attributes[i]);
            }
        }
        if rs.is_empty() {
            break;
        }
        let mut adv = tracker.update(&conds, &rs)?;
        clip_advantages(&mut adv, p.adv_clip);
        for ((&v, &r), &a) in vals.iter().zip(&rs).zip(&adv) {
            marginal.entry(v).or_default().push(r);
            advantage.entry(v).or_default().push(a);
        }
    }
    let mut all_values: Vec<u8> = samples.iter().flat_map(|s| s.attributes.clone()).collect();
    all_values.push(p.minority);
    all_values.sort_unstable();
    all_values.dedup();
    let values = all_values
        .iter()
        .map(|&v| ValueStats {
            value: v,
            images: samples.iter().map(|s| s.with_value(v).len()).sum(),
            marginal: Summary::of(marginal.get(&v).map_or(&[][..], |x| x.as_slice())),
            advantage: Summary::of(advantage.get(&v).map_or(&[][..], |x| x.as_slice())),
        })
        .collect();
    Ok(PopulationAudit {
        values,
        minority_test: minority_test(samples, rewards, p, &mut rng)?,
    })
}

/// The minority test (see [`MinorityTest`]).
fn minority_test(
    samples: &[ClassSamples],
    rewards: &BTreeMap<i64, DiversityReward>,
    p: &DrawParams,
    rng: &mut SplitMix64,
) -> Result<MinorityTest> {
    let mut classes = Vec::new();
    let (mut tops, mut wins, mut n) = (0usize, 0usize, 0usize);
    let mut margins = Vec::new();
    let mut gains = Vec::new();
    for s in samples {
        let minor = s.with_value(p.minority);
        let major: Vec<usize> = (0..s.attributes.len())
            .filter(|&i| s.attributes[i] != p.minority)
            .collect();
        if minor.is_empty() || major.len() < p.m {
            continue;
        }
        let reward = rewards
            .get(&s.class)
            .with_context(|| format!("no reward for class {}", s.class))?;
        let mut class_tops = 0usize;
        for _ in 0..p.draws {
            let mi = minor[rng.below(minor.len())];
            // M majority images: the first M−1 join the minority image, the last replaces it.
            let maj: Vec<usize> = draw_subset(rng, major.len(), p.m)
                .into_iter()
                .map(|k| major[k])
                .collect();
            let mut mixed = maj[..p.m - 1].to_vec();
            mixed.push(mi);
            let out = reward.evaluate(&s.features.select_rows(&mixed))?;
            let (top, margin) = standing(&out.individual, p.m - 1);
            let all_major = reward.set_reward(&s.features.select_rows(&maj))?;
            class_tops += usize::from(top);
            wins += usize::from(out.set_reward > all_major);
            margins.push(margin);
            gains.push(out.set_reward - all_major);
        }
        tops += class_tops;
        n += p.draws;
        classes.push(ClassMinority {
            class: s.class,
            minority_images: minor.len(),
            majority_images: major.len(),
            draws: p.draws,
            top_share: class_tops as f64 / p.draws as f64,
        });
    }
    let share = |k: usize| {
        if n == 0 {
            f64::NAN
        } else {
            k as f64 / n as f64
        }
    };
    Ok(MinorityTest {
        classes,
        draws: n,
        chance: 1.0 / p.m as f64,
        top_share: share(tops),
        margin: Summary::of(&margins),
        beats_majority_share: share(wins),
        set_gain: Summary::of(&gains),
    })
}

/// Mean nearest-neighbour distances in ϕ from the generated images of one value to the real
/// images of the same class with the minority and with a majority value.
#[derive(Debug, Clone, Serialize)]
pub struct NearestNeighbours {
    pub generated_value: u8,
    pub images: usize,
    pub to_real_minority: f64,
    pub to_real_majority: f64,
    /// Share of these images whose nearest real image of the class has the minority value.
    pub nearest_is_minority_share: f64,
}

/// [`NearestNeighbours`] of the generated images with attribute `value`, within each class.
pub fn nearest_neighbours(
    generated: &[ClassSamples],
    real: &[ClassSamples],
    value: u8,
    minority: u8,
) -> NearestNeighbours {
    let (mut to_min, mut to_maj, mut near_min, mut n) = (0.0, 0.0, 0usize, 0usize);
    for g in generated {
        let Some(r) = real.iter().find(|r| r.class == g.class) else {
            continue;
        };
        let rmin = r.features.select_rows(&r.with_value(minority));
        let maj: Vec<usize> = (0..r.attributes.len())
            .filter(|&i| r.attributes[i] != minority)
            .collect();
        let rmaj = r.features.select_rows(&maj);
        if rmin.rows() == 0 || rmaj.rows() == 0 {
            continue;
        }
        for i in g.with_value(value) {
            let a = nearest_distance(g.features.row(i), &rmin);
            let b = nearest_distance(g.features.row(i), &rmaj);
            to_min += a;
            to_maj += b;
            near_min += usize::from(a < b);
            n += 1;
        }
    }
    let mean = |x: f64| if n == 0 { f64::NAN } else { x / n as f64 };
    NearestNeighbours {
        generated_value: value,
        images: n,
        to_real_minority: mean(to_min),
        to_real_majority: mean(to_maj),
        nearest_is_minority_share: mean(near_min as f64),
    }
}

/// The value of `0..arity` that occurs least often in `values` (the highest on ties).
pub fn rarest_value(values: &[u8], arity: usize) -> u8 {
    let c = counts(values, arity);
    (0..arity)
        .rev()
        .min_by_key(|&v| c[v])
        .map_or(0, |v| v as u8)
}

// ---------------------------------------------------------------------------------------------
// The audit of a base model
// ---------------------------------------------------------------------------------------------

/// One reward to audit: a [`RewardSpec`] (its RBF bandwidth, when unset, is the spec's
/// `sigma_scale` × the median pairwise distance of each class's references).
#[derive(Debug, Clone, Serialize)]
pub struct RewardArm {
    pub spec: RewardSpec,
}

impl RewardArm {
    /// "mmd", "gp-mi", "gp-mi σ=2×median λ=0.01", "mmd rbf σ=0.5×median".
    pub fn label(&self) -> String {
        let mut s = self.spec.kind.name().to_string();
        let rbf = match self.spec.kind {
            RewardKind::GpMi => true,
            RewardKind::Mmd if self.spec.mmd_kernel == MmdKernel::Rbf => {
                s.push_str(" rbf");
                true
            }
            _ => false,
        };
        if rbf {
            match self.spec.sigma {
                Some(v) => s.push_str(&format!(" σ={v}")),
                None if self.spec.sigma_scale != 1.0 => {
                    s.push_str(&format!(" σ={}×median", self.spec.sigma_scale))
                }
                None => {}
            }
        }
        if self.spec.kind == RewardKind::GpMi && self.spec.jitter != 1e-6 {
            s.push_str(&format!(" λ={}", self.spec.jitter));
        }
        s
    }

    /// The reward of one class bound to its references.
    pub fn bind(&self, reference: &Features) -> Result<DiversityReward> {
        Ok(DiversityReward::new(&self.spec, reference.clone())?)
    }
}

/// What `divrl audit` runs.
#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub base: PathBuf,
    pub data: String,
    /// Generated (and real) images per class.
    pub per_class: usize,
    pub guidance: f64,
    pub steps: usize,
    pub eta: f64,
    pub extractors: Vec<String>,
    pub extractor_weights: Option<PathBuf>,
    pub rewards: Vec<RewardArm>,
    /// Balanced references per class (half of each attribute value).
    pub ref_per_class: usize,
    pub m: usize,
    pub draws: usize,
    pub seed: u64,
    /// The value tested as the minority (default: the rarer one among the generated images).
    pub minority: Option<u8>,
    pub device: Device,
}

impl AuditConfig {
    pub fn validate(&self) -> Result<()> {
        if self.m < 3 {
            bail!(
                "--m must be at least 3 (leave-one-out rewards of M-sets), got {}",
                self.m
            );
        }
        if self.per_class < self.m {
            bail!(
                "--per-class ({}) must be at least --m ({})",
                self.per_class,
                self.m
            );
        }
        if self.ref_per_class < 2 || self.ref_per_class % 2 != 0 {
            bail!(
                "--ref-per-class must be even and at least 2, got {}",
                self.ref_per_class
            );
        }
        if self.draws == 0 || self.steps == 0 {
            bail!("--draws and --steps must be at least 1");
        }
        if !self.guidance.is_finite() || !self.eta.is_finite() {
            bail!("--guidance and --eta must be finite");
        }
        if self.extractors.is_empty() || self.rewards.is_empty() {
            bail!("at least one extractor and one reward are needed");
        }
        if self.extractor_weights.is_some() && self.extractors.len() > 1 {
            bail!("--extractor-weights needs exactly one --extractor");
        }
        for r in &self.rewards {
            if !matches!(r.spec.kind, RewardKind::Mmd | RewardKind::GpMi) {
                bail!(
                    "the audit scores mmd or gp-mi rewards, not {}",
                    r.spec.kind.name()
                );
            }
            if !(r.spec.sigma_scale.is_finite() && r.spec.sigma_scale > 0.0) {
                bail!("--sigma-scale must be positive, got {}", r.spec.sigma_scale);
            }
        }
        Ok(())
    }
}

/// One reward's audit in one ϕ.
#[derive(Debug, Clone, Serialize)]
pub struct ArmReport {
    pub reward: String,
    pub spec: RewardArm,
    pub generated: PopulationAudit,
    pub real: PopulationAudit,
}

/// Everything measured in one ϕ.
#[derive(Debug, Clone, Serialize)]
pub struct ExtractorReport {
    pub extractor: String,
    pub dim: i64,
    /// From generated minority, then generated majority images.
    pub nearest: Vec<NearestNeighbours>,
    pub rewards: Vec<ArmReport>,
    pub seconds: f64,
}

/// The report of `divrl audit`.
#[derive(Debug, Clone, Serialize)]
pub struct AuditReport {
    pub base: String,
    pub data: String,
    pub guidance: f64,
    pub steps: usize,
    pub eta: f64,
    pub per_class: usize,
    pub ref_per_class: usize,
    pub draws: DrawParams,
    /// Images per attribute value (index = value).
    pub generated_counts: Vec<usize>,
    pub real_counts: Vec<usize>,
    pub extractors: Vec<ExtractorReport>,
    pub sampling_seconds: f64,
    pub seconds: f64,
}

/// Samples `per_class` images of each class (the trainer's evaluation noise for `seed`: chunks
/// of 100 interleaved conditions), in `[0, 1]` on the CPU, with their classes.
fn sample_images(
    cfg: &AuditConfig,
    model: &crate::checkpoint::LoadedModel,
) -> Result<(Tensor, Vec<i64>)> {
    let k = model.config.model.num_classes;
    let labels: Vec<i64> = (0..cfg.per_class).flat_map(|_| 0..k).collect();
    let rl = crate::rl::config::FinetuneConfig {
        steps: cfg.steps,
        eta: cfg.eta,
        guidance: cfg.guidance,
        ..Default::default()
    };
    let sampler = rl.sampler_config();
    let m = &model.config.model;
    let shape = [m.in_channels, m.image_size, m.image_size];
    let mut imgs = Vec::new();
    for (i, ls) in labels.chunks(100).enumerate() {
        let y = Tensor::from_slice(ls).to_device(cfg.device);
        let seed = (cfg.seed ^ 0xE7A1_0000_0000_0000).wrapping_add(i as u64);
        let t =
            crate::sample::sample_trajectory(&model.unet, &model.sched, &sampler, &y, shape, seed)?;
        imgs.push(t.images().to_device(Device::Cpu));
    }
    let x = Tensor::cat(&imgs, 0).to_kind(Kind::Float);
    Ok((((x + 1.0) / 2.0).clamp(0.0, 1.0), labels))
}

/// ϕ-features of `[0, 1]` images through the on-disk feature cache (keyed by content).
fn features_of(ext: &dyn Extractor, images: &Tensor, what: &str) -> Result<Features> {
    let cache = FeatureCache::new(FeatureCache::default_dir());
    let key = FeatureCache::key(
        &crate::features::tensor_content_hash(images)?,
        ext.fingerprint(),
    );
    let t = match cache.get(&key) {
        Some(hit) if hit.features.size()[1] == ext.dim() => hit.features,
        _ => {
            let out = tch::no_grad(|| crate::features::extract(ext, images, 0, false))?;
            cache.put(&key, &out)?;
            out.features
        }
    };
    crate::features::to_features(what, &t.to_kind(Kind::Float))
}

/// Splits rows of `all` (one per entry of `labels`) into per-class [`ClassSamples`].
fn by_class(all: &Features, labels: &[i64], attrs: &[u8], classes: &[i64]) -> Vec<ClassSamples> {
    classes
        .iter()
        .map(|&c| {
            let idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
            ClassSamples {
                class: c,
                features: all.select_rows(&idx),
                attributes: idx.iter().map(|&i| attrs[i]).collect(),
            }
        })
        .collect()
}

fn counts(attrs: &[u8], arity: usize) -> Vec<usize> {
    (0..arity)
        .map(|v| attrs.iter().filter(|&&a| a as usize == v).count())
        .collect()
}

/// Runs the audit `cfg` describes.
pub fn run_audit(cfg: &AuditConfig) -> Result<AuditReport> {
    cfg.validate()?;
    let t0 = std::time::Instant::now();
    let (model, splits) = crate::rl::setup::load_base_and_data(&cfg.base, &cfg.data, cfg.device)?;
    let k = model.config.model.num_classes;
    let attr = splits.eval.attribute.clone().with_context(|| {
        format!(
            "data set {} has no attribute to audit (e.g. fashion-mnist-skewed)",
            cfg.data
        )
    })?;
    let classes: Vec<i64> = (0..k).collect();
    // Real images: the first `per_class` of each class in the evaluation pool.
    let mut real_idx = Vec::new();
    for &c in &classes {
        let idx: Vec<usize> = (0..splits.eval.len())
            .filter(|&i| splits.eval.labels[i] == c)
            .take(cfg.per_class)
            .collect();
        if idx.len() < cfg.m {
            bail!(
                "class {c} has {} evaluation images, --m is {}",
                idx.len(),
                cfg.m
            );
        }
        real_idx.extend(idx);
    }
    let real = splits.eval.subset(&real_idx);
    let (kind, arity) = (attr.kind, attr.kind.arity());
    if matches!(cfg.minority, Some(v) if v as usize >= arity) {
        bail!(
            "--minority must be below {arity} for the {} attribute",
            kind.name()
        );
    }
    let real_attrs: Vec<u8> = real_idx.iter().map(|&i| attr.values[i]).collect();

    let ts = std::time::Instant::now();
    let (gen, gen_labels) = sample_images(cfg, &model)?;
    let sampling_seconds = ts.elapsed().as_secs_f64();
    drop(model);
    let gen_attrs = kind.oracle(&gen)?;
    let minority = cfg
        .minority
        .unwrap_or_else(|| rarest_value(&gen_attrs, arity));
    let params = DrawParams {
        m: cfg.m,
        draws: cfg.draws,
        seed: cfg.seed,
        minority,
        tracker_buffer: crate::rl::config::FinetuneConfig::default().tracker_buffer,
        tracker_min_count: crate::rl::config::FinetuneConfig::default().tracker_min_count,
        adv_clip: crate::rl::config::FinetuneConfig::default().adv_clip,
    };

    let mut extractors = Vec::new();
    for name in &cfg.extractors {
        let te = std::time::Instant::now();
        let phi =
            crate::features::load_extractor(name, cfg.extractor_weights.as_deref(), cfg.device)
                .with_context(|| format!("loading extractor {name}"))?;
        let references = crate::rl::setup::reference_features(
            phi.as_ref(),
            &splits.reference,
            &classes,
            cfg.ref_per_class,
            true,
        )?;
        let g = features_of(phi.as_ref(), &gen, "generated features")?;
        let r = features_of(
            phi.as_ref(),
            &real.images.to_kind(Kind::Float),
            "real features",
        )?;
        let gen_s = by_class(&g, &gen_labels, &gen_attrs, &classes);
        let real_s = by_class(&r, &real.labels, &real_attrs, &classes);
        let nearest = vec![
            nearest_neighbours(&gen_s, &real_s, minority, minority),
            nearest_neighbours(&gen_s, &real_s, 1 - minority, minority),
        ];
        let mut arms = Vec::new();
        for arm in &cfg.rewards {
            let mut bound = BTreeMap::new();
            for (&c, f) in &references {
                bound.insert(
                    c,
                    arm.bind(f)
                        .with_context(|| format!("{} reward of class {c}", arm.label()))?,
                );
            }
            arms.push(ArmReport {
                reward: arm.label(),
                spec: arm.clone(),
                generated: audit_population(&gen_s, &bound, &params)?,
                real: audit_population(&real_s, &bound, &params)?,
            });
        }
        extractors.push(ExtractorReport {
            extractor: name.clone(),
            dim: phi.dim(),
            nearest,
            rewards: arms,
            seconds: te.elapsed().as_secs_f64(),
        });
    }
    Ok(AuditReport {
        base: cfg.base.display().to_string(),
        data: cfg.data.clone(),
        guidance: cfg.guidance,
        steps: cfg.steps,
        eta: cfg.eta,
        per_class: cfg.per_class,
        ref_per_class: cfg.ref_per_class,
        draws: params,
        generated_counts: counts(&gen_attrs, arity),
        real_counts: counts(&real_attrs, arity),
        extractors,
        sampling_seconds,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.0} %", 100.0 * x)
    } else {
        "–".into()
    }
}

fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "–".into()
    }
}

impl AuditReport {
    /// The report as markdown tables.
    pub fn to_markdown(&self) -> String {
        let p = &self.draws;
        let (mi, ma) = (p.minority as usize, 1 - p.minority as usize);
        let mut s = format!(
            "Reward audit of {} at guidance {} ({} steps, eta {}), {} per class; generated {} / {} images of value 0 / 1, real {} / {}; minority value {}; M = {}, {} draws per class, {} balanced references per class.\n\n",
            self.base, self.guidance, self.steps, self.eta, self.per_class,
            self.generated_counts[0], self.generated_counts[1], self.real_counts[0], self.real_counts[1],
            p.minority, p.m, p.draws, self.ref_per_class
        );
        s.push_str("| ϕ | reward | images | marginal majority | marginal minority | advantage majority | advantage minority | minority top (chance) | margin | beats all-majority |\n");
        s.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        for e in &self.extractors {
            for a in &e.rewards {
                for (what, pop) in [("generated", &a.generated), ("real", &a.real)] {
                    let v = |val: usize| pop.values.iter().find(|x| x.value as usize == val);
                    let cell = |val: usize, adv: bool| match v(val) {
                        Some(x) => {
                            let su = if adv { &x.advantage } else { &x.marginal };
                            format!("{} ± {}", num(su.mean), num(su.sd))
                        }
                        None => "–".into(),
                    };
                    let t = &pop.minority_test;
                    s.push_str(&format!(
                        "| {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} |\n",
                        e.extractor,
                        a.reward,
                        what,
                        cell(ma, false),
                        cell(mi, false),
                        cell(ma, true),
                        cell(mi, true),
                        pct(t.top_share),
                        pct(t.chance),
                        num(t.margin.mean),
                        pct(t.beats_majority_share),
                    ));
                }
            }
        }
        s.push_str("\n| ϕ | generated images | count | mean NN distance to real minority | to real majority | nearest is minority |\n|---|---|---|---|---|---|\n");
        for e in &self.extractors {
            for n in &e.nearest {
                let which = if n.generated_value == p.minority {
                    "minority"
                } else {
                    "majority"
                };
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} |\n",
                    e.extractor,
                    which,
                    n.images,
                    num(n.to_real_minority),
                    num(n.to_real_majority),
                    pct(n.nearest_is_minority_share)
                ));
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_summary() {
        let s = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&s, 0.5), 2.5);
        assert_eq!(quantile(&s, 0.25), 1.75);
        assert_eq!(quantile(&s, 1.0), 4.0);
        assert!(quantile(&[], 0.5).is_nan());
        let su = Summary::of(&[4.0, 1.0, 3.0, 2.0]);
        assert_eq!((su.count, su.mean, su.median, su.q3), (4, 2.5, 2.5, 3.25));
        assert!((su.sd - 1.25f64.sqrt()).abs() < 1e-12);
        assert!(Summary::of(&[]).mean.is_nan());
    }

    #[test]
    fn subsets_are_distinct_uniform_and_seeded() {
        let mut rng = SplitMix64(7);
        let mut hits = [0usize; 6];
        for _ in 0..6000 {
            let d = draw_subset(&mut rng, 6, 3);
            let mut u = d.clone();
            u.sort_unstable();
            u.dedup();
            assert_eq!(u.len(), 3);
            for i in d {
                hits[i] += 1;
            }
        }
        // Each index is drawn in half the sets.
        assert!(hits.iter().all(|&h| (2700..3300).contains(&h)), "{hits:?}");
        assert_eq!(
            draw_subset(&mut SplitMix64(1), 10, 4),
            draw_subset(&mut SplitMix64(1), 10, 4)
        );
        assert_eq!(draw_subset(&mut SplitMix64(1), 2, 5).len(), 2);
    }

    #[test]
    fn standing_and_nearest() {
        assert_eq!(standing(&[1.0, 3.0, 2.0], 1), (true, 1.0));
        assert_eq!(standing(&[1.0, 3.0, 2.0], 0), (false, -2.0));
        assert_eq!(standing(&[2.0, 2.0], 0), (false, 0.0));
        let set = Features::from_rows("s", &[vec![0.0, 0.0], vec![3.0, 4.0]]).unwrap();
        assert_eq!(nearest_distance(&[3.0, 0.0], &set), 3.0);
        assert_eq!(rarest_value(&[0, 0, 1], 2), 1);
        assert_eq!(rarest_value(&[1, 1, 0], 2), 0);
        assert_eq!(rarest_value(&[0, 1], 2), 1);
        assert_eq!(rarest_value(&[0, 0, 1, 2, 2, 1, 0], 3), 2);
        assert_eq!(rarest_value(&[0, 0, 0, 1, 2, 2], 3), 1);
    }

    /// Class 0: majority images clustered at the origin, minority ones far out along an axis
    /// that the balanced references also cover.
    fn toy(minority_offset: f64) -> (Vec<ClassSamples>, BTreeMap<i64, DiversityReward>) {
        let mut rng = SplitMix64(3);
        let mut pt = |off: f64| {
            vec![
                off + 0.1 * rng.uniform(),
                0.1 * rng.uniform(),
                0.1 * rng.uniform(),
            ]
        };
        let mut rows = Vec::new();
        let mut attrs = Vec::new();
        for i in 0..20 {
            let a = u8::from(i % 5 == 0);
            rows.push(pt(if a == 1 { minority_offset } else { 0.0 }));
            attrs.push(a);
        }
        let refs: Vec<Vec<f64>> = (0..10)
            .map(|i| pt(if i % 2 == 0 { 4.0 } else { 0.0 }))
            .collect();
        let refs = Features::from_rows("r", &refs).unwrap();
        let arm = RewardArm {
            spec: RewardSpec::new(RewardKind::Mmd),
        };
        let samples = vec![ClassSamples {
            class: 0,
            features: Features::from_rows("g", &rows).unwrap(),
            attributes: attrs,
        }];
        (samples, BTreeMap::from([(0, arm.bind(&refs).unwrap())]))
    }

    fn params() -> DrawParams {
        DrawParams {
            m: 5,
            draws: 200,
            seed: 1,
            minority: 1,
            tracker_buffer: 16,
            tracker_min_count: 16,
            adv_clip: 5.0,
        }
    }

    #[test]
    fn a_visible_minority_passes_and_an_invisible_one_fails() {
        // The minority sits where half the references are: the reward must prefer it.
        let (s, r) = toy(4.0);
        let a = audit_population(&s, &r, &params()).unwrap();
        let t = &a.minority_test;
        assert_eq!(
            (t.draws, t.classes.len(), t.classes[0].minority_images),
            (200, 1, 4)
        );
        assert!(t.top_share > 0.95 && t.beats_majority_share > 0.95, "{t:?}");
        assert!(t.margin.mean > 0.0);
        let adv = |v: u8| {
            a.values
                .iter()
                .find(|x| x.value == v)
                .unwrap()
                .advantage
                .mean
        };
        assert!(adv(1) > 0.5 && adv(0) < 0.0, "{:?}", a.values);
        let counted: usize = a.values.iter().map(|v| v.marginal.count).sum();
        assert_eq!(counted, 200 * 5);
        // Indistinguishable from the majority: about chance, and no consistent margin.
        let (s, r) = toy(0.0);
        let t = audit_population(&s, &r, &params()).unwrap().minority_test;
        assert!(t.top_share < 0.4, "{t:?}");
        // Too few majority images: the class is skipped, the shares are undefined.
        let mut p = params();
        p.m = 18;
        let t = audit_population(&s, &r, &p).unwrap().minority_test;
        assert!(t.classes.is_empty() && t.top_share.is_nan());
    }

    #[test]
    fn nearest_neighbours_by_value() {
        let f = |rows: &[[f64; 1]]| {
            Features::from_rows("x", &rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>()).unwrap()
        };
        let gen = vec![ClassSamples {
            class: 0,
            features: f(&[[0.9], [0.1]]),
            attributes: vec![1, 0],
        }];
        let real = vec![ClassSamples {
            class: 0,
            features: f(&[[1.0], [0.0], [0.5]]),
            attributes: vec![1, 0, 0],
        }];
        let n = nearest_neighbours(&gen, &real, 1, 1);
        assert_eq!(n.images, 1);
        assert!(
            (n.to_real_minority - 0.1).abs() < 1e-12 && (n.to_real_majority - 0.4).abs() < 1e-12
        );
        assert_eq!(n.nearest_is_minority_share, 1.0);
        let n = nearest_neighbours(&gen, &real, 0, 1);
        assert_eq!(n.nearest_is_minority_share, 0.0);
    }
}
