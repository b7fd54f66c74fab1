//! diffusers' `UNet2DConditionModel` (the Stable Diffusion 1.x / 2.x denoiser) in tch, with the
//! diffusers variable names (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight`, …)
//! so a `unet/diffusion_pytorch_model.safetensors` loads as is.
//!
//! Supported: `CrossAttnDownBlock2D`/`DownBlock2D`, `UNetMidBlock2DCrossAttn`,
//! `CrossAttnUpBlock2D`/`UpBlock2D`, positional (sinusoidal) time embedding, one or more
//! transformer layers per block, 1×1-conv or linear `proj_in`/`proj_out`, GEGLU feed-forward,
//! attention through `scaled_dot_product_attention`. Anything else in `config.json` that changes
//! the architecture (class/addition embeddings, `scale_shift` time conditioning, …) is refused
//! with an error rather than ignored.
//!
//! LoRA: [`UNet2DCondition::add_lora`] puts an adapter on `to_q`, `to_k`, `to_v` and `to_out.0` of
//! every attention (self and cross). Adapter variables are named after the adapted layer
//! (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora_a`), which is what
//! [`crate::models::sd::lora_diffusers`] maps to the peft/diffusers layout.
//!
//! Gradient checkpointing ([`UNet2DCondition::forward_checkpointed`] /
//! [`UNet2DCondition::backward_checkpointed`]): tch has no `torch.utils.checkpoint`, so it is done
//! by hand over stages (`conv_in`, each resnet + attention of a block, each resampler, the mid
//! block, `conv_out`): the forward runs without autograd and keeps each stage's input; the
//! backward recomputes one stage at a time with autograd and back-propagates the incoming
//! gradient through it (`backward` of `Σ output·grad`, which gives the same parameter gradients
//! as `output.backward(grad)`). Only one stage's graph is alive at a time.
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

use super::{lora_forward, sub_path, IntOrList};
use crate::nn::lora::{LoraConfig, LoraLinear};

fn d_norm_groups() -> i64 {
    32
}
fn d_norm_eps() -> f64 {
    1e-5
}
fn d_true() -> bool {
    true
}
fn d_zero() -> f64 {
    0.0
}
fn d_sample() -> i64 {
    64
}
fn d_one() -> IntOrList {
    IntOrList::Int(1)
}
fn d_act() -> String {
    "silu".into()
}
fn d_mid() -> Option<String> {
    Some("UNetMidBlock2DCrossAttn".into())
}
fn d_shift() -> String {
    "default".into()
}
fn d_positional() -> String {
    "positional".into()
}
fn d_kernel() -> i64 {
    3
}

/// The fields of a diffusers `unet/config.json` that this implementation reads. The architecture
/// fields have no default (a missing one is an error); the rest take diffusers' defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNet2DConditionConfig {
    pub in_channels: i64,
    pub out_channels: i64,
    pub block_out_channels: Vec<i64>,
    pub layers_per_block: i64,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub cross_attention_dim: i64,
    /// Number of heads per block in SD 1.x configs (diffusers' historical misnaming), unless
    /// `num_attention_heads` is given, in which case it is the per-head width.
    pub attention_head_dim: IntOrList,
    #[serde(default)]
    pub num_attention_heads: Option<IntOrList>,
    #[serde(default = "d_norm_groups")]
    pub norm_num_groups: i64,
    #[serde(default = "d_norm_eps")]
    pub norm_eps: f64,
    #[serde(default = "d_sample")]
    pub sample_size: i64,
    #[serde(default = "d_true")]
    pub flip_sin_to_cos: bool,
    #[serde(default = "d_zero")]
    pub freq_shift: f64,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default = "d_one")]
    pub transformer_layers_per_block: IntOrList,
    #[serde(default = "d_act")]
    pub act_fn: String,
    #[serde(default = "d_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "d_shift")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "d_positional")]
    pub time_embedding_type: String,
    #[serde(default = "d_kernel")]
    pub conv_in_kernel: i64,
    #[serde(default = "d_kernel")]
    pub conv_out_kernel: i64,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default)]
    pub only_cross_attention: serde_json::Value,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<i64>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub encoder_hid_dim: Option<i64>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<i64>,
    #[serde(default)]
    pub upcast_attention: bool,
    /// Further diffusers fields that change the architecture when not at their default value.
    #[serde(default)]
    pub attention_type: Option<String>,
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    #[serde(default)]
    pub time_embedding_dim: Option<i64>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub reverse_transformer_layers_per_block: Option<serde_json::Value>,
    #[serde(default)]
    pub downsample_padding: Option<i64>,
    #[serde(default)]
    pub mid_block_scale_factor: Option<f64>,
    #[serde(default)]
    pub resnet_out_scale_factor: Option<f64>,
    #[serde(default)]
    pub resnet_skip_time_act: Option<bool>,
}

