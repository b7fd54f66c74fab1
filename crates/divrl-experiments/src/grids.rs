//! Sample grids of the reports: evaluation images (interleaved by class) regrouped one class per
//! row, as PNG bytes.

use anyhow::{bail, Result};
use divrl::tch::Tensor;

/// `per_class` interleaved evaluation images (condition `i % k`) → the first `g` of each class,
/// one class per grid row.
pub fn class_rows(images: &Tensor, k: usize, g: usize) -> Result<Tensor> {
    let n = images.size()[0] as usize;
    if k == 0 || n < k * g {
        bail!("{n} images cannot fill {k} rows of {g}");
    }
    let idx: Vec<i64> = (0..k)
        .flat_map(|c| (0..g).map(move |r| (r * k + c) as i64))
        .collect();
    Ok(images.index_select(0, &Tensor::from_slice(&idx).to_device(images.device())))
}

/// PNG bytes of a class-row grid.
pub fn grid_png(images: &Tensor, k: usize, g: usize) -> Result<Vec<u8>> {
    let rows = class_rows(images, k, g)?;
    divrl::sample::png_bytes(&divrl::sample::make_grid(&rows, g)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_rows_regroups_interleaved_images() {
        // 3 classes × 4 per class, interleaved: value = class.
        let v: Vec<f32> = (0..12).map(|i| (i % 3) as f32).collect();
        let t = Tensor::from_slice(&v).view([12, 1, 1, 1]);
        let rows = class_rows(&t, 3, 2).unwrap();
        let got: Vec<f32> = Vec::<f32>::try_from(&rows.flatten(0, -1)).unwrap();
        assert_eq!(got, vec![0.0, 0.0, 1.0, 1.0, 2.0, 2.0]);
        assert!(class_rows(&t, 3, 5).is_err());
    }
}
