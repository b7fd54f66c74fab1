//! The small classifier / feature network: gradients, shapes, training, checkpoints, errors.
use divrl::data::Dataset;
use divrl::models::classifier::{
    load_classifier, train_classifier, Classifier, ClassifierCheckpointConfig, ClassifierConfig,
    ClassifierTrainConfig, TrainProgress,
};
use tch::{nn::VarStore, Device, Kind, Tensor};

fn tiny_cfg() -> ClassifierConfig {
    ClassifierConfig {
        in_channels: 1,
        image_size: 8,
        channels: vec![4, 8],
        convs_per_level: 2,
        feature_dim: 6,
        num_classes: 3,
        groups: 2,
        dropout: 0.0,
        class_names: vec!["a".into(), "b".into(), "c".into()],
    }
}

#[test]
fn every_trainable_parameter_gets_a_gradient() {
    tch::manual_seed(1);
    let vs = VarStore::new(Device::Cpu);
    let net = Classifier::new(&vs.root(), &tiny_cfg()).unwrap();
    let x = Tensor::randn([5, 1, 8, 8], (Kind::Float, Device::Cpu));
    let y = Tensor::from_slice(&[0i64, 1, 2, 0, 1]);
    let (f, logits) = net.forward_t(&x, true).unwrap();
    assert_eq!(f.size(), [5, 6]);
    assert_eq!(logits.size(), [5, 3]);
    logits.cross_entropy_for_logits(&y).backward();
    let vars = vs.trainable_variables();
    // 2 levels × 2 convs × (conv w, b, norm w, b) + fc (w, b) + head (w, b)
    assert_eq!(vars.len(), 2 * 2 * 4 + 4);
    for (name, t) in vs.variables() {
        let g = t.grad();
        assert!(g.defined(), "{name} has no gradient");
        assert!(
            g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "{name} has a zero gradient"
        );
    }
}

#[test]
fn wrong_input_shape_is_an_error() {
    let vs = VarStore::new(Device::Cpu);
    let net = Classifier::new(&vs.root(), &tiny_cfg()).unwrap();
    let x = Tensor::zeros([2, 3, 8, 8], (Kind::Float, Device::Cpu));
    let e = net.forward_t(&x, false).unwrap_err().to_string();
    assert!(e.contains("[N, 1, 8, 8]"), "{e}");
}

#[test]
fn config_validation() {
    let mut c = tiny_cfg();
    c.groups = 3;
    assert!(c.validate().unwrap_err().to_string().contains("groups"));
    let mut c = tiny_cfg();
    c.image_size = 3;
    assert!(c.validate().is_err());
    let mut c = tiny_cfg();
    c.class_names.pop();
    assert!(c.validate().is_err());
    assert!(ClassifierConfig::default().validate().is_ok());
}

/// Two separable classes (bright top half vs bright bottom half) with noise.
fn toy_data(n: usize, seed: i64) -> Dataset {
    tch::manual_seed(seed);
    let mut imgs = Vec::new();
    let mut labels = Vec::new();
    for i in 0..n {
        let c = (i % 3) as i64;
        let mut img = Tensor::rand([1, 8, 8], (Kind::Float, Device::Cpu)) * 0.3;
        let bright = img.narrow(1, c * 2, 3) + 0.7;
        img = img.slice_scatter(&bright, 1, c * 2, c * 2 + 3, 1);
        imgs.push(img.clamp(0.0, 1.0));
        labels.push(c);
    }
    Dataset {
        images: Tensor::stack(&imgs, 0),
        labels,
        class_names: vec!["a".into(), "b".into(), "c".into()],
        attribute: None,
    }
}

#[test]
fn trains_saves_and_reloads() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ClassifierCheckpointConfig {
        model: tiny_cfg(),
        train: ClassifierTrainConfig {
            epochs: 4,
            batch_size: 16,
            lr: 1e-2,
            max_shift: 0,
            ..Default::default()
        },
    };
    let train = toy_data(96, 2);
    let held = toy_data(30, 3);
    let m = train_classifier(
        &cfg,
        &train,
        &held,
        Device::Cpu,
        dir.path(),
        TrainProgress { show_bar: false },
    )
    .unwrap();
    assert!(
        m.heldout_accuracy > 0.9,
        "toy accuracy {}",
        m.heldout_accuracy
    );
    assert_eq!(m.train_images, 96);
    let loaded = load_classifier(dir.path(), Device::Cpu).unwrap();
    assert_eq!(loaded.config, cfg);
    let acc = divrl::models::classifier::accuracy(&loaded.net, &held, Device::Cpu, 7).unwrap();
    assert_eq!(acc, m.heldout_accuracy);
    assert!(dir.path().join("metrics.json").exists());
}

#[test]
fn corrupt_or_missing_checkpoints_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = load_classifier(&dir.path().join("nope"), Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("does not exist"), "{e}");
    let cfg = ClassifierCheckpointConfig {
        model: tiny_cfg(),
        train: Default::default(),
    };
    divrl::config::write_toml(&dir.path().join("config.toml"), &cfg).unwrap();
    std::fs::write(dir.path().join("weights.safetensors"), b"garbage").unwrap();
    assert!(load_classifier(dir.path(), Device::Cpu).is_err());
    // Weights of another shape.
    let mut other = tiny_cfg();
    other.feature_dim = 5;
    let vs = VarStore::new(Device::Cpu);
    let _net = Classifier::new(&vs.root(), &other).unwrap();
    let vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    divrl::config::write_safetensors_atomic(&dir.path().join("weights.safetensors"), &vars)
        .unwrap();
    let e = load_classifier(dir.path(), Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("shape"), "{e}");
}
