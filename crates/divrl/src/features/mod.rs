//! Feature extractors ϕ: a registry (`small`, `inception`, `clip`), image sources, batched
//! extraction with a progress bar, and a feature cache keyed by the content hash of the input
//! files and of the extractor's weights.
//!
//! Convention: every extractor takes images as float `[N, C, H, W]` in `[0, 1]` (C = 1 or 3, any
//! size) and does its own preprocessing (channel conversion, resizing, scaling). Diffusion
//! samples in `[-1, 1]` are mapped with `(x + 1) / 2` first.
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub use crate::imageops::{resize_bilinear, to_channels};
use crate::models::classifier::{load_classifier, LoadedClassifier};
use crate::models::inception::TorchScriptInception;
pub use crate::paths::{models_dir, resolve_model_path};

/// The shipped Fashion-MNIST classifier checkpoint (the default `small` extractor).
pub fn default_classifier_dir() -> PathBuf {
    models_dir().join("fashion-mnist-classifier")
}

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

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// SHA-256 of a tensor's shape and f32 values (a cache key for images held in memory).
pub fn tensor_content_hash(t: &Tensor) -> Result<String> {
    let v: Vec<f32> = Vec::<f32>::try_from(
        &t.to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .contiguous()
            .view([-1]),
    )?;
    let mut h = Sha256::new();
    h.update(format!("{:?}", t.size()).as_bytes());
    for x in v {
        h.update(x.to_le_bytes());
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file's content, streamed.
pub fn file_hash(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).with_context(|| format!("reading {}", path.display()))?;
    Ok(hex(&h.finalize()))
}

// ---------------------------------------------------------------------------------------------
// Extractors

/// `small`: the penultimate layer of a divrl classifier checkpoint (default: the shipped
/// Fashion-MNIST classifier), with its class logits.
pub struct SmallExtractor {
    pub model: LoadedClassifier,
    fingerprint: String,
    device: Device,
}

impl SmallExtractor {
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let model = load_classifier(dir, device)?;
        let w = file_hash(&dir.join(crate::models::classifier::CLASSIFIER_WEIGHTS_FILE))?;
        let c = file_hash(&dir.join(crate::models::classifier::CLASSIFIER_CONFIG_FILE))?;
        Ok(Self {
            model,
            fingerprint: format!(
                "small-v1-{}",
                &sha256_hex(format!("{w}{c}").as_bytes())[..16]
            ),
            device,
        })
    }
}

impl Extractor for SmallExtractor {
    fn name(&self) -> &str {
        "small"
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    fn dim(&self) -> i64 {
        self.model.config.model.feature_dim
    }
    fn default_batch(&self) -> usize {
        500
    }
    fn device(&self) -> Device {
        self.device
    }
    fn forward(&self, images: &Tensor) -> Result<Extracted> {
        let cfg = &self.model.config.model;
        let x = to_channels(
            &images.to_device(self.device).to_kind(Kind::Float),
            cfg.in_channels,
        )?;
        let x = resize_bilinear(&x, cfg.image_size, cfg.image_size).clamp(0.0, 1.0) * 2.0 - 1.0;
        let (f, l) = tch::no_grad(|| self.model.net.forward_t(&x, false))?;
        Ok(Extracted {
            features: f,
            logits: Some(l),
        })
    }
    fn class_names(&self) -> Option<Vec<String>> {
        let c = &self.model.config.model;
        Some(if c.class_names.is_empty() {
            (0..c.num_classes).map(|i| i.to_string()).collect()
        } else {
            c.class_names.clone()
        })
    }
}

/// `inception`: FID InceptionV3 pool3 (TorchScript archive).
pub struct InceptionExtractor {
    pub net: TorchScriptInception,
    fingerprint: String,
}

impl InceptionExtractor {
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let net = TorchScriptInception::load(path, device)?;
        let h = file_hash(path)?;
        Ok(Self {
            net,
            fingerprint: format!("inception-v1-{}", &h[..16]),
        })
    }
}

