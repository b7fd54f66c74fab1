//! Training, checkpoints and exact resume on a tiny model.
mod common;

use common::tiny_cfg;
use divrl::checkpoint::{self, BaseConfig};
use divrl::data::Dataset;
use divrl::optim::copy_vars;
use divrl::schedule::ScheduleConfig;
use divrl::train::{self, RunOptions, TrainConfig, Trainer};
use tch::{Device, Kind, Tensor};

fn tiny_data() -> Dataset {
    tch::manual_seed(0);
    let n = 24;
    let imgs = Tensor::rand([n, 1, 8, 8], (Kind::Float, Device::Cpu));
    let data: Vec<f32> = Vec::try_from(&imgs.flatten(0, -1)).unwrap();
    let labels = (0..n).map(|i| i % 3).collect();
    Dataset::from_vec(
        data,
        [n as usize, 1, 8, 8],
        labels,
        vec!["a".into(), "b".into(), "c".into()],
    )
    .unwrap()
}

fn tiny_base(steps: usize) -> BaseConfig {
    BaseConfig {
        model: tiny_cfg(),
        schedule: ScheduleConfig::default(),
        train: TrainConfig {
            steps,
            batch_size: 6,
            warmup_steps: 2,
            sample_every: 0,
            checkpoint_every: 0,
            log_every: 0,
            p_uncond: 0.3,
            ..Default::default()
        },
    }
}

fn weights(vs: &tch::nn::VarStore) -> Tensor {
    let mut v: Vec<_> = vs.variables().into_iter().collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Tensor::cat(
        &v.iter()
            .map(|(_, t)| t.detach().flatten(0, -1))
            .collect::<Vec<_>>(),
        0,
    )
}

#[test]
fn resumed_training_matches_an_uninterrupted_run() {
    let data = tiny_data();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));

    // Initial weights come from libtorch's global generator, which parallel tests share: copy
    // one initialisation into every trainer.
    let init = Trainer::new(tiny_base(4), Device::Cpu).unwrap();
    let same_init = |t: &Trainer| {
        copy_vars(&t.vs, &init.vs).unwrap();
        copy_vars(&t.ema_vs, &init.ema_vs).unwrap();
    };
    let mut straight = Trainer::new(tiny_base(4), Device::Cpu).unwrap();
    same_init(&straight);
    train::run(
        &mut straight,
        &data,
        RunOptions {
            out: &a,
            progress: false,
            stop_at: None,
        },
    )
    .unwrap();
    assert_eq!(straight.state.step, 4);

    // A run configured for 4 steps, stopped after 2 and saved, then resumed.
    let mut half = Trainer::new(tiny_base(4), Device::Cpu).unwrap();
    same_init(&half);
    train::run(
        &mut half,
        &data,
        RunOptions {
            out: &b,
            progress: false,
            stop_at: Some(2),
        },
    )
    .unwrap();
    assert_eq!(half.state.step, 2, "--stop-at stops there");
    drop(half);
    let mut resumed = Trainer::resume(&b, Device::Cpu, None).unwrap();
    assert_eq!(resumed.state.step, 2);
    train::run(
        &mut resumed,
        &data,
        RunOptions {
            out: &b,
            progress: false,
            stop_at: None,
        },
    )
    .unwrap();
    assert_eq!(resumed.state.step, 4);
    let d = (weights(&straight.vs) - weights(&resumed.vs))
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < 1e-6, "weights differ by {d} after resume");
    let d = (weights(&straight.ema_vs) - weights(&resumed.ema_vs))
        .abs()
        .max()
        .double_value(&[]);
    assert!(d < 1e-6, "EMA differs by {d} after resume");

    // The saved checkpoint loads for sampling (EMA weights).
    let m = checkpoint::load_model(&a, Device::Cpu, true).unwrap();
    assert_eq!(m.config.model, tiny_cfg());
    let d = (weights(&m.vs) - weights(&straight.ema_vs))
        .abs()
        .max()
        .double_value(&[]);
    assert_eq!(d, 0.0);
}

#[test]
fn loss_goes_down_on_a_tiny_set() {
    let data = tiny_data();
    let mut cfg = tiny_base(60);
    cfg.train.lr = 3e-3;
    cfg.train.p_uncond = 0.0;
    let mut t = Trainer::new(cfg, Device::Cpu).unwrap();
    let mut first = 0.0;
    let mut last = 0.0;
    for i in 0..60 {
        let l = t.train_step(&data).unwrap();
        if i < 10 {
            first += l / 10.0;
        }
        if i >= 50 {
            last += l / 10.0;
        }
    }
    assert!(last < first * 0.8, "loss {first} -> {last}");
}

#[test]
fn bad_checkpoints_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    assert!(checkpoint::load_model(&p.join("missing"), Device::Cpu, true).is_err());
    let mut t = Trainer::new(tiny_base(1), Device::Cpu).unwrap();
    t.train_step(&tiny_data()).unwrap();
    t.save(p).unwrap();
    assert!(checkpoint::load_model(p, Device::Cpu, true).is_ok());
    // Corrupt weights.
    std::fs::write(p.join(checkpoint::EMA_FILE), b"garbage").unwrap();
    let e = checkpoint::load_model(p, Device::Cpu, true)
        .err()
        .expect("corrupt file must fail");
    assert!(format!("{e:#}").contains("ema.safetensors"), "{e:#}");
    // Weights of another shape.
    t.save(p).unwrap();
    let mut other = tiny_base(1);
    other.model.base_channels = 16;
    divrl::config::write_toml(&p.join(checkpoint::CONFIG_FILE), &other).unwrap();
    let e = checkpoint::load_model(p, Device::Cpu, true)
        .err()
        .expect("shape mismatch must fail");
    assert!(format!("{e:#}").contains("shape"), "{e:#}");
    // Broken config.
    std::fs::write(
        p.join(checkpoint::CONFIG_FILE),
        b"[model]\nin_channels = \"x\"",
    )
    .unwrap();
    assert!(checkpoint::load_model(p, Device::Cpu, true).is_err());
}
