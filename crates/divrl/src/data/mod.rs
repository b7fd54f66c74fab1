//! Image data sets, deterministic train / evaluation / reference splits, and the skewed-attribute
//! variant used for debiasing experiments.
//!
//! The default data set is Fashion-MNIST. Its 10k test split is compiled into the binary (from
//! `data/fashion-mnist/`, MIT licence); the 60k training split is read from the Debian package
//! `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`) or `$DIVRL_FASHION_MNIST_DIR`
//! when present.
pub mod folder;
pub mod idx;
pub mod npy;

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

pub use crate::rng::SplitMix64;

pub const FASHION_MNIST_CLASSES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

static FASHION_T10K_IMAGES: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../data/fashion-mnist/t10k-images-idx3-ubyte.gz"
));
static FASHION_T10K_LABELS: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../data/fashion-mnist/t10k-labels-idx1-ubyte.gz"
));

/// A labelled image set. Images are float `[N, C, H, W]` in `[0, 1]` on the CPU.
#[derive(Debug)]
pub struct Dataset {
    pub images: Tensor,
    pub labels: Vec<i64>,
    pub class_names: Vec<String>,
    /// A known attribute per image, where the data set defines one (the skewed variants).
    pub attribute: Option<Attribute>,
}

/// An attribute with an exact oracle: the value of every real image is known by construction,
/// and a fixed rule reads it from any image (generated ones too).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttributeKind {
    /// Binary: the image is inverted (`x → 1 − x`, white background). Oracle: mean of the
    /// one-pixel border > 0.5.
    Inversion,
    /// Three-valued background shade: black, gray or light (`x → b + (1 − b)·x` with
    /// `b` = 0, 0.35, 0.7). Oracle: the lower quartile of the one-pixel border, binned at the
    /// midpoints 0.175 and 0.525 (on the real images the quartile is exactly `b` up to
    /// 0.07, so the bins never overlap).
    Background,
}

/// Background levels of [`AttributeKind::Background`].
pub const BACKGROUND_LEVELS: [f64; 3] = [0.0, 0.35, 0.7];

impl AttributeKind {
    pub fn name(self) -> &'static str {
        match self {
            AttributeKind::Inversion => "inversion",
            AttributeKind::Background => "background",
        }
    }

    /// Names of the values 0, 1, ….
    pub fn value_names(self) -> &'static [&'static str] {
        match self {
            AttributeKind::Inversion => &["normal", "inverted"],
            AttributeKind::Background => &["black", "gray", "light"],
        }
    }

    pub fn arity(self) -> usize {
        self.value_names().len()
    }

    /// Share of each value in the skewed training pool (value 0 is the majority).
    pub fn training_shares(self) -> &'static [f64] {
        match self {
            AttributeKind::Inversion => &[1.0 - SKEW_MINORITY_SHARE, SKEW_MINORITY_SHARE],
            AttributeKind::Background => &[0.8, 0.15, 0.05],
        }
    }

    /// Images `[N, C, H, W]` in `[0, 1]` with each image's attribute `values` applied (value 0
    /// leaves an image as it is).
    pub fn apply(self, images: &Tensor, values: &[u8]) -> Tensor {
        match self {
            AttributeKind::Inversion => apply_inversion(images, values),
            AttributeKind::Background => {
                let b: Vec<f32> = values
                    .iter()
                    .map(|&v| BACKGROUND_LEVELS[v as usize] as f32)
                    .collect();
                let b = Tensor::from_slice(&b).view([-1, 1, 1, 1]);
                &b + (1.0 - &b) * images
            }
        }
    }

    /// The attribute of images `[N, C, H, W]` in `[0, 1]`.
    pub fn oracle(self, images: &Tensor) -> Result<Vec<u8>> {
        match self {
            AttributeKind::Inversion => inversion_oracle(images),
            AttributeKind::Background => background_oracle(images),
        }
    }
}

/// A data set's attribute: its kind and each image's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attribute {
    pub kind: AttributeKind,
    pub values: Vec<u8>,
}

