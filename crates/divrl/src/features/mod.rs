//! Feature extractors ϕ, one idea per file: the interface and batched extraction
//! ([`extractor`]), the networks ([`networks`], [`pixels`]), the registry by name ([`registry`]),
//! image sources ([`sources`]), content hashes ([`hash`]) and the feature cache ([`cache`]).
//!
//! Convention: every extractor takes images as float `[N, C, H, W]` in `[0, 1]` (C = 1 or 3, any
//! size) and does its own preprocessing (channel conversion, resizing, scaling). Diffusion
//! samples in `[-1, 1]` are mapped with `(x + 1) / 2` first.
pub mod cache;
pub mod extractor;
pub mod hash;
pub mod networks;
pub mod pixels;
pub mod registry;
pub mod sources;

pub use cache::{features_of_source, write_npy_f32, FeatureCache};
pub use extractor::{extract, to_features, Extracted, Extractor};
pub use hash::{file_hash, tensor_content_hash};
pub use networks::{ClipExtractor, InceptionExtractor, NativeInceptionExtractor, SmallExtractor};
pub use registry::{
    default_classifier_dir, default_clip_dir, is_extractor_name, is_image_extractor_name,
    load_extractor, EXTRACTORS, IMAGE_EXTRACTORS_HELP,
};
pub use sources::{load_image_files, ImageSource};

pub use crate::imageops::{resize_bilinear, to_channels};
pub use crate::paths::{models_dir, resolve_model_path};
