//! Building a run from a [`FinetuneConfig`]: for the UNet ([`build_finetuner`]) the base
//! checkpoint, ϕ, the per-condition reference sets from the data set's reference pool and the
//! held-out evaluation features; for Stable Diffusion ([`build_sd_finetuner`]) the diffusers
//! folder, ϕ and one folder of reference images per prompt. Shared by `divrl finetune`,
//! `divrl demo` and the experiments.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tch::{Kind, Tensor};

use divrl_reward::Features;

use super::config::FinetuneConfig;
use super::evaluator::{eval_images, pixel_rows, EvalSet, Evaluator};
use super::model::PolicyModel;
use super::sd_model::SdFinetuner;
use super::trainer::Finetuner;
use super::unet_policy::{run_classes, UnetPolicy};
use crate::data::Dataset;
use crate::eval::EvalReport;
use crate::features::{extract, to_features, Extractor};

/// How many of `n` balanced reference images take each of `arity` attribute values: `n / arity`
/// each, the remainder one by one to the first values (50 over 3 values: 17, 17, 16).
pub fn balanced_counts(n: usize, arity: usize) -> Vec<usize> {
    (0..arity)
        .map(|v| n / arity + usize::from(v < n % arity))
        .collect()
}

/// Indices of condition `c`'s reference images: the first `n` of the pool's class, or with
/// `balanced`, the first [`balanced_counts`] of each value of the pool's attribute.
pub fn reference_indices(pool: &Dataset, c: i64, n: usize, balanced: bool) -> Result<Vec<usize>> {
    let of_class = (0..pool.len()).filter(|&i| pool.labels[i] == c);
    let idx: Vec<usize> = if balanced {
        let attr = pool.attribute.as_ref().with_context(|| {
            "balanced_reference needs a data set with an attribute (e.g. fashion-mnist-skewed)"
        })?;
        let mut idx: Vec<usize> = Vec::with_capacity(n);
        for (v, want) in balanced_counts(n, attr.kind.arity())
            .into_iter()
            .enumerate()
        {
            let part: Vec<usize> = of_class
                .clone()
                .filter(|&i| attr.values[i] as usize == v)
                .take(want)
                .collect();
            if part.len() < want {
                bail!(
                    "class {c} has {} reference images with attribute {v}, {want} asked for",
                    part.len(),
                );
            }
            idx.extend(part);
        }
        idx.sort_unstable();
        idx
    } else {
        of_class.take(n).collect()
    };
    if idx.len() < n {
        bail!(
            "class {c} has {} reference images, {n} asked for",
            idx.len()
        );
    }
    Ok(idx)
}

/// Reference features `[N, D]` of each class in `classes`, in ϕ's space.
pub fn reference_features(
    phi: &dyn Extractor,
    pool: &Dataset,
    classes: &[i64],
    n: usize,
    balanced: bool,
) -> Result<BTreeMap<i64, Features>> {
    let mut references = BTreeMap::new();
    for &c in classes {
        let idx = reference_indices(pool, c, n, balanced)?;
        let imgs = pool.subset(&idx).images;
        let f = crate::features::extract(phi, &imgs, 0, false)?;
        references.insert(
            c,
            crate::features::to_features(&format!("reference features of class {c}"), &f.features)?,
        );
    }
    Ok(references)
}

/// The base checkpoint (a relative `models/…` path is also found from any working directory)
/// and the data set's splits, checked to have the same number of classes.
pub fn load_base_and_data(
    base: &std::path::Path,
    data: &str,
    device: tch::Device,
) -> Result<(crate::checkpoint::LoadedModel, crate::data::Splits)> {
    let base = crate::features::resolve_model_path(base);
    let model = crate::checkpoint::load_model(&base, device, true)
        .with_context(|| format!("loading base checkpoint {}", base.display()))?;
    let splits = crate::data::load_splits(data)?;
    let k = model.config.model.num_classes;
    if splits.reference.num_classes() != k {
        bail!(
            "data set {} has {} classes, the base model {}",
            data,
            splits.reference.num_classes(),
            k
        );
    }
    Ok((model, splits))
}