impl Dataset {
    pub fn from_vec(
        data: Vec<f32>,
        shape: [usize; 4],
        labels: Vec<i64>,
        class_names: Vec<String>,
    ) -> Result<Self> {
        let [n, c, h, w] = shape;
        if data.len() != n * c * h * w {
            bail!(
                "image buffer has {} values, shape {:?} needs {}",
                data.len(),
                shape,
                n * c * h * w
            );
        }
        if labels.len() != n {
            bail!("{} labels for {n} images", labels.len());
        }
        let k = class_names.len() as i64;
        if let Some(bad) = labels.iter().find(|&&l| l < 0 || l >= k) {
            bail!("label {bad} outside 0..{k}");
        }
        let images = Tensor::from_slice(&data).view([n as i64, c as i64, h as i64, w as i64]);
        Ok(Self {
            images,
            labels,
            class_names,
            attribute: None,
        })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn num_classes(&self) -> i64 {
        self.class_names.len() as i64
    }
    /// `[C, H, W]`.
    pub fn image_shape(&self) -> [i64; 3] {
        let s = self.images.size();
        [s[1], s[2], s[3]]
    }

    /// The sub-set at `idx` (in that order).
    pub fn subset(&self, idx: &[usize]) -> Dataset {
        let it = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
        Dataset {
            images: self.images.index_select(0, &it),
            labels: idx.iter().map(|&i| self.labels[i]).collect(),
            class_names: self.class_names.clone(),
            attribute: self.attribute.as_ref().map(|a| Attribute {
                kind: a.kind,
                values: idx.iter().map(|&i| a.values[i]).collect(),
            }),
        }
    }

    /// Batch of images scaled to [-1, 1] and their labels.
    pub fn batch(&self, idx: &[usize]) -> (Tensor, Tensor) {
        let it = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>());
        let x = self.images.index_select(0, &it) * 2.0 - 1.0;
        let y = Tensor::from_slice(&idx.iter().map(|&i| self.labels[i]).collect::<Vec<_>>());
        (x, y)
    }
}

fn idx_to_dataset(
    images: idx::IdxArray,
    labels: idx::IdxArray,
    class_names: Vec<String>,
) -> Result<Dataset> {
    if images.dims.len() != 3 {
        bail!("IDX images must be 3-d [N, H, W], got {:?}", images.dims);
    }
    if labels.dims.len() != 1 || labels.dims[0] != images.dims[0] {
        bail!(
            "IDX labels {:?} do not match images {:?}",
            labels.dims,
            images.dims
        );
    }
    let (n, h, w) = (images.dims[0], images.dims[1], images.dims[2]);
    let lab: Vec<i64> = labels.data.iter().map(|&l| l as i64).collect();
    let names = if class_names.is_empty() {
        let k = lab.iter().copied().max().unwrap_or(0) + 1;
        (0..k).map(|i| i.to_string()).collect()
    } else {
        class_names
    };
    let data: Vec<f32> = images.data.iter().map(|&v| v as f32 / 255.0).collect();
    Dataset::from_vec(data, [n, 1, h, w], lab, names)
}

/// Loads an IDX image file and its label file.
pub fn load_idx(images: &Path, labels: &Path) -> Result<Dataset> {
    idx_to_dataset(idx::read_idx(images)?, idx::read_idx(labels)?, Vec::new())
}

/// Loads an image folder (one sub-folder per class).
pub fn load_folder(root: &Path, channels: usize, size: Option<u32>) -> Result<Dataset> {
    let (data, labels, names, c, h, w) = folder::read_image_folder(root, channels, size)?;
    Dataset::from_vec(data, [labels.len(), c, h, w], labels, names)
}

/// Loads a `.npy` image array, with labels from a second `.npy` (or all class 0 without one).
pub fn load_npy(images: &Path, labels: Option<&Path>) -> Result<Dataset> {
    let (data, n, c, h, w) = npy::read_npy_images(images)?;
    let labels = match labels {
        Some(p) => npy::read_npy_labels(p)?,
        None => vec![0; n],
    };
    if labels.len() != n {
        bail!("{} labels for {n} images", labels.len());
    }
    let k = labels.iter().copied().max().unwrap_or(0) + 1;
    if labels.iter().any(|&l| l < 0) {
        bail!("negative label in label array");
    }
    Dataset::from_vec(
        data,
        [n, c, h, w],
        labels,
        (0..k).map(|i| i.to_string()).collect(),
    )
}

