//! Prints the ε-prediction of a checkpoint for a fixed, formula-defined input, so the PyTorch
//! twin (`python bench/unet_torch.py parity --checkpoint DIR`) can be compared number for number.
//!   cargo run --release -p divrl --example eps_probe -- models/fashion-mnist-base
use anyhow::Result;
use tch::{Device, Kind, Tensor};

fn main() -> Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/fashion-mnist-base".into());
    let m = divrl::checkpoint::load_model(std::path::Path::new(&dir), Device::Cpu, true)?;
    let c = &m.config.model;
    let n = 4 * c.in_channels * c.image_size * c.image_size;
    let x = (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.37)
        .sin()
        .view([4, c.in_channels, c.image_size, c.image_size]);
    let t = Tensor::from_slice(&[999i64, 500, 100, 0]);
    let y = Tensor::from_slice(&[0i64, 3, 9, c.num_classes]);
    let eps = tch::no_grad(|| m.unet.forward(&x, &t, &y));
    let first: Vec<f32> = Vec::try_from(&eps.flatten(0, -1).narrow(0, 0, 5))?;
    println!(
        "{{\"eps_mean\": {}, \"eps_std\": {}, \"eps_first\": {:?}}}",
        eps.mean(Kind::Float).double_value(&[]),
        eps.std(true).double_value(&[]),
        first
    );
    Ok(())
}
