//! Data loaders, splits, the skewed-attribute variant and its oracle.
use divrl::data::{self, idx, SplitMix64};
use npyz::WriterBuilder;
use std::io::Write;
use tch::{Kind, Tensor};

fn idx_bytes(dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8, 0, 8, dims.len() as u8];
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(body);
    v
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn idx_plain_and_gzip_and_errors() {
    let body: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
    let raw = idx_bytes(&[2, 3, 4], &body);
    for bytes in [raw.clone(), gzip(&raw)] {
        let a = idx::parse_idx(&bytes).unwrap();
        assert_eq!(a.dims, vec![2, 3, 4]);
        assert_eq!(a.data, body);
    }
    assert!(
        idx::parse_idx(&raw[..raw.len() - 1]).is_err(),
        "truncated body"
    );
    assert!(idx::parse_idx(&[1, 2, 3]).is_err(), "bad magic");
    assert!(idx::parse_idx(&gzip(&raw)[..20]).is_err(), "truncated gzip");
    let mut f32_type = raw.clone();
    f32_type[2] = 0x0d;
    assert!(idx::parse_idx(&f32_type).is_err());

    let dir = tempfile::tempdir().unwrap();
    let (ip, lp) = (dir.path().join("i.gz"), dir.path().join("l"));
    std::fs::write(&ip, gzip(&raw)).unwrap();
    std::fs::write(&lp, idx_bytes(&[2], &[1, 0])).unwrap();
    let ds = data::load_idx(&ip, &lp).unwrap();
    assert_eq!(ds.images.size(), vec![2, 1, 3, 4]);
    assert_eq!(ds.labels, vec![1, 0]);
    assert!((ds.images.get(0).get(0).get(0).get(1).double_value(&[]) - 1.0 / 255.0).abs() < 1e-7);
    std::fs::write(&lp, idx_bytes(&[3], &[1, 0, 1])).unwrap();
    assert!(data::load_idx(&ip, &lp).is_err(), "label count mismatch");
}

#[test]
fn embedded_fashion_mnist_and_default_splits() {
    let test = data::fashion_mnist_test().unwrap();
    assert_eq!(test.len(), 10_000);
    assert_eq!(test.image_shape(), [1, 28, 28]);
    assert_eq!(test.num_classes(), 10);
    for c in 0..10 {
        assert_eq!(test.labels.iter().filter(|&&l| l == c).count(), 1000);
    }
    let (tr, ev, rf) =
        data::stratified_indices(&test.labels, 10, 200, 200, data::SPLIT_SEED).unwrap();
    assert_eq!((tr.len(), ev.len(), rf.len()), (6000, 2000, 2000));
    let mut all: Vec<usize> = tr.iter().chain(&ev).chain(&rf).copied().collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(
        all.len(),
        10_000,
        "pools must be disjoint and cover the split"
    );
    let again = data::stratified_indices(&test.labels, 10, 200, 200, data::SPLIT_SEED).unwrap();
    assert_eq!(
        again,
        (tr.clone(), ev.clone(), rf.clone()),
        "splits are deterministic"
    );
    let other = data::stratified_indices(&test.labels, 10, 200, 200, 1).unwrap();
    assert_ne!(other.2, rf);
    for c in 0..10 {
        assert_eq!(rf.iter().filter(|&&i| test.labels[i] == c).count(), 200);
    }
    assert!(data::stratified_indices(&test.labels, 10, 600, 600, 0).is_err());
}

