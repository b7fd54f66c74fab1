//! Evaluation with the shipped Fashion-MNIST classifier as ϕ: two halves of real data score as
//! the same distribution; a collapsed set (one image repeated) has near-zero recall and coverage.
use divrl::data::SplitMix64;
use divrl::eval::{evaluate, AttributeReport, EvalOptions};
use divrl::features::{default_classifier_dir, extract, Extractor, SmallExtractor};
use tch::{Device, Tensor};

fn halves(n: usize) -> (Tensor, Tensor, Tensor) {
    let test = divrl::data::fashion_mnist_test().unwrap();
    let mut idx: Vec<usize> = (0..test.len()).collect();
    SplitMix64(7).shuffle(&mut idx);
    let a = test.subset(&idx[..n]).images;
    let b = test.subset(&idx[n..2 * n]).images;
    let c = test.subset(&idx[2 * n..3 * n]).images;
    (a, b, c)
}

#[test]
fn real_halves_match_and_a_collapsed_set_does_not() {
    let ext = SmallExtractor::load(&default_classifier_dir(), Device::Cpu).unwrap();
    let (a, b, c) = halves(1000);
    let fa = extract(&ext, &a, 0, false).unwrap();
    let fb = extract(&ext, &b, 0, false).unwrap();
    let fc = extract(&ext, &c, 0, false).unwrap();
    let opts = EvalOptions::default();
    let real = evaluate(
        "small",
        &fa.features,
        &fb.features,
        fa.logits.as_ref(),
        None,
        opts,
    )
    .unwrap();
    // Collapsed: the first image of `a`, 1000 times.
    let one = a
        .narrow(0, 0, 1)
        .expand([1000, 1, 28, 28], false)
        .contiguous();
    let fo = extract(&ext, &one, 0, false).unwrap();
    let col = evaluate(
        "small",
        &fo.features,
        &fb.features,
        fo.logits.as_ref(),
        None,
        opts,
    )
    .unwrap();
    // A half-collapsed set: only three classes of real images.
    let test = divrl::data::fashion_mnist_test().unwrap();
    let few: Vec<usize> = (0..test.len())
        .filter(|&i| test.labels[i] < 3)
        .take(1000)
        .collect();
    let ff = extract(&ext, &test.subset(&few).images, 0, false).unwrap();
    let part = evaluate("small", &ff.features, &fb.features, None, None, opts).unwrap();
    eprintln!("real {real:?}\ncollapsed {col:?}\nthree classes {part:?}");

    // Two real halves: FID near zero relative to real vs. three classes; P, R ≈ 0.7–0.9 (k = 3
    // on equal-size samples of one distribution), density ≈ 1, coverage ≈ 1 − 2⁻³.
    assert!(
        real.fid < 0.05 * part.fid,
        "real-halves FID {} vs three-class FID {}",
        real.fid,
        part.fid
    );
    assert!(real.fid < 0.05 * col.fid);
    for (name, v) in [("precision", real.precision), ("recall", real.recall)] {
        assert!((0.65..0.95).contains(&v), "{name} {v}");
    }
    assert!(
        (0.8..1.2).contains(&real.density),
        "density {}",
        real.density
    );
    assert!(
        (0.78..0.95).contains(&real.coverage),
        "coverage {}",
        real.coverage
    );
    // The IS of real Fashion-MNIST under a ≥90%-accurate 10-class classifier is high (≤ 10).
    let is = real.inception_score.unwrap();
    assert!((6.0..10.0).contains(&is), "IS {is}");
    // A third real sample agrees with the first two.
    let real2 = evaluate("small", &fc.features, &fb.features, None, None, opts).unwrap();
    assert!((real2.fid - real.fid).abs() < 0.5 * real.fid.max(real2.fid) + 1e-9);

    assert!(col.recall < 0.01, "collapsed recall {}", col.recall);
    assert!(col.coverage < 0.01, "collapsed coverage {}", col.coverage);
    assert!(col.inception_score.unwrap() < 1.01);
    // Three of ten classes: clearly lower recall and coverage than a real sample.
    assert!(
        part.recall < real.recall - 0.2,
        "three-class recall {}",
        part.recall
    );
    assert!(
        part.coverage < real.coverage - 0.3,
        "three-class coverage {}",
        part.coverage
    );
}

#[test]
fn attribute_histograms() {
    let a = AttributeReport::new("t", vec!["x".into(), "y".into()], &[0, 0, 1, 1]).unwrap();
    assert_eq!(a.counts, vec![2, 2]);
    assert!(a.kl_to_uniform.abs() < 1e-12);
    let b = AttributeReport::new("t", vec!["x".into(), "y".into()], &[0, 0, 0, 0]).unwrap();
    assert!((b.kl_to_uniform - 2f64.ln()).abs() < 1e-12);
    assert!(AttributeReport::new("t", vec!["x".into()], &[1]).is_err());
    // The inversion oracle on the skewed pools: the training pool is 10% inverted.
    let s = divrl::data::skew_splits(
        divrl::data::fashion_mnist_splits().unwrap(),
        divrl::data::SPLIT_SEED,
    );
    let labels: Vec<usize> = divrl::data::inversion_oracle(&s.eval.images)
        .unwrap()
        .into_iter()
        .map(usize::from)
        .collect();
    let r = AttributeReport::new(
        "inversion",
        vec!["normal".into(), "inverted".into()],
        &labels,
    )
    .unwrap();
    assert_eq!(r.counts, vec![1000, 1000]);
}

#[test]
fn the_shipped_classifier_is_accurate() {
    let ext = SmallExtractor::load(&default_classifier_dir(), Device::Cpu).unwrap();
    let test = divrl::data::fashion_mnist_test().unwrap();
    let acc =
        divrl::models::classifier::accuracy(&ext.model.net, &test, Device::Cpu, 1000).unwrap();
    assert!(acc >= 0.90, "held-out accuracy {acc}");
    assert_eq!(ext.dim(), 128);
}