/// Features of `images` (`[0, 1]`) under `ext`, through the on-disk feature cache
/// ([`crate::features::FeatureCache`]) keyed by the images' content: the held-out set's
/// Inception features cost minutes on a CPU and never change.
fn cached_features(
    ext: &dyn Extractor,
    images: &tch::Tensor,
    progress: bool,
) -> Result<tch::Tensor> {
    let cache = crate::features::FeatureCache::new(crate::features::FeatureCache::default_dir());
    let key = crate::features::FeatureCache::key(
        &crate::features::tensor_content_hash(images)?,
        ext.fingerprint(),
    );
    if let Some(hit) = cache.get(&key) {
        if hit.features.size()[1] == ext.dim() {
            return Ok(hit.features);
        }
    }
    let out = crate::features::extract(ext, images, 0, progress)?;
    cache.put(&key, &out)?;
    Ok(out.features.to_kind(Kind::Float))
}

/// What every UNet run loads first: `cfg` validated, the libtorch thread count set from
/// `cfg.threads`, the device, the base checkpoint with its data set's splits, and ϕ.
fn load_unet_run(
    cfg: &FinetuneConfig,
) -> Result<(
    tch::Device,
    crate::checkpoint::LoadedModel,
    crate::data::Splits,
    Box<dyn Extractor>,
)> {
    cfg.validate()?;
    crate::device::set_threads(cfg.threads);
    let device = crate::device::parse_device(&cfg.device)?;
    let (model, splits) = load_base_and_data(&cfg.base, &cfg.data, device)?;
    let phi =
        crate::features::load_extractor(&cfg.extractor, cfg.extractor_weights.as_deref(), device)?;
    Ok((device, model, splits, phi))
}

/// The held-out evaluation set of `classes`: the evaluation pool's images in ϕ's space, in the
/// independent space `cfg.eval_independent` (cached), as pixels, and its attribute.
fn eval_set(
    cfg: &FinetuneConfig,
    eval_pool: &Dataset,
    phi: &dyn Extractor,
    classes: &[i64],
    device: tch::Device,
    progress: bool,
) -> Result<EvalSet> {
    let idx: Vec<usize> = (0..eval_pool.len())
        .filter(|&i| classes.contains(&eval_pool.labels[i]))
        .collect();
    let subset = eval_pool.subset(&idx);
    let f = crate::features::extract(phi, &subset.images, 0, progress)?;
    let independent = if cfg.eval_independent.is_empty() {
        None
    } else {
        let ext = crate::features::load_extractor(&cfg.eval_independent, None, device)?;
        let real = cached_features(ext.as_ref(), &subset.images, progress)?;
        Some((ext, real))
    };
    Ok(EvalSet {
        features: f.features.to_kind(Kind::Float),
        attribute: eval_pool.attribute.as_ref().map(|a| a.kind),
        independent,
        pixels: Some((pixel_rows(&subset.images, false)?, subset.labels.clone())),
    })
}

/// Loads everything `cfg` names and binds it into a [`Finetuner`] (not resumed). The
/// evaluation set is loaded when `with_eval` or `cfg.eval_every > 0`. Sets the libtorch thread
/// count from `cfg.threads`.
pub fn build_finetuner(cfg: &FinetuneConfig, with_eval: bool, progress: bool) -> Result<Finetuner> {
    let (device, model, splits, phi) = load_unet_run(cfg)?;
    let classes = run_classes(cfg, model.config.model.num_classes)?;
    // Reference sets come from the reference pool, disjoint from the evaluation pool.
    let references = reference_features(
        phi.as_ref(),
        &splits.reference,
        &classes,
        cfg.ref_per_class,
        cfg.balanced_reference,
    )?;
    let eval = if with_eval || cfg.eval_every > 0 {
        Some(eval_set(
            cfg,
            &splits.eval,
            phi.as_ref(),
            &classes,
            device,
            progress,
        )?)
    } else {
        None
    };
    drop(splits);
    Finetuner::new(cfg.clone(), model, phi, references, eval)
}

/// A base model as `cfg` would fine-tune it (adapters at their zero start, so it samples exactly
/// as the base), with its evaluation: what an experiment's baseline cell needs, without the
/// references, the optimizer or a run folder.
pub struct BaseEvaluation {
    pub cfg: FinetuneConfig,
    pub model: UnetPolicy,
    pub classes: Vec<i64>,
    pub evaluator: Evaluator,
}

impl BaseEvaluation {
    /// Loads the base, ϕ and the held-out evaluation set `cfg` names.
    pub fn new(cfg: &FinetuneConfig, progress: bool) -> Result<Self> {
        let (device, model, splits, phi) = load_unet_run(cfg)?;
        let model = UnetPolicy::new(cfg, model)?;
        let classes = model.conditions(cfg)?;
        let set = eval_set(cfg, &splits.eval, phi.as_ref(), &classes, device, progress)?;
        Ok(Self {
            cfg: cfg.clone(),
            model,
            classes,
            evaluator: Evaluator {
                phi,
                set: Some(set),
            },
        })
    }

