//! UNet and LoRA: gradient coverage, zero-initialised adapters, merging.
mod common;

use common::{max_abs_diff, tiny_cfg, tiny_unet};
use divrl::models::unet::{UNet, UNetConfig};
use divrl::nn::lora::LoraConfig;
use tch::{nn::VarStore, Device, Kind, Tensor};

fn inputs() -> (Tensor, Tensor, Tensor) {
    tch::manual_seed(9);
    let x = Tensor::randn([4, 1, 8, 8], (Kind::Float, Device::Cpu));
    let t = Tensor::from_slice(&[0i64, 10, 500, 999]);
    let y = Tensor::from_slice(&[0i64, 1, 2, 3]); // 3 = null class
    (x, t, y)
}

#[test]
fn every_trainable_parameter_gets_a_gradient() {
    let (vs, unet) = tiny_unet(0);
    let (x, t, y) = inputs();
    let out = unet.forward_t(&x, &t, &y, true);
    assert_eq!(out.size(), x.size());
    out.square().mean(Kind::Float).backward();
    let mut vars: Vec<_> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        vars.len() > 40,
        "expected a full UNet, got {} tensors",
        vars.len()
    );
    for (name, v) in vars {
        assert!(v.requires_grad(), "{name} is not trainable");
        let g = v.grad();
        assert!(g.defined(), "{name} got no gradient");
        let n = g.abs().sum(Kind::Float).double_value(&[]);
        assert!(n > 0.0 && n.is_finite(), "{name} has gradient norm {n}");
    }
}

#[test]
fn lora_params_get_gradients_and_base_stays_frozen() {
    let (mut vs, mut unet) = tiny_unet(1);
    vs.freeze();
    let lora_vs = VarStore::new(Device::Cpu);
    let n = unet
        .add_lora(&lora_vs.root(), &LoraConfig::default())
        .unwrap();
    assert_eq!(
        n,
        4 * 4,
        "4 attention blocks (1 down, 1 mid, 2 up) × 4 projections"
    );
    // B starts at zero, so dL/dA = 0 at first; move B off zero as one update would.
    tch::no_grad(|| {
        for (name, mut v) in lora_vs.variables() {
            if name.ends_with("lora_b") {
                let _ = v.f_add_(&(v.randn_like() * 0.1));
            }
        }
    });
    let (x, t, y) = inputs();
    unet.forward(&x, &t, &y)
        .square()
        .mean(Kind::Float)
        .backward();
    for (name, v) in lora_vs.variables() {
        let g = v.grad();
        assert!(
            g.defined() && g.abs().sum(Kind::Float).double_value(&[]) > 0.0,
            "{name} got no gradient"
        );
    }
    for (name, v) in vs.variables() {
        assert!(!v.requires_grad(), "{name} should be frozen");
    }
}

#[test]
fn fresh_lora_leaves_outputs_unchanged() {
    let (_vs, mut unet) = tiny_unet(2);
    let (x, t, y) = inputs();
    let before = unet.forward(&x, &t, &y);
    let lora_vs = VarStore::new(Device::Cpu);
    let cfg = LoraConfig {
        rank: 2,
        alpha: 8.0,
        targets: vec!["to_q".into(), "to_v".into()],
    };
    assert_eq!(unet.add_lora(&lora_vs.root(), &cfg).unwrap(), 8);
    assert!(unet.has_lora());
    let after = unet.forward(&x, &t, &y);
    assert_eq!(max_abs_diff(&before, &after), 0.0);
}

#[test]
fn merged_lora_gives_the_unmerged_outputs() {
    let (_vs, mut unet) = tiny_unet(3);
    let (x, t, y) = inputs();
    let base = unet.forward(&x, &t, &y);
    let lora_vs = VarStore::new(Device::Cpu);
    unet.add_lora(
        &lora_vs.root(),
        &LoraConfig {
            rank: 3,
            alpha: 6.0,
            ..Default::default()
        },
    )
    .unwrap();
    tch::no_grad(|| {
        for (_, mut v) in lora_vs.variables() {
            let _ = v.f_add_(&(v.randn_like() * 0.2));
        }
    });
    let with_lora = unet.forward(&x, &t, &y);
    assert!(
        max_abs_diff(&with_lora, &base) > 1e-3,
        "the perturbed adapters must matter"
    );
    unet.merge_lora();
    assert!(!unet.has_lora());
    let merged = unet.forward(&x, &t, &y);
    let d = max_abs_diff(&merged, &with_lora);
    assert!(d < 1e-5, "merged output differs by {d}");
}

#[test]
fn lora_config_errors() {
    let (_vs, mut unet) = tiny_unet(4);
    let lora_vs = VarStore::new(Device::Cpu);
    let bad = LoraConfig {
        targets: vec!["to_x".into()],
        ..Default::default()
    };
    assert!(unet.add_lora(&lora_vs.root(), &bad).is_err());
    assert!(unet
        .add_lora(
            &lora_vs.root(),
            &LoraConfig {
                rank: 0,
                ..Default::default()
            }
        )
        .is_err());
    assert!(unet
        .add_lora(
            &lora_vs.root(),
            &LoraConfig {
                rank: 100,
                ..Default::default()
            }
        )
        .is_err());
    let s: LoraConfig = toml::from_str("rank = 8\nalpha = 16.0\ntargets = [\"to_k\"]").unwrap();
    assert_eq!(s.scale(), 2.0);
}

#[test]
fn config_validation_and_toml() {
    let cfg = tiny_cfg();
    let text = toml::to_string(&cfg).unwrap();
    let back: UNetConfig = toml::from_str(&text).unwrap();
    assert_eq!(back, cfg);
    let vs = VarStore::new(Device::Cpu);
    for bad in [
        UNetConfig {
            image_size: 9,
            ..tiny_cfg()
        },
        UNetConfig {
            groups: 3,
            ..tiny_cfg()
        },
        UNetConfig {
            num_heads: 3,
            ..tiny_cfg()
        },
        UNetConfig {
            attn_levels: vec![5],
            ..tiny_cfg()
        },
        UNetConfig {
            channel_mult: vec![],
            ..tiny_cfg()
        },
    ] {
        assert!(
            UNet::new(&vs.root(), &bad).is_err(),
            "{bad:?} should be rejected"
        );
    }
    // The shipped default is 28×28 Fashion-MNIST.
    let d = UNetConfig::default();
    let vs = VarStore::new(Device::Cpu);
    let u = UNet::new(&vs.root(), &d).unwrap();
    let n: i64 = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    assert!((1_000_000..=2_000_000).contains(&n), "{n} parameters");
    let out = u.forward(
        &Tensor::zeros([2, 1, 28, 28], (Kind::Float, Device::Cpu)),
        &Tensor::from_slice(&[1i64, 2]),
        &Tensor::from_slice(&[0i64, 10]),
    );
    assert_eq!(out.size(), vec![2, 1, 28, 28]);
}
