//! A small class-conditional UNet for ε-prediction (DDPM), sized for CPU.
//!
//! Time and class embeddings are summed and injected into every residual block (GroupNorm, SiLU,
//! 3×3 convolutions). Self-attention (`scaled_dot_product_attention`) runs at the lowest
//! resolution. Class index `num_classes` is the null class used for classifier-free guidance.
//! The attention projections are [`LoraLinear`]s named `to_q`, `to_k`, `to_v`, `to_out`.
use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};

use crate::nn::lora::{LoraConfig, LoraLinear};
use crate::schedule::EpsModel;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UNetConfig {
    /// Image channels (1 for Fashion-MNIST).
    pub in_channels: i64,
    /// Side of the square input (28 or 32, ...); must be divisible by 2^(levels-1).
    pub image_size: i64,
    /// Channels of the first level.
    pub base_channels: i64,
    /// Channel multiplier per level; each level after the first halves the resolution.
    pub channel_mult: Vec<i64>,
    /// Residual blocks per level (down path; the up path has one more).
    pub num_res_blocks: usize,
    /// Levels whose residual blocks are followed by self-attention (the middle block always has it).
    #[serde(default)]
    pub attn_levels: Vec<usize>,
    pub num_heads: i64,
    /// Number of real classes; index `num_classes` is the null class.
    pub num_classes: i64,
    /// GroupNorm groups (must divide every channel count).
    pub groups: i64,
    #[serde(default)]
    pub dropout: f64,
}

impl Default for UNetConfig {
    fn default() -> Self {
        Self {
            in_channels: 1,
            image_size: 28,
            base_channels: 16,
            channel_mult: vec![1, 2, 6],
            num_res_blocks: 1,
            attn_levels: vec![2],
            num_heads: 4,
            num_classes: 10,
            groups: 8,
            dropout: 0.0,
        }
    }
}

impl UNetConfig {
    pub fn validate(&self) -> Result<()> {
        if self.in_channels < 1
            || self.base_channels < 1
            || self.num_classes < 1
            || self.num_heads < 1
        {
            bail!("UNet config: channels, classes and heads must be >= 1");
        }
        if self.channel_mult.is_empty() || self.channel_mult.iter().any(|&m| m < 1) {
            bail!("UNet config: channel_mult must be a non-empty list of positive integers");
        }
        let levels = self.channel_mult.len() as u32;
        let div = 1i64 << (levels - 1);
        if self.image_size < 4 || self.image_size % div != 0 {
            bail!(
                "UNet config: image_size {} must be divisible by {div} ({} levels)",
                self.image_size,
                levels
            );
        }
        if self.groups < 1 {
            bail!("UNet config: groups must be >= 1");
        }
        for &m in &self.channel_mult {
            let c = m * self.base_channels;
            if c % self.groups != 0 {
                bail!(
                    "UNet config: {} groups do not divide {c} channels",
                    self.groups
                );
            }
        }
        let c_low = self.base_channels * self.channel_mult[self.channel_mult.len() - 1];
        if c_low % self.num_heads != 0 {
            bail!(
                "UNet config: {} heads do not divide {c_low} channels",
                self.num_heads
            );
        }
        if let Some(&l) = self
            .attn_levels
            .iter()
            .find(|&&l| l >= self.channel_mult.len())
        {
            bail!("UNet config: attention level {l} does not exist");
        }
        if self.num_res_blocks < 1 {
            bail!("UNet config: num_res_blocks must be >= 1");
        }
        if !(0.0..1.0).contains(&self.dropout) {
            bail!("UNet config: dropout must be in [0, 1)");
        }
        Ok(())
    }
    pub fn null_class(&self) -> i64 {
        self.num_classes
    }
}

fn conv3(p: nn::Path, i: i64, o: i64, stride: i64) -> nn::Conv2D {
    nn::conv2d(
        p,
        i,
        o,
        3,
        nn::ConvConfig {
            padding: 1,
            stride,
            ..Default::default()
        },
    )
}

#[derive(Debug)]
struct ResBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    temb: nn::Linear,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    skip: Option<nn::Conv2D>,
    dropout: f64,
}

