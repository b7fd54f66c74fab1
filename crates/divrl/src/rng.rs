//! A small portable PRNG, so data splits and sampling noise are identical on every machine and
//! independent of libtorch's global generator (which concurrent users share).
use std::sync::Mutex;

use tch::{Device, Kind, Tensor};

/// Guards libtorch's process-wide generator during seeded initialisation.
static TORCH_SEED_LOCK: Mutex<()> = Mutex::new(());

/// Seeds libtorch's global generator and runs `init` (weight initialisation) while holding a
/// process-wide lock, so two threads initialising models at once (parallel tests, a library
/// user's worker threads) cannot interleave their draws: the same seed always gives the same
/// weights.
pub fn with_torch_seed<T>(seed: i64, init: impl FnOnce() -> T) -> T {
    with_torch_rng(|| {
        tch::manual_seed(seed);
        init()
    })
}

/// Runs `build` under the same lock, without seeding: for models built only to be overwritten
/// (loading weights, copying a frozen base). Their default initialisation still draws from
/// libtorch's global generator, and a draw in the middle of another thread's
/// [`with_torch_seed`] would change that thread's weights.
pub fn with_torch_rng<T>(build: impl FnOnce() -> T) -> T {
    let _guard = TORCH_SEED_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    build()
}

/// SplitMix64: a tiny, portable PRNG so splits are identical everywhere.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 11) as u128 * n as u128) >> 53) as usize
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal draws (Box–Muller), as f32.
    pub fn normals(&mut self, n: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(n + 1);
        while out.len() < n {
            let u1 = 1.0 - self.uniform(); // (0, 1]
            let u2 = self.uniform();
            let r = (-2.0 * u1.ln()).sqrt();
            let th = 2.0 * std::f64::consts::PI * u2;
            out.push((r * th.cos()) as f32);
            out.push((r * th.sin()) as f32);
        }
        out.truncate(n);
        out
    }

    /// A standard-normal tensor of `shape` on `device` (drawn on the CPU).
    pub fn randn(&mut self, shape: &[i64], device: Device) -> Tensor {
        let n: i64 = shape.iter().product();
        Tensor::from_slice(&self.normals(n.max(0) as usize))
            .view(shape)
            .to_kind(Kind::Float)
            .to_device(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn draw() -> Vec<f32> {
        Vec::<f32>::try_from(Tensor::randn([8], (Kind::Float, Device::Cpu))).unwrap()
    }

    /// A build under `with_torch_rng` on another thread waits for a seeded initialisation to
    /// finish, so the seeded draws are those of the seed alone. Without the lock the other
    /// thread's draw lands in the pause between the two seeded draws and changes the second.
    #[test]
    fn unseeded_builds_wait_for_a_seeded_initialisation() {
        let alone = with_torch_seed(5, || (draw(), draw()));
        let (started, wait) = mpsc::channel();
        let other = std::thread::spawn(move || {
            wait.recv().unwrap();
            with_torch_rng(draw)
        });
        let seeded = with_torch_seed(5, || {
            let first = draw();
            started.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(100));
            (first, draw())
        });
        other.join().unwrap();
        assert_eq!(seeded, alone);
    }
}
