//! Whole-trajectory sampling, stored trajectories, and PNG grids.
use anyhow::{bail, Context, Result};
use std::path::Path;
use tch::{Device, Kind, Tensor};

use crate::config::{read_safetensors, write_atomic, write_safetensors_atomic};
use crate::rng::SplitMix64;
use crate::schedule::{EpsModel, NoiseSchedule, ReverseStep, SamplerConfig};

/// A sampled denoising trajectory: everything PPO needs to replay it.
#[derive(Debug)]
pub struct Trajectory {
    /// `[K+1, B, C, H, W]`: x at `timesteps[0]` (pure noise) … x at `timesteps[K]` = 0 (the image).
    pub latents: Tensor,
    /// `K+1` timesteps, descending, ending at 0.
    pub timesteps: Vec<i64>,
    /// `[K, B]`: log-probability of each transition's sample under the sampling weights.
    pub log_probs: Tensor,
    /// `[B]` int64 class indices (the condition).
    pub classes: Tensor,
    pub sampler: SamplerConfig,
}

impl Trajectory {
    pub fn num_steps(&self) -> usize {
        self.timesteps.len() - 1
    }
    /// The final images, `[B, C, H, W]`.
    pub fn images(&self) -> Tensor {
        self.latents.get(self.num_steps() as i64)
    }

    /// The batches `parts` (same timesteps and sampler) as one trajectory, in order.
    pub fn cat(mut parts: Vec<Trajectory>) -> Result<Self> {
        match parts.len() {
            0 => anyhow::bail!("no trajectories to concatenate"),
            1 => return Ok(parts.pop().expect("one part")),
            _ => {}
        }
        if parts.iter().any(|p| p.timesteps != parts[0].timesteps) {
            anyhow::bail!("trajectories with different timesteps cannot be concatenated");
        }
        let cat = |f: fn(&Trajectory) -> &Tensor, dim: i64| {
            Tensor::cat(&parts.iter().map(f).collect::<Vec<_>>(), dim)
        };
        Ok(Self {
            latents: cat(|p| &p.latents, 1),
            log_probs: cat(|p| &p.log_probs, 1),
            classes: cat(|p| &p.classes, 0),
            timesteps: parts[0].timesteps.clone(),
            sampler: parts[0].sampler.clone(),
        })
    }

    /// Stores the trajectory as safetensors (sampler config as a JSON byte tensor).
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec(&self.sampler)?;
        let tensors = vec![
            ("latents".to_string(), self.latents.shallow_clone()),
            ("timesteps".to_string(), Tensor::from_slice(&self.timesteps)),
            ("log_probs".to_string(), self.log_probs.shallow_clone()),
            ("classes".to_string(), self.classes.shallow_clone()),
            ("sampler_json".to_string(), Tensor::from_slice(&json)),
        ];
        write_safetensors_atomic(path, &tensors)
    }

    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let mut map: std::collections::HashMap<String, Tensor> =
            read_safetensors(path)?.into_iter().collect();
        let mut take = |k: &str| {
            map.remove(k).with_context(|| {
                format!(
                    "{}: no tensor {k:?} (not a trajectory file)",
                    path.display()
                )
            })
        };
        let latents = take("latents")?;
        let ts = take("timesteps")?;
        let log_probs = take("log_probs")?;
        let classes = take("classes")?;
        let json = take("sampler_json")?;
        let json: Vec<u8> = Vec::<u8>::try_from(&json.to_kind(Kind::Uint8))?;
        let sampler: SamplerConfig = serde_json::from_slice(&json)
            .with_context(|| format!("{}: bad sampler config", path.display()))?;
        let timesteps: Vec<i64> = Vec::<i64>::try_from(&ts.to_kind(Kind::Int64))?;
        let k = timesteps.len() as i64 - 1;
        let ls = latents.size();
        if k < 1
            || ls.len() != 5
            || ls[0] != k + 1
            || log_probs.size() != [k, ls[1]]
            || classes.size() != [ls[1]]
        {
            bail!("{}: inconsistent trajectory shapes", path.display());
        }
        Ok(Self {
            latents: latents.to_device(device),
            timesteps,
            log_probs: log_probs.to_device(device),
            classes: classes.to_kind(Kind::Int64).to_device(device),
            sampler,
        })
    }
}

/// Samples `classes.len()` images with a trajectory. Noise comes from a SplitMix64 stream seeded
/// with `seed` (not libtorch's global generator), so a seed gives the same noise on every device
/// and under concurrent use.
pub fn sample_trajectory<M: EpsModel + ?Sized>(
    model: &M,
    sched: &NoiseSchedule,
    cfg: &SamplerConfig,
    classes: &Tensor,
    shape: [i64; 3],
    seed: u64,
) -> Result<Trajectory> {
    let ts = sched.sampling_timesteps(cfg.steps)?;
    sample_trajectory_at(model, sched, cfg, classes, shape, seed, ts)
}