impl ResBlock {
    fn new(p: nn::Path, cin: i64, cout: i64, temb_dim: i64, groups: i64, dropout: f64) -> Self {
        let skip = if cin != cout {
            Some(nn::conv2d(&p / "skip", cin, cout, 1, Default::default()))
        } else {
            None
        };
        Self {
            norm1: nn::group_norm(&p / "norm1", groups, cin, Default::default()),
            conv1: conv3(&p / "conv1", cin, cout, 1),
            temb: nn::linear(&p / "temb", temb_dim, cout, Default::default()),
            norm2: nn::group_norm(&p / "norm2", groups, cout, Default::default()),
            conv2: conv3(&p / "conv2", cout, cout, 1),
            skip,
            dropout,
        }
    }
    fn forward(&self, x: &Tensor, emb: &Tensor, train: bool) -> Tensor {
        let h = self.conv1.forward(&self.norm1.forward(x).silu());
        let h = h + self.temb.forward(&emb.silu()).unsqueeze(-1).unsqueeze(-1);
        let h = self.norm2.forward(&h).silu().dropout(self.dropout, train);
        let h = self.conv2.forward(&h);
        match &self.skip {
            Some(s) => s.forward(x) + h,
            None => x + h,
        }
    }
}

#[derive(Debug)]
struct AttnBlock {
    norm: nn::GroupNorm,
    to_q: LoraLinear,
    to_k: LoraLinear,
    to_v: LoraLinear,
    to_out: LoraLinear,
    heads: i64,
}

impl AttnBlock {
    fn new(p: nn::Path, c: i64, heads: i64, groups: i64) -> Self {
        Self {
            norm: nn::group_norm(&p / "norm", groups, c, Default::default()),
            to_q: LoraLinear::new(&p, "to_q", c, c, true),
            to_k: LoraLinear::new(&p, "to_k", c, c, true),
            to_v: LoraLinear::new(&p, "to_v", c, c, true),
            to_out: LoraLinear::new(&p, "to_out", c, c, true),
            heads,
        }
    }
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, c, h, w) = x.size4().expect("4-d input checked by UNet::forward");
        let t = self.norm.forward(x).flatten(2, 3).transpose(1, 2); // [B, HW, C]
        let d = c / self.heads;
        let split = |y: Tensor| y.view([b, h * w, self.heads, d]).transpose(1, 2);
        let q = split(self.to_q.forward(&t));
        let k = split(self.to_k.forward(&t));
        let v = split(self.to_v.forward(&t));
        let a = Tensor::scaled_dot_product_attention::<Tensor>(
            &q, &k, &v, None, 0.0, false, None, false,
        );
        let a = a.transpose(1, 2).reshape([b, h * w, c]);
        let o = self
            .to_out
            .forward(&a)
            .transpose(1, 2)
            .reshape([b, c, h, w]);
        x + o
    }
    fn projections_mut(&mut self) -> [&mut LoraLinear; 4] {
        [
            &mut self.to_q,
            &mut self.to_k,
            &mut self.to_v,
            &mut self.to_out,
        ]
    }
}

/// A handful of layers per model: boxing the large variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Layer {
    Res(ResBlock),
    Attn(AttnBlock),
    Down(nn::Conv2D),
    Up(nn::Conv2D),
}

