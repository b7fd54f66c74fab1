//! Benchmarks of the workloads (see BENCHMARKS.md for the numbers and machine):
//! individual rewards for M = 5, N = 50, D = 2048, and selection of 10,000 sets × C(10, 5)
//! with N = 50, D = 2048. The same workloads in plain numpy: bench/reward_numpy.py.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use divrl_reward::select::{select_sets, Criterion as Crit, Method};
use divrl_reward::{DiversityReward, Features, RewardKind, RewardSpec};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// Inception-like features: non-negative (post-ReLU average pool), mean ≈ 0.4.
fn features(rows: usize, dim: usize, seed: u64) -> Features {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data = (0..rows * dim)
        .map(|_| {
            let z: f64 = StandardNormal.sample(&mut rng);
            (0.4 + 0.3 * z).max(0.0)
        })
        .collect();
    Features::new("bench", rows, dim, data).unwrap()
}

const KINDS: [RewardKind; 3] = [RewardKind::Mmd, RewardKind::GpMi, RewardKind::Recall];

fn individual(c: &mut Criterion) {
    let reference = features(50, 2048, 1);
    let generated = features(5, 2048, 2);
    let mut group = c.benchmark_group("individual_M5_N50_D2048");
    for kind in KINDS {
        let reward = DiversityReward::new(&RewardSpec::new(kind), reference.clone()).unwrap();
        group.bench_function(BenchmarkId::from_parameter(kind), |b| {
            b.iter(|| reward.evaluate(&generated).unwrap())
        });
    }
    group.finish();
    // Building the reference cache (done once per condition in the RL loop).
    let mut group = c.benchmark_group("reference_cache_N50_D2048");
    for kind in KINDS {
        let spec = RewardSpec::new(kind);
        group.bench_function(BenchmarkId::from_parameter(kind), |b| {
            b.iter(|| DiversityReward::new(&spec, reference.clone()).unwrap())
        });
    }
    group.finish();
}

fn selection(c: &mut Criterion) {
    let reference = features(50, 2048, 3);
    let candidates = features(10_000 * 10, 2048, 4);
    let mut group = c.benchmark_group("select_10000x_C10_5_N50_D2048");
    group.sample_size(10);
    for kind in KINDS {
        let reward = DiversityReward::new(&RewardSpec::new(kind), reference.clone()).unwrap();
        group.bench_function(BenchmarkId::from_parameter(kind), |b| {
            b.iter(|| {
                select_sets(&reward, &candidates, 10, 5, Crit::Max, Method::Exhaustive).unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, individual, selection);
criterion_main!(benches);