impl UNet2DConditionConfig {
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Self = serde_json::from_str(text)?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn nblocks(&self) -> usize {
        self.block_out_channels.len()
    }

    /// Heads of each down block (up blocks use them reversed): `num_attention_heads`, else
    /// `attention_head_dim` (as diffusers does); each head is `channels / heads` wide.
    pub fn heads(&self) -> Result<Vec<i64>> {
        let v = self
            .num_attention_heads
            .as_ref()
            .unwrap_or(&self.attention_head_dim);
        v.expand(self.nblocks(), "num_attention_heads/attention_head_dim")
    }

    pub fn validate(&self) -> Result<()> {
        let n = self.nblocks();
        if n < 1 || self.block_out_channels.iter().any(|&c| c < 1) {
            bail!("block_out_channels must be a non-empty list of positive numbers");
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            bail!(
                "down_block_types and up_block_types must have one entry per block_out_channels ({n})"
            );
        }
        for t in &self.down_block_types {
            if !matches!(t.as_str(), "CrossAttnDownBlock2D" | "DownBlock2D") {
                bail!("unsupported down block type {t:?} (CrossAttnDownBlock2D or DownBlock2D)");
            }
        }
        for t in &self.up_block_types {
            if !matches!(t.as_str(), "CrossAttnUpBlock2D" | "UpBlock2D") {
                bail!("unsupported up block type {t:?} (CrossAttnUpBlock2D or UpBlock2D)");
            }
        }
        if self.layers_per_block < 1 || self.in_channels < 1 || self.out_channels < 1 {
            bail!("layers_per_block, in_channels and out_channels must be >= 1");
        }
        if self.cross_attention_dim < 1 {
            bail!("cross_attention_dim must be >= 1");
        }
        let g = self.norm_num_groups;
        if g < 1 || self.block_out_channels.iter().any(|c| c % g != 0) {
            bail!("every block_out_channels entry must be a multiple of norm_num_groups {g}");
        }
        let heads = self.heads()?;
        for (i, (&c, &h)) in self.block_out_channels.iter().zip(&heads).enumerate() {
            if h < 1 || c % h != 0 {
                bail!("block {i}: {c} channels do not split into {h} attention heads");
            }
        }
        for (i, l) in self
            .transformer_layers_per_block
            .expand(n, "transformer_layers_per_block")?
            .iter()
            .enumerate()
        {
            if *l < 1 {
                bail!("block {i}: transformer_layers_per_block must be >= 1");
            }
        }
        if self.block_out_channels[0] % 2 != 0 {
            bail!("block_out_channels[0] must be even (sinusoidal time embedding)");
        }
        let unsupported = [
            (self.act_fn != "silu", "act_fn other than silu"),
            (
                self.mid_block_type.as_deref() != Some("UNetMidBlock2DCrossAttn"),
                "mid_block_type other than UNetMidBlock2DCrossAttn",
            ),
            (
                self.resnet_time_scale_shift != "default",
                "resnet_time_scale_shift other than default",
            ),
            (
                self.time_embedding_type != "positional",
                "time_embedding_type other than positional",
            ),
            (
                self.conv_in_kernel != 3 || self.conv_out_kernel != 3,
                "conv_in_kernel/conv_out_kernel other than 3",
            ),
            (self.center_input_sample, "center_input_sample"),
            (
                !(self.only_cross_attention.is_null() || self.only_cross_attention == false),
                "only_cross_attention",
            ),
            (self.dual_cross_attention, "dual_cross_attention"),
            (
                self.class_embed_type.is_some() || self.num_class_embeds.is_some(),
                "class embeddings",
            ),
            (self.addition_embed_type.is_some(), "addition_embed_type"),
            (self.encoder_hid_dim.is_some(), "encoder_hid_dim"),
            (self.time_cond_proj_dim.is_some(), "time_cond_proj_dim"),
            (
                self.attention_type
                    .as_deref()
                    .is_some_and(|a| a != "default"),
                "attention_type other than default",
            ),
            (self.cross_attention_norm.is_some(), "cross_attention_norm"),
            (self.time_embedding_dim.is_some(), "time_embedding_dim"),
            (
                self.time_embedding_act_fn.is_some(),
                "time_embedding_act_fn",
            ),
            (self.timestep_post_act.is_some(), "timestep_post_act"),
            (
                self.reverse_transformer_layers_per_block
                    .as_ref()
                    .is_some_and(|v| !v.is_null()),
                "reverse_transformer_layers_per_block",
            ),
            (
                self.downsample_padding.is_some_and(|p| p != 1),
                "downsample_padding other than 1",
            ),
            (
                self.mid_block_scale_factor.is_some_and(|f| f != 1.0)
                    || self.resnet_out_scale_factor.is_some_and(|f| f != 1.0),
                "output scale factors other than 1",
            ),
            (
                self.resnet_skip_time_act == Some(true),
                "resnet_skip_time_act",
            ),
        ];
        for (bad, what) in unsupported {
            if bad {
                bail!("unsupported UNet2DConditionModel feature: {what}");
            }
        }
        Ok(())
    }
}

