//! Where images come from (`--images`, `--generated`, `--reference`): folders, `.npy` arrays, data
//! set pools and model samples, decoded into `[N, C, H, W]` tensors in `[0, 1]`.
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tch::Tensor;

use super::hash::{file_hash, hex};

/// Where images come from (the `--images`, `--generated`, `--reference` arguments).
#[derive(Debug, Clone, PartialEq)]
pub enum ImageSource {
    /// A folder of PNG/JPEG files, searched recursively, in sorted path order.
    Dir(PathBuf),
    /// A `.npy` array (`[N,H,W]`, `[N,H,W,C]` or `[N,C,H,W]`; uint8, or float in `[0, 1]`).
    Npy(PathBuf),
    /// An IDX image file (`*-idx3-ubyte[.gz]`).
    Idx(PathBuf),
    /// A built-in data set pool: `fashion-mnist[-skewed|-background]:train|test|eval|reference`.
    Builtin(String),
}

impl ImageSource {
    pub fn parse(spec: &str) -> Result<Self> {
        if let Some(rest) = spec.strip_prefix("idx:") {
            return Ok(Self::Idx(PathBuf::from(rest)));
        }
        if let Some(rest) = spec.strip_prefix("npy:") {
            return Ok(Self::Npy(PathBuf::from(rest)));
        }
        if let Some((ds, pool)) = spec.split_once(':') {
            if ds == "fashion-mnist" || crate::data::skewed_variant(ds).is_some() {
                if !matches!(pool, "train" | "test" | "eval" | "reference") {
                    bail!("bad pool {pool:?} in {spec:?}: expected train, test, eval or reference");
                }
                if ds != "fashion-mnist" && pool == "test" {
                    bail!("{ds} has train, eval and reference pools (no test)");
                }
                return Ok(Self::Builtin(spec.to_string()));
            }
        }
        let p = PathBuf::from(spec);
        if p.is_dir() {
            return Ok(Self::Dir(p));
        }
        if !p.exists() {
            bail!("image source {spec:?} does not exist (a folder, a .npy file, an IDX file, or fashion-mnist[-skewed|-background]:train|test|eval|reference)");
        }
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if name.ends_with(".npy") {
            Ok(Self::Npy(p))
        } else if name.contains("idx3") || name.contains("ubyte") {
            Ok(Self::Idx(p))
        } else {
            bail!("{spec}: not a folder, .npy or IDX (*-idx3-ubyte[.gz]) file")
        }
    }

