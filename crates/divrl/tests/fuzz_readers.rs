//! Property-driven fuzzing of the image and weight readers (issue 15): `.npy` images and labels,
//! IDX (plain and gzip), PNG folders and safetensors, on arbitrary bytes and on mutated valid
//! files. Each read must return an error or a well-formed result; a panic fails the test.
//! Bounded: a few seconds in release mode.

use std::io::Write;
use std::path::Path;

use divrl::data::idx::parse_idx;
use divrl::data::npy::{read_npy_images, read_npy_labels};
use divrl::features::{load_image_files, ImageSource};
use proptest::prelude::*;

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// Every reader on `bytes` under a name each accepts; results must be self-consistent.
fn read_all(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let npy = write(d, "x.npy", bytes);
    if let Ok((data, n, c, h, w)) = read_npy_images(&npy) {
        assert_eq!(data.len(), n * c * h * w);
        assert!(data.iter().all(|v| v.is_finite()));
    }
    let _ = read_npy_labels(&npy);
    // Through the image source as `divrl features` / `eval` use it: a tensor or an error.
    if let Ok(t) = ImageSource::parse(npy.to_str().unwrap()).and_then(|s| s.load()) {
        assert_eq!(t.dim(), 4);
    }
    if let Ok(a) = parse_idx(bytes) {
        assert_eq!(a.dims.iter().product::<usize>(), a.data.len());
    }
    let idx = write(d, "x-idx3-ubyte", bytes);
    if let Ok(t) = ImageSource::parse(idx.to_str().unwrap()).and_then(|s| s.load()) {
        assert_eq!(t.dim(), 4);
    }
    let png = write(d, "x.png", bytes);
    if let Ok(t) = load_image_files(&[png]) {
        assert_eq!(t.dim(), 4);
    }
    let st = write(d, "x.safetensors", bytes);
    let _ = divrl::config::read_safetensors(&st);
}

fn valid_npy_u8(n: usize, h: usize, w: usize) -> Vec<u8> {
    use npyz::WriterBuilder;
    let mut buf = Vec::new();
    let mut wr = npyz::WriteOptions::<u8>::new()
        .default_dtype()
        .shape(&[n as u64, h as u64, w as u64])
        .writer(&mut buf)
        .begin_nd()
        .unwrap();
    wr.extend((0..n * h * w).map(|i| (i * 31 % 256) as u8))
        .unwrap();
    wr.finish().unwrap();
    buf
}

fn valid_idx(n: usize, h: usize, w: usize, gz: bool) -> Vec<u8> {
    let mut raw = vec![0u8, 0, 8, 3];
    for d in [n, h, w] {
        raw.extend_from_slice(&(d as u32).to_be_bytes());
    }
    raw.extend((0..n * h * w).map(|i| (i * 7 % 256) as u8));
    if !gz {
        return raw;
    }
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&raw).unwrap();
    e.finish().unwrap()
}

fn valid_png(h: u32, w: u32, rgb: bool) -> Vec<u8> {
    let img = if rgb {
        image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([x as u8, y as u8, 7])
        }))
    } else {
        image::DynamicImage::ImageLuma8(image::GrayImage::from_fn(w, h, |x, y| {
            image::Luma([(x * y) as u8])
        }))
    };
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}

fn valid_safetensors(n: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("w.safetensors");
    let t = tch::Tensor::arange(n as i64, (tch::Kind::Float, tch::Device::Cpu));
    divrl::config::write_safetensors_atomic(&p, &[("w".to_string(), t)]).unwrap();
    std::fs::read(p).unwrap()
}

fn mutate(mut bytes: Vec<u8>, muts: &[(u8, usize, u8)]) -> Vec<u8> {
    for &(kind, i, b) in muts {
        let len = bytes.len().max(1);
        match kind % 4 {
            0 => bytes.truncate(i % len),
            1 => {
                if !bytes.is_empty() {
                    bytes[i % len] ^= b | 1;
                }
            }
            2 => bytes.insert(i % (bytes.len() + 1), b),
            _ => {
                if !bytes.is_empty() {
                    bytes[i % len] = b;
                }
            }
        }
    }
    bytes
}

/// `.npy` headers whose element counts wrap or exceed the file, and empty shapes.
#[test]
fn hostile_headers_are_errors() {
    for shape in [
        "(4611686018427387904, 4, 4)",
        "(4294967296, 4294967296, 1)",
        "(18446744073709551615, 1, 1)",
        "(1000000000, 28, 28)",
        "(2, 0, 5)",
        "(0, 5, 5)",
        "(3, 28, 28, 3)",
    ] {
        for dtype in ["|u1", "<f4", "<f8", "<i8"] {
            let dict =
                format!("{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape}, }}");
            let mut header = dict.into_bytes();
            while (10 + header.len() + 1) % 64 != 0 {
                header.push(b' ');
            }
            header.push(b'\n');
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
            bytes.extend_from_slice(&header);
            bytes.extend_from_slice(&[1u8; 64]);
            read_all(&bytes);
        }
    }
    // IDX headers claiming huge or empty arrays.
    for dims in [
        [u32::MAX, u32::MAX, u32::MAX],
        [0, 5, 5],
        [2, 0, 3],
        [1, 1, 1],
    ] {
        let mut raw = vec![0u8, 0, 8, 3];
        for d in dims {
            raw.extend_from_slice(&d.to_be_bytes());
        }
        raw.push(9);
        read_all(&raw);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 150, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_a_reader(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        read_all(&bytes);
        for magic in [&b"\x93NUMPY\x01\x00"[..], &[0, 0, 8, 3], &[0x1f, 0x8b], &[0x89, b'P', b'N', b'G', 13, 10, 26, 10]] {
            let mut b = magic.to_vec();
            b.extend_from_slice(&bytes);
            read_all(&b);
        }
    }

    #[test]
    fn mutated_valid_files_never_panic_a_reader(
        n in 1usize..4,
        h in 1usize..6,
        w in 1usize..6,
        flag in any::<bool>(),
        muts in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..4),
    ) {
        read_all(&mutate(valid_npy_u8(n, h, w), &muts));
        read_all(&mutate(valid_idx(n, h, w, flag), &muts));
        read_all(&mutate(valid_png(h as u32, w as u32, flag), &muts));
        read_all(&mutate(valid_safetensors(n * h), &muts));
    }
}