impl Extractor for InceptionExtractor {
    fn name(&self) -> &str {
        "inception"
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    fn dim(&self) -> i64 {
        crate::models::inception::POOL3_DIM
    }
    fn default_batch(&self) -> usize {
        32
    }
    fn device(&self) -> Device {
        self.net.device()
    }
    fn forward(&self, images: &Tensor) -> Result<Extracted> {
        Ok(Extracted {
            features: self.net.forward(&images.clamp(0.0, 1.0))?,
            logits: None,
        })
    }
}

/// `inception-native`: FID InceptionV3 pool3 from divrl's own port
/// ([`crate::models::inception::NativeInception`]), with
/// logits (1008 classes) when the weights have pytorch-fid's `fc` layer.
pub struct NativeInceptionExtractor {
    pub net: crate::models::inception::NativeInception,
    fingerprint: String,
}

impl NativeInceptionExtractor {
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let net = crate::models::inception::NativeInception::load(path, device)?;
        let h = file_hash(path)?;
        Ok(Self {
            net,
            fingerprint: format!("inception-native-v1-{}", &h[..16]),
        })
    }
}

impl Extractor for NativeInceptionExtractor {
    fn name(&self) -> &str {
        "inception-native"
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    fn dim(&self) -> i64 {
        crate::models::inception::POOL3_DIM
    }
    fn default_batch(&self) -> usize {
        32
    }
    fn device(&self) -> Device {
        self.net.device()
    }
    fn forward(&self, images: &Tensor) -> Result<Extracted> {
        let (features, logits) = self.net.forward(&images.clamp(0.0, 1.0))?;
        Ok(Extracted { features, logits })
    }
}

/// `clip`: projected CLIP image embeddings (HF `CLIPModel` folder).
pub struct ClipExtractor {
    pub clip: crate::models::clip::LoadedClip,
    fingerprint: String,
}

impl ClipExtractor {
    pub fn load(dir: &Path, device: Device) -> Result<Self> {
        let clip = crate::models::clip::load_clip(dir, None, device)?;
        let h = file_hash(&clip.weights)?;
        Ok(Self {
            clip,
            fingerprint: format!("clip-v1-{}", &h[..16]),
        })
    }
}

impl Extractor for ClipExtractor {
    fn name(&self) -> &str {
        "clip"
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    fn dim(&self) -> i64 {
        self.clip.model.cfg.projection_dim
    }
    fn default_batch(&self) -> usize {
        32
    }
    fn device(&self) -> Device {
        self.clip.device
    }
    fn forward(&self, images: &Tensor) -> Result<Extracted> {
        Ok(Extracted {
            features: self.clip.encode_images(images)?,
            logits: None,
        })
    }
}

/// The default CLIP folder: `$DIVRL_CLIP`, else `<models dir>/clip`.
pub fn default_clip_dir() -> PathBuf {
    std::env::var_os("DIVRL_CLIP")
        .map(PathBuf::from)
        .unwrap_or_else(|| models_dir().join("clip"))
}

/// Names accepted by [`load_extractor`].
pub const EXTRACTORS: [&str; 5] = ["pixels", "small", "inception", "inception-native", "clip"];

/// Builds an extractor by name. `weights` overrides the default weights (a classifier checkpoint
/// folder for `small`, a TorchScript archive for `inception`, a CLIP folder for `clip`; `pixels`,
/// 8 × 8 grey average-pooled pixels, has none).
pub fn load_extractor(
    name: &str,
    weights: Option<&Path>,
    device: Device,
) -> Result<Box<dyn Extractor>> {
    match name {
        "pixels" => {
            if let Some(w) = weights {
                bail!("the pixels extractor has no weights (got {})", w.display());
            }
            Ok(Box::new(crate::models::pixels::PixelExtractor::new(8, 1)?))
        }
        "small" => {
            let dir = weights
                .map(Path::to_path_buf)
                .unwrap_or_else(default_classifier_dir);
            Ok(Box::new(SmallExtractor::load(&dir, device)?))
        }
        "inception" => {
            let p = weights
                .map(Path::to_path_buf)
                .unwrap_or_else(crate::models::inception::default_archive_path);
            Ok(Box::new(InceptionExtractor::load(&p, device)?))
        }
        "inception-native" => {
            let p = weights
                .map(Path::to_path_buf)
                .unwrap_or_else(crate::models::inception::default_archive_path);
            Ok(Box::new(NativeInceptionExtractor::load(&p, device)?))
        }
        "clip" => {
            let d = weights
                .map(Path::to_path_buf)
                .unwrap_or_else(default_clip_dir);
            if !d.is_dir() {
                bail!(
                    "CLIP folder {} not found: pass --weights DIR with config.json, model.safetensors and tokenizer.json (e.g. a download of openai/clip-vit-base-patch32)",
                    d.display()
                );
            }
            Ok(Box::new(ClipExtractor::load(&d, device)?))
        }
        other => bail!(
            "unknown extractor {other:?}: expected one of {}",
            EXTRACTORS.join(", ")
        ),
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

// ---------------------------------------------------------------------------------------------
// Image sources

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

// ---------------------------------------------------------------------------------------------
// Cache

/// A folder of cached feature arrays: `<key>.features.npy` and `<key>.logits.npy`, where the key
/// hashes the input's content hash and the extractor's fingerprint.
#[derive(Debug, Clone)]
pub struct FeatureCache {
    pub dir: PathBuf,
}

impl FeatureCache {
    /// `$DIVRL_CACHE_DIR/features`, else `$XDG_CACHE_HOME/divrl/features`, else
    /// `~/.cache/divrl/features`.
    pub fn default_dir() -> PathBuf {
        if let Some(p) = std::env::var_os("DIVRL_CACHE_DIR") {
            return PathBuf::from(p).join("features");
        }
        if let Some(p) = std::env::var_os("XDG_CACHE_HOME") {
            return PathBuf::from(p).join("divrl/features");
        }
        if let Some(p) = std::env::var_os("HOME") {
            return PathBuf::from(p).join(".cache/divrl/features");
        }
        PathBuf::from(".divrl-cache/features")
    }

    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub fn key(content_hash: &str, fingerprint: &str) -> String {
        sha256_hex(format!("{content_hash}|{fingerprint}").as_bytes())[..32].to_string()
    }

    fn paths(&self, key: &str) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{key}.features.npy")),
            self.dir.join(format!("{key}.logits.npy")),
        )
    }

    /// The cached result, if present and readable (an unreadable entry counts as a miss).
    pub fn get(&self, key: &str) -> Option<Extracted> {
        let (fp, lp) = self.paths(key);
        let read = |p: &Path| -> Option<Tensor> {
            let a = divrl_reward::io::read_array(p).ok()?;
            if a.shape.len() != 2 {
                return None;
            }
            let v: Vec<f32> = a.data.iter().map(|&x| x as f32).collect();
            Some(Tensor::from_slice(&v).view([a.shape[0] as i64, a.shape[1] as i64]))
        };
        let features = read(&fp)?;
        let logits = if lp.exists() { Some(read(&lp)?) } else { None };
        Some(Extracted { features, logits })
    }

    pub fn put(&self, key: &str, value: &Extracted) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating cache folder {}", self.dir.display()))?;
        let (fp, lp) = self.paths(key);
        if let Some(l) = &value.logits {
            write_npy_f32(&lp, l)?;
        }
        write_npy_f32(&fp, &value.features)
    }
}

/// Writes a 2-d float tensor as a float32 `.npy`, atomically.
pub fn write_npy_f32(path: &Path, t: &Tensor) -> Result<()> {
    let s = t.size();
    if s.len() != 2 {
        bail!("expected a 2-d tensor, got shape {s:?}");
    }
    let v: Vec<f64> = Vec::<f64>::try_from(
        &t.to_device(Device::Cpu)
            .to_kind(Kind::Double)
            .contiguous()
            .view([-1]),
    )?;
    divrl_reward::io::write_npy(path, &[s[0] as usize, s[1] as usize], &v, true)
        .with_context(|| format!("writing {}", path.display()))
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

/// Features of an image source, through the cache when one is given. Returns the result and
/// whether it came from the cache.
pub fn features_of_source(
    ext: &dyn Extractor,
    src: &ImageSource,
    cache: Option<&FeatureCache>,
    batch: usize,
    show_progress: bool,
) -> Result<(Extracted, bool)> {
    let key = match cache {
        Some(_) => Some(FeatureCache::key(&src.content_hash()?, ext.fingerprint())),
        None => None,
    };
    if let (Some(c), Some(k)) = (cache, &key) {
        if let Some(hit) = c.get(k) {
            if hit.features.size()[1] == ext.dim() {
                return Ok((hit, true));
            }
        }
    }
    let images = src.load()?;
    let out = extract(ext, &images, batch, show_progress)?;
    if let (Some(c), Some(k)) = (cache, &key) {
        c.put(k, &out)?;
    }
    Ok((out, false))
}