    /// Image files of a folder source, recursively, sorted.
    fn dir_files(root: &Path) -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in
                std::fs::read_dir(&d).with_context(|| format!("reading folder {}", d.display()))?
            {
                let p = e?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p
                    .extension()
                    .map(|x| {
                        matches!(
                            x.to_string_lossy().to_ascii_lowercase().as_str(),
                            "png" | "jpg" | "jpeg"
                        )
                    })
                    .unwrap_or(false)
                {
                    out.push(p);
                }
            }
        }
        out.sort();
        if out.is_empty() {
            bail!("{}: no PNG/JPEG images found", root.display());
        }
        Ok(out)
    }

    /// SHA-256 of the source's content: the file bytes (and, for folders, the relative paths),
    /// or, for built-in pools, the decoded images.
    pub fn content_hash(&self) -> Result<String> {
        match self {
            Self::Npy(p) | Self::Idx(p) => Ok(format!("file-{}", file_hash(p)?)),
            Self::Dir(root) => {
                let mut h = Sha256::new();
                for f in Self::dir_files(root)? {
                    let rel = f.strip_prefix(root).unwrap_or(&f);
                    h.update(rel.to_string_lossy().as_bytes());
                    h.update([0u8]);
                    h.update(file_hash(&f)?.as_bytes());
                }
                Ok(format!("dir-{}", hex(&h.finalize())))
            }
            Self::Builtin(_) => {
                let x = self.load()?.contiguous();
                let v: Vec<f32> = Vec::<f32>::try_from(&x.view([-1]))?;
                let mut h = Sha256::new();
                h.update(format!("{:?}", x.size()).as_bytes());
                for f in v {
                    h.update(f.to_le_bytes());
                }
                Ok(format!("data-{}", hex(&h.finalize())))
            }
        }
    }

    /// Decodes the images: float `[N, C, H, W]` in `[0, 1]` on the CPU.
    pub fn load(&self) -> Result<Tensor> {
        match self {
            Self::Npy(p) => {
                let (data, n, c, h, w) = crate::data::npy::read_npy_images(p)?;
                if let Some(v) = data.iter().find(|v| !(-1e-3..=1.0 + 1e-3).contains(*v)) {
                    bail!(
                        "{}: float images must lie in [0, 1] (found {v}); map [-1, 1] samples with (x + 1) / 2",
                        p.display()
                    );
                }
                Ok(Tensor::from_slice(&data).view([n as i64, c as i64, h as i64, w as i64]))
            }
            Self::Idx(p) => {
                let a = crate::data::idx::read_idx(p)?;
                if a.dims.len() != 3 {
                    bail!(
                        "{}: IDX images must be 3-d [N, H, W], got {:?}",
                        p.display(),
                        a.dims
                    );
                }
                if a.dims.contains(&0) {
                    bail!("{}: empty IDX array (dimensions {:?})", p.display(), a.dims);
                }
                let (n, h, w) = (a.dims[0] as i64, a.dims[1] as i64, a.dims[2] as i64);
                let data: Vec<f32> = a.data.iter().map(|&v| v as f32 / 255.0).collect();
                Ok(Tensor::from_slice(&data).view([n, 1, h, w]))
            }
            Self::Dir(root) => load_image_files(&Self::dir_files(root)?),
            Self::Builtin(spec) => {
                let (ds, pool) = spec.split_once(':').unwrap_or((spec, ""));
                use crate::data as d;
                let data = if pool == "test" {
                    d::fashion_mnist_test()?
                } else {
                    // The evaluation and reference pools come from the test split alone (the
                    // 60k training split is only read for the training pool).
                    let s = if pool == "train" {
                        d::fashion_mnist_splits()?
                    } else {
                        d::split_dataset(
                            &d::fashion_mnist_test()?,
                            d::FASHION_EVAL_PER_CLASS,
                            d::FASHION_REF_PER_CLASS,
                            d::SPLIT_SEED,
                        )?
                    };
                    let s = match d::skewed_variant(ds) {
                        Some(kind) => d::skew_splits_with(kind, s, d::SPLIT_SEED),
                        None => s,
                    };
                    match pool {
                        "train" => s.train,
                        "eval" => s.eval,
                        _ => s.reference,
                    }
                };
                Ok(data.images)
            }
        }
    }
}

/// Decodes image files into one `[N, C, H, W]` tensor in `[0, 1]`. C is 1 when every image is
/// greyscale, else 3; all images must share one size.
pub fn load_image_files(files: &[PathBuf]) -> Result<Tensor> {
    let mut imgs = Vec::with_capacity(files.len());
    for f in files {
        let img = image::open(f).with_context(|| format!("decoding {}", f.display()))?;
        imgs.push(img);
    }
    let Some(first) = imgs.first() else {
        bail!("no images to load")
    };
    let (w, h) = (first.width(), first.height());
    let grey = imgs.iter().all(|i| !i.color().has_color());
    let c = if grey { 1 } else { 3 };
    let mut data = Vec::with_capacity(imgs.len() * c * (w * h) as usize);
    for (img, f) in imgs.iter().zip(files) {
        if (img.width(), img.height()) != (w, h) {
            bail!(
                "{}: size {}x{} differs from the first image's {w}x{h}",
                f.display(),
                img.width(),
                img.height()
            );
        }
        if grey {
            data.extend(img.to_luma8().as_raw().iter().map(|&v| v as f32 / 255.0));
        } else {
            let rgb = img.to_rgb8();
            let raw = rgb.as_raw();
            let px = (w * h) as usize;
            for ch in 0..3 {
                data.extend((0..px).map(|i| raw[i * 3 + ch] as f32 / 255.0));
            }
        }
    }
    Ok(Tensor::from_slice(&data).view([imgs.len() as i64, c as i64, h as i64, w as i64]))
}