fn conv(p: nn::Path, cin: i64, cout: i64, k: i64, stride: i64) -> nn::Conv2D {
    nn::conv2d(
        p,
        cin,
        cout,
        k,
        nn::ConvConfig {
            stride,
            padding: k / 2,
            ..Default::default()
        },
    )
}

fn group_norm(p: nn::Path, groups: i64, c: i64, eps: f64) -> nn::GroupNorm {
    nn::group_norm(
        p,
        groups,
        c,
        nn::GroupNormConfig {
            eps,
            ..Default::default()
        },
    )
}

/// `ResnetBlock2D` (`temb` optional: the VAE's blocks have none).
#[derive(Debug)]
pub(crate) struct Resnet {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    time_emb_proj: Option<nn::Linear>,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    conv_shortcut: Option<nn::Conv2D>,
}

impl Resnet {
    pub(crate) fn new(
        p: &nn::Path,
        cin: i64,
        cout: i64,
        temb: Option<i64>,
        groups: i64,
        eps: f64,
    ) -> Self {
        Self {
            norm1: group_norm(p / "norm1", groups, cin, eps),
            conv1: conv(p / "conv1", cin, cout, 3, 1),
            time_emb_proj: temb
                .map(|t| nn::linear(p / "time_emb_proj", t, cout, Default::default())),
            norm2: group_norm(p / "norm2", groups, cout, eps),
            conv2: conv(p / "conv2", cout, cout, 3, 1),
            conv_shortcut: (cin != cout).then(|| conv(p / "conv_shortcut", cin, cout, 1, 1)),
        }
    }

    pub(crate) fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Tensor {
        let mut h = self.conv1.forward(&self.norm1.forward(x).silu());
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb) {
            h += proj.forward(&t.silu()).unsqueeze(-1).unsqueeze(-1);
        }
        let h = self.conv2.forward(&self.norm2.forward(&h).silu());
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x),
            None => x.shallow_clone(),
        };
        skip + h
    }
}

/// diffusers' `Attention` as used in the UNet: `to_q`, `to_k`, `to_v` without bias, `to_out.0`
/// with bias; `to_k`/`to_v` read the text states in cross-attention.
#[derive(Debug)]
pub struct SdAttention {
    /// Dotted module path, e.g. `mid_block.attentions.0.transformer_blocks.0.attn2`.
    pub path: String,
    pub to_q: LoraLinear,
    pub to_k: LoraLinear,
    pub to_v: LoraLinear,
    pub to_out: LoraLinear,
    heads: i64,
}

