//! The feature-network interface ϕ: [`Extractor`], its output [`Extracted`], batched extraction
//! with a progress bar, and the conversion of a feature tensor to the reward crate's
//! [`divrl_reward::Features`].
use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

/// Output of an extractor on a batch.
#[derive(Debug)]
pub struct Extracted {
    /// `[N, D]` float features.
    pub features: Tensor,
    /// `[N, K]` class logits, when the extractor has a classification head.
    pub logits: Option<Tensor>,
}

/// A feature network ϕ.
pub trait Extractor {
    /// Registry name (`small`, `inception`, `clip`).
    fn name(&self) -> &str;
    /// Changes whenever the weights or the preprocessing change (part of cache keys).
    fn fingerprint(&self) -> &str;
    /// Feature width D.
    fn dim(&self) -> i64;
    /// A batch size that suits the network on CPU.
    fn default_batch(&self) -> usize;
    fn device(&self) -> Device;
    /// Features (and logits) of `[B, C, H, W]` images in `[0, 1]`; runs without gradients.
    fn forward(&self, images: &Tensor) -> Result<Extracted>;
    /// Class names of the logits, if any.
    fn class_names(&self) -> Option<Vec<String>> {
        None
    }
}

/// Runs `ext` over `images` (`[N, C, H, W]` in `[0, 1]`, any device) in batches; results on the
/// CPU as f32.
pub fn extract(
    ext: &dyn Extractor,
    images: &Tensor,
    batch: usize,
    show_progress: bool,
) -> Result<Extracted> {
    let s = images.size();
    if s.len() != 4 || s[0] == 0 {
        bail!("expected a non-empty [N, C, H, W] image tensor, got shape {s:?}");
    }
    let n = s[0];
    let batch = if batch == 0 {
        ext.default_batch()
    } else {
        batch
    } as i64;
    let pb = crate::progress::bar(
        n as u64,
        show_progress,
        "{spinner} {msg} [{bar:30}] {pos}/{len} images ({per_sec}, {eta})",
    );
    pb.set_message(format!("features ({})", ext.name()));
    let mut feats = Vec::new();
    let mut logits = Vec::new();
    let mut start = 0;
    while start < n {
        let len = batch.min(n - start);
        let x = images.narrow(0, start, len).to_kind(Kind::Float);
        let out = ext.forward(&x)?;
        let fs = out.features.size();
        if fs.len() != 2 || fs[0] != len {
            bail!(
                "extractor {} returned features of shape {fs:?} for {len} images",
                ext.name()
            );
        }
        feats.push(out.features.to_device(Device::Cpu).to_kind(Kind::Float));
        if let Some(l) = out.logits {
            logits.push(l.to_device(Device::Cpu).to_kind(Kind::Float));
        }
        start += len;
        pb.inc(len as u64);
    }
    pb.finish_and_clear();
    let features = Tensor::cat(&feats, 0);
    if features.isfinite().logical_not().any().int64_value(&[]) != 0 {
        bail!("extractor {} produced non-finite features", ext.name());
    }
    Ok(Extracted {
        features,
        logits: if logits.len() == feats.len() {
            Some(Tensor::cat(&logits, 0))
        } else {
            None
        },
    })
}

/// Converts a 2-d tensor to [`divrl_reward::Features`].
pub fn to_features(what: &str, t: &Tensor) -> Result<divrl_reward::Features> {
    let s = t.size();
    if s.len() != 2 {
        bail!("{what}: expected a 2-d tensor, got shape {s:?}");
    }
    let v: Vec<f64> = Vec::<f64>::try_from(
        &t.to_device(Device::Cpu)
            .to_kind(Kind::Double)
            .contiguous()
            .view([-1]),
    )?;
    Ok(divrl_reward::Features::new(
        what,
        s[0] as usize,
        s[1] as usize,
        v,
    )?)
}
