use thiserror::Error;

/// Everything that can go wrong in reward, selection and metric computations.
///
/// Messages are single lines meant for a user: they name the offending quantity.
#[derive(Debug, Error)]
pub enum Error {
    #[error("{what}: expected {expected}, got {got}")]
    Shape {
        what: String,
        expected: String,
        got: String,
    },
    #[error("{what} contains a non-finite value (NaN or Inf) at row {row}, column {col}")]
    NonFinite {
        what: String,
        row: usize,
        col: usize,
    },
    #[error("{0}")]
    TooFew(String),
    #[error("{0}")]
    InvalidParameter(String),
    #[error("{what} is not positive definite even after adding jitter {jitter:e} to the diagonal (duplicate features? raise --jitter)")]
    Singular { what: String, jitter: f64 },
    #[error("{path}: {msg}")]
    File { path: String, msg: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn too_few(msg: impl Into<String>) -> Self {
        Error::TooFew(msg.into())
    }
    pub(crate) fn param(msg: impl Into<String>) -> Self {
        Error::InvalidParameter(msg.into())
    }
}
