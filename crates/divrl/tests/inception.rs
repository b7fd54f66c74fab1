//! FID InceptionV3 through libtorch (tch::CModule) against Python PyTorch on the same archive:
//! the golden fixture in tests/fixtures/inception (made by make_fixture.py there).
//!
//! Needs the archive from `scripts/setup-inception.sh`. Without it these tests fail with that
//! instruction, unless DIVRL_SKIP_INCEPTION=1 is set (then they are reported as skipped).
use divrl::features::{load_extractor, ImageSource};
use divrl::models::inception::{default_archive_path, preprocess, TorchScriptInception};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/inception")
        .join(name)
}

fn archive() -> Option<PathBuf> {
    let p = default_archive_path();
    if p.is_file() {
        return Some(p);
    }
    if std::env::var_os("DIVRL_SKIP_INCEPTION").is_some() {
        eprintln!(
            "SKIPPED: {} missing and DIVRL_SKIP_INCEPTION set",
            p.display()
        );
        return None;
    }
    panic!(
        "{} missing: run scripts/setup-inception.sh (or set DIVRL_SKIP_INCEPTION=1)",
        p.display()
    );
}

fn read_f32(path: &Path) -> Tensor {
    let a = divrl_reward::io::read_array(path).unwrap();
    let v: Vec<f32> = a.data.iter().map(|&x| x as f32).collect();
    Tensor::from_slice(&v).view(
        a.shape
            .iter()
            .map(|&s| s as i64)
            .collect::<Vec<_>>()
            .as_slice(),
    )
}

#[test]
fn pool3_matches_python_pytorch() {
    let Some(_) = archive() else { return };
    tch::set_num_threads(1);
    let ext = load_extractor("inception", None, Device::Cpu).unwrap();
    assert_eq!(ext.dim(), 2048);
    for (images, want) in [("grey.npy", "grey_pool3.npy"), ("rgb.npy", "rgb_pool3.npy")] {
        let x = ImageSource::parse(fixture(images).to_str().unwrap())
            .unwrap()
            .load()
            .unwrap();
        let got = ext.forward(&x).unwrap().features;
        let want = read_f32(&fixture(want));
        assert_eq!(got.size(), want.size());
        let diff = (&got - &want).abs().max().double_value(&[]);
        let scale = want.abs().max().double_value(&[]);
        eprintln!("{images}: max |diff| {diff:.3e} (max |feature| {scale:.3})");
        assert!(diff <= 1e-5, "{images}: max abs difference {diff} > 1e-5");
        // Not a degenerate fixture: features differ between images.
        assert!((want.get(0) - want.get(1)).abs().max().double_value(&[]) > 1e-2);
    }
}

#[test]
fn preprocessing_and_errors() {
    let x = Tensor::rand([2, 1, 28, 28], (Kind::Float, Device::Cpu));
    let p = preprocess(&x).unwrap();
    assert_eq!(p.size(), [2, 3, 299, 299]);
    assert!(p.min().double_value(&[]) >= -1.0 && p.max().double_value(&[]) <= 1.0);
    let dir = tempfile::tempdir().unwrap();
    let e = TorchScriptInception::load(&dir.path().join("none.pt"), Device::Cpu)
        .err()
        .unwrap();
    assert!(e.to_string().contains("setup-inception"), "{e}");
    let bad = dir.path().join("bad.pt");
    std::fs::write(&bad, b"not an archive").unwrap();
    assert!(TorchScriptInception::load(&bad, Device::Cpu).is_err());
    let Some(a) = archive() else { return };
    let net = TorchScriptInception::load(&a, Device::Cpu).unwrap();
    let e = net
        .forward_preprocessed(&Tensor::zeros([1, 3, 64, 64], (Kind::Float, Device::Cpu)))
        .unwrap_err();
    assert!(e.to_string().contains("299"), "{e}");
}

use divrl::models::inception::{conv_names, NativeInception};
use std::collections::{BTreeMap, HashMap};

fn archive_params(path: &Path) -> HashMap<String, Tensor> {
    tch::CModule::load(path)
        .unwrap()
        .named_parameters()
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k.strip_prefix("net.layers.").unwrap().to_string(), v))
        .collect()
}