impl SdAttention {
    fn new(p: &nn::Path, path: String, dim: i64, ctx_dim: i64, heads: i64) -> Self {
        let mut to_out = LoraLinear::new(&(p / "to_out"), "0", dim, dim, true);
        to_out.name = "to_out".into();
        Self {
            path,
            to_q: LoraLinear::new(p, "to_q", dim, dim, false),
            to_k: LoraLinear::new(p, "to_k", ctx_dim, dim, false),
            to_v: LoraLinear::new(p, "to_v", ctx_dim, dim, false),
            to_out,
            heads,
        }
    }

    fn forward(&self, x: &Tensor, ctx: Option<&Tensor>) -> Tensor {
        let (b, n, d) = x.size3().expect("[B, N, D]");
        let c = ctx.unwrap_or(x);
        let m = c.size()[1];
        let hd = d / self.heads;
        let split = |t: Tensor, len: i64| t.view([b, len, self.heads, hd]).transpose(1, 2);
        let q = split(lora_forward(&self.to_q, x), n);
        let k = split(lora_forward(&self.to_k, c), m);
        let v = split(lora_forward(&self.to_v, c), m);
        let o = Tensor::scaled_dot_product_attention::<Tensor>(
            &q, &k, &v, None, 0.0, false, None, false,
        );
        lora_forward(&self.to_out, &o.transpose(1, 2).reshape([b, n, d]))
    }

