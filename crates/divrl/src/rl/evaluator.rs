//! Held-out evaluation of a policy: images from fixed evaluation noise (the same before and
//! after fine-tuning), scored in ϕ against held-out real images, in an independent feature space
//! the reward never uses, by the within-class pixel distance and by the data set's attribute
//! oracle. Experiments use it on base models without building a trainer.
use anyhow::{bail, Context, Result};
use tch::{Device, Kind, Tensor};

use divrl_reward::Features;

use crate::eval::{AttributeReport, EvalOptions, EvalReport};
use crate::features::{extract, to_features, Extractor};

use super::config::FinetuneConfig;
use super::model::PolicyModel;

/// Held-out real images for the evaluation pass, already in ϕ's feature space.
pub struct EvalSet {
    /// `[N, D]` features of the held-out real images (the conditions' classes only).
    pub features: Tensor,
    /// Report this attribute's histogram and KL to uniform (skewed variants).
    pub attribute: Option<crate::data::AttributeKind>,
    /// A second feature network the reward never uses, with the held-out images' features in
    /// its space (`eval_independent`).
    pub independent: Option<(Box<dyn Extractor>, Tensor)>,
    /// The held-out images as flattened pixels in `[0, 1]` with their classes, for the
    /// within-class pixel distance.
    pub pixels: Option<(Features, Vec<i64>)>,
}

/// Images flattened to rows of pixels in `[0, 1]` (`[-1, 1]` input when `signed`).
pub fn pixel_rows(images: &Tensor, signed: bool) -> Result<Features> {
    let x = images.to_device(Device::Cpu).to_kind(Kind::Float);
    let x = if signed { (x + 1.0) / 2.0 } else { x };
    to_features("pixels", &x.clamp(0.0, 1.0).flatten(1, -1))
}

/// `[-1, 1]` images as float in `[0, 1]`, what every extractor and oracle reads.
fn unit_range(images: &Tensor) -> Tensor {
    ((images.to_kind(Kind::Float) + 1.0) / 2.0).clamp(0.0, 1.0)
}

/// ϕ and, when given, the held-out evaluation set.
pub struct Evaluator {
    pub phi: Box<dyn Extractor>,
    pub set: Option<EvalSet>,
}

impl Evaluator {
    /// ϕ-features (and logits) of `[-1, 1]` images, batched, on the CPU.
    pub fn features(&self, images: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let e = tch::no_grad(|| extract(self.phi.as_ref(), &unit_range(images), 0, false))?;
        Ok((e.features, e.logits))
    }

    /// Metrics of generated `[-1, 1]` images, image `i` of condition
    /// `classes[i % classes.len()]`, against the held-out real images (and the attribute's
    /// histogram on data sets that have one).
    pub fn evaluate_images(&self, images: &Tensor, classes: &[i64]) -> Result<EvalReport> {
        let ev = self.set.as_ref().context("no evaluation set was given")?;
        let x01 = unit_range(images);
        let e = tch::no_grad(|| extract(self.phi.as_ref(), &x01, 0, false))?;
        let labels: Vec<i64> = (0..images.size()[0] as usize)
            .map(|i| classes[i % classes.len()])
            .collect();
        let attribute = match ev.attribute {
            Some(kind) => Some(AttributeReport::from_oracle(kind, &x01)?),
            None => None,
        };
        let mut report = crate::eval::evaluate(
            self.phi.name(),
            &e.features,
            &ev.features,
            e.logits.as_ref(),
            attribute,
            EvalOptions::default(),
        )?;
        if let Some((ext, real)) = &ev.independent {
            let e = tch::no_grad(|| extract(ext.as_ref(), &x01, 0, false))?;
            let ind = crate::eval::evaluate(
                ext.name(),
                &e.features,
                real,
                e.logits.as_ref(),
                None,
                EvalOptions::default(),
            )?;
            report.independent = Some(Box::new(ind));
        }
        if let Some((real, real_labels)) = &ev.pixels {
            let gen = pixel_rows(&x01, false)?;
            report.pixel_within_class = Some(divrl_reward::within_class::within_class(
                &gen,
                &labels,
                real,
                real_labels,
            )?);
        }
        Ok(report)
    }

    /// The held-out real features, when an evaluation set was given.
    pub fn eval_features(&self) -> Option<&Tensor> {
        self.set.as_ref().map(|e| &e.features)
    }
}

/// The evaluation noise of a run: the batches of [`eval_images`] as (conditions, noise seed),
/// `per_class` images per condition of `classes` in chunks of `cfg.sample_batch_size` (default
/// 100). The seeds are a function of `cfg.seed` only, so the noise is the same before and after
/// fine-tuning. Conditions are interleaved: image `i` has condition `classes[i % classes.len()]`,
/// so every Inception-Score split holds every condition.
pub fn eval_batches(
    cfg: &FinetuneConfig,
    classes: &[i64],
    per_class: usize,
) -> Result<Vec<(Vec<i64>, u64)>> {
    let labels: Vec<i64> = (0..per_class)
        .flat_map(|_| classes.iter().copied())
        .collect();
    if labels.is_empty() {
        bail!("no images to generate");
    }
    let chunk = match cfg.sample_batch_size {
        0 => 100,
        n => n,
    };
    Ok(labels
        .chunks(chunk)
        .enumerate()
        .map(|(i, ls)| {
            let seed = (cfg.seed ^ 0xE7A1_0000_0000_0000).wrapping_add(i as u64);
            (ls.to_vec(), seed)
        })
        .collect())
}

/// `per_class` images per condition of `classes` at guidance `guidance`, from the evaluation
/// noise ([`eval_batches`]). `[-1, 1]`, on the CPU.
pub fn eval_images<P: PolicyModel>(
    model: &P,
    cfg: &FinetuneConfig,
    classes: &[i64],
    per_class: usize,
    guidance: f64,
) -> Result<Tensor> {
    let mut sampler = model.sampler(cfg);
    sampler.guidance = guidance;
    sampler.steps = cfg.eval_sampler_steps();
    let device = model.device();
    let mut imgs = Vec::new();
    for (ls, seed) in eval_batches(cfg, classes, per_class)? {
        let y = Tensor::from_slice(&ls).to_device(device);
        let t = model.sample(&sampler, &y, seed)?;
        imgs.push(
            model
                .images(&t, cfg.sample_batch_size)
                .to_device(Device::Cpu),
        );
    }
    Ok(Tensor::cat(&imgs, 0))
}