#[test]
fn native_port_matches_the_archive() {
    let Some(a) = archive() else { return };
    tch::set_num_threads(1);
    let net = NativeInception::load(&a, Device::Cpu).unwrap();
    assert!(!net.has_logits());
    for (images, want) in [("grey.npy", "grey_pool3.npy"), ("rgb.npy", "rgb_pool3.npy")] {
        let x = ImageSource::parse(fixture(images).to_str().unwrap())
            .unwrap()
            .load()
            .unwrap();
        let (got, logits) = net.forward(&x).unwrap();
        assert!(logits.is_none());
        let diff = (&got - read_f32(&fixture(want)))
            .abs()
            .max()
            .double_value(&[]);
        eprintln!("native {images}: max |diff| {diff:.3e}");
        assert!(diff <= 1e-5, "{images}: native port differs by {diff}");
    }
    let ext = load_extractor("inception-native", Some(&a), Device::Cpu).unwrap();
    assert_eq!(ext.name(), "inception-native");
}

#[test]
fn torchvision_layout_of_pytorch_fid() {
    // The names and shapes of pytorch-fid's FIDInceptionV3 (fixtures/inception/pytorch_fid_layout.py,
    // which also checked that network against the archive to 1e-6).
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("pytorch_fid_layout.json")).unwrap())
            .unwrap();
    assert!(json["max_abs_diff_vs_torchscript"].as_f64().unwrap() < 1e-5);
    let keys: BTreeMap<String, Vec<i64>> = serde_json::from_value(json["keys"].clone()).unwrap();
    let mut mine: Vec<String> = vec!["fc.weight".into(), "fc.bias".into()];
    for (_, tv) in conv_names() {
        for s in [
            "conv.weight",
            "bn.weight",
            "bn.bias",
            "bn.running_mean",
            "bn.running_var",
            "bn.num_batches_tracked",
        ] {
            mine.push(format!("{tv}.{s}"));
        }
    }
    mine.sort();
    assert_eq!(mine, keys.keys().cloned().collect::<Vec<_>>());
    let Some(a) = archive() else { return };
    let ts = archive_params(&a);
    // Same weights in the torchvision layout (γ = 1, plus an fc layer): same pool3, and logits.
    let mut tv: HashMap<String, Tensor> = HashMap::new();
    for (t, v) in conv_names() {
        let w = &ts[&format!("{t}.weight")];
        assert_eq!(&w.size(), &keys[&format!("{v}.conv.weight")], "{t} ↔ {v}");
        tv.insert(format!("{v}.conv.weight"), w.shallow_clone());
        tv.insert(
            format!("{v}.bn.weight"),
            ts[&format!("{t}.beta")].ones_like(),
        );
        tv.insert(
            format!("{v}.bn.bias"),
            ts[&format!("{t}.beta")].shallow_clone(),
        );
        tv.insert(
            format!("{v}.bn.running_mean"),
            ts[&format!("{t}.mean")].shallow_clone(),
        );
        tv.insert(
            format!("{v}.bn.running_var"),
            ts[&format!("{t}.var")].shallow_clone(),
        );
    }
    tch::manual_seed(0);
    let fc_w = Tensor::randn([1008, 2048], (Kind::Float, Device::Cpu)) * 0.01;
    let fc_b = Tensor::randn([1008], (Kind::Float, Device::Cpu));
    tv.insert("fc.weight".into(), fc_w.shallow_clone());
    tv.insert("fc.bias".into(), fc_b.shallow_clone());
    let net = NativeInception::from_tensors(tv, Device::Cpu).unwrap();
    assert!(net.has_logits());
    let x = ImageSource::parse(fixture("grey.npy").to_str().unwrap())
        .unwrap()
        .load()
        .unwrap();
    let (pool3, logits) = net.forward(&x).unwrap();
    let want = read_f32(&fixture("grey_pool3.npy"));
    assert!((&pool3 - &want).abs().max().double_value(&[]) <= 1e-5);
    let l = logits.unwrap();
    assert_eq!(l.size(), [4, 1008]);
    let manual = want.matmul(&fc_w.tr()) + fc_b;
    assert!((l - manual).abs().max().double_value(&[]) < 1e-3);
}

#[test]
fn reads_pytorch_pickles_and_rejects_partial_weights() {
    // conv1a_state_dict.pth: torch.save of the first convolution's tensors (torchvision names).
    let p = fixture("conv1a_state_dict.pth");
    let t: HashMap<String, Tensor> = Tensor::loadz_multi(&p).unwrap().into_iter().collect();
    assert_eq!(t["Conv2d_1a_3x3.conv.weight"].size(), [32, 3, 3, 3]);
    assert_eq!(t["Conv2d_1a_3x3.bn.running_var"].size(), [32]);
    let e = NativeInception::load(&p, Device::Cpu).err().unwrap();
    assert!(format!("{e:#}").contains("missing"), "{e:#}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("x.pth");
    std::fs::write(&bad, b"junk").unwrap();
    assert!(NativeInception::load(&bad, Device::Cpu).is_err());
    assert!(NativeInception::load(&dir.path().join("none.pth"), Device::Cpu).is_err());
}