fn fashion_names() -> Vec<String> {
    FASHION_MNIST_CLASSES
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// The embedded Fashion-MNIST test split (10k images, 28×28, 10 classes).
pub fn fashion_mnist_test() -> Result<Dataset> {
    idx_to_dataset(
        idx::parse_idx(FASHION_T10K_IMAGES)?,
        idx::parse_idx(FASHION_T10K_LABELS)?,
        fashion_names(),
    )
}

/// Where the 60k training split lives, if installed.
pub fn fashion_mnist_train_dir() -> Option<PathBuf> {
    let cands = std::env::var_os("DIVRL_FASHION_MNIST_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain(std::iter::once(PathBuf::from(
            "/usr/share/datasets/fashion-mnist",
        )));
    cands.into_iter().find(|d| {
        d.join("train-images-idx3-ubyte.gz").exists()
            && d.join("train-labels-idx1-ubyte.gz").exists()
    })
}

/// The 60k training split, if installed.
pub fn fashion_mnist_train() -> Result<Option<Dataset>> {
    match fashion_mnist_train_dir() {
        None => Ok(None),
        Some(d) => {
            let ds = idx_to_dataset(
                idx::read_idx(&d.join("train-images-idx3-ubyte.gz"))?,
                idx::read_idx(&d.join("train-labels-idx1-ubyte.gz"))?,
                fashion_names(),
            )?;
            Ok(Some(ds))
        }
    }
}

/// Train / held-out evaluation / reference pools.
#[derive(Debug)]
pub struct Splits {
    pub train: Dataset,
    pub eval: Dataset,
    pub reference: Dataset,
}

/// Per class, after a seeded shuffle: the first `ref_per_class` images go to the reference pool,
/// the next `eval_per_class` to evaluation, the rest to training. Returns index lists, each sorted.
pub fn stratified_indices(
    labels: &[i64],
    num_classes: i64,
    eval_per_class: usize,
    ref_per_class: usize,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>, Vec<usize>)> {
    let mut rng = SplitMix64(seed);
    let (mut tr, mut ev, mut rf) = (Vec::new(), Vec::new(), Vec::new());
    for c in 0..num_classes {
        let mut idx: Vec<usize> = (0..labels.len()).filter(|&i| labels[i] == c).collect();
        if idx.len() < eval_per_class + ref_per_class {
            bail!(
                "class {c} has {} images, fewer than the {} evaluation + {} reference images asked for",
                idx.len(),
                eval_per_class,
                ref_per_class
            );
        }
        rng.shuffle(&mut idx);
        rf.extend_from_slice(&idx[..ref_per_class]);
        ev.extend_from_slice(&idx[ref_per_class..ref_per_class + eval_per_class]);
        tr.extend_from_slice(&idx[ref_per_class + eval_per_class..]);
    }
    tr.sort_unstable();
    ev.sort_unstable();
    rf.sort_unstable();
    Ok((tr, ev, rf))
}

pub fn split_dataset(
    ds: &Dataset,
    eval_per_class: usize,
    ref_per_class: usize,
    seed: u64,
) -> Result<Splits> {
    let (tr, ev, rf) = stratified_indices(
        &ds.labels,
        ds.num_classes(),
        eval_per_class,
        ref_per_class,
        seed,
    )?;
    if tr.is_empty() {
        bail!("no training images left after taking the evaluation and reference pools");
    }
    Ok(Splits {
        train: ds.subset(&tr),
        eval: ds.subset(&ev),
        reference: ds.subset(&rf),
    })
}

/// Seed of the default splits.
pub const SPLIT_SEED: u64 = 20240617;
/// Fashion-MNIST default pools: per class, from the 10k test split.
pub const FASHION_EVAL_PER_CLASS: usize = 200;
pub const FASHION_REF_PER_CLASS: usize = 200;

/// The default Fashion-MNIST splits: evaluation and reference pools (2,000 images each, 200 per
/// class) from the embedded test split; training = the 60k training split when installed, else the
/// remaining 6,000 test images.
pub fn fashion_mnist_splits() -> Result<Splits> {
    let test = fashion_mnist_test()?;
    let mut s = split_dataset(
        &test,
        FASHION_EVAL_PER_CLASS,
        FASHION_REF_PER_CLASS,
        SPLIT_SEED,
    )?;
    if let Some(train) = fashion_mnist_train()? {
        s.train = train;
    }
    Ok(s)
}

