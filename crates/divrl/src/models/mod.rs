//! Networks. One model per file.
pub mod classifier;
pub mod clip;
pub mod clip_tokenizer;
pub mod inception;
pub mod sd;
pub mod unet;
