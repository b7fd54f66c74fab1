//! CLIP image and text encoders (ViT-B/32, ViT-L/14, …) in the Hugging Face `CLIPModel` layout:
//! a folder with `config.json`, `model.safetensors` and `tokenizer.json`, as in the
//! `openai/clip-vit-*` repositories. Variable names equal the safetensors keys
//! (`vision_model.encoder.layers.0.self_attn.q_proj.weight`, `text_projection.weight`, …).
//!
//! Image features are the projected image embeddings (`visual_projection(post_layernorm(CLS))`);
//! zero-shot classification compares L2-normalised image and text embeddings.
//! Preprocessing: RGB, resize so the shortest side is `image_size` (bicubic, antialiased when
//! shrinking), centre crop `image_size`², normalise with the CLIP mean and std.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{nn, nn::Module, Device, Kind, Tensor};

use super::clip_tokenizer::ClipTokenizer;

pub const CLIP_MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
pub const CLIP_STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

fn d_text_vocab() -> i64 {
    49408
}
fn d_text_hidden() -> i64 {
    512
}
fn d_text_inter() -> i64 {
    2048
}
fn d_layers() -> i64 {
    12
}
fn d_text_heads() -> i64 {
    8
}
fn d_max_pos() -> i64 {
    77
}
fn d_act() -> String {
    "quick_gelu".into()
}
fn d_eps() -> f64 {
    1e-5
}
fn d_eos() -> i64 {
    49407
}
fn d_vis_hidden() -> i64 {
    768
}
fn d_vis_inter() -> i64 {
    3072
}
fn d_vis_heads() -> i64 {
    12
}
fn d_image() -> i64 {
    224
}
fn d_patch() -> i64 {
    32
}
fn d_channels() -> i64 {
    3
}
fn d_proj() -> i64 {
    512
}

/// `text_config` of a HF `config.json` (missing fields take HF's defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "d_text_vocab")]
    pub vocab_size: i64,
    #[serde(default = "d_text_hidden")]
    pub hidden_size: i64,
    #[serde(default = "d_text_inter")]
    pub intermediate_size: i64,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d_text_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d_max_pos")]
    pub max_position_embeddings: i64,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// As in HF: 2 (the legacy value in the openai configs) means "pool at the highest token id"
    /// (the end token of the real vocabulary); otherwise pool at the first occurrence of this id.
    /// Default 49407 (HF's).
    #[serde(default = "d_eos")]
    pub eos_token_id: i64,
}

/// `vision_config` of a HF `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default = "d_vis_hidden")]
    pub hidden_size: i64,
    #[serde(default = "d_vis_inter")]
    pub intermediate_size: i64,
    #[serde(default = "d_layers")]
    pub num_hidden_layers: i64,
    #[serde(default = "d_vis_heads")]
    pub num_attention_heads: i64,
    #[serde(default = "d_image")]
    pub image_size: i64,
    #[serde(default = "d_patch")]
    pub patch_size: i64,
    #[serde(default = "d_channels")]
    pub num_channels: i64,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    #[serde(default = "d_proj")]
    pub projection_dim: i64,
}

fn text_cfg(hidden: i64, heads: i64) -> ClipTextConfig {
    ClipTextConfig {
        vocab_size: 49408,
        hidden_size: hidden,
        intermediate_size: 4 * hidden,
        num_hidden_layers: 12,
        num_attention_heads: heads,
        max_position_embeddings: 77,
        hidden_act: d_act(),
        layer_norm_eps: 1e-5,
        eos_token_id: 2,
    }
}

impl ClipConfig {
    /// `openai/clip-vit-base-patch32`.
    pub fn vit_b_32() -> Self {
        Self {
            text_config: text_cfg(512, 8),
            vision_config: ClipVisionConfig {
                hidden_size: 768,
                intermediate_size: 3072,
                num_hidden_layers: 12,
                num_attention_heads: 12,
                image_size: 224,
                patch_size: 32,
                num_channels: 3,
                hidden_act: d_act(),
                layer_norm_eps: 1e-5,
            },
            projection_dim: 512,
        }
    }

