//! Where shipped and installed weights are found, from any working directory.
use std::path::{Path, PathBuf};

/// The folder holding shipped and installed weights: `$DIVRL_MODELS_DIR`, else the repository's
/// `models/` folder (resolved at build time).
pub fn models_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("DIVRL_MODELS_DIR") {
        return PathBuf::from(p);
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models"))
}

/// Where a model path of a config is found: as given when it exists (or is absolute or does not
/// start with `models/`), else inside [`models_dir`]. Default paths such as
/// `models/fashion-mnist-base-small` thus work from any working directory, as the classifier's do.
pub fn resolve_model_path(path: &Path) -> PathBuf {
    if path.is_absolute() || path.exists() {
        return path.to_path_buf();
    }
    match path.strip_prefix("models") {
        Ok(rest) if !rest.as_os_str().is_empty() => {
            let installed = models_dir().join(rest);
            if installed.exists() {
                installed
            } else {
                path.to_path_buf()
            }
        }
        _ => path.to_path_buf(),
    }
}