    /// The four projections with their names in diffusers (`to_out` is `to_out.0`).
    pub fn projections_mut(&mut self) -> [(&'static str, &mut LoraLinear); 4] {
        [
            ("to_q", &mut self.to_q),
            ("to_k", &mut self.to_k),
            ("to_v", &mut self.to_v),
            ("to_out.0", &mut self.to_out),
        ]
    }

    pub fn projections(&self) -> [(&'static str, &LoraLinear); 4] {
        [
            ("to_q", &self.to_q),
            ("to_k", &self.to_k),
            ("to_v", &self.to_v),
            ("to_out.0", &self.to_out),
        ]
    }
}

#[derive(Debug)]
struct TransformerBlock {
    norm1: nn::LayerNorm,
    attn1: SdAttention,
    norm2: nn::LayerNorm,
    attn2: SdAttention,
    norm3: nn::LayerNorm,
    ff_proj: nn::Linear,
    ff_out: nn::Linear,
}

impl TransformerBlock {
    fn new(p: &nn::Path, path: &str, dim: i64, ctx_dim: i64, heads: i64) -> Self {
        let ln = |n: &str| nn::layer_norm(p / n, vec![dim], Default::default());
        let inner = 4 * dim;
        Self {
            norm1: ln("norm1"),
            attn1: SdAttention::new(&(p / "attn1"), format!("{path}.attn1"), dim, dim, heads),
            norm2: ln("norm2"),
            attn2: SdAttention::new(&(p / "attn2"), format!("{path}.attn2"), dim, ctx_dim, heads),
            norm3: ln("norm3"),
            ff_proj: nn::linear(
                p / "ff" / "net" / 0 / "proj",
                dim,
                2 * inner,
                Default::default(),
            ),
            ff_out: nn::linear(p / "ff" / "net" / 2, inner, dim, Default::default()),
        }
    }

    fn forward(&self, x: &Tensor, ctx: &Tensor) -> Tensor {
        let h = self.attn1.forward(&self.norm1.forward(x), None) + x;
        let h = self.attn2.forward(&self.norm2.forward(&h), Some(ctx)) + h;
        let g = self.ff_proj.forward(&self.norm3.forward(&h)).chunk(2, -1);
        self.ff_out.forward(&(&g[0] * g[1].gelu("none"))) + h
    }
}

#[derive(Debug)]
enum Proj {
    Conv(nn::Conv2D),
    Linear(nn::Linear),
}

/// `Transformer2DModel` (continuous input).
#[derive(Debug)]
struct Transformer2D {
    norm: nn::GroupNorm,
    proj_in: Proj,
    blocks: Vec<TransformerBlock>,
    proj_out: Proj,
}

impl Transformer2D {
    #[allow(clippy::too_many_arguments)]
    fn new(
        p: &nn::Path,
        path: &str,
        c: i64,
        ctx_dim: i64,
        heads: i64,
        layers: i64,
        groups: i64,
        linear: bool,
    ) -> Self {
        let proj = |n: &str| {
            if linear {
                Proj::Linear(nn::linear(p / n, c, c, Default::default()))
            } else {
                Proj::Conv(conv(p / n, c, c, 1, 1))
            }
        };
        Self {
            norm: group_norm(p / "norm", groups, c, 1e-6),
            proj_in: proj("proj_in"),
            blocks: (0..layers)
                .map(|i| {
                    TransformerBlock::new(
                        &(p / "transformer_blocks" / i),
                        &format!("{path}.transformer_blocks.{i}"),
                        c,
                        ctx_dim,
                        heads,
                    )
                })
                .collect(),
            proj_out: proj("proj_out"),
        }
    }

    fn forward(&self, x: &Tensor, ctx: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("[B, C, H, W]");
        let mut t = self.norm.forward(x);
        if let Proj::Conv(p) = &self.proj_in {
            t = p.forward(&t);
        }
        t = t.permute([0, 2, 3, 1]).reshape([b, h * w, c]);
        if let Proj::Linear(p) = &self.proj_in {
            t = p.forward(&t);
        }
        for blk in &self.blocks {
            t = blk.forward(&t, ctx);
        }
        if let Proj::Linear(p) = &self.proj_out {
            t = p.forward(&t);
        }
        t = t.reshape([b, h, w, c]).permute([0, 3, 1, 2]);
        if let Proj::Conv(p) = &self.proj_out {
            t = p.forward(&t);
        }
        t + x
    }
}

#[derive(Debug)]
struct Block {
    resnets: Vec<Resnet>,
    attentions: Vec<Transformer2D>,
    /// Downsampler (stride-2 conv) or upsampler (nearest ×2 then conv).
    resample: Option<nn::Conv2D>,
}

/// Stable Diffusion's UNet.
#[derive(Debug)]
pub struct UNet2DCondition {
    pub cfg: UNet2DConditionConfig,
    conv_in: nn::Conv2D,
    time_linear_1: nn::Linear,
    time_linear_2: nn::Linear,
    down: Vec<Block>,
    mid: (Resnet, Transformer2D, Resnet),
    up: Vec<Block>,
    conv_norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl UNet2DCondition {
    pub fn new(p: &nn::Path, cfg: &UNet2DConditionConfig) -> Result<Self> {
        cfg.validate()?;
        let n = cfg.nblocks();
        let ch = &cfg.block_out_channels;
        let heads = cfg.heads()?;
        let tl = cfg
            .transformer_layers_per_block
            .expand(n, "transformer_layers_per_block")?;
        let g = cfg.norm_num_groups;
        let eps = cfg.norm_eps;
        let temb = ch[0] * 4;
        let ctx = cfg.cross_attention_dim;
        let lin = cfg.use_linear_projection;
        let mut down = Vec::with_capacity(n);
        let mut cin = ch[0];
        for i in 0..n {
            let bp = p / "down_blocks" / i as i64;
            let cout = ch[i];
            let attn = cfg.down_block_types[i] == "CrossAttnDownBlock2D";
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..cfg.layers_per_block {
                let rin = if j == 0 { cin } else { cout };
                resnets.push(Resnet::new(
                    &(&bp / "resnets" / j),
                    rin,
                    cout,
                    Some(temb),
                    g,
                    eps,
                ));
                if attn {
                    attentions.push(Transformer2D::new(
                        &(&bp / "attentions" / j),
                        &format!("down_blocks.{i}.attentions.{j}"),
                        cout,
                        ctx,
                        heads[i],
                        tl[i],
                        g,
                        lin,
                    ));
                }
            }
            let resample =
                (i + 1 < n).then(|| conv(&bp / "downsamplers" / 0 / "conv", cout, cout, 3, 2));
            down.push(Block {
                resnets,
                attentions,
                resample,
            });
            cin = cout;
        }
        let cm = ch[n - 1];
        let mp = p / "mid_block";
        let mid = (
            Resnet::new(&(&mp / "resnets" / 0), cm, cm, Some(temb), g, eps),
            Transformer2D::new(
                &(&mp / "attentions" / 0),
                "mid_block.attentions.0",
                cm,
                ctx,
                heads[n - 1],
                tl[n - 1],
                g,
                lin,
            ),
            Resnet::new(&(&mp / "resnets" / 1), cm, cm, Some(temb), g, eps),
        );
        let rch: Vec<i64> = ch.iter().rev().copied().collect();
        let rheads: Vec<i64> = heads.iter().rev().copied().collect();
        let rtl: Vec<i64> = tl.iter().rev().copied().collect();
        let mut up = Vec::with_capacity(n);
        let mut out_ch = rch[0];
        for i in 0..n {
            let bp = p / "up_blocks" / i as i64;
            let prev = out_ch;
            out_ch = rch[i];
            let in_ch = rch[(i + 1).min(n - 1)];
            let attn = cfg.up_block_types[i] == "CrossAttnUpBlock2D";
            let layers = cfg.layers_per_block + 1;
            let mut resnets = Vec::new();
            let mut attentions = Vec::new();
            for j in 0..layers {
                let skip = if j == layers - 1 { in_ch } else { out_ch };
                let rin = if j == 0 { prev } else { out_ch };
                resnets.push(Resnet::new(
                    &(&bp / "resnets" / j),
                    rin + skip,
                    out_ch,
                    Some(temb),
                    g,
                    eps,
                ));
                if attn {
                    attentions.push(Transformer2D::new(
                        &(&bp / "attentions" / j),
                        &format!("up_blocks.{i}.attentions.{j}"),
                        out_ch,
                        ctx,
                        rheads[i],
                        rtl[i],
                        g,
                        lin,
                    ));
                }
            }
            let resample =
                (i + 1 < n).then(|| conv(&bp / "upsamplers" / 0 / "conv", out_ch, out_ch, 3, 1));
            up.push(Block {
                resnets,
                attentions,
                resample,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            conv_in: conv(p / "conv_in", cfg.in_channels, ch[0], 3, 1),
            time_linear_1: nn::linear(
                p / "time_embedding" / "linear_1",
                ch[0],
                temb,
                Default::default(),
            ),
            time_linear_2: nn::linear(
                p / "time_embedding" / "linear_2",
                temb,
                temb,
                Default::default(),
            ),
            down,
            mid,
            up,
            conv_norm_out: group_norm(p / "conv_norm_out", g, ch[0], eps),
            conv_out: conv(p / "conv_out", ch[0], cfg.out_channels, 3, 1),
        })
    }

    /// Every attention of the UNet (self and cross), in module order.
    pub fn attentions(&self) -> Vec<&SdAttention> {
        let mut v = Vec::new();
        let blocks = self
            .down
            .iter()
            .flat_map(|b| b.attentions.iter())
            .chain(std::iter::once(&self.mid.1))
            .chain(self.up.iter().flat_map(|b| b.attentions.iter()));
        for t in blocks {
            for blk in &t.blocks {
                v.push(&blk.attn1);
                v.push(&blk.attn2);
            }
        }
        v
    }

    pub fn attentions_mut(&mut self) -> Vec<&mut SdAttention> {
        let mut v = Vec::new();
        let blocks = self
            .down
            .iter_mut()
            .flat_map(|b| b.attentions.iter_mut())
            .chain(std::iter::once(&mut self.mid.1))
            .chain(self.up.iter_mut().flat_map(|b| b.attentions.iter_mut()));
        for t in blocks {
            for blk in &mut t.blocks {
                v.push(&mut blk.attn1);
                v.push(&mut blk.attn2);
            }
        }
        v
    }

    /// Adds LoRA adapters to the projections named in `cfg.targets` (`to_q`, `to_k`, `to_v`,
    /// `to_out` or `to_out.0`) of every attention; variables under `root` at the adapted layer's
    /// path. Returns the number of adapted layers.
    pub fn add_lora(&mut self, root: &nn::Path, cfg: &LoraConfig) -> Result<usize> {
        cfg.validate()?;
        let want = |name: &str| {
            cfg.targets
                .iter()
                .any(|t| t == name || (name == "to_out.0" && t == "to_out"))
        };
        let mut n = 0;
        for a in self.attentions_mut() {
            let path = a.path.clone();
            for (name, lin) in a.projections_mut() {
                if want(name) {
                    lin.add_lora(
                        &sub_path(root, &format!("{path}.{name}")),
                        cfg.rank,
                        cfg.alpha,
                    )
                    .with_context(|| format!("{path}.{name}"))?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Folds every adapter into its base weight.
    pub fn merge_lora(&mut self) {
        for a in self.attentions_mut() {
            for (_, lin) in a.projections_mut() {
                lin.merge();
            }
        }
    }

    /// Sinusoidal embedding of timesteps `[B]` (diffusers' `get_timestep_embedding`).
    fn time_proj(&self, t: &Tensor) -> Tensor {
        let dim = self.cfg.block_out_channels[0];
        let half = dim / 2;
        let dev = t.device();
        let exponent = Tensor::arange(half, (Kind::Float, dev))
            * (-(10000f64.ln()) / (half as f64 - self.cfg.freq_shift));
        let emb = t.to_kind(Kind::Float).unsqueeze(1) * exponent.exp().unsqueeze(0);
        let (s, c) = (emb.sin(), emb.cos());
        if self.cfg.flip_sin_to_cos {
            Tensor::cat(&[c, s], -1)
        } else {
            Tensor::cat(&[s, c], -1)
        }
    }

    /// The forward pass as a sequence of stages, and for each `UpRes` stage the boundary index
    /// of its skip input (boundary `k + 1` is the output of stage `k`, boundary 0 the latents).
    fn plan(&self) -> (Vec<Stage>, Vec<Option<usize>>) {
        let mut st = vec![Stage::ConvIn];
        for (i, b) in self.down.iter().enumerate() {
            st.extend((0..b.resnets.len()).map(|j| Stage::DownRes(i, j)));
            if b.resample.is_some() {
                st.push(Stage::DownSample(i));
            }
        }
        st.push(Stage::Mid);
        for (i, b) in self.up.iter().enumerate() {
            st.extend((0..b.resnets.len()).map(|j| Stage::UpRes(i, j)));
            if b.resample.is_some() {
                st.push(Stage::UpSample(i));
            }
        }
        st.push(Stage::Out);
        let mut stack = Vec::new();
        let mut skip = Vec::with_capacity(st.len());
        for (k, s) in st.iter().enumerate() {
            skip.push(match s {
                Stage::UpRes(..) => Some(stack.pop().expect("one skip per up resnet")),
                _ => None,
            });
            if matches!(
                s,
                Stage::ConvIn | Stage::DownRes(..) | Stage::DownSample(..)
            ) {
                stack.push(k + 1);
            }
        }
        (st, skip)
    }

    /// Inputs in the weights' dtype and the time embedding (frozen: no graph).
    fn conditioning(&self, x: &Tensor, t: &Tensor, ctx: &Tensor) -> (Tensor, Tensor, Tensor) {
        let kind = self.conv_in.ws.kind();
        let temb = self.time_proj(t).to_kind(kind);
        let temb = self
            .time_linear_2
            .forward(&self.time_linear_1.forward(&temb).silu());
        (x.to_kind(kind), temb, ctx.to_kind(kind))
    }

    fn run_stage(
        &self,
        s: Stage,
        h: &Tensor,
        skip: Option<&Tensor>,
        temb: &Tensor,
        ctx: &Tensor,
    ) -> Tensor {
        let res_attn = |b: &Block, j: usize, h: &Tensor| {
            let h = b.resnets[j].forward(h, Some(temb));
            match b.attentions.get(j) {
                Some(a) => a.forward(&h, ctx),
                None => h,
            }
        };
        let upsample = |c: &nn::Conv2D, h: &Tensor| {
            let (_, _, hh, ww) = h.size4().expect("[B, C, H, W]");
            c.forward(&h.upsample_nearest2d([2 * hh, 2 * ww], None, None))
        };
        match s {
            Stage::ConvIn => self.conv_in.forward(h),
            Stage::DownRes(i, j) => res_attn(&self.down[i], j, h),
            Stage::DownSample(i) => self.down[i].resample.as_ref().expect("planned").forward(h),
            Stage::Mid => {
                let h = self.mid.0.forward(h, Some(temb));
                let h = self.mid.1.forward(&h, ctx);
                self.mid.2.forward(&h, Some(temb))
            }
            Stage::UpRes(i, j) => {
                let s = skip.expect("planned skip");
                res_attn(&self.up[i], j, &Tensor::cat(&[h, s], 1))
            }
            Stage::UpSample(i) => upsample(self.up[i].resample.as_ref().expect("planned"), h),
            Stage::Out => self
                .conv_out
                .forward(&self.conv_norm_out.forward(h).silu())
                .to_kind(Kind::Float),
        }
    }

    /// Predicts the noise (or v) of latents `x` (`[B, in_channels, H, W]`, H and W multiples of
    /// 2^(blocks − 1)) at timesteps `t` (`[B]`) given text states `ctx` (`[B, L,
    /// cross_attention_dim]`). Computes in the weights' dtype, returns f32.
    pub fn forward(&self, x: &Tensor, t: &Tensor, ctx: &Tensor) -> Tensor {
        let (x, temb, ctx) = self.conditioning(x, t, ctx);
        let (plan, skip) = self.plan();
        let sources: std::collections::HashSet<usize> = skip.iter().flatten().copied().collect();
        let mut saved: std::collections::HashMap<usize, Tensor> = std::collections::HashMap::new();
        let mut h = x;
        for (k, &s) in plan.iter().enumerate() {
            h = self.run_stage(s, &h, skip[k].map(|m| &saved[&m]), &temb, &ctx);
            if sources.contains(&(k + 1)) {
                saved.insert(k + 1, h.shallow_clone());
            }
        }
        h
    }

    /// Gradient checkpointing: the forward without autograd, keeping only each stage's input
    /// (one activation per resnet/attention stage instead of every intermediate of the graph).
    /// Returns the f32 output (no graph) and the checkpoints for [`Self::backward_checkpointed`].
    pub fn forward_checkpointed(
        &self,
        x: &Tensor,
        t: &Tensor,
        ctx: &Tensor,
    ) -> (Tensor, UNetCheckpoints) {
        tch::no_grad(|| {
            let (x, temb, ctx) = self.conditioning(x, t, ctx);
            let (plan, skip) = self.plan();
            let mut hs = vec![x];
            for (k, &s) in plan.iter().enumerate() {
                let out = self.run_stage(s, &hs[k], skip[k].map(|m| &hs[m]), &temb, &ctx);
                hs.push(out);
            }
            let out = hs.pop().expect("output");
            (out, UNetCheckpoints { hs, temb, ctx })
        })
    }

    /// The backward pass of a [`Self::forward_checkpointed`] call given `grad_out` = ∂L/∂output:
    /// recomputes one stage at a time with autograd, from the last to the second (the first
    /// only reads the latents and has no adapter), and back-propagates `grad_out` through it,
    /// accumulating into the `.grad` of the trainable variables (the adapters) exactly what
    /// `output.backward()` would have. Each stage's own graph is freed before the next.
    pub fn backward_checkpointed(&self, ck: &UNetCheckpoints, grad_out: &Tensor) {
        let (plan, skip) = self.plan();
        let n = plan.len();
        let mut grads: Vec<Option<Tensor>> = (0..=n).map(|_| None).collect();
        grads[n] = Some(grad_out.to_kind(Kind::Float));
        let add = |slot: &mut Option<Tensor>, g: Tensor| {
            *slot = Some(match slot.take() {
                Some(a) => a + g,
                None => g,
            });
        };
        for k in (1..n).rev() {
            let Some(g) = grads[k + 1].take() else {
                continue;
            };
            let h = ck.hs[k].detach().set_requires_grad(true);
            let s = skip[k].map(|m| ck.hs[m].detach().set_requires_grad(true));
            tch::with_grad(|| {
                let out = self.run_stage(plan[k], &h, s.as_ref(), &ck.temb, &ck.ctx);
                (out.to_kind(Kind::Float) * &g).sum(Kind::Float).backward();
            });
            add(&mut grads[k], h.grad().to_kind(Kind::Float));
            if let (Some(m), Some(s)) = (skip[k], &s) {
                add(&mut grads[m], s.grad().to_kind(Kind::Float));
            }
        }
    }
}

/// What [`UNet2DCondition::forward_checkpointed`] keeps: the input of every stage.
#[derive(Debug)]
pub struct UNetCheckpoints {
    hs: Vec<Tensor>,
    temb: Tensor,
    ctx: Tensor,
}

/// One checkpointing segment of the UNet.
#[derive(Debug, Clone, Copy)]
enum Stage {
    ConvIn,
    DownRes(usize, usize),
    DownSample(usize),
    Mid,
    UpRes(usize, usize),
    UpSample(usize),
    Out,
}
