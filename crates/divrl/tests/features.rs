//! Image sources, channel conversion, batched extraction and the content-hash feature cache.
use divrl::features::{
    extract, features_of_source, to_channels, Extracted, Extractor, FeatureCache, ImageSource,
};
use std::cell::Cell;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// A transparent extractor: features = per-channel means and the image mean; counts calls.
struct MeanExtractor {
    calls: Cell<usize>,
}

impl Extractor for MeanExtractor {
    fn name(&self) -> &str {
        "mean"
    }
    fn fingerprint(&self) -> &str {
        "mean-v1"
    }
    fn dim(&self) -> i64 {
        2
    }
    fn default_batch(&self) -> usize {
        3
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn forward(&self, images: &Tensor) -> anyhow::Result<Extracted> {
        self.calls.set(self.calls.get() + 1);
        let x = to_channels(images, 1)?;
        let m = x.mean_dim(&[1i64, 2, 3][..], false, Kind::Float);
        let mx = x.amax(&[1i64, 2, 3][..], false);
        Ok(Extracted {
            features: Tensor::stack(&[m, mx], 1),
            logits: None,
        })
    }
}

fn write_png(path: &Path, w: u32, h: u32, v: u8, rgb: bool) {
    if rgb {
        image::RgbImage::from_fn(w, h, |x, _| image::Rgb([v, (x * 10) as u8, 0]))
            .save(path)
            .unwrap();
    } else {
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([v.wrapping_add((x + y) as u8)]))
            .save(path)
            .unwrap();
    }
}

fn write_u8_npy(path: &Path, shape: &[u64], data: &[u8]) {
    use npyz::WriterBuilder;
    let mut w = npyz::WriteOptions::<u8>::new()
        .default_dtype()
        .shape(shape)
        .writer(std::fs::File::create(path).unwrap())
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

#[test]
fn folder_sources_are_recursive_sorted_and_typed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    write_png(&dir.path().join("b.png"), 5, 4, 10, false);
    write_png(&dir.path().join("a.png"), 5, 4, 200, false);
    write_png(&dir.path().join("sub/c.png"), 5, 4, 50, false);
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let src = ImageSource::parse(dir.path().to_str().unwrap()).unwrap();
    let x = src.load().unwrap();
    assert_eq!(x.size(), [3, 1, 4, 5]);
    // Sorted paths: a.png, b.png, sub/c.png.
    let first: Vec<f32> = Vec::<f32>::try_from(&x.select(2, 0).select(2, 0).view([-1])).unwrap();
    assert_eq!(first, vec![200.0 / 255.0, 10.0 / 255.0, 50.0 / 255.0]);
    // One colour image makes the whole set RGB.
    write_png(&dir.path().join("d.png"), 5, 4, 90, true);
    assert_eq!(src.load().unwrap().size(), [4, 3, 4, 5]);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("a.png"), 5, 4, 10, false);
    std::fs::write(dir.path().join("b.png"), b"not a png").unwrap();
    let e = ImageSource::parse(dir.path().to_str().unwrap())
        .unwrap()
        .load()
        .unwrap_err();
    assert!(format!("{e:#}").contains("b.png"), "{e:#}");
    std::fs::remove_file(dir.path().join("b.png")).unwrap();
    write_png(&dir.path().join("c.png"), 6, 4, 10, false);
    let e = ImageSource::parse(dir.path().to_str().unwrap())
        .unwrap()
        .load()
        .unwrap_err();
    assert!(e.to_string().contains("differs"), "{e}");
    assert!(ImageSource::parse("/no/such/thing").is_err());
    assert!(ImageSource::parse("fashion-mnist:nope").is_err());
    let empty = tempfile::tempdir().unwrap();
    assert!(ImageSource::parse(empty.path().to_str().unwrap())
        .unwrap()
        .load()
        .is_err());
    // Float .npy outside [0, 1].
    let p = dir.path().join("f.npy");
    divrl_reward::io::write_npy(
        &p,
        &[2, 2, 2],
        &[0.0, -1.0, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0],
        true,
    )
    .unwrap();
    let e = ImageSource::parse(p.to_str().unwrap())
        .unwrap()
        .load()
        .unwrap_err();
    assert!(e.to_string().contains("[0, 1]"), "{e}");
}

#[test]
fn npy_and_idx_sources() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.npy");
    write_u8_npy(
        &p,
        &[2, 3, 3],
        &(0..18).map(|v| v * 10).collect::<Vec<u8>>(),
    );
    let x = ImageSource::parse(p.to_str().unwrap())
        .unwrap()
        .load()
        .unwrap();
    assert_eq!(x.size(), [2, 1, 3, 3]);
    assert!((x.double_value(&[1, 0, 2, 2]) - 170.0 / 255.0).abs() < 1e-6);
    // IDX: magic 0x00000803, dims 2×2×2.
    let mut idx = vec![0u8, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2];
    idx.extend([0u8, 255, 0, 255, 10, 20, 30, 40]);
    let ip = dir.path().join("imgs-idx3-ubyte");
    std::fs::write(&ip, &idx).unwrap();
    let x = ImageSource::parse(ip.to_str().unwrap())
        .unwrap()
        .load()
        .unwrap();
    assert_eq!(x.size(), [2, 1, 2, 2]);
    assert_eq!(x.double_value(&[0, 0, 0, 1]), 1.0);
}

