//! `divrl features`: features ϕ(x) of an image set, written as an N × D float32 `.npy`, through a
//! cache keyed by the content hash of the inputs and of the extractor's weights.

use std::path::PathBuf;
use std::time::Instant;

use divrl::features::{
    features_of_source, load_extractor, write_npy_f32, FeatureCache, ImageSource,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Images: a folder of PNG/JPEG (recursive), a .npy array (uint8, or float in [0, 1]), an IDX
    /// file, or fashion-mnist[-skewed]:train|test|eval|reference
    #[arg(long)]
    pub images: String,
    /// Feature network: pixels (8 × 8 grey average-pooled pixels; pixels-<side> pools to another
    /// side, e.g. pixels-28 for the raw pixels; a -norm suffix, pixels-norm or pixels-14-norm,
    /// standardises each image's vector), small (the shipped
    /// Fashion-MNIST classifier), inception (FID InceptionV3 pool3), clip (CLIP image encoder)
    #[arg(long, default_value = "small")]
    pub extractor: String,
    /// Weights: a classifier folder (small), a TorchScript archive (inception), a CLIP folder (clip)
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Output N × D float32 .npy
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the class logits (extractors with a classification head)
    #[arg(long)]
    pub logits_out: Option<PathBuf>,
    /// Images per forward pass (0 = the extractor's default)
    #[arg(long, default_value_t = 0)]
    pub batch_size: usize,
    /// Feature cache folder [default: $DIVRL_CACHE_DIR/features or ~/.cache/divrl/features]
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Neither read nor write the cache
    #[arg(long)]
    pub no_cache: bool,
    #[command(flatten)]
    pub compute: super::ComputeOpts,
    /// Hide the progress bar
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = args.compute.device()?;
    let src = ImageSource::parse(&args.images)?;
    let ext = load_extractor(&args.extractor, args.weights.as_deref(), device)?;
    let cache = (!args.no_cache).then(|| {
        FeatureCache::new(
            args.cache_dir
                .clone()
                .unwrap_or_else(FeatureCache::default_dir),
        )
    });
    let t0 = Instant::now();
    let (out, hit) = features_of_source(
        ext.as_ref(),
        &src,
        cache.as_ref(),
        args.batch_size,
        !args.no_progress,
    )?;
    let secs = t0.elapsed().as_secs_f64();
    if let Some(p) = &args.logits_out {
        match &out.logits {
            Some(l) => write_npy_f32(p, l)?,
            None => anyhow::bail!(
                "extractor {} has no class logits (--logits-out)",
                ext.name()
            ),
        }
    }
    write_npy_f32(&args.out, &out.features)?;
    let s = out.features.size();
    if hit {
        eprintln!(
            "{} × {} features of {} from the cache ({:.2} s); wrote {}",
            s[0],
            s[1],
            args.images,
            secs,
            args.out.display()
        );
    } else {
        eprintln!(
            "{} × {} features of {} ({}, {:.2} s, {:.1} images/s); wrote {}",
            s[0],
            s[1],
            args.images,
            divrl::device::device_name(device),
            secs,
            s[0] as f64 / secs.max(1e-9),
            args.out.display()
        );
    }
    Ok(())
}
