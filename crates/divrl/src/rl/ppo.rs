//! The clipped importance-sampling objective of DDPO / PPO over one trajectory step.
//!
//! With ratio ρ = exp(log π_θ(a|s) − log π_θ_old(a|s)) and advantage A, the loss is
//! `mean(max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)))` (the gradient of `−A·ρ` is the estimator of the
//! paper's eq. 20 for one step).
use tch::{Kind, Tensor};

/// The loss (differentiable) and its diagnostics.
#[derive(Debug)]
pub struct PpoTerms {
    pub loss: Tensor,
    /// `0.5 · mean((log π − log π_old)²)` (DDPO's estimate).
    pub approx_kl: f64,
    /// Share of samples whose ratio left `[1−ε, 1+ε]`.
    pub clip_fraction: f64,
    /// `max |ρ − 1|`.
    pub max_ratio_dev: f64,
}

/// `log_prob`, `old_log_prob`, `advantages`: `[B]`.
pub fn clipped_loss(
    log_prob: &Tensor,
    old_log_prob: &Tensor,
    advantages: &Tensor,
    clip_range: f64,
) -> PpoTerms {
    let diff = log_prob - old_log_prob;
    let ratio = diff.exp();
    let unclipped = -advantages * &ratio;
    let clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range);
    let loss = unclipped.maximum(&clipped).mean(Kind::Float);
    let (approx_kl, clip_fraction, max_ratio_dev) = tch::no_grad(|| {
        let dev = (&ratio - 1.0).abs();
        (
            (diff.square().mean(Kind::Float) * 0.5).double_value(&[]),
            dev.gt(clip_range)
                .to_kind(Kind::Float)
                .mean(Kind::Float)
                .double_value(&[]),
            dev.max().double_value(&[]),
        )
    });
    PpoTerms {
        loss,
        approx_kl,
        clip_fraction,
        max_ratio_dev,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratio_one_gives_minus_mean_advantage_and_its_gradient() {
        let lp = Tensor::from_slice(&[-1.0f32, -2.0, -3.0]).set_requires_grad(true);
        let adv = Tensor::from_slice(&[1.0f32, -2.0, 0.5]);
        let t = clipped_loss(&lp, &lp.detach(), &adv, 1e-4);
        assert!((t.loss.double_value(&[]) - (0.5 / 3.0)).abs() < 1e-6);
        assert_eq!(t.max_ratio_dev, 0.0);
        assert_eq!(t.clip_fraction, 0.0);
        t.loss.backward();
        let g: Vec<f32> = Vec::try_from(&lp.grad()).unwrap();
        // d/dlp of −A·exp(lp − old) at lp = old is −A / B.
        for (gi, a) in g.iter().zip([1.0f32, -2.0, 0.5]) {
            assert!((gi + a / 3.0).abs() < 1e-6);
        }
    }

    #[test]
    fn clipping_stops_the_gradient_outside_the_trust_region() {
        // Positive advantage, ratio far above 1 + ε: the clipped term wins, no gradient.
        let lp = Tensor::from_slice(&[0.5f32]).set_requires_grad(true);
        let old = Tensor::from_slice(&[0.0f32]);
        let adv = Tensor::from_slice(&[1.0f32]);
        let t = clipped_loss(&lp, &old, &adv, 0.1);
        assert_eq!(t.clip_fraction, 1.0);
        t.loss.backward();
        assert_eq!(lp.grad().double_value(&[0]), 0.0);
    }
}
