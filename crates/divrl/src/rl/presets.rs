//! The fine-tuning settings of `divrl demo` and `divrl experiment …`, in one place so they can be
//! tuned without touching the commands. One epoch (10 classes × M = 5 images, 10 DDIM steps at
//! guidance 4, PPO on half of 7 timesteps) takes 10–25 s on the project's 2-core CPU with one
//! other job beside it (RESULTS.md has the measured demo wall times).
use std::path::PathBuf;

use super::config::FinetuneConfig;
use divrl_reward::{MmdKernel, RewardKind};

pub use super::config::RL_BASE;

/// The policy-optimisation settings every preset shares: the paper's M = 5 and N = 50, DDIM with
/// 10 steps (eta 1) at guidance 4, LoRA rank 8 on every attention projection (base frozen), PPO
/// with one inner epoch over minibatches of 10 trajectories, half of each trajectory's first 7
/// transitions (the last 3, nearly deterministic, would dominate the gradient), clip range 1e-3,
/// lr 3e-3. These are the settings of BENCHMARKS.md's measured runs
/// (`bench/results/finetune/*.toml`): 20 epochs raised held-out Recall 0.117 → 0.19 and lowered
/// FID 38.9 → 35.1 (MMD); full fine-tuning and LoRA without skipping the last steps did not.
///
/// The base is [`RL_BASE`], the 687k-parameter model these settings were tuned and measured on. It
/// collapses at guidance 4 (held-out Recall 0.117). On the larger, longer-trained
/// `models/fashion-mnist-base` (Recall 0.238 at guidance 4) the same settings did not raise
/// Recall in ten runs (BENCHMARKS.md): [`diversity`] (and with it [`demo`]) changes them for
/// that base.
fn common() -> FinetuneConfig {
    FinetuneConfig {
        base: PathBuf::from(RL_BASE),
        data: "fashion-mnist".into(),
        extractor: "small".into(),
        ref_per_class: 50,
        images_per_class: 5,
        reward: RewardKind::Mmd,
        guidance: 4.0,
        steps: 10,
        eta: 1.0,
        full_finetune: false,
        lora_rank: 8,
        lora_alpha: 8.0,
        lr: 3e-3,
        clip_range: 1e-3,
        timestep_fraction: 0.5,
        skip_final_steps: 3,
        inner_epochs: 1,
        train_batch_size: 10,
        checkpoint_every: 1,
        keep_checkpoints: 1,
        sample_every: 0,
        device: "auto".into(),
        ..FinetuneConfig::default()
    }
}

/// `divrl demo`: one run of [`diversity`] (issue 12's setting on the 1.33M base, RL on top of
/// interval guidance), with held-out evaluations of the base before and of the moving average
/// after. Full: the preset's 20 epochs, evaluations at epochs 0 and 20 of 50 images per class at
/// 25 DDIM steps in ϕ = 8 × 8 pixels and in the FID-Inception space, with the pixel spread within
/// classes. Quick: 4 epochs of the quick preset (2 sets per class, N = 50) with 10 evaluation
/// images per class at the rollouts' 10 steps, a first look that shows the pipeline more than
/// the effect.
pub fn demo(quick: bool) -> FinetuneConfig {
    let d = diversity(quick);
    if quick {
        FinetuneConfig {
            out: PathBuf::from("runs/demo-quick"),
            epochs: 4,
            eval_every: 4,
            eval_per_class: 10,
            ..d
        }
    } else {
        FinetuneConfig {
            out: PathBuf::from("runs/demo"),
            eval_every: d.epochs,
            ..d
        }
    }
}

/// One fine-tuning cell of `divrl experiment guidance|debias|ablation`: `reward` at `guidance`.
/// Evaluation happens once, after training, outside the run (`eval_every = 0`), from the same
/// evaluation noise as the baseline cell. Full: 20 epochs and 20 evaluation images per class;
/// quick: 4 epochs and 10.
pub fn experiment(reward: RewardKind, guidance: f64, quick: bool) -> FinetuneConfig {
    let c = common();
    FinetuneConfig {
        reward,
        guidance,
        epochs: if quick { 4 } else { 20 },
        eval_every: 0,
        eval_per_class: if quick { 10 } else { 20 },
        ..c
    }
}

