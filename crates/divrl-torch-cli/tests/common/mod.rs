//! Helpers shared by the CLI integration tests: `mod common;` in each test file.
// Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The binary under test: `divrl-torch`, which knows every verb (the `divrl` command hands it
/// all but the maths verbs; crates/divrl-cli/tests checks that hand-over).
pub fn divrl() -> Command {
    Command::new(env!("CARGO_BIN_EXE_divrl-torch"))
}

/// Runs `divrl args…`: (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out = divrl().args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `cmd`, asserts that it succeeded and returns (stdout, stderr).
pub fn run_ok(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "failed: {err}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), err)
}

/// Runs `cmd` and asserts divrl's error contract: exit code 2, nothing on stdout, no panic, and
/// exactly one `divrl: error: …` line on stderr, its last line. Returns that line.
pub fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "expected exit 2: {err}");
    assert!(stdout.is_empty(), "stdout: {stdout}");
    assert!(!err.contains("panicked"), "{err}");
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("divrl: error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert_eq!(err.lines().last(), Some(errors[0]), "{err}");
    errors[0].to_string()
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes `data` as a `.npy` array of `shape`.
pub fn write_npy<T: npyz::AutoSerialize + Copy>(path: &Path, shape: &[u64], data: &[T]) {
    use npyz::WriterBuilder;
    let mut w = npyz::WriteOptions::<T>::new()
        .default_dtype()
        .shape(shape)
        .writer(std::fs::File::create(path).unwrap())
        .begin_nd()
        .unwrap();
    w.extend(data.iter().copied()).unwrap();
    w.finish().unwrap();
}

/// `n` 8×8 uint8 images, pixel `i` of them all being `pixel(i)`, with labels `k % 3`, as x.npy
/// and y.npy (int64) in `dir`. Returns the data spec `npy:X,Y`.
pub fn write_images(dir: &Path, n: usize, pixel: impl Fn(usize) -> u8) -> String {
    let x = dir.join("x.npy");
    write_npy(
        &x,
        &[n as u64, 8, 8],
        &(0..n * 64).map(pixel).collect::<Vec<_>>(),
    );
    let y = dir.join("y.npy");
    write_npy(
        &y,
        &[n as u64],
        &(0..n as i64).map(|k| k % 3).collect::<Vec<_>>(),
    );
    format!("npy:{},{}", x.display(), y.display())
}

/// `n` 8×8 images in 3 classes (class c: brightness pattern shifted by c); see `write_images`.
pub fn write_tiny_data(dir: &Path, n: usize) -> String {
    write_images(dir, n, |i| (((i / 64) % 3) * 60 + (i * 37) % 120) as u8)
}

/// The `[model]` table of a tiny class-conditional UNet for 8×8 grey images in 3 classes.
pub const TINY_MODEL: &str = r#"
[model]
in_channels = 1
image_size = 8
base_channels = 8
channel_mult = [1, 2]
num_res_blocks = 1
attn_levels = [1]
num_heads = 2
num_classes = 3
groups = 4
"#;

/// The base config of the fine-tuning tests: `TINY_MODEL`, batches of 8, no samples or
/// checkpoints while training.
pub fn tiny_base_toml() -> String {
    format!(
        "{TINY_MODEL}
[train]
batch_size = 8
warmup_steps = 1
sample_every = 0
checkpoint_every = 0
log_every = 1
"
    )
}

/// Trains the tiny base (`tiny_base_toml`) for 3 steps on `data` into `d`/base.
pub fn tiny_base(d: &Path, data: &str) -> PathBuf {
    let base_cfg = d.join("base.toml");
    std::fs::write(&base_cfg, tiny_base_toml()).unwrap();
    let base = d.join("base");
    run_ok(
        divrl()
            .args(["train-base", "--out", s(&base)])
            .args(["--config", s(&base_cfg), "--data", data, "--steps", "3"])
            .args(["--device", "cpu", "--no-progress"]),
    );
    base
}

/// The tensors of a float32 `.safetensors` file, sorted by name.
pub fn f32_tensors(p: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| {
            let d = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (n, d)
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}
