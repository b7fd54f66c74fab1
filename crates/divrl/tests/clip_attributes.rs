//! CLIP zero-shot attribute histograms (ITI-GEN's evaluation) on the tiny random CLIP of
//! fixtures/clip/tiny (real CLIP weights are not obtainable here): the batched histogram and its
//! KL against a brute-force cosine-similarity argmax in f64.
use divrl::eval::{clip_attribute_report, ClipAttribute};
use divrl::models::clip::load_clip;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

fn tiny() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip/tiny")
}

fn rows(t: &Tensor) -> Vec<Vec<f64>> {
    let t = t.to_kind(Kind::Double);
    (0..t.size()[0])
        .map(|i| Vec::<f64>::try_from(&t.get(i)).unwrap())
        .collect()
}

#[test]
fn histogram_is_the_argmax_of_cosine_similarity() {
    tch::manual_seed(7);
    let clip = load_clip(&tiny(), None, Device::Cpu).unwrap();
    // Noise, grey levels, random flat colours and half-and-half images: varied embeddings.
    let mut parts = vec![Tensor::rand([30, 3, 32, 32], (Kind::Float, Device::Cpu))];
    for v in [0.0, 0.3, 0.7, 1.0] {
        parts.push(Tensor::full([1, 3, 32, 32], v, (Kind::Float, Device::Cpu)));
    }
    parts.push(
        Tensor::rand([10, 3, 1, 1], (Kind::Float, Device::Cpu)).expand([10, 3, 32, 32], false),
    );
    let halves = Tensor::zeros([5, 3, 32, 32], (Kind::Float, Device::Cpu));
    let _ = halves.narrow(3, 0, 16).fill_(1.0);
    parts.push(halves * Tensor::rand([5, 3, 1, 1], (Kind::Float, Device::Cpu)));
    let images = Tensor::cat(&parts, 0);
    let n = images.size()[0] as usize;
    // With random weights most prompt sets send every image to one prompt; these three do not,
    // so the argmax bookkeeping is actually exercised.
    let attr = ClipAttribute {
        name: "colour".into(),
        prompts: vec!["red".into(), "green".into(), "blue".into()],
    };
    // Batches of 7 (not a divisor of 49) exercise the chunking.
    let r = clip_attribute_report(&clip, &images, &attr, 7).unwrap();
    assert_eq!(r.source, "clip:colour");
    assert_eq!(r.names, attr.prompts);

    // Brute force: argmax_j cos(image_i, prompt_j) in f64, one image at a time.
    let txt = rows(&clip.encode_texts(&attr.prompts).unwrap());
    let mut counts = vec![0u64; 3];
    for i in 0..n {
        let img = rows(&clip.encode_images(&images.narrow(0, i as i64, 1)).unwrap())
            .pop()
            .unwrap();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let cos: Vec<f64> = txt
            .iter()
            .map(|t| img.iter().zip(t).map(|(a, b)| a * b).sum::<f64>() / (norm(&img) * norm(t)))
            .collect();
        let best = (0..3).max_by(|&a, &b| cos[a].total_cmp(&cos[b])).unwrap();
        counts[best] += 1;
    }
    eprintln!("counts {:?} (brute force {counts:?})", r.counts);
    assert_eq!(r.counts, counts);
    assert!(
        counts.iter().filter(|&&c| c > 0).count() >= 2,
        "degenerate histogram {counts:?}"
    );
    assert_eq!(r.counts.iter().sum::<u64>(), n as u64);
    let kl: f64 = counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f64 / n as f64;
            p * (3.0 * p).ln()
        })
        .sum();
    assert!((r.kl_to_uniform - kl).abs() < 1e-12);
    // The same images in one batch give the same histogram.
    assert_eq!(
        clip_attribute_report(&clip, &images, &attr, 64)
            .unwrap()
            .counts,
        r.counts
    );
}

#[test]
fn prompt_specs() {
    let a = ClipAttribute::parse("gender=a photo of a man, a photo of a woman").unwrap();
    assert_eq!(a.name, "gender");
    assert_eq!(a.prompts, vec!["a photo of a man", "a photo of a woman"]);
    let b = ClipAttribute::parse("a photo of a man,a photo of a woman").unwrap();
    assert_eq!(b.name, "clip");
    assert_eq!(b.prompts.len(), 2);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("age.txt");
    std::fs::write(
        &f,
        "# ages\na photo of a child\n\na photo of an adult\na photo of an old person\n",
    )
    .unwrap();
    let c = ClipAttribute::parse(&format!("age={}", f.display())).unwrap();
    assert_eq!(c.name, "age");
    assert_eq!(c.prompts.len(), 3);
    let d = ClipAttribute::parse(f.to_str().unwrap()).unwrap();
    assert_eq!(d.prompts, c.prompts);
    assert!(ClipAttribute::parse("gender=only one prompt").is_err());
    assert!(ClipAttribute::parse("").is_err());
}
