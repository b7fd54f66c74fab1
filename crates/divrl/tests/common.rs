#![allow(dead_code)]
use divrl::models::unet::{UNet, UNetConfig};
use tch::nn::VarStore;
use tch::Device;

pub fn tiny_cfg() -> UNetConfig {
    UNetConfig {
        in_channels: 1,
        image_size: 8,
        base_channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_levels: vec![1],
        num_heads: 2,
        num_classes: 3,
        groups: 4,
        dropout: 0.0,
    }
}

pub fn tiny_unet(seed: i64) -> (VarStore, UNet) {
    divrl::rng::with_torch_seed(seed, || {
        let vs = VarStore::new(Device::Cpu);
        let unet = UNet::new(&vs.root(), &tiny_cfg()).unwrap();
        (vs, unet)
    })
}

pub fn max_abs_diff(a: &tch::Tensor, b: &tch::Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}
