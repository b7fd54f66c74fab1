//! Reading feature arrays from `.npy` (f32 or f64, C order) and `.safetensors` (one f32/f64
//! tensor), and writing `.npy` atomically (temporary file, then rename).

use std::io::Write;

use npyz::WriterBuilder;
use std::path::Path;

use crate::{Error, Features, Result};

/// A dense array of any rank, values widened to f64.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

/// An error about `path`; the message is folded onto one line (parser errors of the file
/// formats span several).
fn file_err(path: &Path, msg: impl Into<String>) -> Error {
    let msg: String = msg.into();
    Error::File {
        path: path.display().to_string(),
        msg: msg.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// Reads an array from `.npy` or `.safetensors` (chosen by extension).
pub fn read_array(path: &Path) -> Result<Array> {
    let bytes = std::fs::read(path).map_err(|e| file_err(path, format!("cannot read: {e}")))?;
    match path.extension().and_then(|e| e.to_str()) {
        Some("npy") => parse_npy(path, &bytes),
        Some("safetensors") => parse_safetensors(path, &bytes),
        _ => Err(file_err(
            path,
            "unsupported feature file (expected .npy or .safetensors)",
        )),
    }
}

fn parse_npy(path: &Path, bytes: &[u8]) -> Result<Array> {
    let npy = npyz::NpyFile::new(bytes)
        .map_err(|e| file_err(path, format!("not a valid .npy file: {e}")))?;
    if npy.order() != npyz::Order::C {
        return Err(file_err(
            path,
            "Fortran-ordered arrays are not supported; save with C order",
        ));
    }
    let shape: Vec<usize> = npy
        .shape()
        .iter()
        .map(|&s| usize::try_from(s))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| file_err(path, format!("shape {:?} is too large", npy.shape())))?;
    // The header's element count must fit the bytes that follow it (checked before reading, and
    // without the wrapping product npyz computes).
    let expected = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|n| n.checked_mul(npy.dtype().num_bytes().unwrap_or(usize::MAX)).is_some_and(|b| b <= bytes.len()))
        .ok_or_else(|| {
            file_err(
                path,
                format!("truncated or corrupt .npy data: shape {shape:?} needs more bytes than the file's {}", bytes.len()),
            )
        })?;
    let descr = npy.dtype().descr();
    let data = match npy.try_data::<f32>() {
        Ok(reader) => reader
            .into_iter()
            .map(|v| v.map(f64::from))
            .collect::<std::io::Result<Vec<f64>>>(),
        Err(npy) => match npy.try_data::<f64>() {
            Ok(reader) => reader.into_iter().collect::<std::io::Result<Vec<f64>>>(),
            Err(_) => {
                return Err(file_err(
                    path,
                    format!("unsupported dtype {descr} (expected float32 or float64)"),
                ))
            }
        },
    }
    .map_err(|e| file_err(path, format!("truncated or corrupt .npy data: {e}")))?;
    if data.len() != expected {
        return Err(file_err(
            path,
            format!("holds {} values for shape {shape:?}", data.len()),
        ));
    }
    Ok(Array { shape, data })
}

fn parse_safetensors(path: &Path, bytes: &[u8]) -> Result<Array> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| file_err(path, format!("not a valid .safetensors file: {e}")))?;
    let names = st.names();
    if names.len() != 1 {
        return Err(file_err(
            path,
            format!(
                "expected exactly one tensor, found {} ({})",
                names.len(),
                names.join(", ")
            ),
        ));
    }
    let view = st
        .tensor(names[0])
        .map_err(|e| file_err(path, e.to_string()))?;
    let shape = view.shape().to_vec();
    let raw = view.data();
    let data: Vec<f64> = match view.dtype() {
        safetensors::Dtype::F32 => raw
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        safetensors::Dtype::F64 => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
            .collect(),
        other => {
            return Err(file_err(
                path,
                format!("unsupported dtype {other:?} (expected F32 or F64)"),
            ))
        }
    };
    Ok(Array { shape, data })
}

/// Reads an N×D feature matrix and checks it is finite.
pub fn read_features(path: &Path) -> Result<Features> {
    let a = read_array(path)?;
    if a.shape.len() != 2 {
        return Err(file_err(
            path,
            format!("expected a 2-D array (N × D), got shape {:?}", a.shape),
        ));
    }
    Features::new(&path.display().to_string(), a.shape[0], a.shape[1], a.data)
}

/// Writes `data` (row-major, `shape`) as a float32 or float64 `.npy`, atomically.
pub fn write_npy(path: &Path, shape: &[usize], data: &[f64], f32_out: bool) -> Result<()> {
    let expected: usize = shape.iter().product();
    if expected != data.len() {
        return Err(file_err(
            path,
            format!("{} values for shape {shape:?}", data.len()),
        ));
    }
    let mut buf = Vec::with_capacity(data.len() * 8 + 128);
    let shape64: Vec<u64> = shape.iter().map(|&s| s as u64).collect();
    let io = |e: std::io::Error| file_err(path, format!("cannot encode .npy: {e}"));
    if f32_out {
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&shape64)
            .writer(&mut buf)
            .begin_nd()
            .map_err(io)?;
        w.extend(data.iter().map(|&v| v as f32)).map_err(io)?;
        w.finish().map_err(io)?;
    } else {
        let mut w = npyz::WriteOptions::<f64>::new()
            .default_dtype()
            .shape(&shape64)
            .writer(&mut buf)
            .begin_nd()
            .map_err(io)?;
        w.extend(data.iter().copied()).map_err(io)?;
        w.finish().map_err(io)?;
    }
    write_atomic(path, &buf)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`, so a
/// reader never sees a half-written file and an old file survives a failed write.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| file_err(path, "not a file path"))?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let res = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(file_err(path, format!("cannot write: {e}")));
    }
    Ok(())
}
