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
    /// Binary attribute per image, where the data set defines one (the skewed variant).
    pub attributes: Option<Vec<u8>>,
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
            attributes: None,
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
            attributes: self
                .attributes
                .as_ref()
                .map(|a| idx.iter().map(|&i| a[i]).collect()),
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
    let s = images.size();
    if s.len() != 4 || s[2] < 3 || s[3] < 3 {
        bail!("attribute oracle needs [N, C, H, W] images with H, W >= 3, got {s:?}");
    }
    let (h, w) = (s[2], s[3]);
    let x = images.to_kind(Kind::Float);
    let top = x
        .narrow(2, 0, 1)
        .sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float);
    let bottom = x
        .narrow(2, h - 1, 1)
        .sum_dim_intlist(&[1i64, 2, 3][..], false, Kind::Float);
    let left = x.narrow(2, 1, h - 2).narrow(3, 0, 1).sum_dim_intlist(
        &[1i64, 2, 3][..],
        false,
        Kind::Float,
    );
    let right = x.narrow(2, 1, h - 2).narrow(3, w - 1, 1).sum_dim_intlist(
        &[1i64, 2, 3][..],
        false,
        Kind::Float,
    );
    let count = (s[1] * (2 * w + 2 * (h - 2))) as f64;
    let mean = (top + bottom + left + right) / count;
    let v: Vec<f32> = Vec::<f32>::try_from(&mean.gt(0.5).to_kind(Kind::Float))?;
    Ok(v.into_iter().map(|b| b as u8).collect())
}

/// Share of attribute-1 images in the skewed training pool.
pub const SKEW_MINORITY_SHARE: f64 = 0.1;

/// Attribute labels with exactly `round(n·share)` ones, at seeded positions.
pub fn skewed_attributes(n: usize, share: f64, seed: u64) -> Vec<u8> {
    let mut idx: Vec<usize> = (0..n).collect();
    SplitMix64(seed).shuffle(&mut idx);
    let k = (n as f64 * share).round() as usize;
    let mut a = vec![0u8; n];
    for &i in &idx[..k] {
        a[i] = 1;
    }
    a
}

/// The skewed-attribute variant of any splits: training images are inverted with probability
/// 10% (exactly 10%, at seeded positions), evaluation and reference images 50% (unbiased pools).
pub fn skew_splits(s: Splits, seed: u64) -> Splits {
    let skew = |ds: Dataset, share: f64, seed: u64| {
        let a = skewed_attributes(ds.len(), share, seed);
        Dataset {
            images: apply_inversion(&ds.images, &a),
            attributes: Some(a),
            ..ds
        }
    };
    Splits {
        train: skew(s.train, SKEW_MINORITY_SHARE, seed),
        eval: skew(s.eval, 0.5, seed ^ 1),
        reference: skew(s.reference, 0.5, seed ^ 2),
    }
}

/// A data set named on the command line:
/// `fashion-mnist` | `fashion-mnist-skewed` | `idx:IMAGES,LABELS` | `folder:DIR[,SIZE[,CHANNELS]]` |
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
        "fashion-mnist-skewed" if parts.is_empty() => Ok(skew_splits(fashion_mnist_splits()?, SPLIT_SEED)),
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
            "bad data set {spec:?}: expected fashion-mnist, fashion-mnist-skewed, idx:IMAGES,LABELS, folder:DIR[,SIZE[,CHANNELS]] or npy:IMAGES[,LABELS]"
        ),
    }
}
