//! Property-driven fuzzing (issue 15): the feature readers on arbitrary and on mutated valid
//! bytes, and the reward, selection and metric functions over their whole parameter space,
//! including the values a hostile user tried. Every call must return either an error or a
//! finite result; a panic fails the test. Bounded: a few seconds in release mode.

use std::path::Path;

use divrl_reward::io::{read_array, read_features, write_npy};
use divrl_reward::metrics::{fid, inception_score, prdc};
use divrl_reward::select::{select, Criterion, Method};
use divrl_reward::{DiversityReward, Features, MmdKernel, RewardKind, RewardSpec};
use proptest::prelude::*;

/// Writes `bytes` as `name` in a fresh temp folder and reads it back as an array and as features.
fn read_both(name: &str, bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    check_read(&p);
}

fn check_read(p: &Path) {
    if let Ok(a) = read_array(p) {
        let n = a.shape.iter().try_fold(1usize, |x, &d| x.checked_mul(d));
        assert_eq!(
            n,
            Some(a.data.len()),
            "shape {:?} vs {} values",
            a.shape,
            a.data.len()
        );
    }
    match read_features(p) {
        Ok(f) => {
            assert!(f.as_slice().iter().all(|v| v.is_finite()));
            assert_eq!(f.rows() * f.dim(), f.as_slice().len());
            // Touch every row.
            let _ = f.sq_norms();
        }
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
    }
}

/// A valid `.npy` (f32 or f64) of `shape`.
fn npy_bytes(shape: &[usize], f32_out: bool, seed: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("a.npy");
    let n: usize = shape.iter().product();
    let data: Vec<f64> = (0..n)
        .map(|i| ((i as u64 ^ seed) % 97) as f64 - 48.0)
        .collect();
    write_npy(&p, shape, &data, f32_out).unwrap();
    std::fs::read(p).unwrap()
}

/// A valid `.safetensors` with one f32 tensor of `shape`.
fn safetensors_bytes(shape: &[usize]) -> Vec<u8> {
    let n: usize = shape.iter().product();
    let data: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.to_vec(), &data)
        .unwrap();
    safetensors::serialize([("x", view)], None).unwrap()
}

#[derive(Debug, Clone)]
enum Mutation {
    Truncate(usize),
    Flip(usize, u8),
    Insert(usize, Vec<u8>),
    Overwrite(usize, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), prop::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Overwrite(i, b)),
    ]
}

fn mutate(mut bytes: Vec<u8>, muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let len = bytes.len().max(1);
        match m {
            Mutation::Truncate(i) => bytes.truncate(i % len),
            Mutation::Flip(i, b) => {
                if !bytes.is_empty() {
                    bytes[i % len] ^= b | 1;
                }
            }
            Mutation::Insert(i, b) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Overwrite(i, b) => {
                for (k, v) in b.iter().enumerate() {
                    let at = (i % len) + k;
                    if at < bytes.len() {
                        bytes[at] = *v;
                    }
                }
            }
        }
    }
    bytes
}

/// A `.npy` header claiming `shape` for `dtype`, followed by `body`.
fn npy_with_header(dtype: &str, shape: &str, body: &[u8]) -> Vec<u8> {
    let dict = format!("{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}");
    let mut header = dict.into_bytes();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    out
}

