//! `pixels`: a parameter-free ϕ, average-pooled raw pixels (8 × 8 grey by default), for toy
//! problems, tests and attributes that live in pixel statistics (background shade, inversion).
use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use super::extractor::{Extracted, Extractor};

/// The side of the extractor named plain `pixels` (other sides are named `pixels-<side>`).
pub const DEFAULT_SIDE: i64 = 8;

/// `pixels`: images in [0, 1], average-pooled to at most `side × side`, flattened.
pub struct PixelExtractor {
    pub side: i64,
    pub channels: i64,
    name: String,
    fingerprint: String,
}

impl PixelExtractor {
    pub fn new(side: i64, channels: i64) -> Result<Self> {
        if side < 1 || !(channels == 1 || channels == 3) {
            bail!("pixels extractor: side must be >= 1 and channels 1 or 3");
        }
        Ok(Self {
            side,
            channels,
            // The name `load_extractor` takes back.
            name: if side == DEFAULT_SIDE {
                "pixels".into()
            } else {
                format!("pixels-{side}")
            },
            fingerprint: format!("pixels-v1-{side}-{channels}"),
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
        let x = tch::no_grad(|| x.adaptive_avg_pool2d([self.side, self.side]));
        Ok(Extracted {
            features: x.flatten(1, -1),
            logits: None,
        })
    }
}
