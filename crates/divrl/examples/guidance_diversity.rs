//! Within-class diversity of base-model samples as a function of the guidance scale: the mean
//! pairwise L2 distance (pixels in [-1, 1]) between samples of the same class, averaged over
//! classes. Classifier-free guidance trades diversity for fidelity, so this should fall as w grows.
//!   cargo run --release -p divrl --example guidance_diversity -- models/fashion-mnist-base 16 50 1,2,4
use anyhow::Result;
use divrl::schedule::SamplerConfig;
use tch::{Device, Kind, Tensor};

fn main() -> Result<()> {
    let a: Vec<String> = std::env::args().collect();
    let dir = a
        .get(1)
        .cloned()
        .unwrap_or_else(|| "models/fashion-mnist-base".into());
    let per: i64 = a.get(2).map(|s| s.parse()).transpose()?.unwrap_or(16);
    let steps: usize = a.get(3).map(|s| s.parse()).transpose()?.unwrap_or(50);
    let ws: Vec<f64> = a
        .get(4)
        .map(|s| s.as_str())
        .unwrap_or("1,2,4")
        .split(',')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let m = divrl::checkpoint::load_model(std::path::Path::new(&dir), Device::Cpu, true)?;
    let c = &m.config.model;
    let k = c.num_classes;
    let classes =
        Tensor::arange(k, (Kind::Int64, Device::Cpu)).repeat_interleave_self_int(per, 0, None);
    println!("guidance  mean within-class pairwise L2  (per class)");
    for w in ws {
        let cfg = SamplerConfig {
            guidance: w,
            steps,
            ..Default::default()
        };
        let traj = divrl::sample::sample_trajectory(
            &m.unet,
            &m.sched,
            &cfg,
            &classes,
            [c.in_channels, c.image_size, c.image_size],
            0,
        )?;
        let x = traj.images().clamp(-1.0, 1.0).flatten(1, -1);
        let mut per_class = Vec::new();
        for ci in 0..k {
            let xc = x.narrow(0, ci * per, per);
            let d = Tensor::cdist(&xc, &xc, 2.0, None::<i64>);
            let mean = d.sum(Kind::Double).double_value(&[]) / (per * (per - 1)) as f64;
            per_class.push(mean);
        }
        let avg = per_class.iter().sum::<f64>() / k as f64;
        println!(
            "{w:>8}  {avg:.3}  {:?}",
            per_class
                .iter()
                .map(|v| (v * 100.0).round() / 100.0)
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}