/// [`sample_trajectory`] along given timesteps (descending; `cfg.steps + 1` of them, `-1` =
/// after the last step), e.g. diffusers' DDIM spacing.
pub fn sample_trajectory_at<M: EpsModel + ?Sized>(
    model: &M,
    sched: &NoiseSchedule,
    cfg: &SamplerConfig,
    classes: &Tensor,
    shape: [i64; 3],
    seed: u64,
    ts: Vec<i64>,
) -> Result<Trajectory> {
    cfg.validate()?;
    if cfg.cads.is_some() && !model.has_cond_vector() {
        bail!("CADS needs a model that conditions through a class embedding vector (the class-conditional UNet)");
    }
    if ts.len() != cfg.steps + 1 || ts.windows(2).any(|w| w[1] >= w[0]) {
        bail!(
            "sampling timesteps must be {} descending values",
            cfg.steps + 1
        );
    }
    let device = classes.device();
    let b = classes.size()[0];
    let mut rng = SplitMix64(seed);
    let full = [b, shape[0], shape[1], shape[2]];
    let mut x = rng.randn(&full, device);
    // CADS draws its condition noise from each sample's initial noise (see crate::cads).
    let keys = match cfg.cads {
        Some(_) => Some(crate::cads::sample_keys(&x)?),
        None => None,
    };
    let step = ReverseStep { model, sched, cfg };
    let mut latents = vec![x.shallow_clone()];
    let mut lps = Vec::with_capacity(cfg.steps);
    tch::no_grad(|| -> Result<()> {
        for w in ts.windows(2) {
            let noise = rng.randn(&full, device);
            let out = step.sample_keyed(&x, w[0], w[1], classes, &noise, keys.as_deref())?;
            x = out.sample;
            latents.push(x.shallow_clone());
            lps.push(out.log_prob);
        }
        Ok(())
    })?;
    Ok(Trajectory {
        latents: Tensor::stack(&latents, 0),
        timesteps: ts,
        log_probs: Tensor::stack(&lps, 0),
        classes: classes.shallow_clone(),
        sampler: cfg.clone(),
    })
}

/// Log-probability of transition `k` of a stored trajectory under the model's *current* weights
/// (differentiable; `[B]`).
pub fn recompute_log_prob<M: EpsModel + ?Sized>(
    model: &M,
    sched: &NoiseSchedule,
    traj: &Trajectory,
    k: usize,
) -> Tensor {
    let step = ReverseStep {
        model,
        sched,
        cfg: &traj.sampler,
    };
    let x_t = traj.latents.get(k as i64);
    let x_s = traj.latents.get(k as i64 + 1);
    let keys = traj
        .sampler
        .cads
        .map(|_| crate::cads::sample_keys(&traj.latents.get(0)).expect("a float latent tensor"));
    step.log_prob_keyed(
        &x_t,
        traj.timesteps[k],
        traj.timesteps[k + 1],
        &traj.classes,
        &x_s,
        keys.as_deref(),
    )
    .expect("the trajectory's sampler was validated when it was sampled")
}

/// `[-1, 1]` images as 8-bit pixels (round((x + 1) · 127.5)), flattened in the tensor's order:
/// the quantisation of every PNG grid and image export.
pub fn to_u8(images: &Tensor) -> Result<Vec<u8>> {
    let u8s = ((images
        .detach()
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .clamp(-1.0, 1.0)
        + 1.0)
        * 127.5)
        .round()
        .to_kind(Kind::Uint8)
        .contiguous();
    Ok(Vec::<u8>::try_from(&u8s.flatten(0, -1))?)
}

/// Images in [-1, 1] (`[N, C, H, W]`, C = 1 or 3) → one grid image with `nrow` images per row
/// and a 2-pixel border.
pub fn make_grid(images: &Tensor, nrow: usize) -> Result<image::DynamicImage> {
    let s = images.size();
    if s.len() != 4 || !(s[1] == 1 || s[1] == 3) || s[0] == 0 {
        bail!("make_grid: expected [N, 1|3, H, W] images, got {s:?}");
    }
    let (n, c, h, w) = (s[0] as usize, s[1] as usize, s[2] as usize, s[3] as usize);
    let nrow = nrow.max(1).min(n);
    let rows = n.div_ceil(nrow);
    let pad = 2;
    let gw = nrow * (w + pad) + pad;
    let gh = rows * (h + pad) + pad;
    let data = to_u8(images)?;
    let mut buf = vec![0u8; gw * gh * c];
    for i in 0..n {
        let (gy, gx) = (i / nrow, i % nrow);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let v = data[((i * c + ch) * h + y) * w + x];
                    let oy = pad + gy * (h + pad) + y;
                    let ox = pad + gx * (w + pad) + x;
                    buf[(oy * gw + ox) * c + ch] = v;
                }
            }
        }
    }
    let img = if c == 1 {
        image::DynamicImage::ImageLuma8(
            image::GrayImage::from_raw(gw as u32, gh as u32, buf).context("grid buffer")?,
        )
    } else {
        image::DynamicImage::ImageRgb8(
            image::RgbImage::from_raw(gw as u32, gh as u32, buf).context("grid buffer")?,
        )
    };
    Ok(img)
}

/// An image encoded as PNG bytes (lossless).
pub fn png_bytes(img: &image::DynamicImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    Ok(bytes)
}

/// Writes a PNG grid atomically.
pub fn save_grid(images: &Tensor, nrow: usize, path: &Path) -> Result<()> {
    write_atomic(path, &png_bytes(&make_grid(images, nrow)?)?)
}
