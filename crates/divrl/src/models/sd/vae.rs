//! The decoder half of diffusers' `AutoencoderKL` (what Stable Diffusion uses to turn latents into
//! pixels): `post_quant_conv` then `decoder.{conv_in, mid_block, up_blocks, conv_norm_out,
//! conv_out}`, with the diffusers variable names. The encoder is not implemented (the RL loop
//! scores decoded pixels; reference images go to ϕ directly), so its tensors in
//! `vae/diffusion_pytorch_model.safetensors` are ignored on load.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

use super::unet2d::Resnet;

fn d_latent() -> i64 {
    4
}
fn d_groups() -> i64 {
    32
}
fn d_scaling() -> f64 {
    0.18215
}
fn d_act() -> String {
    "silu".into()
}
fn d_true() -> bool {
    true
}

/// The fields of `vae/config.json` the decoder reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderKlConfig {
    pub out_channels: i64,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: i64,
    pub up_block_types: Vec<String>,
    #[serde(default = "d_latent")]
    pub latent_channels: i64,
    #[serde(default = "d_groups")]
    pub norm_num_groups: i64,
    #[serde(default = "d_scaling")]
    pub scaling_factor: f64,
    #[serde(default)]
    pub shift_factor: Option<f64>,
    #[serde(default = "d_act")]
    pub act_fn: String,
    #[serde(default = "d_true")]
    pub use_post_quant_conv: bool,
    #[serde(default)]
    pub mid_block_add_attention: Option<bool>,
}

impl AutoencoderKlConfig {
    pub fn validate(&self) -> Result<()> {
        let n = self.block_out_channels.len();
        if n < 1 || self.block_out_channels.iter().any(|&c| c < 1) {
            bail!("vae block_out_channels must be a non-empty list of positive numbers");
        }
        if self.up_block_types.len() != n {
            bail!("vae up_block_types must have one entry per block_out_channels ({n})");
        }
        if let Some(t) = self
            .up_block_types
            .iter()
            .find(|t| t.as_str() != "UpDecoderBlock2D")
        {
            bail!("unsupported vae up block type {t:?} (UpDecoderBlock2D)");
        }
        let g = self.norm_num_groups;
        if g < 1 || self.block_out_channels.iter().any(|c| c % g != 0) {
            bail!("every vae block_out_channels entry must be a multiple of norm_num_groups {g}");
        }
        if self.layers_per_block < 1 || self.latent_channels < 1 || self.out_channels < 1 {
            bail!("vae layers_per_block, latent_channels and out_channels must be >= 1");
        }
        if self.act_fn != "silu" {
            bail!("unsupported vae act_fn {:?} (silu)", self.act_fn);
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor > 0.0) {
            bail!("vae scaling_factor must be positive");
        }
        if self.mid_block_add_attention == Some(false) {
            bail!("unsupported vae feature: mid_block_add_attention = false");
        }
        Ok(())
    }
}

/// The VAE's single-head spatial self-attention (`group_norm`, `to_q/k/v`, `to_out.0`, residual).
#[derive(Debug)]
struct VaeAttention {
    group_norm: nn::GroupNorm,
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
}