    /// `eval_per_class` images per class at the config's guidance, scored
    /// ([`Evaluator::evaluate_images`]); the same numbers as a trainer's epoch-0 evaluation.
    pub fn evaluate(&self) -> Result<EvalReport> {
        let images = eval_images(
            &self.model,
            &self.cfg,
            &self.classes,
            self.cfg.eval_per_class,
            self.cfg.guidance,
        )?;
        self.evaluator.evaluate_images(&images, &self.classes)
    }
}

/// Loads the Stable Diffusion folder `cfg.base`, ϕ and each prompt's reference images
/// ([`reference_files`]) and binds them into an [`SdFinetuner`] (not resumed). Sets the
/// libtorch thread count from `cfg.threads`.
pub fn build_sd_finetuner(cfg: &FinetuneConfig) -> Result<SdFinetuner> {
    use crate::models::sd::{Precision, StableDiffusion};
    cfg.validate()?;
    crate::device::set_threads(cfg.threads);
    let device = crate::device::parse_device(&cfg.device)?;
    let precision: Precision = cfg.precision.parse()?;
    if cfg.base.as_os_str().is_empty() {
        bail!("model sd needs a base (a diffusers folder)");
    }
    let sd = StableDiffusion::load(&cfg.base, device, precision)
        .with_context(|| format!("loading Stable Diffusion folder {}", cfg.base.display()))?;
    let phi =
        crate::features::load_extractor(&cfg.extractor, cfg.extractor_weights.as_deref(), device)?;
    let files = reference_files(&cfg.references, cfg.prompts.len(), cfg.ref_per_class)?;
    let mut references = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        references.insert(
            i as i64,
            file_features(
                phi.as_ref(),
                f,
                &format!("reference features of prompt {i}"),
            )?,
        );
    }
    SdFinetuner::new(cfg.clone(), sd, phi, references)
}

/// Reference images of prompt `i`: `references[i]`, or the i-th sub-folder (sorted) of a single
/// `references[0]`; the first `n` image files (sorted by name) of it.
pub fn reference_files(
    references: &[PathBuf],
    prompts: usize,
    n: usize,
) -> Result<Vec<Vec<PathBuf>>> {
    let dirs: Vec<PathBuf> =
        if references.len() == prompts && !(prompts == 1 && has_subdirs(&references[0])?) {
            references.to_vec()
        } else if references.len() == 1 {
            let root = &references[0];
            let mut subs: Vec<PathBuf> = std::fs::read_dir(root)
                .with_context(|| format!("reading reference folder {}", root.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_dir())
                .collect();
            subs.sort();
            if subs.len() != prompts {
                bail!(
                    "{} has {} sub-folders, one per prompt ({prompts}) needed",
                    root.display(),
                    subs.len()
                );
            }
            subs
        } else {
            bail!(
                "{} reference folders for {prompts} prompts",
                references.len()
            );
        };
    dirs.iter()
        .map(|d| {
            let mut files: Vec<PathBuf> = std::fs::read_dir(d)
                .with_context(|| format!("reading reference folder {}", d.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension().is_some_and(|x| {
                        matches!(
                            x.to_string_lossy().to_ascii_lowercase().as_str(),
                            "png" | "jpg" | "jpeg"
                        )
                    })
                })
                .collect();
            files.sort();
            files.truncate(n);
            if files.len() < 2 {
                bail!(
                    "{}: needs at least 2 reference images (png/jpg), found {}",
                    d.display(),
                    files.len()
                );
            }
            Ok(files)
        })
        .collect()
}

fn has_subdirs(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("reading reference folder {}", dir.display()))?
        .filter_map(|e| e.ok())
        .any(|e| e.path().is_dir()))
}

/// ϕ features of image files (each decoded on its own, so sizes may differ).
pub fn file_features(phi: &dyn Extractor, files: &[PathBuf], what: &str) -> Result<Features> {
    let mut rows = Vec::with_capacity(files.len());
    for f in files {
        let img = crate::features::load_image_files(std::slice::from_ref(f))?;
        rows.push(extract(phi, &img, 0, false)?.features.to_kind(Kind::Float));
    }
    to_features(what, &Tensor::cat(&rows, 0))
}
