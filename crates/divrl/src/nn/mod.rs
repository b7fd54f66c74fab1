//! Neural-network building blocks shared by the models.
pub mod lora;