/// The network. `forward(x, t, class)` predicts the noise ε in `x_t`.
#[derive(Debug)]
pub struct UNet {
    pub cfg: UNetConfig,
    conv_in: nn::Conv2D,
    time1: nn::Linear,
    time2: nn::Linear,
    class_emb: nn::Embedding,
    down: Vec<Layer>,
    mid: Vec<Layer>,
    /// Up-path layers; residual blocks here consume one skip connection each.
    up: Vec<Layer>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl UNet {
    /// Creates all variables under `p` (names like `down.3.conv1.weight`).
    pub fn new(p: &nn::Path, cfg: &UNetConfig) -> Result<Self> {
        cfg.validate()?;
        let ch = cfg.base_channels;
        let temb = 4 * ch;
        let g = cfg.groups;
        let levels = cfg.channel_mult.len();
        let conv_in = conv3(p / "conv_in", cfg.in_channels, ch, 1);
        let time1 = nn::linear(p / "time1", ch, temb, Default::default());
        let time2 = nn::linear(p / "time2", temb, temb, Default::default());
        let class_emb = nn::embedding(
            p / "class_emb",
            cfg.num_classes + 1,
            temb,
            Default::default(),
        );

        let pd = p / "down";
        let mut down = Vec::new();
        let mut skip_ch = vec![ch];
        let mut cur = ch;
        for (lvl, &m) in cfg.channel_mult.iter().enumerate() {
            let out = ch * m;
            for _ in 0..cfg.num_res_blocks {
                down.push(Layer::Res(ResBlock::new(
                    &pd / down.len(),
                    cur,
                    out,
                    temb,
                    g,
                    cfg.dropout,
                )));
                cur = out;
                if cfg.attn_levels.contains(&lvl) {
                    down.push(Layer::Attn(AttnBlock::new(
                        &pd / down.len(),
                        cur,
                        cfg.num_heads,
                        g,
                    )));
                }
                skip_ch.push(cur);
            }
            if lvl + 1 < levels {
                down.push(Layer::Down(conv3(&pd / down.len(), cur, cur, 2)));
                skip_ch.push(cur);
            }
        }
        let pm = p / "mid";
        let mid = vec![
            Layer::Res(ResBlock::new(&pm / 0, cur, cur, temb, g, cfg.dropout)),
            Layer::Attn(AttnBlock::new(&pm / 1, cur, cfg.num_heads, g)),
            Layer::Res(ResBlock::new(&pm / 2, cur, cur, temb, g, cfg.dropout)),
        ];
        let pu = p / "up";
        let mut up = Vec::new();
        for (lvl, &m) in cfg.channel_mult.iter().enumerate().rev() {
            let out = ch * m;
            for _ in 0..=cfg.num_res_blocks {
                let sc = skip_ch.pop().expect("one skip per up block");
                up.push(Layer::Res(ResBlock::new(
                    &pu / up.len(),
                    cur + sc,
                    out,
                    temb,
                    g,
                    cfg.dropout,
                )));
                cur = out;
                if cfg.attn_levels.contains(&lvl) {
                    up.push(Layer::Attn(AttnBlock::new(
                        &pu / up.len(),
                        cur,
                        cfg.num_heads,
                        g,
                    )));
                }
            }
            if lvl > 0 {
                up.push(Layer::Up(conv3(&pu / up.len(), cur, cur, 1)));
            }
        }
        let norm_out = nn::group_norm(p / "norm_out", g, cur, Default::default());
        let conv_out = conv3(p / "conv_out", cur, cfg.in_channels, 1);
        Ok(Self {
            cfg: cfg.clone(),
            conv_in,
            time1,
            time2,
            class_emb,
            down,
            mid,
            up,
            norm_out,
            conv_out,
        })
    }

    /// Sinusoidal embedding of (possibly fractional) timesteps, `[B] → [B, dim]`.
    pub fn timestep_embedding(t: &Tensor, dim: i64) -> Tensor {
        let half = dim / 2;
        let freqs = (Tensor::arange(half, (Kind::Float, t.device()))
            * (-(10000f64.ln()) / half as f64))
            .exp();
        let args = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
        Tensor::cat(&[args.cos(), args.sin()], 1)
    }

    /// Checks that `class` holds indices in `0..=num_classes` (the last is the null class).
    pub fn check_classes(&self, class: &Tensor) -> Result<()> {
        if class.numel() == 0 {
            return Ok(());
        }
        let lo = class.min().int64_value(&[]);
        let hi = class.max().int64_value(&[]);
        if lo < 0 || hi > self.cfg.num_classes {
            bail!(
                "class index out of range: got {lo}..={hi}, model has classes 0..{} (null class {})",
                self.cfg.num_classes - 1,
                self.cfg.num_classes
            );
        }
        Ok(())
    }

    /// Checks the input shape against the config.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let s = x.size();
        let want = [
            self.cfg.in_channels,
            self.cfg.image_size,
            self.cfg.image_size,
        ];
        if s.len() != 4 || s[1..] != want {
            bail!(
                "UNet input must be [B, {}, {}, {}], got {:?}",
                want[0],
                want[1],
                want[2],
                s
            );
        }
        Ok(())
    }

    /// ε-prediction. `x`: `[B, C, H, W]`, `t`: `[B]` timesteps, `class`: `[B]` int64 indices.
    /// Inputs must have been checked ([`Self::check_input`], [`Self::check_classes`]).
    pub fn forward_t(&self, x: &Tensor, t: &Tensor, class: &Tensor, train: bool) -> Tensor {
        self.forward_emb_t(x, t, &self.class_embedding(class), train)
    }

    /// The condition vector `y` of `class` (`[B]` int64 → `[B, 4·base_channels]`): the learned
    /// class embedding that the network adds to its time embedding.
    pub fn class_embedding(&self, class: &Tensor) -> Tensor {
        self.class_emb.forward(class)
    }

    /// ε-prediction with the condition given as an embedding vector `cond` (`[B, D]`, as from
    /// [`Self::class_embedding`], possibly perturbed, e.g. by CADS) instead of class indices.
    pub fn forward_emb(&self, x: &Tensor, t: &Tensor, cond: &Tensor) -> Tensor {
        self.forward_emb_t(x, t, cond, false)
    }

