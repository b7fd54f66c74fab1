//! The fine-tuning settings of `divrl demo` and `divrl experiment …`, in one place so they can be
//! tuned without touching the commands. Sizes were budgeted on the project's 2-core CPU
//! (RESULTS.md): one epoch (10 classes × M = 5 images, 10 DDIM steps at guidance 4, PPO on half
//! of the timesteps, all weights) took 21–56 s there with 2–4 other jobs on the cores, and one
//! evaluation of 200 images 47–85 s. The full demo took 651–742 s (10.8–12.4 min); the quick one
//! 157 s at load 2.5–6 but 12.6 min at load 10–14 (an epoch took 300 s then). On a quiet
//! machine an epoch takes 7–10 s, so the full demo has room for several times more epochs.
use std::path::PathBuf;

use super::config::FinetuneConfig;
use divrl_reward::RewardKind;

/// The policy-optimisation settings every preset shares: the paper's M = 5 and N = 50, DDIM with
/// 10 steps (eta 1) at guidance 4, full fine-tuning (LoRA on this small UNet's few attention
/// layers barely moved the policy in BENCHMARKS.md's runs), PPO with one inner epoch over
/// minibatches of 10 trajectories and half of each trajectory's timesteps.
fn common() -> FinetuneConfig {
    FinetuneConfig {
        base: PathBuf::from("models/fashion-mnist-base"),
        data: "fashion-mnist".into(),
        extractor: "small".into(),
        ref_per_class: 50,
        images_per_class: 5,
        reward: RewardKind::Mmd,
        guidance: 4.0,
        steps: 10,
        eta: 1.0,
        full_finetune: true,
        lr: 1e-4,
        clip_range: 1e-3,
        timestep_fraction: 0.5,
        inner_epochs: 1,
        train_batch_size: 10,
        checkpoint_every: 1,
        keep_checkpoints: 1,
        sample_every: 0,
        device: "auto".into(),
        ..FinetuneConfig::default()
    }
}

/// `divrl demo`: MMD fine-tuning at guidance 4 on the shipped base and ϕ. Full: 12 epochs with
/// held-out evaluations (20 images per class) at epochs 0, 6 and 12, budgeted for 15 minutes on
/// the 2-core CPU. Quick: 2 epochs, 10 evaluation images per class, budgeted for 3 minutes on an
/// idle 2-core CPU (an epoch of 40–50 s, three evaluations of 100 images).
pub fn demo(quick: bool) -> FinetuneConfig {
    let c = common();
    if quick {
        FinetuneConfig {
            out: PathBuf::from("runs/demo-quick"),
            epochs: 2,
            eval_every: 2,
            eval_per_class: 10,
            ..c
        }
    } else {
        FinetuneConfig {
            out: PathBuf::from("runs/demo"),
            epochs: 12,
            eval_every: 6,
            eval_per_class: 20,
            ..c
        }
    }
}

/// One fine-tuning cell of `divrl experiment guidance|debias|ablation`: `reward` at `guidance`.
/// Evaluation happens once, after training, outside the run (`eval_every = 0`), from the same
/// evaluation noise as the baseline cell. Full: 12 epochs and 20 evaluation images per class
/// (≈ 13 min a cell here); quick: 2 epochs and 10 (≈ 2 min).
pub fn experiment(reward: RewardKind, guidance: f64, quick: bool) -> FinetuneConfig {
    let c = common();
    FinetuneConfig {
        reward,
        guidance,
        epochs: if quick { 2 } else { 12 },
        eval_every: 0,
        eval_per_class: if quick { 10 } else { 20 },
        ..c
    }
}
