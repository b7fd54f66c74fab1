//! `.npy` image arrays: `[N, H, W]`, `[N, H, W, C]` or `[N, C, H, W]` (C = 1 or 3), uint8
//! (0..255) or float (0..1); optional int label arrays `[N]`.
use anyhow::{bail, Context, Result};
use std::path::Path;

fn open(path: &Path) -> Result<npyz::NpyFile<std::io::BufReader<std::fs::File>>> {
    let f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    npyz::NpyFile::new(std::io::BufReader::new(f))
        .with_context(|| format!("{}: not a .npy file", path.display()))
}

/// Returns (CHW float data in `[0, 1]`, n, c, h, w).
pub fn read_npy_images(path: &Path) -> Result<(Vec<f32>, usize, usize, usize, usize)> {
    let npy = open(path)?;
    if npy.order() != npyz::Order::C {
        bail!("{}: Fortran-order arrays are not supported", path.display());
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let ts = match npy.dtype() {
        npyz::DType::Plain(t) => t.to_string(),
        _ => bail!("{}: structured arrays are not supported", path.display()),
    };
    let truncated = || format!("{}: truncated or corrupt .npy data", path.display());
    let vals: Vec<f32> = match &ts[1..] {
        "u1" => npy
            .into_vec::<u8>()
            .with_context(truncated)?
            .into_iter()
            .map(|v| v as f32 / 255.0)
            .collect(),
        "f4" => npy.into_vec::<f32>().with_context(truncated)?,
        "f8" => npy
            .into_vec::<f64>()
            .with_context(truncated)?
            .into_iter()
            .map(|v| v as f32)
            .collect(),
        other => bail!(
            "{}: dtype {other} not supported (uint8, float32, float64)",
            path.display()
        ),
    };
    let (n, c, h, w, nhwc) = match shape.as_slice() {
        [n, h, w] => (*n, 1, *h, *w, false),
        [n, h, w, c] if *c == 1 || *c == 3 => (*n, *c, *h, *w, true),
        [n, c, h, w] if *c == 1 || *c == 3 => (*n, *c, *h, *w, false),
        _ => bail!(
            "{}: shape {:?} is not [N,H,W], [N,H,W,C] or [N,C,H,W] with C in {{1,3}}",
            path.display(),
            shape
        ),
    };
    if n == 0 || h == 0 || w == 0 {
        bail!("{}: empty array (shape {:?})", path.display(), shape);
    }
    // npyz counts elements with a wrapping product: a header can claim more than was read.
    let count = [n, c, h, w]
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d));
    if count != Some(vals.len()) || i64::try_from(vals.len()).is_err() {
        bail!(
            "{}: shape {:?} does not match the {} values stored",
            path.display(),
            shape,
            vals.len()
        );
    }
    if vals.iter().any(|v| !v.is_finite()) {
        bail!("{}: non-finite values", path.display());
    }
    let data = if nhwc && c > 1 {
        let mut out = vec![0f32; vals.len()];
        for i in 0..n {
            for y in 0..h {
                for x in 0..w {
                    for ch in 0..c {
                        out[((i * c + ch) * h + y) * w + x] = vals[((i * h + y) * w + x) * c + ch];
                    }
                }
            }
        }
        out
    } else {
        vals
    };
    Ok((data, n, c, h, w))
}

pub fn read_npy_labels(path: &Path) -> Result<Vec<i64>> {
    let npy = open(path)?;
    let ts = match npy.dtype() {
        npyz::DType::Plain(t) => t.to_string(),
        _ => bail!("{}: structured arrays are not supported", path.display()),
    };
    if npy.shape().len() != 1 {
        bail!(
            "{}: labels must be a 1-d array, got shape {:?}",
            path.display(),
            npy.shape()
        );
    }
    let truncated = || format!("{}: truncated or corrupt .npy data", path.display());
    Ok(match &ts[1..] {
        "u1" => npy
            .into_vec::<u8>()
            .with_context(truncated)?
            .into_iter()
            .map(i64::from)
            .collect(),
        "i4" => npy
            .into_vec::<i32>()
            .with_context(truncated)?
            .into_iter()
            .map(i64::from)
            .collect(),
        "i8" => npy.into_vec::<i64>().with_context(truncated)?,
        "u4" => npy
            .into_vec::<u32>()
            .with_context(truncated)?
            .into_iter()
            .map(i64::from)
            .collect(),
        other => bail!(
            "{}: label dtype {other} not supported (integers)",
            path.display()
        ),
    })
}