    fn forward_emb_t(&self, x: &Tensor, t: &Tensor, cond: &Tensor, train: bool) -> Tensor {
        let ch = self.cfg.base_channels;
        let emb = self
            .time2
            .forward(&self.time1.forward(&Self::timestep_embedding(t, ch)).silu());
        let emb = emb + cond;
        let mut h = self.conv_in.forward(x);
        let mut skips = vec![h.shallow_clone()];
        for l in &self.down {
            match l {
                Layer::Res(r) => {
                    h = r.forward(&h, &emb, train);
                    skips.push(h.shallow_clone());
                }
                Layer::Attn(a) => {
                    h = a.forward(&h);
                    *skips.last_mut().expect("attn follows a res block") = h.shallow_clone();
                }
                Layer::Down(c) => {
                    h = c.forward(&h);
                    skips.push(h.shallow_clone());
                }
                Layer::Up(_) => unreachable!("no upsampling on the down path"),
            }
        }
        for l in &self.mid {
            h = match l {
                Layer::Res(r) => r.forward(&h, &emb, train),
                Layer::Attn(a) => a.forward(&h),
                _ => unreachable!("mid holds res and attn blocks"),
            };
        }
        for l in &self.up {
            h = match l {
                Layer::Res(r) => {
                    let s = skips.pop().expect("one skip per up res block");
                    r.forward(&Tensor::cat(&[h, s], 1), &emb, train)
                }
                Layer::Attn(a) => a.forward(&h),
                Layer::Up(c) => {
                    let (_, _, hh, ww) = h.size4().expect("4-d");
                    c.forward(&h.upsample_nearest2d([hh * 2, ww * 2], None, None))
                }
                Layer::Down(_) => unreachable!("no downsampling on the up path"),
            };
        }
        self.conv_out.forward(&self.norm_out.forward(&h).silu())
    }

    pub fn forward(&self, x: &Tensor, t: &Tensor, class: &Tensor) -> Tensor {
        self.forward_t(x, t, class, false)
    }

    fn attn_blocks_mut(&mut self) -> Vec<(&'static str, usize, &mut AttnBlock)> {
        let mut out = Vec::new();
        for (prefix, layers) in [
            ("down", &mut self.down),
            ("mid", &mut self.mid),
            ("up", &mut self.up),
        ] {
            for (i, l) in layers.iter_mut().enumerate() {
                if let Layer::Attn(a) = l {
                    out.push((prefix, i, a));
                }
            }
        }
        out
    }

    /// Wraps the attention projections named in `cfg.targets` with zero-initialised LoRA adapters
    /// whose variables are created under `p` (e.g. `mid.1.to_q.lora_a`). Returns how many layers
    /// were wrapped.
    pub fn add_lora(&mut self, p: &nn::Path, cfg: &LoraConfig) -> Result<usize> {
        cfg.validate()?;
        let known = ["to_q", "to_k", "to_v", "to_out"];
        if let Some(t) = cfg.targets.iter().find(|t| !known.contains(&t.as_str())) {
            bail!("unknown LoRA target {t:?}: the UNet's attention projections are {known:?}");
        }
        let mut n = 0;
        for (prefix, i, block) in self.attn_blocks_mut() {
            for proj in block.projections_mut() {
                if cfg.targets.contains(&proj.name) {
                    let sub = p / prefix / i / proj.name.as_str();
                    proj.add_lora(&sub, cfg.rank, cfg.alpha)?;
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Folds every LoRA adapter into the base weights and removes the adapters.
    pub fn merge_lora(&mut self) {
        for (_, _, block) in self.attn_blocks_mut() {
            for proj in block.projections_mut() {
                proj.merge();
            }
        }
    }

    pub fn has_lora(&mut self) -> bool {
        self.attn_blocks_mut()
            .iter_mut()
            .any(|(_, _, b)| b.projections_mut().iter().any(|p| p.lora.is_some()))
    }
}

impl EpsModel for UNet {
    fn eps(&self, x: &Tensor, t: &Tensor, class: &Tensor) -> Tensor {
        self.forward(x, t, class)
    }
    fn null_class(&self) -> i64 {
        self.cfg.null_class()
    }
    fn has_cond_vector(&self) -> bool {
        true
    }
    fn eps_mapped_cond(
        &self,
        x: &Tensor,
        t: &Tensor,
        class: &Tensor,
        map: &dyn Fn(&Tensor) -> Tensor,
    ) -> Result<Tensor> {
        Ok(self.forward_emb(x, t, &map(&self.class_embedding(class))))
    }
}
