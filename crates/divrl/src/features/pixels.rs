//! `pixels`: a parameter-free ϕ, average-pooled raw pixels (8 × 8 grey by default), for toy
//! problems, tests and attributes that live in pixel statistics (background shade, inversion).
//! The `-norm` variants standardise each image's pooled vector (zero mean, unit standard
//! deviation), so they see layout and shape but neither global brightness nor contrast.
use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use super::extractor::{Extracted, Extractor};

/// The side of the extractor named plain `pixels` (other sides are named `pixels-<side>`).
pub const DEFAULT_SIDE: i64 = 8;

/// `pixels`: images in [0, 1], average-pooled to at most `side × side`, flattened; with
/// `standardize`, each row then has its mean subtracted and is divided by its standard deviation.
pub struct PixelExtractor {
    pub side: i64,
    pub channels: i64,
    pub standardize: bool,
    name: String,
    fingerprint: String,
}

/// Guards the per-image standard deviation of a flat image (a constant image maps to zeros).
const STD_FLOOR: f64 = 1e-6;

impl PixelExtractor {
    pub fn new(side: i64, channels: i64) -> Result<Self> {
        Self::build(side, channels, false)
    }

    /// The `pixels-norm` / `pixels-<side>-norm` extractor: pooled pixels standardised per image.
    pub fn standardized(side: i64, channels: i64) -> Result<Self> {
        Self::build(side, channels, true)
    }

    fn build(side: i64, channels: i64, standardize: bool) -> Result<Self> {
        if side < 1 || !(channels == 1 || channels == 3) {
            bail!("pixels extractor: side must be >= 1 and channels 1 or 3");
        }
        if standardize && side * side * channels < 2 {
            bail!("pixels extractor: standardising needs at least 2 values per image");
        }
        // The name `load_extractor` takes back.
        let base = if side == DEFAULT_SIDE {
            "pixels".to_string()
        } else {
            format!("pixels-{side}")
        };
        let (name, fingerprint) = if standardize {
            (
                format!("{base}-norm"),
                format!("pixels-norm-v1-{side}-{channels}"),
            )
        } else {
            (base, format!("pixels-v1-{side}-{channels}"))
        };
        Ok(Self {
            side,
            channels,
            standardize,
            name,
            fingerprint,
        })
    }
}

impl Extractor for PixelExtractor {
    fn name(&self) -> &str {
        &self.name
    }
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
    fn dim(&self) -> i64 {
        self.side * self.side * self.channels
    }
    fn default_batch(&self) -> usize {
        1000
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn forward(&self, images: &Tensor) -> Result<Extracted> {
        let x = crate::imageops::to_channels(
            &images.to_device(Device::Cpu).to_kind(Kind::Float),
            self.channels,
        )?;
        let features = tch::no_grad(|| {
            let x = x.adaptive_avg_pool2d([self.side, self.side]).flatten(1, -1);
            if !self.standardize {
                return x;
            }
            let x = x.to_kind(Kind::Double);
            let centred = &x - x.mean_dim(1, true, Kind::Double);
            // Population standard deviation, so every row has unit mean square.
            let std = centred
                .square()
                .mean_dim(1, true, Kind::Double)
                .sqrt()
                .clamp_min(STD_FLOOR);
            (centred / std).to_kind(Kind::Float)
        });
        Ok(Extracted {
            features,
            logits: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standardized_rows_are_centred_unit_and_blind_to_brightness_and_contrast() {
        let img = Tensor::rand([3, 1, 16, 16], (Kind::Float, Device::Cpu));
        let e = PixelExtractor::standardized(4, 1).unwrap();
        let f = e.forward(&img).unwrap().features;
        assert_eq!(f.size(), vec![3, 16]);
        // Hand computation in f64 from the plain pooled rows.
        let raw = PixelExtractor::new(4, 1)
            .unwrap()
            .forward(&img)
            .unwrap()
            .features;
        let raw: Vec<Vec<f64>> = Vec::<Vec<f64>>::try_from(raw.to_kind(Kind::Double)).unwrap();
        let got: Vec<Vec<f64>> = Vec::<Vec<f64>>::try_from(f.to_kind(Kind::Double)).unwrap();
        for (r, g) in raw.iter().zip(&got) {
            let n = r.len() as f64;
            let m = r.iter().sum::<f64>() / n;
            let s = (r.iter().map(|v| (v - m).powi(2)).sum::<f64>() / n).sqrt();
            for (a, b) in r.iter().zip(g) {
                assert!(((a - m) / s - b).abs() < 1e-5, "{a} {b}");
            }
            assert!(g.iter().sum::<f64>().abs() < 1e-4);
            assert!((g.iter().map(|v| v * v).sum::<f64>() / n - 1.0).abs() < 1e-4);
        }
        // A brighter, lower-contrast version of the same images has the same features.
        let shifted = &img * 0.5 + 0.3;
        let g = e.forward(&shifted).unwrap().features;
        let d = (g - &f).abs().max().double_value(&[]);
        assert!(d < 1e-4, "{d}");
        // The plain extractor does see the change.
        let p = PixelExtractor::new(4, 1).unwrap();
        let d = (p.forward(&shifted).unwrap().features - p.forward(&img).unwrap().features)
            .abs()
            .max()
            .double_value(&[]);
        assert!(d > 0.1, "{d}");
        // A flat image maps to zeros, not NaN.
        let flat = Tensor::full([1, 1, 16, 16], 0.4, (Kind::Float, Device::Cpu));
        let z = e.forward(&flat).unwrap().features;
        assert_eq!(z.abs().max().double_value(&[]), 0.0);
    }

    #[test]
    fn names_and_fingerprints_tell_the_variants_apart() {
        let a = PixelExtractor::new(8, 1).unwrap();
        let b = PixelExtractor::standardized(8, 1).unwrap();
        let c = PixelExtractor::standardized(14, 1).unwrap();
        assert_eq!(
            (a.name(), b.name(), c.name()),
            ("pixels", "pixels-norm", "pixels-14-norm")
        );
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(b.fingerprint(), c.fingerprint());
        assert!(PixelExtractor::standardized(1, 1).is_err());
    }
}
