//! Face images as plain f32 arrays, Pillow's bilinear resampling, and the byte chips the networks
//! take.
use crate::{FacesError, Result};

/// Tolerance for values just outside `[0, 1]` (float noise of a generator's output); they are
/// clamped. Anything further out is an error.
const RANGE_SLACK: f32 = 1e-3;

/// One image, `height × width × channels` (channels 1 = grey, 3 = RGB), row-major HWC, values in
/// `[0, 1]`.
#[derive(Debug, Clone, PartialEq)]
pub struct FaceImage {
    height: usize,
    width: usize,
    channels: usize,
    data: Vec<f32>,
}

impl FaceImage {
    /// Checks the shape, that every value is finite and in `[0, 1]` (values within 1e-3 outside
    /// are clamped), and that both sides are at least 2 pixels (the package's minimum face).
    pub fn new(height: usize, width: usize, channels: usize, mut data: Vec<f32>) -> Result<Self> {
        if channels != 1 && channels != 3 {
            return Err(FacesError::Invalid(format!(
                "a face image has 1 (grey) or 3 (RGB) channels, got {channels}"
            )));
        }
        if height < 2 || width < 2 {
            return Err(FacesError::Invalid(format!(
                "a face image needs at least 2x2 pixels, got {height}x{width}"
            )));
        }
        if data.len() != height * width * channels {
            return Err(FacesError::Invalid(format!(
                "{height}x{width}x{channels} image needs {} values, got {}",
                height * width * channels,
                data.len()
            )));
        }
        for v in &mut data {
            if !v.is_finite() {
                return Err(FacesError::Invalid(format!(
                    "image has a non-finite value ({v})"
                )));
            }
            if *v < -RANGE_SLACK || *v > 1.0 + RANGE_SLACK {
                return Err(FacesError::Invalid(format!(
                    "image value {v} outside [0, 1] (scale bytes by 1/255)"
                )));
            }
            *v = v.clamp(0.0, 1.0);
        }
        Ok(Self {
            height,
            width,
            channels,
            data,
        })
    }

    /// A byte image (`v / 255`).
    pub fn from_u8(height: usize, width: usize, channels: usize, data: &[u8]) -> Result<Self> {
        Self::new(
            height,
            width,
            channels,
            data.iter().map(|&b| f32::from(b) / 255.0).collect(),
        )
    }

    pub fn height(&self) -> usize {
        self.height
    }
    pub fn width(&self) -> usize {
        self.width
    }
    pub fn channels(&self) -> usize {
        self.channels
    }
    pub fn data(&self) -> &[f32] {
        &self.data
    }

    /// The mirror image (left ↔ right).
    pub fn flipped_horizontally(&self) -> Self {
        let (w, c) = (self.width, self.channels);
        let mut data = Vec::with_capacity(self.data.len());
        for row in self.data.chunks_exact(w * c) {
            for x in (0..w).rev() {
                data.extend_from_slice(&row[x * c..(x + 1) * c]);
            }
        }
        Self { data, ..*self }
    }

    /// The network input of this face: resized to `size × size`, rounded to bytes (half to even,
    /// as NumPy's `round`), grey replicated to RGB, `(byte − mean[c]) / 256`, CHW. Appended to
    /// `out`.
    pub fn push_chip(&self, size: usize, means: &[f32; 3], out: &mut Vec<f32>) {
        let c = self.channels;
        let mut planes = Vec::with_capacity(c);
        for ch in 0..c {
            let plane: Vec<f32> = self.data.iter().skip(ch).step_by(c).copied().collect();
            planes.push(resize_bilinear(&plane, self.height, self.width, size, size));
        }
        for (k, mean) in means.iter().enumerate() {
            let plane = &planes[if c == 1 { 0 } else { k }];
            out.extend(plane.iter().map(|&v| {
                let byte = (v * 255.0).round_ties_even().clamp(0.0, 255.0);
                // Byte to f32 is exact; the subtraction is the only rounding step and /256 is
                // exact, as in the package's prepare_batch.
                (byte - mean) / 256.0
            }));
        }
    }
}