#[test]
fn channel_conversion() {
    let g = Tensor::rand([2, 1, 3, 3], (Kind::Float, Device::Cpu));
    let rgb = to_channels(&g, 3).unwrap();
    assert_eq!(rgb.size(), [2, 3, 3, 3]);
    // Grey → RGB → grey is the identity (luma weights sum to 1).
    let back = to_channels(&rgb, 1).unwrap();
    assert!((back - &g).abs().max().double_value(&[]) < 1e-6);
    assert!(to_channels(&Tensor::zeros([1, 2, 3, 3], (Kind::Float, Device::Cpu)), 3).is_err());
}

#[test]
fn extraction_is_batched_in_order() {
    let ext = MeanExtractor {
        calls: Cell::new(0),
    };
    let x = Tensor::arange(7, (Kind::Float, Device::Cpu)).view([7, 1, 1, 1]) / 10.0;
    let x = x.expand([7, 1, 2, 2], false).contiguous();
    let out = extract(&ext, &x, 0, false).unwrap();
    assert_eq!(ext.calls.get(), 3); // default batch 3: 3 + 3 + 1
    assert_eq!(out.features.size(), [7, 2]);
    let m: Vec<f32> = Vec::<f32>::try_from(&out.features.select(1, 0)).unwrap();
    for (i, v) in m.iter().enumerate() {
        assert!((v - i as f32 / 10.0).abs() < 1e-6);
    }
    assert!(out.logits.is_none());
    assert!(extract(
        &ext,
        &Tensor::zeros([0, 1, 2, 2], (Kind::Float, Device::Cpu)),
        2,
        false
    )
    .is_err());
}

#[test]
fn cache_is_keyed_by_content_and_extractor() {
    let dir = tempfile::tempdir().unwrap();
    let cache = FeatureCache::new(dir.path().join("cache"));
    let p = dir.path().join("x.npy");
    write_u8_npy(
        &p,
        &[4, 2, 2],
        &(0..16).map(|v| v * 15).collect::<Vec<u8>>(),
    );
    let src = ImageSource::parse(p.to_str().unwrap()).unwrap();
    let ext = MeanExtractor {
        calls: Cell::new(0),
    };
    let (a, hit) = features_of_source(&ext, &src, Some(&cache), 0, false).unwrap();
    assert!(!hit);
    let calls = ext.calls.get();
    let (b, hit) = features_of_source(&ext, &src, Some(&cache), 0, false).unwrap();
    assert!(hit);
    assert_eq!(
        ext.calls.get(),
        calls,
        "a cache hit must not run the network"
    );
    assert_eq!(a.features.size(), b.features.size());
    assert!((&a.features - &b.features).abs().max().double_value(&[]) < 1e-7);
    // Same content under another name: still a hit. Changed content: a miss.
    let p2 = dir.path().join("y.npy");
    std::fs::copy(&p, &p2).unwrap();
    let (_, hit) = features_of_source(
        &ext,
        &ImageSource::parse(p2.to_str().unwrap()).unwrap(),
        Some(&cache),
        0,
        false,
    )
    .unwrap();
    assert!(hit);
    write_u8_npy(
        &p2,
        &[4, 2, 2],
        &(0..16).map(|v| v * 14).collect::<Vec<u8>>(),
    );
    let (c, hit) = features_of_source(
        &ext,
        &ImageSource::parse(p2.to_str().unwrap()).unwrap(),
        Some(&cache),
        0,
        false,
    )
    .unwrap();
    assert!(!hit);
    assert!((&c.features - &a.features).abs().max().double_value(&[]) > 1e-3);
    // A corrupt cache entry is a miss, not an error.
    for e in std::fs::read_dir(&cache.dir).unwrap() {
        std::fs::write(e.unwrap().path(), b"junk").unwrap();
    }
    let (_, hit) = features_of_source(&ext, &src, Some(&cache), 0, false).unwrap();
    assert!(!hit);
}

#[test]
fn builtin_pools_are_the_default_splits() {
    let s = divrl::data::fashion_mnist_splits().unwrap();
    let e = ImageSource::parse("fashion-mnist:eval")
        .unwrap()
        .load()
        .unwrap();
    assert!(e.equal(&s.eval.images));
    let k = divrl::data::skew_splits(s, divrl::data::SPLIT_SEED);
    let r = ImageSource::parse("fashion-mnist-skewed:reference")
        .unwrap()
        .load()
        .unwrap();
    assert!(r.equal(&k.reference.images));
    assert!(ImageSource::parse("fashion-mnist-skewed:test").is_err());
    let b = divrl::data::skew_splits_with(
        divrl::data::AttributeKind::Background,
        divrl::data::fashion_mnist_splits().unwrap(),
        divrl::data::SPLIT_SEED,
    );
    let r = ImageSource::parse("fashion-mnist-background:eval")
        .unwrap()
        .load()
        .unwrap();
    assert!(r.equal(&b.eval.images));
    assert!(ImageSource::parse("fashion-mnist-background:test").is_err());
}
