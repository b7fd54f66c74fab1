//! `divrl eval`: FID, Precision, Recall, Density, Coverage and IS of generated images against
//! reference images in an extractor's feature space, and the attribute histogram of the
//! generated images with its KL to uniform.

use std::path::PathBuf;

use anyhow::bail;
use divrl::eval::{evaluate, AttributeReport, EvalOptions};
use divrl::features::{features_of_source, load_extractor, FeatureCache, ImageSource};

use super::print_json;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq)]
pub enum AttributeArg {
    /// No attribute histogram
    None,
    /// The skewed-attribute oracle (inverted image: white border), exact
    Inversion,
    /// The extractor's predicted class (argmax of its logits)
    Classes,
    /// CLIP zero-shot classification among --clip-prompts (ITI-GEN's evaluation)
    Clip,
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Generated images: a folder of PNG/JPEG, a .npy array, an IDX file, or a built-in pool
    #[arg(long)]
    pub generated: String,
    /// Reference (real) images, same forms as --generated
    #[arg(long)]
    pub reference: String,
    /// Feature network: small | inception | clip
    #[arg(long, default_value = "small")]
    pub extractor: String,
    /// Weights of the extractor (see `divrl features --help`)
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Nearest-neighbour rank of Precision, Recall, Density and Coverage
    #[arg(long, default_value_t = 3)]
    pub k: usize,
    /// Splits of the Inception Score
    #[arg(long, default_value_t = 10)]
    pub is_splits: usize,
    /// Attribute whose histogram over the generated images is reported with its KL to uniform
    #[arg(long, value_enum, default_value = "none")]
    pub attribute: AttributeArg,
    /// Prompts of the attribute values for --attribute clip (repeat the option, one per value)
    #[arg(long = "clip-prompt")]
    pub clip_prompts: Vec<String>,
    /// CLIP folder for --attribute clip [default: --weights when --extractor clip, else $DIVRL_CLIP or models/clip]
    #[arg(long)]
    pub clip_weights: Option<PathBuf>,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Images per forward pass (0 = the extractor's default)
    #[arg(long, default_value_t = 0)]
    pub batch_size: usize,
    /// Feature cache folder [default: $DIVRL_CACHE_DIR/features or ~/.cache/divrl/features]
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Neither read nor write the cache
    #[arg(long)]
    pub no_cache: bool,
    /// cpu, cuda, cuda:N or auto
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// CPU threads for libtorch (0 = one per core)
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Hide the progress bars
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    divrl::device::set_threads(args.threads);
    let device = divrl::device::parse_device(&args.device)?;
    let gen_src = ImageSource::parse(&args.generated)?;
    let ref_src = ImageSource::parse(&args.reference)?;
    let ext = load_extractor(&args.extractor, args.weights.as_deref(), device)?;
    let cache = (!args.no_cache).then(|| {
        FeatureCache::new(
            args.cache_dir
                .clone()
                .unwrap_or_else(FeatureCache::default_dir),
        )
    });
    let (g, _) = features_of_source(
        ext.as_ref(),
        &gen_src,
        cache.as_ref(),
        args.batch_size,
        !args.no_progress,
    )?;
    let (r, _) = features_of_source(
        ext.as_ref(),
        &ref_src,
        cache.as_ref(),
        args.batch_size,
        !args.no_progress,
    )?;
    let attribute = match args.attribute {
        AttributeArg::None => None,
        AttributeArg::Inversion => {
            let labels = divrl::data::inversion_oracle(&gen_src.load()?)?;
            let labels: Vec<usize> = labels.into_iter().map(usize::from).collect();
            Some(AttributeReport::new(
                "inversion",
                vec!["normal".into(), "inverted".into()],
                &labels,
            )?)
        }
        AttributeArg::Classes => {
            let (Some(l), Some(names)) = (&g.logits, ext.class_names()) else {
                bail!("--attribute classes needs an extractor with class logits (small)")
            };
            let pred: Vec<i64> = Vec::<i64>::try_from(&l.argmax(-1, false))?;
            let pred: Vec<usize> = pred.into_iter().map(|v| v as usize).collect();
            Some(AttributeReport::new("classes", names, &pred)?)
        }
        AttributeArg::Clip => {
            if args.clip_prompts.len() < 2 {
                bail!("--attribute clip needs at least two --clip-prompt values");
            }
            let dir = match (&args.clip_weights, args.extractor.as_str(), &args.weights) {
                (Some(d), _, _) => d.clone(),
                (None, "clip", Some(w)) => w.clone(),
                _ => divrl::features::default_clip_dir(),
            };
            let clip = divrl::models::clip::load_clip(&dir, None, device)?;
            let images = gen_src.load()?;
            let mut labels = Vec::with_capacity(images.size()[0] as usize);
            for chunk in images.split(32, 0) {
                let p = clip.zero_shot(&chunk, &args.clip_prompts)?;
                let am: Vec<i64> = Vec::<i64>::try_from(&p.argmax(-1, false))?;
                labels.extend(am.into_iter().map(|v| v as usize));
            }
            Some(AttributeReport::new(
                "clip",
                args.clip_prompts.clone(),
                &labels,
            )?)
        }
    };
    let report = evaluate(
        ext.name(),
        &g.features,
        &r.features,
        g.logits.as_ref(),
        attribute,
        EvalOptions {
            k: args.k,
            is_splits: args.is_splits,
        },
    )?;
    if let Some(p) = &args.out {
        divrl_reward::io::write_atomic(p, serde_json::to_string_pretty(&report)?.as_bytes())?;
    }
    if args.json {
        print_json(&report)
    } else {
        print!("{}", report.table());
        Ok(())
    }
}