/// Pillow's `Image.resize(..., BILINEAR)` on one float plane (`[h, w]` row-major): the triangle
/// filter with support `max(1, in/out)`, so plain bilinear interpolation (half-pixel centres) when
/// enlarging and an antialiasing average when shrinking; horizontal pass first, f64 accumulation,
/// f32 storage between passes, as in Pillow's `ImagingResample` for mode `F`.
pub fn resize_bilinear(src: &[f32], h: usize, w: usize, out_h: usize, out_w: usize) -> Vec<f32> {
    assert_eq!(src.len(), h * w, "plane size");
    let tmp = if out_w == w {
        src.to_vec()
    } else {
        let (bounds, k, ksize) = coefficients(w, out_w);
        let mut tmp = vec![0f32; h * out_w];
        for y in 0..h {
            let row = &src[y * w..(y + 1) * w];
            for x in 0..out_w {
                let (xmin, n) = bounds[x];
                let ks = &k[x * ksize..x * ksize + n];
                let s: f64 = ks
                    .iter()
                    .zip(&row[xmin..xmin + n])
                    .map(|(&c, &v)| c * f64::from(v))
                    .sum();
                tmp[y * out_w + x] = s as f32;
            }
        }
        tmp
    };
    if out_h == h {
        return tmp;
    }
    let (bounds, k, ksize) = coefficients(h, out_h);
    let mut out = vec![0f32; out_h * out_w];
    for y in 0..out_h {
        let (ymin, n) = bounds[y];
        let ks = &k[y * ksize..y * ksize + n];
        for x in 0..out_w {
            let s: f64 = ks
                .iter()
                .enumerate()
                .map(|(j, &c)| c * f64::from(tmp[(ymin + j) * out_w + x]))
                .sum();
            out[y * out_w + x] = s as f32;
        }
    }
    out
}

