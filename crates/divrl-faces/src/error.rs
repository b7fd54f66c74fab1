use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum FacesError {
    #[error("{}: not found: run scripts/setup-faces.sh (or point DIVRL_FACES at a folder holding manifest.json, gender-v1.onnx and age-v1.onnx)", .0.display())]
    Missing(PathBuf),
    #[error("{}: {msg}", path.display())]
    Manifest { path: PathBuf, msg: String },
    #[error("{}: {msg}", path.display())]
    Model { path: PathBuf, msg: String },
    #[error("face image {index}: {msg}")]
    BadImage { index: usize, msg: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{task} network: {msg}")]
    Run { task: &'static str, msg: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Metrics(#[from] divrl_reward::Error),
}