    /// `openai/clip-vit-large-patch14`.
    pub fn vit_l_14() -> Self {
        Self {
            text_config: text_cfg(768, 12),
            vision_config: ClipVisionConfig {
                hidden_size: 1024,
                intermediate_size: 4096,
                num_hidden_layers: 24,
                num_attention_heads: 16,
                image_size: 224,
                patch_size: 14,
                num_channels: 3,
                hidden_act: d_act(),
                layer_norm_eps: 1e-5,
            },
            projection_dim: 768,
        }
    }

    /// A named architecture: `vit-b-32` or `vit-l-14`.
    pub fn named(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().replace(['/', '_'], "-").as_str() {
            "vit-b-32" | "b32" => Ok(Self::vit_b_32()),
            "vit-l-14" | "l14" => Ok(Self::vit_l_14()),
            other => bail!("unknown CLIP architecture {other:?}: expected vit-b-32 or vit-l-14"),
        }
    }

    pub fn from_json_file(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Self = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a CLIP config.json", path.display()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        let t = &self.text_config;
        let v = &self.vision_config;
        for (what, h, heads) in [
            ("text", t.hidden_size, t.num_attention_heads),
            ("vision", v.hidden_size, v.num_attention_heads),
        ] {
            if h < 1 || heads < 1 || h % heads != 0 {
                bail!("CLIP {what} config: hidden_size {h} must be a positive multiple of num_attention_heads {heads}");
            }
        }
        if v.patch_size < 1 || v.image_size % v.patch_size != 0 {
            bail!(
                "CLIP vision config: image_size {} must be a multiple of patch_size {}",
                v.image_size,
                v.patch_size
            );
        }
        if v.num_channels != 3 {
            bail!("CLIP vision config: num_channels must be 3");
        }
        for act in [&t.hidden_act, &v.hidden_act] {
            if !matches!(act.as_str(), "quick_gelu" | "gelu") {
                bail!("CLIP config: unsupported hidden_act {act:?} (quick_gelu or gelu)");
            }
        }
        if self.projection_dim < 1 || t.vocab_size < 1 || t.max_position_embeddings < 2 {
            bail!("CLIP config: projection_dim, vocab_size and max_position_embeddings must be positive");
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Attention {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    out: nn::Linear,
    heads: i64,
}

impl Attention {
    fn new(p: &nn::Path, d: i64, heads: i64) -> Self {
        let l = |n: &str| nn::linear(p / n, d, d, Default::default());
        Self {
            q: l("q_proj"),
            k: l("k_proj"),
            v: l("v_proj"),
            out: l("out_proj"),
            heads,
        }
    }
    fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let (b, n, d) = x.size3().expect("[B, N, D]");
        let hd = d / self.heads;
        let split = |t: Tensor| t.view([b, n, self.heads, hd]).transpose(1, 2);
        let q = split(self.q.forward(x));
        let k = split(self.k.forward(x));
        let v = split(self.v.forward(x));
        let o = Tensor::scaled_dot_product_attention::<Tensor>(
            &q, &k, &v, None, 0.0, causal, None, false,
        );
        self.out
            .forward(&o.transpose(1, 2).contiguous().view([b, n, d]))
    }
}

#[derive(Debug)]
struct Layer {
    ln1: nn::LayerNorm,
    attn: Attention,
    ln2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    quick_gelu: bool,
}

impl Layer {
    fn new(p: &nn::Path, d: i64, inter: i64, heads: i64, eps: f64, act: &str) -> Self {
        let ln = |n: &str| {
            nn::layer_norm(
                p / n,
                vec![d],
                nn::LayerNormConfig {
                    eps,
                    ..Default::default()
                },
            )
        };
        Self {
            ln1: ln("layer_norm1"),
            attn: Attention::new(&(p / "self_attn"), d, heads),
            ln2: ln("layer_norm2"),
            fc1: nn::linear(p / "mlp" / "fc1", d, inter, Default::default()),
            fc2: nn::linear(p / "mlp" / "fc2", inter, d, Default::default()),
            quick_gelu: act == "quick_gelu",
        }
    }
    fn forward(&self, x: &Tensor, causal: bool) -> Tensor {
        let h = x + self.attn.forward(&self.ln1.forward(x), causal);
        let m = self.fc1.forward(&self.ln2.forward(&h));
        let m = if self.quick_gelu {
            &m * (&m * 1.702).sigmoid()
        } else {
            m.gelu("none")
        };
        h + self.fc2.forward(&m)
    }
}

fn encoder(
    p: &nn::Path,
    n: i64,
    d: i64,
    inter: i64,
    heads: i64,
    eps: f64,
    act: &str,
) -> Vec<Layer> {
    let p = p / "encoder" / "layers";
    (0..n)
        .map(|i| Layer::new(&(&p / i), d, inter, heads, eps, act))
        .collect()
}

/// The CLIP model (both towers and projections).
#[derive(Debug)]
pub struct Clip {
    pub cfg: ClipConfig,
    class_embedding: Tensor,
    patch_embedding: nn::Conv2D,
    vision_pos: nn::Embedding,
    pre_layrnorm: nn::LayerNorm,
    vision_layers: Vec<Layer>,
    post_layernorm: nn::LayerNorm,
    visual_projection: nn::Linear,
    token_embedding: nn::Embedding,
    text_pos: nn::Embedding,
    text_layers: Vec<Layer>,
    final_layer_norm: nn::LayerNorm,
    text_projection: nn::Linear,
    pub logit_scale: Tensor,
}

impl Clip {
    pub fn new(root: &nn::Path, cfg: &ClipConfig) -> Result<Self> {
        cfg.validate()?;
        let v = &cfg.vision_config;
        let t = &cfg.text_config;
        let vp = root / "vision_model";
        let tp = root / "text_model";
        let ln = |p: nn::Path, d: i64, eps: f64| {
            nn::layer_norm(
                p,
                vec![d],
                nn::LayerNormConfig {
                    eps,
                    ..Default::default()
                },
            )
        };
        let no_bias = nn::LinearConfig {
            bias: false,
            ..Default::default()
        };
        let num_pos = (v.image_size / v.patch_size).pow(2) + 1;
        Ok(Self {
            cfg: cfg.clone(),
            class_embedding: (&vp / "embeddings")
                .randn_standard("class_embedding", &[v.hidden_size]),
            patch_embedding: nn::conv2d(
                &vp / "embeddings" / "patch_embedding",
                v.num_channels,
                v.hidden_size,
                v.patch_size,
                nn::ConvConfig {
                    stride: v.patch_size,
                    bias: false,
                    ..Default::default()
                },
            ),
            vision_pos: nn::embedding(
                &vp / "embeddings" / "position_embedding",
                num_pos,
                v.hidden_size,
                Default::default(),
            ),
            pre_layrnorm: ln(&vp / "pre_layrnorm", v.hidden_size, v.layer_norm_eps),
            vision_layers: encoder(
                &vp,
                v.num_hidden_layers,
                v.hidden_size,
                v.intermediate_size,
                v.num_attention_heads,
                v.layer_norm_eps,
                &v.hidden_act,
            ),
            post_layernorm: ln(&vp / "post_layernorm", v.hidden_size, v.layer_norm_eps),
            visual_projection: nn::linear(
                root / "visual_projection",
                v.hidden_size,
                cfg.projection_dim,
                no_bias,
            ),
            token_embedding: nn::embedding(
                &tp / "embeddings" / "token_embedding",
                t.vocab_size,
                t.hidden_size,
                Default::default(),
            ),
            text_pos: nn::embedding(
                &tp / "embeddings" / "position_embedding",
                t.max_position_embeddings,
                t.hidden_size,
                Default::default(),
            ),
            text_layers: encoder(
                &tp,
                t.num_hidden_layers,
                t.hidden_size,
                t.intermediate_size,
                t.num_attention_heads,
                t.layer_norm_eps,
                &t.hidden_act,
            ),
            final_layer_norm: ln(&tp / "final_layer_norm", t.hidden_size, t.layer_norm_eps),
            text_projection: nn::linear(
                root / "text_projection",
                t.hidden_size,
                cfg.projection_dim,
                no_bias,
            ),
            logit_scale: root.var("logit_scale", &[], nn::Init::Const(2.6592)),
        })
    }

    /// Projected image embeddings `[B, projection_dim]` of preprocessed pixels
    /// (`[B, 3, image_size, image_size]`, normalised).
    pub fn image_embeds(&self, pixels: &Tensor) -> Result<Tensor> {
        let v = &self.cfg.vision_config;
        let s = pixels.size();
        if s.len() != 4 || s[1] != 3 || s[2] != v.image_size || s[3] != v.image_size {
            bail!(
                "CLIP vision expects [B, 3, {0}, {0}] pixels, got {s:?}",
                v.image_size
            );
        }
        let b = s[0];
        let x = self
            .patch_embedding
            .forward(pixels)
            .flatten(2, -1)
            .transpose(1, 2); // [B, N, D]
        let cls = self
            .class_embedding
            .view([1, 1, v.hidden_size])
            .expand([b, 1, v.hidden_size], false);
        let mut h = Tensor::cat(&[cls, x], 1) + &self.vision_pos.ws;
        h = self.pre_layrnorm.forward(&h);
        for l in &self.vision_layers {
            h = l.forward(&h, false);
        }
        let pooled = self.post_layernorm.forward(&h.select(1, 0));
        Ok(self.visual_projection.forward(&pooled))
    }

    /// Projected text embeddings `[B, projection_dim]` of token ids `[B, L]`.
    pub fn text_embeds(&self, ids: &Tensor) -> Result<Tensor> {
        let t = &self.cfg.text_config;
        let s = ids.size();
        if s.len() != 2 || s[1] < 1 || s[1] > t.max_position_embeddings {
            bail!(
                "CLIP text expects [B, L] token ids with L <= {}, got {s:?}",
                t.max_position_embeddings
            );
        }
        let ids = ids.to_kind(Kind::Int64);
        let (mn, mx) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
        if mn < 0 || mx >= t.vocab_size {
            bail!("token id outside the vocabulary (0..{})", t.vocab_size);
        }
        let l = s[1];
        let mut h = self.token_embedding.forward(&ids) + self.text_pos.ws.narrow(0, 0, l);
        for layer in &self.text_layers {
            h = layer.forward(&h, true);
        }
        let h = self.final_layer_norm.forward(&h);
        let pos = if t.eos_token_id == 2 {
            ids.argmax(-1, false)
        } else {
            // First occurrence of the end token (argmax of a 0/1 mask returns the first 1).
            let m = ids.eq(t.eos_token_id).to_kind(Kind::Int64);
            if m.sum_dim_intlist(&[1i64][..], false, Kind::Int64)
                .min()
                .int64_value(&[])
                == 0
            {
                bail!("a token sequence lacks the end token {}", t.eos_token_id);
            }
            m.argmax(-1, false)
        };
        let idx = pos
            .view([s[0], 1, 1])
            .expand([s[0], 1, t.hidden_size], false);
        let pooled = h.gather(1, &idx, false).squeeze_dim(1);
        Ok(self.text_projection.forward(&pooled))
    }
}

/// The CLIP text tower alone (transformers' `CLIPTextModel`, keys `text_model.*`), as in a
/// Stable Diffusion `text_encoder/` folder (whose `config.json` is a flat [`ClipTextConfig`]).
/// Stable Diffusion conditions on [`ClipTextModel::last_hidden_state`] (every token, after
/// `final_layer_norm`), not on the pooled projection.
#[derive(Debug)]
pub struct ClipTextModel {
    pub cfg: ClipTextConfig,
    token_embedding: nn::Embedding,
    text_pos: nn::Embedding,
    layers: Vec<Layer>,
    final_layer_norm: nn::LayerNorm,
}

impl ClipTextModel {
    /// Variables under `root / "text_model"`.
    pub fn new(root: &nn::Path, cfg: &ClipTextConfig) -> Result<Self> {
        if cfg.hidden_size < 1
            || cfg.num_attention_heads < 1
            || cfg.hidden_size % cfg.num_attention_heads != 0
        {
            bail!(
                "CLIP text config: hidden_size {} must be a positive multiple of num_attention_heads {}",
                cfg.hidden_size,
                cfg.num_attention_heads
            );
        }
        if !matches!(cfg.hidden_act.as_str(), "quick_gelu" | "gelu") {
            bail!(
                "CLIP text config: unsupported hidden_act {:?} (quick_gelu or gelu)",
                cfg.hidden_act
            );
        }
        if cfg.vocab_size < 1 || cfg.max_position_embeddings < 2 || cfg.num_hidden_layers < 1 {
            bail!("CLIP text config: vocab_size, max_position_embeddings and num_hidden_layers must be positive");
        }
        let tp = root / "text_model";
        Ok(Self {
            cfg: cfg.clone(),
            token_embedding: nn::embedding(
                &tp / "embeddings" / "token_embedding",
                cfg.vocab_size,
                cfg.hidden_size,
                Default::default(),
            ),
            text_pos: nn::embedding(
                &tp / "embeddings" / "position_embedding",
                cfg.max_position_embeddings,
                cfg.hidden_size,
                Default::default(),
            ),
            layers: encoder(
                &tp,
                cfg.num_hidden_layers,
                cfg.hidden_size,
                cfg.intermediate_size,
                cfg.num_attention_heads,
                cfg.layer_norm_eps,
                &cfg.hidden_act,
            ),
            final_layer_norm: nn::layer_norm(
                &tp / "final_layer_norm",
                vec![cfg.hidden_size],
                nn::LayerNormConfig {
                    eps: cfg.layer_norm_eps,
                    ..Default::default()
                },
            ),
        })
    }

    /// `[B, L, hidden]` hidden states of token ids `[B, L]` after `final_layer_norm`.
    pub fn last_hidden_state(&self, ids: &Tensor) -> Result<Tensor> {
        let t = &self.cfg;
        let s = ids.size();
        if s.len() != 2 || s[1] < 1 || s[1] > t.max_position_embeddings {
            bail!(
                "CLIP text expects [B, L] token ids with L <= {}, got {s:?}",
                t.max_position_embeddings
            );
        }
        let ids = ids.to_kind(Kind::Int64);
        let (mn, mx) = (ids.min().int64_value(&[]), ids.max().int64_value(&[]));
        if mn < 0 || mx >= t.vocab_size {
            bail!("token id outside the vocabulary (0..{})", t.vocab_size);
        }
        let mut h = self.token_embedding.forward(&ids) + self.text_pos.ws.narrow(0, 0, s[1]);
        for layer in &self.layers {
            h = layer.forward(&h, true);
        }
        Ok(self.final_layer_norm.forward(&h))
    }
}

/// CLIP preprocessing of images in `[0, 1]` (`[N, C, H, W]`, C = 1 or 3, any size) to normalised
/// `[N, 3, size, size]` pixels.
pub fn preprocess(images: &Tensor, size: i64) -> Result<Tensor> {
    let x = crate::imageops::to_channels(images, 3)?.to_kind(Kind::Float);
    let s = x.size();
    let (h, w) = (s[2], s[3]);
    let (nh, nw) = if h <= w {
        (
            size,
            ((size as f64) * w as f64 / h as f64)
                .floor()
                .max(size as f64) as i64,
        )
    } else {
        (
            ((size as f64) * h as f64 / w as f64)
                .floor()
                .max(size as f64) as i64,
            size,
        )
    };
    let x = if (nh, nw) == (h, w) {
        x
    } else if nh < h || nw < w {
        x.internal_upsample_bicubic2d_aa([nh, nw], false, None, None)
    } else {
        x.upsample_bicubic2d([nh, nw], false, None, None)
    };
    let top = (nh - size) / 2;
    let left = (nw - size) / 2;
    let x = x.narrow(2, top, size).narrow(3, left, size).clamp(0.0, 1.0);
    let dev = x.device();
    let mean = Tensor::from_slice(&CLIP_MEAN)
        .to_kind(Kind::Float)
        .to_device(dev)
        .view([1, 3, 1, 1]);
    let std = Tensor::from_slice(&CLIP_STD)
        .to_kind(Kind::Float)
        .to_device(dev)
        .view([1, 3, 1, 1]);
    Ok((x - mean) / std)
}

/// A CLIP folder: `config.json` (optional when `arch` is given), `model.safetensors`,
/// `tokenizer.json` (needed for text).
pub struct LoadedClip {
    pub vs: nn::VarStore,
    pub model: Clip,
    pub tokenizer: Option<ClipTokenizer>,
    pub weights: PathBuf,
    pub device: Device,
}

pub const CLIP_CONFIG_FILE: &str = "config.json";
pub const CLIP_WEIGHTS_FILE: &str = "model.safetensors";
pub const CLIP_TOKENIZER_FILE: &str = "tokenizer.json";

/// Loads a CLIP folder (HF layout). `arch` (`vit-b-32`, `vit-l-14`) is used when the folder has
/// no `config.json`.
pub fn load_clip(dir: &Path, arch: Option<&str>, device: Device) -> Result<LoadedClip> {
    if !dir.is_dir() {
        bail!("CLIP folder {} does not exist", dir.display());
    }
    let cfg_path = dir.join(CLIP_CONFIG_FILE);
    let cfg = if cfg_path.exists() {
        ClipConfig::from_json_file(&cfg_path)?
    } else if let Some(a) = arch {
        ClipConfig::named(a)?
    } else {
        bail!(
            "{}: no {CLIP_CONFIG_FILE} (pass an architecture)",
            dir.display()
        );
    };
    let mut vs = nn::VarStore::new(device);
    let model = crate::rng::with_torch_rng(|| Clip::new(&vs.root(), &cfg))?;
    let weights = dir.join(CLIP_WEIGHTS_FILE);
    crate::config::load_vars(&mut vs, &weights)?;
    vs.freeze();
    let tp = dir.join(CLIP_TOKENIZER_FILE);
    let tokenizer = if tp.exists() {
        Some(ClipTokenizer::from_file(
            &tp,
            cfg.text_config.max_position_embeddings as usize,
        )?)
    } else {
        None
    };
    Ok(LoadedClip {
        vs,
        model,
        tokenizer,
        weights,
        device,
    })
}

impl LoadedClip {
    /// Image embeddings of images in `[0, 1]` (any size; preprocessed here).
    pub fn encode_images(&self, images: &Tensor) -> Result<Tensor> {
        let px = preprocess(
            &images.to_device(self.device),
            self.model.cfg.vision_config.image_size,
        )?;
        tch::no_grad(|| self.model.image_embeds(&px))
    }

    /// Text embeddings of prompts.
    pub fn encode_texts(&self, prompts: &[String]) -> Result<Tensor> {
        let tok = self
            .tokenizer
            .as_ref()
            .context("this CLIP folder has no tokenizer.json")?;
        let ids = tok.encode_batch(prompts)?.to_device(self.device);
        tch::no_grad(|| self.model.text_embeds(&ids))
    }

    /// Zero-shot classification: `[N, P]` probabilities of each prompt per image (softmax of the
    /// scaled cosine similarities).
    pub fn zero_shot(&self, images: &Tensor, prompts: &[String]) -> Result<Tensor> {
        if prompts.len() < 2 {
            bail!("zero-shot classification needs at least 2 prompts");
        }
        let img = self.encode_images(images)?;
        let txt = self.encode_texts(prompts)?;
        let norm = |t: &Tensor| t / t.norm_scalaropt_dim(2, [-1i64], true).clamp_min(1e-12);
        let scale = self.model.logit_scale.exp();
        let logits = norm(&img).matmul(&norm(&txt).tr()) * scale;
        Ok(logits.softmax(-1, Kind::Float))
    }
}
