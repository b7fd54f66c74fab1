//! IDX files (the MNIST / Fashion-MNIST format), gzip-compressed or not.
use anyhow::{bail, Context, Result};
use std::io::Read;
use std::path::Path;

/// An unsigned-byte IDX array: its dimensions and row-major data.
#[derive(Debug, Clone)]
pub struct IdxArray {
    pub dims: Vec<usize>,
    pub data: Vec<u8>,
}

/// Decompresses `bytes` if they start with the gzip magic.
pub fn maybe_gunzip(bytes: &[u8]) -> Result<Vec<u8>> {
    if bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .context("corrupt gzip stream")?;
        Ok(out)
    } else {
        Ok(bytes.to_vec())
    }
}

/// Parses an IDX byte buffer (type 0x08 = unsigned byte only, which is what image/label files use).
pub fn parse_idx(bytes: &[u8]) -> Result<IdxArray> {
    let raw = maybe_gunzip(bytes)?;
    if raw.len() < 4 || raw[0] != 0 || raw[1] != 0 {
        bail!("not an IDX file (bad magic)");
    }
    if raw[2] != 0x08 {
        bail!(
            "IDX element type 0x{:02x} not supported (only unsigned bytes, 0x08)",
            raw[2]
        );
    }
    let nd = raw[3] as usize;
    if nd == 0 || raw.len() < 4 + 4 * nd {
        bail!("truncated IDX header");
    }
    let dims: Vec<usize> = (0..nd)
        .map(|i| {
            u32::from_be_bytes(raw[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let n: usize = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .context("IDX dimensions overflow")?;
    let body = &raw[4 + 4 * nd..];
    if body.len() != n {
        bail!(
            "IDX body has {} bytes, dimensions {:?} need {n}",
            body.len(),
            dims
        );
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse_idx(&bytes).with_context(|| format!("parsing {}", path.display()))
}