impl VaeAttention {
    fn new(p: &nn::Path, c: i64, groups: i64) -> Self {
        let l = |n: nn::Path| nn::linear(n, c, c, Default::default());
        Self {
            group_norm: nn::group_norm(
                p / "group_norm",
                groups,
                c,
                nn::GroupNormConfig {
                    eps: 1e-6,
                    ..Default::default()
                },
            ),
            to_q: l(p / "to_q"),
            to_k: l(p / "to_k"),
            to_v: l(p / "to_v"),
            to_out: l(p / "to_out" / 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("[B, C, H, W]");
        let t = self
            .group_norm
            .forward(x)
            .view([b, c, h * w])
            .transpose(1, 2)
            .unsqueeze(1);
        let q = self.to_q.forward(&t);
        let k = self.to_k.forward(&t);
        let v = self.to_v.forward(&t);
        let o = Tensor::scaled_dot_product_attention::<Tensor>(
            &q, &k, &v, None, 0.0, false, None, false,
        );
        let o = self.to_out.forward(&o.squeeze_dim(1));
        o.transpose(1, 2).reshape([b, c, h, w]) + x
    }
}

/// `AutoencoderKL`'s decoder with `post_quant_conv`.
#[derive(Debug)]
pub struct VaeDecoder {
    pub cfg: AutoencoderKlConfig,
    post_quant_conv: Option<nn::Conv2D>,
    conv_in: nn::Conv2D,
    mid: (Resnet, VaeAttention, Resnet),
    up: Vec<(Vec<Resnet>, Option<nn::Conv2D>)>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

fn conv3(p: nn::Path, cin: i64, cout: i64) -> nn::Conv2D {
    nn::conv2d(
        p,
        cin,
        cout,
        3,
        nn::ConvConfig {
            padding: 1,
            ..Default::default()
        },
    )
}

impl VaeDecoder {
    /// Variables `post_quant_conv.*` and `decoder.*` under `p`.
    pub fn new(p: &nn::Path, cfg: &AutoencoderKlConfig) -> Result<Self> {
        cfg.validate()?;
        let ch = &cfg.block_out_channels;
        let n = ch.len();
        let g = cfg.norm_num_groups;
        let lat = cfg.latent_channels;
        let d = p / "decoder";
        let top = ch[n - 1];
        let mp = &d / "mid_block";
        let mid = (
            Resnet::new(&(&mp / "resnets" / 0), top, top, None, g, 1e-6),
            VaeAttention::new(&(&mp / "attentions" / 0), top, g),
            Resnet::new(&(&mp / "resnets" / 1), top, top, None, g, 1e-6),
        );
        let mut up = Vec::with_capacity(n);
        let mut out_ch = ch[n - 1];
        for i in 0..n {
            let bp = &d / "up_blocks" / i as i64;
            let prev = out_ch;
            out_ch = ch[n - 1 - i];
            let resnets = (0..cfg.layers_per_block + 1)
                .map(|j| {
                    let cin = if j == 0 { prev } else { out_ch };
                    Resnet::new(&(&bp / "resnets" / j), cin, out_ch, None, g, 1e-6)
                })
                .collect();
            let upsample =
                (i + 1 < n).then(|| conv3(&bp / "upsamplers" / 0 / "conv", out_ch, out_ch));
            up.push((resnets, upsample));
        }
        Ok(Self {
            cfg: cfg.clone(),
            post_quant_conv: cfg
                .use_post_quant_conv
                .then(|| nn::conv2d(p / "post_quant_conv", lat, lat, 1, Default::default())),
            conv_in: conv3(&d / "conv_in", lat, top),
            mid,
            up,
            conv_norm_out: nn::group_norm(
                &d / "conv_norm_out",
                g,
                ch[0],
                nn::GroupNormConfig {
                    eps: 1e-6,
                    ..Default::default()
                },
            ),
            conv_out: conv3(&d / "conv_out", ch[0], cfg.out_channels),
        })
    }

    /// Pixels in about `[-1, 1]` (`[B, out_channels, 2^(n−1)·H, 2^(n−1)·W]`, f32) of *scaled*
    /// latents (the diffusion model's; divided by `scaling_factor` here, `shift_factor` added).
    pub fn decode(&self, latents: &Tensor) -> Tensor {
        let kind = self.conv_in.ws.kind();
        let mut z = latents.to_kind(Kind::Float) / self.cfg.scaling_factor;
        if let Some(s) = self.cfg.shift_factor {
            z += s;
        }
        let mut h = z.to_kind(kind);
        if let Some(c) = &self.post_quant_conv {
            h = c.forward(&h);
        }
        h = self.conv_in.forward(&h);
        h = self.mid.0.forward(&h, None);
        h = self.mid.1.forward(&h);
        h = self.mid.2.forward(&h, None);
        for (resnets, upsample) in &self.up {
            for r in resnets {
                h = r.forward(&h, None);
            }
            if let Some(u) = upsample {
                let (_, _, hh, ww) = h.size4().expect("[B, C, H, W]");
                h = u.forward(&h.upsample_nearest2d([2 * hh, 2 * ww], None, None));
            }
        }
        self.conv_out
            .forward(&self.conv_norm_out.forward(&h).silu())
            .to_kind(Kind::Float)
    }

    /// Spatial up-scaling factor from latents to pixels.
    pub fn scale(&self) -> i64 {
        1 << (self.cfg.block_out_channels.len() - 1)
    }
}
