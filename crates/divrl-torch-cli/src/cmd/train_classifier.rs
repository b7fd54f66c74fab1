//! `divrl train-classifier`: the small CNN classifier whose penultimate layer is the default
//! feature space ϕ (`--extractor small`) and whose logits give the Inception Score.

use std::path::PathBuf;

use anyhow::{bail, Context};
use divrl::models::classifier::{
    train_classifier, ClassifierCheckpointConfig, ClassifierConfig, TrainProgress,
    CLASSIFIER_WEIGHTS_FILE,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Checkpoint folder to write (config.toml, weights.safetensors, metrics.json)
    #[arg(long)]
    pub out: PathBuf,
    /// TOML config with [model] and [train] tables (defaults: the Fashion-MNIST classifier)
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data set: fashion-mnist | idx:IMAGES,LABELS | folder:DIR[,SIZE[,CHANNELS]] | npy:IMAGES,LABELS.
    /// fashion-mnist trains on the 60k training split when installed and holds out the whole
    /// 10k test split; otherwise the evaluation and reference pools are held out.
    #[arg(long, default_value = "fashion-mnist")]
    pub data: String,
    #[arg(long)]
    pub epochs: Option<usize>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate (AdamW; warm-up then cosine decay)
    #[arg(long)]
    pub lr: Option<f64>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// Overwrite an existing checkpoint in --out
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub compute: super::ComputeOpts,
    /// Hide the progress bar
    #[arg(long)]
    pub no_progress: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let device = args.compute.device()?;
    if args.out.join(CLASSIFIER_WEIGHTS_FILE).exists() && !args.force {
        bail!(
            "{} already holds a classifier (pass --force to overwrite)",
            args.out.display()
        );
    }
    let mut cfg: ClassifierCheckpointConfig = match &args.config {
        Some(p) => divrl::config::read_toml(p).context("loading --config")?,
        None => ClassifierCheckpointConfig::default(),
    };
    if let Some(v) = args.epochs {
        cfg.train.epochs = v;
    }
    if let Some(v) = args.batch_size {
        cfg.train.batch_size = v;
    }
    if let Some(v) = args.lr {
        cfg.train.lr = v;
    }
    if let Some(v) = args.seed {
        cfg.train.seed = v;
    }
    let (train, heldout) =
        if args.data == "fashion-mnist" && divrl::data::fashion_mnist_train_dir().is_some() {
            let train = divrl::data::fashion_mnist_train()?
                .context("the Fashion-MNIST training split disappeared")?;
            (train, divrl::data::fashion_mnist_test()?)
        } else {
            let s = divrl::data::load_splits(&args.data)?;
            let held = divrl::data::Dataset {
                images: divrl::tch::Tensor::cat(&[&s.eval.images, &s.reference.images], 0),
                labels: s
                    .eval
                    .labels
                    .iter()
                    .chain(&s.reference.labels)
                    .copied()
                    .collect(),
                class_names: s.eval.class_names.clone(),
                attribute: None,
            };
            (s.train, held)
        };
    if args.config.is_none() {
        // Match the data's image format and classes.
        let [c, h, _] = train.image_shape();
        cfg.model = ClassifierConfig {
            in_channels: c,
            image_size: h,
            num_classes: train.num_classes(),
            class_names: train.class_names.clone(),
            ..cfg.model
        };
    }
    tracing::info!(
        "training the classifier on {} images, holding out {} ({})",
        train.len(),
        heldout.len(),
        divrl::device::device_name(device)
    );
    let m = train_classifier(
        &cfg,
        &train,
        &heldout,
        device,
        &args.out,
        TrainProgress {
            show_bar: !args.no_progress,
        },
    )?;
    println!(
        "held-out accuracy {:.4} on {} images ({} training images, {} epochs, {:.0} s); wrote {}",
        m.heldout_accuracy,
        m.heldout_images,
        m.train_images,
        m.epochs,
        m.seconds,
        args.out.display()
    );
    Ok(())
}
