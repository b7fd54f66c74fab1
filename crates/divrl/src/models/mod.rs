//! Networks. One model per file.
pub mod classifier;
pub mod inception;
pub mod unet;