/// The skewed attribute: an inverted image (white background). Applies `x → 1 − x` to the images
/// whose attribute is 1.
pub fn apply_inversion(images: &Tensor, attributes: &[u8]) -> Tensor {
    let a = Tensor::from_slice(&attributes.iter().map(|&v| v as f32).collect::<Vec<_>>())
        .view([-1, 1, 1, 1]);
    images * (1.0 - &a) + (1.0 - images) * &a
}

/// Exact oracle of the skewed attribute for images in [0, 1] (`[N, C, H, W]`): 1 when the mean of
/// the one-pixel border exceeds 0.5 (Fashion-MNIST backgrounds are black, inverted ones white).
/// For images in [-1, 1], rescale first.
pub fn inversion_oracle(images: &Tensor) -> Result<Vec<u8>> {
    let border = border_pixels(images)?;
    let mean = border.mean_dim(&[1i64][..], false, Kind::Float);
    let v: Vec<f32> = Vec::<f32>::try_from(&mean.gt(0.5).to_kind(Kind::Float))?;
    Ok(v.into_iter().map(|b| b as u8).collect())
}

/// Oracle of the background shade ([`AttributeKind::Background`]) for images in [0, 1]: the
/// lower quartile (the value at rank ⌊P/4⌋ of the P sorted border pixels, channels averaged)
/// binned at 0.175 and 0.525. An object touching the border brightens some border pixels, never
/// a quarter of them, so the quartile reads the background.
pub fn background_oracle(images: &Tensor) -> Result<Vec<u8>> {
    let border = border_pixels(images)?;
    let p = border.size()[1];
    let (sorted, _) = border.sort(1, false);
    let q = sorted.select(1, p / 4).contiguous();
    let v: Vec<f32> = Vec::<f32>::try_from(&q)?;
    let cut = [
        (BACKGROUND_LEVELS[0] + BACKGROUND_LEVELS[1]) / 2.0,
        (BACKGROUND_LEVELS[1] + BACKGROUND_LEVELS[2]) / 2.0,
    ];
    Ok(v.into_iter()
        .map(|x| {
            let x = x as f64;
            if x < cut[0] {
                0
            } else if x < cut[1] {
                1
            } else {
                2
            }
        })
        .collect())
}

/// The one-pixel border of images `[N, C, H, W]` as `[N, 2W + 2(H − 2)]` (channels averaged).
fn border_pixels(images: &Tensor) -> Result<Tensor> {
    let s = images.size();
    if s.len() != 4 || s[2] < 3 || s[3] < 3 {
        bail!("attribute oracle needs [N, C, H, W] images with H, W >= 3, got {s:?}");
    }
    let (n, h, w) = (s[0], s[2], s[3]);
    let x = images
        .to_kind(Kind::Float)
        .mean_dim(&[1i64][..], true, Kind::Float);
    let top = x.narrow(2, 0, 1).reshape([n, -1]);
    let bottom = x.narrow(2, h - 1, 1).reshape([n, -1]);
    let left = x.narrow(2, 1, h - 2).narrow(3, 0, 1).reshape([n, -1]);
    let right = x.narrow(2, 1, h - 2).narrow(3, w - 1, 1).reshape([n, -1]);
    Ok(Tensor::cat(&[top, bottom, left, right], 1))
}

/// Share of attribute-1 images in the skewed training pool.
pub const SKEW_MINORITY_SHARE: f64 = 0.1;

/// Attribute labels with exactly `round(n·share)` ones, at seeded positions.
pub fn skewed_attributes(n: usize, share: f64, seed: u64) -> Vec<u8> {
    skewed_values(n, &[1.0 - share, share], seed)
}