/// Pillow's `precompute_coeffs` for the bilinear (triangle) filter: per output index, the first
/// input index and the number of taps, and the normalised weights (`ksize` per row).
fn coefficients(in_size: usize, out_size: usize) -> (Vec<(usize, usize)>, Vec<f64>, usize) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filterscale; // the triangle filter's support is 1
    let ksize = support.ceil() as usize * 2 + 1;
    let ss = 1.0 / filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut k = vec![0f64; out_size * ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        // C's (int) truncation, then clamping, as in Pillow.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
        let row = &mut k[xx * ksize..(xx + 1) * ksize];
        let mut ww = 0.0;
        for (x, kx) in row.iter_mut().enumerate().take(xmax) {
            let t = ((x + xmin) as f64 - center + 0.5) * ss;
            let w = (1.0 - t.abs()).max(0.0);
            *kx = w;
            ww += w;
        }
        if ww != 0.0 {
            for kx in row.iter_mut().take(xmax) {
                *kx /= ww;
            }
        }
        bounds.push((xmin, xmax));
    }
    (bounds, k, ksize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_and_constant() {
        let src: Vec<f32> = (0..12).map(|v| v as f32 / 11.0).collect();
        assert_eq!(resize_bilinear(&src, 3, 4, 3, 4), src);
        let c = vec![0.25f32; 25 * 25];
        for s in [8, 32, 64, 100] {
            assert!(resize_bilinear(&c, 25, 25, s, s)
                .iter()
                .all(|&v| (v - 0.25).abs() < 1e-6));
        }
    }

    #[test]
    fn enlarging_by_two_is_half_pixel_bilinear() {
        // [0, 1] → 4 samples at input coordinates -0.25, 0.25, 0.75, 1.25 (edge-clamped).
        let out = resize_bilinear(&[0.0, 1.0], 1, 2, 1, 4);
        let want = [0.0, 0.25, 0.75, 1.0];
        for (o, w) in out.iter().zip(want) {
            assert!((o - w).abs() < 1e-6, "{out:?}");
        }
    }

    #[test]
    fn shrinking_by_two_averages_pairs() {
        let src = [0.0f32, 1.0, 0.5, 0.5, 0.2, 0.4];
        let out = resize_bilinear(&src, 1, 6, 1, 3);
        // support 2 around centres 1, 3, 5: weights ∝ (0.25, 0.75, 0.75, 0.25) truncated at edges.
        let brute = |c: f64| {
            let mut s = 0.0;
            let mut ww = 0.0;
            for (i, &v) in src.iter().enumerate() {
                let w = (1.0 - ((i as f64 + 0.5 - c) / 2.0).abs()).max(0.0);
                s += w * v as f64;
                ww += w;
            }
            s / ww
        };
        for (x, o) in out.iter().enumerate() {
            let want = brute(2.0 * x as f64 + 1.0);
            assert!((*o as f64 - want).abs() < 1e-6, "{x}: {o} vs {want}");
        }
    }

    #[test]
    fn chips_are_normalised_bytes_in_chw() {
        let img =
            FaceImage::from_u8(2, 2, 3, &[255, 0, 10, 255, 0, 10, 255, 0, 10, 255, 0, 10]).unwrap();
        let mut out = Vec::new();
        img.push_chip(2, &[122.782, 117.001, 104.298], &mut out);
        assert_eq!(out.len(), 12);
        assert!(out[..4].iter().all(|&v| v == (255.0 - 122.782f32) / 256.0));
        assert!(out[4..8].iter().all(|&v| v == (0.0 - 117.001f32) / 256.0));
        assert!(out[8..].iter().all(|&v| v == (10.0 - 104.298f32) / 256.0));
        // Grey is replicated.
        let g = FaceImage::from_u8(2, 2, 1, &[7, 7, 7, 7]).unwrap();
        let mut o = Vec::new();
        g.push_chip(3, &[1.0, 2.0, 3.0], &mut o);
        assert_eq!(o.len(), 27);
        assert_eq!(o[0], 6.0 / 256.0);
        assert_eq!(o[26], 4.0 / 256.0);
    }

    #[test]
    fn bad_images_are_refused() {
        assert!(FaceImage::new(2, 2, 1, vec![0.0, f32::NAN, 0.0, 0.0]).is_err());
        assert!(FaceImage::new(2, 2, 1, vec![0.0, 2.0, 0.0, 0.0]).is_err());
        assert!(FaceImage::new(2, 2, 2, vec![0.0; 8]).is_err());
        assert!(FaceImage::new(1, 5, 1, vec![0.0; 5]).is_err());
        assert!(FaceImage::new(2, 2, 1, vec![0.0; 3]).is_err());
        let ok = FaceImage::new(2, 2, 1, vec![-1e-4, 1.0001, 0.5, 0.5]).unwrap();
        assert_eq!(ok.data(), &[0.0, 1.0, 0.5, 0.5]);
    }

    #[test]
    fn flip_mirrors_rows() {
        let img = FaceImage::new(2, 3, 1, vec![0.0, 0.1, 0.2, 0.3, 0.4, 0.5]).unwrap();
        assert_eq!(
            img.flipped_horizontally().data(),
            &[0.2, 0.1, 0.0, 0.5, 0.4, 0.3]
        );
        let px: Vec<f32> = (0..12).map(|v| v as f32 / 11.0).collect();
        let rgb = FaceImage::new(2, 2, 3, px.clone()).unwrap();
        let want: Vec<f32> = [3, 4, 5, 0, 1, 2, 9, 10, 11, 6, 7, 8]
            .iter()
            .map(|&i| px[i])
            .collect();
        assert_eq!(rgb.flipped_horizontally().data(), &want[..]);
    }
}