#[test]
fn hostile_npy_headers_are_errors() {
    // Element counts that wrap in u64 or usize, or that the file cannot hold.
    for shape in [
        "(4294967296, 4294967296)",
        "(18446744073709551615, 2)",
        "(9223372036854775808, 2)",
        "(1000000000000, 64)",
        "(3, 0)",
        "(0, 3)",
        "(2,)",
        "()",
    ] {
        for dtype in ["<f4", "<f8", "|u1", "<i8", "|b1"] {
            read_both("h.npy", &npy_with_header(dtype, shape, &[0u8; 16]));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_readers(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        read_both("a.npy", &bytes);
        read_both("a.safetensors", &bytes);
        // The magic numbers first, so that parsing goes past them.
        let mut npy = b"\x93NUMPY\x01\x00".to_vec();
        npy.extend_from_slice(&bytes);
        read_both("b.npy", &npy);
        let mut st = (bytes.len() as u64 / 2).to_le_bytes().to_vec();
        st.extend_from_slice(&bytes);
        read_both("b.safetensors", &st);
    }

    #[test]
    fn mutated_valid_files_never_panic_the_readers(
        rows in 0usize..6,
        dim in 0usize..5,
        f32_out in any::<bool>(),
        muts in prop::collection::vec(mutation(), 1..4),
    ) {
        read_both("m.npy", &mutate(npy_bytes(&[rows, dim], f32_out, 7), &muts));
        read_both("m.safetensors", &mutate(safetensors_bytes(&[rows, dim]), &muts));
    }
}

/// Feature values from tiny to huge, both signs.
fn feature_value() -> impl Strategy<Value = f64> {
    prop_oneof![
        -3.0f64..3.0,
        (-300i32..300, any::<bool>()).prop_map(|(e, neg)| if neg {
            -(10f64.powi(e))
        } else {
            10f64.powi(e)
        }),
        Just(0.0),
        Just(f64::MAX),
        Just(-f64::MAX),
        Just(f64::MIN_POSITIVE),
    ]
}

fn features(rows: std::ops::Range<usize>, dim: usize) -> impl Strategy<Value = Features> {
    rows.prop_flat_map(move |r| {
        prop::collection::vec(feature_value(), r * dim)
            .prop_map(move |d| Features::new("fuzz", r, dim, d).unwrap())
    })
}

/// Parameters from the documented ranges, their edges and far beyond.
fn positive_param() -> impl Strategy<Value = Option<f64>> {
    prop_oneof![
        Just(None),
        (-320i32..310).prop_map(|e| Some(10f64.powi(e))),
        Just(Some(0.0)),
        Just(Some(-1.0)),
        Just(Some(f64::MAX)),
        Just(Some(f64::INFINITY)),
        Just(Some(f64::NAN)),
    ]
}

fn spec() -> impl Strategy<Value = RewardSpec> {
    (
        (
            prop_oneof![
                Just(RewardKind::Mmd),
                Just(RewardKind::GpMi),
                Just(RewardKind::Recall)
            ],
            prop_oneof![
                Just(None),
                (0u32..8).prop_map(Some),
                Just(Some(1000)),
                Just(Some(i32::MAX as u32)),
                Just(Some(u32::MAX)),
                any::<u32>().prop_map(Some),
            ],
            positive_param(),
            positive_param(),
            positive_param(),
            prop_oneof![
                Just(1e-6),
                Just(0.0),
                Just(1e308),
                Just(-1.0),
                Just(f64::NAN),
                (-12i32..3).prop_map(|e| 10f64.powi(e))
            ],
            prop_oneof![
                0usize..8,
                Just(usize::MAX),
                Just(usize::MAX - 1),
                Just(usize::MAX / 2 + 1),
            ],
        ),
        (
            prop_oneof![
                Just(1.0),
                Just(2.0),
                Just(0.0),
                Just(-1.0),
                Just(f64::NAN),
                Just(f64::INFINITY),
                (-160i32..160).prop_map(|e| 10f64.powi(e))
            ],
            prop_oneof![Just(MmdKernel::Polynomial), Just(MmdKernel::Rbf)],
        ),
    )
        .prop_map(
            |((kind, degree, gamma, coef0, sigma, jitter, k), (sigma_scale, mmd_kernel))| {
                RewardSpec {
                    kind,
                    degree,
                    gamma,
                    coef0,
                    sigma,
                    sigma_scale,
                    mmd_kernel,
                    jitter,
                    k,
                }
            },
        )
}

fn finite_or_err<T: std::fmt::Debug>(r: divrl_reward::Result<T>, finite: impl Fn(&T) -> bool) {
    match r {
        Ok(v) => assert!(finite(&v), "non-finite result {v:?}"),
        Err(e) => assert!(!e.to_string().contains('\n'), "{e}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn rewards_and_selection_are_finite_or_errors(
        s in spec(),
        reference in features(0..7, 3),
        generated in features(0..7, 3),
        size in 0usize..8,
        greedy in any::<bool>(),
        min in any::<bool>(),
    ) {
        let Ok(reward) = DiversityReward::new(&s, reference) else { return Ok(()); };
        finite_or_err(reward.set_reward(&generated), |v| v.is_finite());
        finite_or_err(reward.evaluate(&generated), |o| {
            o.set_reward.is_finite() && o.individual.iter().all(|v| v.is_finite())
        });
        let method = if greedy { Method::Greedy } else { Method::Exhaustive };
        let criterion = if min { Criterion::Min } else { Criterion::Max };
        finite_or_err(select(&reward, &generated, size, criterion, method), |sel| {
            sel.reward.is_finite() && sel.subset.len() == size
        });
    }

    #[test]
    fn metrics_are_finite_or_errors(
        generated in features(0..9, 2),
        reference in features(0..9, 2),
        k in prop_oneof![0usize..10, Just(usize::MAX)],
        splits in prop_oneof![0usize..10, Just(usize::MAX)],
    ) {
        finite_or_err(fid(&generated, &reference), |v| v.is_finite() && *v >= 0.0);
        finite_or_err(prdc(&generated, &reference, k), |p| {
            [p.precision, p.recall, p.density, p.coverage].iter().all(|v| v.is_finite())
        });
        finite_or_err(inception_score(&generated, splits), |(m, s)| m.is_finite() && s.is_finite());
    }
}
