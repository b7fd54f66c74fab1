//! Writing generated images out for other tools: one lossless 8-bit PNG per image, or every
//! image in one uint8 `.npy` (`[N, H, W]` grey, `[N, H, W, 3]` colour) that
//! [`crate::features::ImageSource`] (`divrl eval --generated`) reads, with an int64 label array.
//! Pixels are quantised as the sample grids are: `round((clamp(x, −1, 1) + 1) · 127.5)`.
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tch::Tensor;

use crate::config::write_atomic;

/// Images in `[-1, 1]` (`[N, C, H, W]`, C = 1 or 3) as 8-bit values, CHW order per image.
#[derive(Debug, Clone)]
pub struct Images8 {
    pub data: Vec<u8>,
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

impl Images8 {
    pub fn from_tensor(images: &Tensor) -> Result<Self> {
        let s = images.size();
        if s.len() != 4 || !(s[1] == 1 || s[1] == 3) || s[0] == 0 {
            bail!("expected [N, 1|3, H, W] images, got {s:?}");
        }
        Ok(Self {
            data: crate::sample::to_u8(images)?,
            n: s[0] as usize,
            c: s[1] as usize,
            h: s[2] as usize,
            w: s[3] as usize,
        })
    }

    /// Image `i` in HWC order (what PNG and the `.npy` file hold).
    fn hwc(&self, i: usize) -> Vec<u8> {
        let (c, h, w) = (self.c, self.h, self.w);
        let img = &self.data[i * c * h * w..(i + 1) * c * h * w];
        let mut out = vec![0u8; c * h * w];
        for ch in 0..c {
            for p in 0..h * w {
                out[p * c + ch] = img[ch * h * w + p];
            }
        }
        out
    }

    /// Image `i` as PNG bytes (8-bit grey or RGB, lossless).
    pub fn png(&self, i: usize) -> Result<Vec<u8>> {
        let (w, h) = (self.w as u32, self.h as u32);
        let buf = self.hwc(i);
        let img = if self.c == 1 {
            image::DynamicImage::ImageLuma8(
                image::GrayImage::from_raw(w, h, buf).context("image buffer")?,
            )
        } else {
            image::DynamicImage::ImageRgb8(
                image::RgbImage::from_raw(w, h, buf).context("image buffer")?,
            )
        };
        crate::sample::png_bytes(&img)
    }
}

/// The PNG file name of image `index` of class `class`: `{index:05}-class{class}.png`.
pub fn png_name(index: usize, class: i64) -> String {
    format!("{index:05}-class{class}.png")
}

/// Writes one PNG per image into `dir` (created if missing), each atomically. Returns the paths.
pub fn write_pngs(dir: &Path, images: &Images8, labels: &[i64]) -> Result<Vec<PathBuf>> {
    if labels.len() != images.n {
        bail!("{} labels for {} images", labels.len(), images.n);
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut out = Vec::with_capacity(images.n);
    for (i, &c) in labels.iter().enumerate() {
        let p = dir.join(png_name(i, c));
        write_atomic(&p, &images.png(i)?)?;
        out.push(p);
    }
    Ok(out)
}

/// The label file beside an image `.npy`: `x.npy` → `x.labels.npy`.
pub fn labels_path(npy: &Path) -> PathBuf {
    let stem = npy
        .file_stem()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    npy.with_file_name(format!("{stem}.labels.npy"))
}

fn npy_bytes<T: npyz::AutoSerialize + Copy>(shape: &[u64], data: &[T]) -> Result<Vec<u8>> {
    use npyz::WriterBuilder;
    let mut buf = Vec::new();
    let mut w = npyz::WriteOptions::<T>::new()
        .default_dtype()
        .shape(shape)
        .writer(&mut buf)
        .begin_nd()?;
    w.extend(data.iter().copied())?;
    w.finish()?;
    Ok(buf)
}

/// Writes every image as one uint8 `.npy` (`[N, H, W]` for grey, `[N, H, W, 3]` for colour)
/// and the labels as int64 `[N]` in [`labels_path`], both atomically.
pub fn write_npy(path: &Path, images: &Images8, labels: &[i64]) -> Result<()> {
    if labels.len() != images.n {
        bail!("{} labels for {} images", labels.len(), images.n);
    }
    let (n, h, w) = (images.n as u64, images.h as u64, images.w as u64);
    let shape: Vec<u64> = if images.c == 1 {
        vec![n, h, w]
    } else {
        vec![n, h, w, images.c as u64]
    };
    let hwc: Vec<u8> = (0..images.n).flat_map(|i| images.hwc(i)).collect();
    let lpath = labels_path(path);
    write_atomic(&lpath, &npy_bytes(&[n], labels)?)
        .with_context(|| format!("writing {}", lpath.display()))?;
    write_atomic(path, &npy_bytes(&shape, &hwc)?)
        .with_context(|| format!("writing {}", path.display()))
}
