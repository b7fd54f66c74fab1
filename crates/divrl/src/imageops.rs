//! Image tensor conversions every network's preprocessing shares.
use anyhow::{bail, Result};
use tch::Tensor;

/// Converts `[N, C, H, W]` to `c` channels: grey → RGB by replication, RGB → grey with the
/// Rec. 709 luma weights (as the `image` crate's `to_luma`).
pub fn to_channels(x: &Tensor, c: i64) -> Result<Tensor> {
    let s = x.size();
    if s.len() != 4 {
        bail!("images must be [N, C, H, W], got shape {s:?}");
    }
    match (s[1], c) {
        (a, b) if a == b => Ok(x.shallow_clone()),
        (1, 3) => Ok(x.expand([s[0], 3, s[2], s[3]], false)),
        (3, 1) => {
            let w = Tensor::from_slice(&[0.2126f32, 0.7152, 0.0722])
                .to_device(x.device())
                .to_kind(x.kind())
                .view([1, 3, 1, 1]);
            Ok((x * w).sum_dim_intlist(&[1i64][..], true, x.kind()))
        }
        (a, b) => bail!("cannot convert {a}-channel images to {b} channels"),
    }
}

/// Resizes `[N, C, H, W]` to `h × w`: bilinear, antialiased when shrinking.
pub fn resize_bilinear(x: &Tensor, h: i64, w: i64) -> Tensor {
    let s = x.size();
    if s[2] == h && s[3] == w {
        x.shallow_clone()
    } else if s[2] > h || s[3] > w {
        x.internal_upsample_bilinear2d_aa([h, w], false, None, None)
    } else {
        x.upsample_bilinear2d([h, w], false, None, None)
    }
}