#[test]
fn skewed_variant_is_90_10_and_the_oracle_is_exact() {
    let test = data::fashion_mnist_test().unwrap();
    let s = data::split_dataset(&test, 200, 200, data::SPLIT_SEED).unwrap();
    let k = data::skew_splits(s, 7);
    let a = &k.train.attribute.as_ref().unwrap().values;
    assert_eq!(a.len(), 6000);
    assert_eq!(
        a.iter().filter(|&&v| v == 1).count(),
        600,
        "exactly 10% minority"
    );
    let ev = &k.eval.attribute.as_ref().unwrap().values;
    assert_eq!(
        ev.iter().filter(|&&v| v == 1).count(),
        1000,
        "balanced evaluation pool"
    );
    for ds in [&k.train, &k.eval, &k.reference] {
        let got = data::inversion_oracle(&ds.images).unwrap();
        assert_eq!(
            &got,
            &ds.attribute.as_ref().unwrap().values,
            "oracle must recover every attribute"
        );
    }
    // All 10k test images, each both ways.
    let zeros = vec![0u8; test.len()];
    let ones = vec![1u8; test.len()];
    assert_eq!(
        data::inversion_oracle(&data::apply_inversion(&test.images, &zeros)).unwrap(),
        zeros
    );
    assert_eq!(
        data::inversion_oracle(&data::apply_inversion(&test.images, &ones)).unwrap(),
        ones
    );
    assert!(
        data::inversion_oracle(&Tensor::zeros([2, 2], (Kind::Float, tch::Device::Cpu))).is_err()
    );
}

#[test]
fn background_variant_is_80_15_5_and_its_oracle_is_exact() {
    use data::AttributeKind::Background;
    let test = data::fashion_mnist_test().unwrap();
    let s = data::split_dataset(&test, 200, 200, data::SPLIT_SEED).unwrap();
    let k = data::skew_splits_with(Background, s, 7);
    let count = |ds: &data::Dataset, v: u8| {
        let a = ds.attribute.as_ref().unwrap();
        assert_eq!(a.kind, Background);
        a.values.iter().filter(|&&x| x == v).count()
    };
    assert_eq!(
        (count(&k.train, 0), count(&k.train, 1), count(&k.train, 2)),
        (4800, 900, 300),
        "exactly 80 / 15 / 5 %"
    );
    assert_eq!(
        (count(&k.eval, 0), count(&k.eval, 1), count(&k.eval, 2)),
        (666, 667, 667),
        "uniform evaluation pool"
    );
    for ds in [&k.train, &k.eval, &k.reference] {
        assert_eq!(
            Background.oracle(&ds.images).unwrap(),
            ds.attribute.as_ref().unwrap().values,
            "oracle must recover every attribute"
        );
    }
    // All 10k test images at each level; the gray level keeps the object visible.
    for v in 0..3u8 {
        let vals = vec![v; test.len()];
        let x = Background.apply(&test.images, &vals);
        assert_eq!(Background.oracle(&x).unwrap(), vals, "level {v}");
        let lo = f64::try_from(x.min()).unwrap();
        let hi = f64::try_from(x.max()).unwrap();
        assert!((lo - data::BACKGROUND_LEVELS[v as usize]).abs() < 1e-6 && hi > 0.99);
    }
    // The three-valued generator of values: shares and determinism.
    let a = data::skewed_values(1000, &[0.8, 0.15, 0.05], 3);
    assert_eq!(a, data::skewed_values(1000, &[0.8, 0.15, 0.05], 3));
    assert_eq!(a.iter().filter(|&&v| v == 2).count(), 50);
    assert_eq!(
        data::skewed_values(10, &[0.9, 0.1], 5),
        data::skewed_attributes(10, 0.1, 5)
    );
    // Reference pools have enough of every value for a balanced set of 50 per class.
    for c in 0..10 {
        let idx = divrl::rl::setup::reference_indices(&k.reference, c, 50, true).unwrap();
        let a = &k.reference.attribute.as_ref().unwrap().values;
        let per: Vec<usize> = (0..3u8)
            .map(|v| idx.iter().filter(|&&i| a[i] == v).count())
            .collect();
        assert_eq!(per, vec![17, 17, 16]);
    }
    assert_eq!(divrl::rl::setup::balanced_counts(50, 2), vec![25, 25]);
    assert_eq!(divrl::rl::setup::balanced_counts(5, 3), vec![2, 2, 1]);
}

