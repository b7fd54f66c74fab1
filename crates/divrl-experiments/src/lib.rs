//! The applications on top of the divrl library: `divrl demo` and `divrl experiment …`, each a
//! resumable run folder that ends in tables, plots and a self-contained HTML report
//! (`divrl-report`). Nothing in the library imports from here.
//!
//! - [`demo`]: the baseline's collapse at high guidance, fine-tuning, before/after evaluation.
//! - [`experiment`]: the paper's tables on our data (selection, guidance, debias, ablation) and
//!   the seeded diversity study; one file per experiment.
//! - [`grids`], [`cells`], [`provenance`], [`files`]: what both reports are made of (sample grids,
//!   metric cells, machine and time, JSON files and the progress bar).
pub mod cells;
pub mod demo;
pub mod experiment;
pub mod files;
pub mod grids;
pub mod provenance;
