//! Networks. One model per file.
pub mod unet;