#[test]
fn image_folder_loader() {
    let dir = tempfile::tempdir().unwrap();
    for (ci, name) in ["cat", "dog"].iter().enumerate() {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        for j in 0..3u8 {
            let img = image::RgbImage::from_fn(6, 5, |x, y| {
                image::Rgb([x as u8 * 10, y as u8 * 20, ci as u8 * 100 + j])
            });
            img.save(d.join(format!("{j}.png"))).unwrap();
        }
    }
    std::fs::write(dir.path().join("dog").join("notes.txt"), b"ignored").unwrap();
    let ds = data::load_folder(dir.path(), 3, None).unwrap();
    assert_eq!(ds.class_names, vec!["cat", "dog"]);
    assert_eq!(ds.labels, vec![0, 0, 0, 1, 1, 1]);
    assert_eq!(ds.images.size(), vec![6, 3, 5, 6]);
    // pixel (x=2, y=1) of dog/1.png: R = 20, G = 20, B = 101
    let px: Vec<f32> = Vec::try_from(&ds.images.get(4).select(1, 1).select(1, 2)).unwrap();
    assert_eq!(
        px.iter()
            .map(|v| (v * 255.0).round() as u8)
            .collect::<Vec<_>>(),
        vec![20, 20, 101]
    );
    let grey = data::load_folder(dir.path(), 1, Some(4)).unwrap();
    assert_eq!(grey.images.size(), vec![6, 1, 4, 4]);
    // A corrupt image is an error, not a panic.
    std::fs::write(dir.path().join("cat").join("bad.png"), b"not a png").unwrap();
    assert!(data::load_folder(dir.path(), 3, None).is_err());
    assert!(data::load_folder(&dir.path().join("missing"), 3, None).is_err());
}

#[test]
fn npy_loader_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, shape: &[u64], vals: &[u8]| {
        let p = dir.path().join(name);
        let mut w = npyz::WriteOptions::<u8>::new()
            .default_dtype()
            .shape(shape)
            .writer(std::fs::File::create(&p).unwrap())
            .begin_nd()
            .unwrap();
        w.extend(vals.iter().copied()).unwrap();
        w.finish().unwrap();
        p
    };
    // NHWC, 2 images 2×2×3: value = 100·i + 10·channel + pixel
    let mut v = Vec::new();
    for i in 0..2u8 {
        for p in 0..4u8 {
            for c in 0..3u8 {
                v.push(100 * i + 10 * c + p);
            }
        }
    }
    let ip = write("imgs.npy", &[2, 2, 2, 3], &v);
    let lp = {
        let p = dir.path().join("labels.npy");
        let mut w = npyz::WriteOptions::<i64>::new()
            .default_dtype()
            .shape(&[2])
            .writer(std::fs::File::create(&p).unwrap())
            .begin_nd()
            .unwrap();
        w.extend([1i64, 0]).unwrap();
        w.finish().unwrap();
        p
    };
    let ds = data::load_npy(&ip, Some(&lp)).unwrap();
    assert_eq!(ds.images.size(), vec![2, 3, 2, 2]);
    assert_eq!(ds.labels, vec![1, 0]);
    let val = |i: i64, c: i64, y: i64, x: i64| {
        (ds.images.get(i).get(c).get(y).get(x).double_value(&[]) * 255.0).round() as u8
    };
    assert_eq!(val(1, 2, 1, 0), 100 + 20 + 2);
    let gp = write("grey.npy", &[3, 4, 4], &[7u8; 48]);
    let g = data::load_npy(&gp, None).unwrap();
    assert_eq!(g.images.size(), vec![3, 1, 4, 4]);
    let bad = write("bad.npy", &[2, 5, 5, 5], &[0u8; 250]);
    assert!(data::load_npy(&bad, None).is_err());
    std::fs::write(dir.path().join("junk.npy"), b"junk").unwrap();
    assert!(data::load_npy(&dir.path().join("junk.npy"), None).is_err());
    assert!(data::load_splits("nope:x").is_err());
}

#[test]
fn splitmix_is_stable() {
    // Pinned values: splits must not change between versions.
    let mut r = SplitMix64(0);
    assert_eq!(r.next_u64(), 0xe220a8397b1dcdaf);
    let mut v: Vec<usize> = (0..10).collect();
    SplitMix64(5).shuffle(&mut v);
    let mut s = v.clone();
    s.sort_unstable();
    assert_eq!(s, (0..10).collect::<Vec<_>>());
}