/// Attribute values with exactly `round(n·shares[v])` images of each value v ≥ 1 (value 0 takes
/// the rest), at seeded positions. With two values this is [`skewed_attributes`].
pub fn skewed_values(n: usize, shares: &[f64], seed: u64) -> Vec<u8> {
    let mut idx: Vec<usize> = (0..n).collect();
    SplitMix64(seed).shuffle(&mut idx);
    let mut a = vec![0u8; n];
    let mut next = 0;
    for (v, &share) in shares.iter().enumerate().skip(1) {
        let k = ((n as f64 * share).round() as usize).min(n - next);
        for &i in &idx[next..next + k] {
            a[i] = v as u8;
        }
        next += k;
    }
    a
}

/// The skewed-attribute variant of any splits: training images take the attribute's values at
/// its training shares (exactly, at seeded positions; inversion: 10 % inverted, background:
/// 80/15/5 % black/gray/light), evaluation and reference images uniform shares (unbiased pools).
pub fn skew_splits_with(kind: AttributeKind, s: Splits, seed: u64) -> Splits {
    let skew = |ds: Dataset, shares: &[f64], seed: u64| {
        let a = skewed_values(ds.len(), shares, seed);
        Dataset {
            images: kind.apply(&ds.images, &a),
            attribute: Some(Attribute { kind, values: a }),
            ..ds
        }
    };
    let uniform = vec![1.0 / kind.arity() as f64; kind.arity()];
    Splits {
        train: skew(s.train, kind.training_shares(), seed),
        eval: skew(s.eval, &uniform, seed ^ 1),
        reference: skew(s.reference, &uniform, seed ^ 2),
    }
}

/// The inversion variant ([`skew_splits_with`] and [`AttributeKind::Inversion`]).
pub fn skew_splits(s: Splits, seed: u64) -> Splits {
    skew_splits_with(AttributeKind::Inversion, s, seed)
}

/// The attribute of a built-in skewed data set name (`fashion-mnist-skewed`,
/// `fashion-mnist-background`).
pub fn skewed_variant(name: &str) -> Option<AttributeKind> {
    match name {
        "fashion-mnist-skewed" => Some(AttributeKind::Inversion),
        "fashion-mnist-background" => Some(AttributeKind::Background),
        _ => None,
    }
}

/// A data set named on the command line:
/// `fashion-mnist` | `fashion-mnist-skewed` | `fashion-mnist-background` | `idx:IMAGES,LABELS` | `folder:DIR[,SIZE[,CHANNELS]]` |
/// `npy:IMAGES[,LABELS]`.
pub fn load_splits(spec: &str) -> Result<Splits> {
    let (kind, rest) = spec.split_once(':').unwrap_or((spec, ""));
    let parts: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.split(',').collect()
    };
    let generic = |ds: Dataset| -> Result<Splits> {
        // 10% of the smallest class each for evaluation and reference, at most 200.
        let min_count = (0..ds.num_classes())
            .map(|c| ds.labels.iter().filter(|&&l| l == c).count())
            .min()
            .unwrap_or(0);
        let per = (min_count / 10).min(200);
        split_dataset(&ds, per, per, SPLIT_SEED)
    };
    match kind {
        "fashion-mnist" if parts.is_empty() => fashion_mnist_splits(),
        "fashion-mnist-skewed" | "fashion-mnist-background" if parts.is_empty() => Ok(skew_splits_with(
            skewed_variant(kind).expect("a skewed variant"),
            fashion_mnist_splits()?,
            SPLIT_SEED,
        )),
        "idx" if parts.len() == 2 => generic(load_idx(Path::new(parts[0]), Path::new(parts[1]))?),
        "folder" if (1..=3).contains(&parts.len()) => {
            let size = parts.get(1).map(|s| s.parse::<u32>()).transpose().context("folder size must be an integer")?;
            let ch = parts.get(2).map(|s| s.parse::<usize>()).transpose().context("folder channels must be 1 or 3")?;
            generic(load_folder(Path::new(parts[0]), ch.unwrap_or(3), size)?)
        }
        "npy" if (1..=2).contains(&parts.len()) => {
            generic(load_npy(Path::new(parts[0]), parts.get(1).map(Path::new))?)
        }
        _ => bail!(
            "bad data set {spec:?}: expected fashion-mnist, fashion-mnist-skewed, fashion-mnist-background, idx:IMAGES,LABELS, folder:DIR[,SIZE[,CHANNELS]] or npy:IMAGES[,LABELS]"
        ),
    }
}
