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
