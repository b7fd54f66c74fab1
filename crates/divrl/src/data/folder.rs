//! Image folders: `root/<class>/<image>.{png,jpg,jpeg}`, classes in sorted folder-name order.
use anyhow::{bail, Context, Result};
use std::path::Path;

/// Loads images as `[0, 1]` floats in CHW order; returns (data, labels, class names, c, h, w).
/// `channels` is 1 (grey) or 3 (RGB); `size` resizes every image to size×size, otherwise all
/// images must share the first one's size.
#[allow(clippy::type_complexity)]
pub fn read_image_folder(
    root: &Path,
    channels: usize,
    size: Option<u32>,
) -> Result<(Vec<f32>, Vec<i64>, Vec<String>, usize, usize, usize)> {
    if channels != 1 && channels != 3 {
        bail!("image channels must be 1 or 3, got {channels}");
    }
    let mut classes: Vec<_> = std::fs::read_dir(root)
        .with_context(|| format!("reading folder {}", root.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    classes.sort();
    if classes.is_empty() {
        bail!("{}: no class sub-folders", root.display());
    }
    let mut data = Vec::new();
    let mut labels = Vec::new();
    let mut hw: Option<(u32, u32)> = size.map(|s| (s, s));
    for (ci, name) in classes.iter().enumerate() {
        let dir = root.join(name);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading folder {}", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .map(|x| {
                        matches!(
                            x.to_string_lossy().to_ascii_lowercase().as_str(),
                            "png" | "jpg" | "jpeg"
                        )
                    })
                    .unwrap_or(false)
            })
            .collect();
        files.sort();
        for f in files {
            let img = image::open(&f).with_context(|| format!("decoding {}", f.display()))?;
            let img = match hw {
                None => {
                    hw = Some((img.width(), img.height()));
                    img
                }
                Some((w, h)) if size.is_some() && (img.width(), img.height()) != (w, h) => {
                    img.resize_exact(w, h, image::imageops::FilterType::Triangle)
                }
                Some((w, h)) => {
                    if (img.width(), img.height()) != (w, h) {
                        bail!(
                            "{}: size {}x{} differs from {w}x{h} (pass a size to resize)",
                            f.display(),
                            img.width(),
                            img.height()
                        );
                    }
                    img
                }
            };
            let (w, h) = (img.width() as usize, img.height() as usize);
            if channels == 1 {
                data.extend(img.to_luma8().as_raw().iter().map(|&v| v as f32 / 255.0));
            } else {
                let rgb = img.to_rgb8();
                let raw = rgb.as_raw();
                for c in 0..3 {
                    data.extend((0..w * h).map(|i| raw[i * 3 + c] as f32 / 255.0));
                }
            }
            labels.push(ci as i64);
        }
    }
    let Some((w, h)) = hw else {
        bail!("{}: no PNG/JPEG images found", root.display())
    };
    if labels.is_empty() {
        bail!("{}: no PNG/JPEG images found", root.display());
    }
    Ok((data, labels, classes, channels, h as usize, w as usize))
}