/// `divrl experiment diversity`: RL fine-tuning of the shipped 1.33M-parameter base
/// (`models/fashion-mnist-base`) at guidance 4 with issue 12's best setting measured over three
/// seeds (RESULTS.md, "Fourteenth session"; `results/exp-diversity/leads/r33-*`): ϕ = 8 × 8
/// pixels and the MMD reward with an RBF kernel at half the median reference distance, all 200
/// references of a class (N = 200), a weak KL anchor to the base (0.01), K = 10 sets of the
/// paper's M = 5 per class and epoch (500 trajectories), the moving average of the weights
/// (`policy_ema` 0.8) in place of the last iterate, the adapters on the first 7 of the 10 DDIM
/// steps only (the last 3 never train and run the frozen base), and guidance only inside the
/// noise interval (0.28, 5.42] (Kynkäänniemi et al. 2024) in rollouts and evaluation: RL on top
/// of the better training-free sampler. The rollouts use 10 DDIM steps; the evaluation samples
/// with 25 (`eval_steps`, the adapters acting at the same noise levels): at 10 steps every
/// sampler's images sit at Inception FID ≈ 91–100, where Inception Recall and Coverage barely
/// tell samplers apart, at 25 steps at 60–70. On 1,000 images per seed at 25 steps the 20-epoch
/// models beat the plain sampler in every seed on Recall and Coverage in pixel ϕ and in
/// Inception, at better FID and Precision at most 2 points lower in both spaces, close 21–39 %
/// of the within-class pixel spread's gap to real images, and beat interval guidance alone on
/// Recall at better FID in both spaces. The anchor is the Precision guard: without it (r32) Recall and
/// spread rose further but one seed of three lost 8 points of ϕ Precision at 20 epochs and the
/// policy kept drifting at 40; at 0.03 (r30) the spread closed 20 % of the gap, at 0.1 (the
/// preset before) 16–19 %; the GP-MI preset before that (ϕ = the classifier, K = 5) cost 10
/// Inception FID points.
///
/// The `base` cells are the base with interval guidance; pass
/// `--baseline "plain=guidance_interval = [0.0, 1e9]"` (guidance at every step) for the plain
/// sampler on the same noise. Evaluated on 50 images per class in ϕ and in the FID-Inception
/// space. Quick: 2 epochs, 2 sets, N = 50, 10 evaluation images per class at the rollouts' 10
/// steps and the classifier as the independent space.
pub fn diversity(quick: bool) -> FinetuneConfig {
    let c = common();
    FinetuneConfig {
        base: PathBuf::from("models/fashion-mnist-base"),
        extractor: "pixels".into(),
        reward: RewardKind::Mmd,
        mmd_kernel: MmdKernel::Rbf,
        sigma_scale: 0.5,
        ref_per_class: if quick { 50 } else { 200 },
        kl_coef: 0.01,
        policy_ema: 0.8,
        policy_steps: 7,
        guidance_interval: Some(DIVERSITY_INTERVAL),
        sets_per_class: if quick { 2 } else { 10 },
        epochs: if quick { 2 } else { 20 },
        eval_every: 0,
        eval_per_class: if quick { 10 } else { 50 },
        eval_steps: if quick { 0 } else { 25 },
        eval_independent: if quick { "small" } else { "inception" }.into(),
        ..c
    }
}

/// The guidance interval of [`diversity`], in σ = √((1 − ᾱ)/ᾱ): the interval baseline of
/// issue 12's tables (Inception Recall up in every seed at better FID on the 1.33M base).
pub const DIVERSITY_INTERVAL: [f64; 2] = [0.28, 5.42];

/// Base of `divrl experiment debias` on the inversion attribute (90/10 training pool): the 1.33M
/// base fine-tuned on the skewed pool for 9,000 steps (its model card has the recipe). Its own
/// balanced resampling costs +6.3 % Inception FID (RESULTS.md), under issue 13's 10 % line; the
/// 1,500-step `models/fashion-mnist-skewed-base` (+15…+21 %) and the 687k
/// `models/fashion-mnist-skewed-base-small` are kept.
pub const SKEWED_BASE: &str = "models/fashion-mnist-skewed-base-9000";
/// Base of `divrl experiment debias --attribute background` (80/15/5 training pool).
pub const BACKGROUND_BASE: &str = "models/fashion-mnist-background-base";

/// `divrl experiment debias`: fine-tune a base trained on a skewed attribute toward balanced
/// references (an equal share of every attribute value per class) at guidance 1, with ϕ = pixels
/// and the MMD reward with an RBF kernel at half the median reference distance (pixels + MMD is
/// the reward audit's best pair: the generated minority has the top marginal reward far above
/// chance), a KL penalty to the base policy, and the adapters acting on the first sampling steps
/// only (`policy_steps`, every one of them trained: `timestep_fraction` 1), so that the policy
/// chooses which image the base draws while the frozen base draws it, evaluated with the
/// attribute's exact oracle and the FID-Inception space as the independent one. Measured over
/// three seeds (RESULTS.md, issue 13):
/// - inversion: `policy_steps` 4, `kl_coef` 0.05, K = 20 sets of M = 5 per class and epoch with
///   the gradients of two minibatches per optimizer step (`grad_accum` 2: the steps of K = 10,
///   each on twice the trajectories), 25 epochs, and a moving average of the weights
///   (`policy_ema` 0.8) evaluated and exported in place of the last iterate; 100 evaluation
///   images per class: KL to uniform 0.41 → 0.010 / 0.014 / 0.004 (42.8 / 41.8 / 45.6 %
///   inverted) at Inception FID +1.7 / +5.3 / +3.8 %, and two later seeds 0.008 / 0.006 at
///   +3.2 / +3.0 %. The last iterate of K = 10 without the average reached 47–51 % at
///   +2.6 / +13.4 / +13.3 %; the average with K = 10, 37–43 %;
/// - background: `policy_steps` 3, `kl_coef` 0.1, K = 5, 20 epochs, the last iterate, 50
///   evaluation images per class: KL 0.53 → 0.010 / 0.013 / 0.039.
///
/// Quick: 2 epochs, 2 sets, 10 evaluation images per class, the classifier as the independent
/// space.
pub fn debias(quick: bool, attribute: crate::data::AttributeKind) -> FinetuneConfig {
    use crate::data::AttributeKind;
    // What both attributes share; each attribute's own fields are laid over it below.
    let shared = FinetuneConfig {
        balanced_reference: true,
        guidance: 1.0,
        extractor: "pixels".into(),
        reward: RewardKind::Mmd,
        mmd_kernel: MmdKernel::Rbf,
        sigma_scale: 0.5,
        timestep_fraction: 1.0,
        eval_every: 0,
        eval_independent: "inception".into(),
        ..common()
    };
    let full = match attribute {
        AttributeKind::Inversion => FinetuneConfig {
            base: PathBuf::from(SKEWED_BASE),
            data: "fashion-mnist-skewed".into(),
            policy_steps: 4,
            kl_coef: 0.05,
            sets_per_class: 20,
            grad_accum: 2,
            epochs: 25,
            policy_ema: 0.8,
            eval_per_class: 100,
            ..shared
        },
        AttributeKind::Background => FinetuneConfig {
            base: PathBuf::from(BACKGROUND_BASE),
            data: "fashion-mnist-background".into(),
            policy_steps: 3,
            kl_coef: 0.1,
            sets_per_class: 5,
            grad_accum: 1,
            epochs: 20,
            policy_ema: 0.0,
            eval_per_class: 50,
            ..shared
        },
    };
    if !quick {
        return full;
    }
    FinetuneConfig {
        sets_per_class: 2,
        grad_accum: 1,
        epochs: 2,
        eval_per_class: 10,
        eval_independent: "small".into(),
        ..full
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::AttributeKind;

    /// Every debias preset is a valid run (its `policy_steps` fit its steps), on the base and
    /// data set of its attribute, with the adapters on the first steps only.
    #[test]
    fn debias_presets_are_valid_runs_on_their_attributes_bases() {
        for quick in [false, true] {
            for (kind, base, data) in [
                (
                    AttributeKind::Inversion,
                    SKEWED_BASE,
                    "fashion-mnist-skewed",
                ),
                (
                    AttributeKind::Background,
                    BACKGROUND_BASE,
                    "fashion-mnist-background",
                ),
            ] {
                let c = debias(quick, kind);
                c.validate().unwrap();
                assert_eq!((c.base.to_str().unwrap(), c.data.as_str()), (base, data));
                assert!(c.policy_steps > 0 && c.policy_steps < c.steps);
                assert_eq!(c.trained_steps(c.steps), c.policy_steps);
                assert!(c.balanced_reference && c.kl_coef > 0.0);
            }
        }
    }

    /// The diversity preset is a valid run on the 1.33M base whose independent space is not its
    /// ϕ, and every step the adapters act on trains (the rest run the frozen base).
    #[test]
    fn diversity_presets_are_valid_and_evaluate_outside_their_phi() {
        for quick in [false, true] {
            let c = diversity(quick);
            c.validate().unwrap();
            assert_eq!(c.base, PathBuf::from("models/fashion-mnist-base"));
            assert_ne!(c.extractor, c.eval_independent);
            assert!(!c.eval_independent.is_empty());
            assert_eq!(c.trained_steps(c.steps), c.policy_steps);
            assert_eq!(c.guidance_interval, Some(DIVERSITY_INTERVAL));
            assert!(c.sampler_config().guidance_interval.is_some());
        }
        assert_eq!(diversity(false).ref_per_class, 200);
        // The demo is one run of the preset, evaluated before and after (epochs 0 and 20).
        let (d, p) = (demo(false), diversity(false));
        d.validate().unwrap();
        assert_eq!((d.eval_every, d.epochs), (p.epochs, p.epochs));
        assert_eq!(
            (
                d.base,
                d.extractor,
                d.eval_independent,
                d.eval_steps,
                d.guidance_interval
            ),
            (
                p.base,
                p.extractor,
                p.eval_independent,
                p.eval_steps,
                p.guidance_interval
            )
        );
        let q = demo(true);
        q.validate().unwrap();
        assert_eq!((q.epochs, q.eval_every), (4, 4));
        // Trained on 10-step rollouts, evaluated with 25 steps.
        assert_eq!(
            (diversity(false).steps, diversity(false).eval_steps),
            (10, 25)
        );
    }
}
