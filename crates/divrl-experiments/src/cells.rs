//! The standard metric cells of an evaluation in the reports' tables.

use divrl::eval::EvalReport;

/// Formats a metric with 3 decimals (FID with 2).
pub fn f3(v: f64) -> String {
    format!("{v:.3}")
}

/// The standard metric row of an evaluation.
pub fn metric_cells(r: &EvalReport) -> Vec<String> {
    vec![
        f3(r.recall),
        f3(r.precision),
        format!("{:.2}", r.fid),
        f3(r.density),
        f3(r.coverage),
    ]
}

pub const METRIC_HEADERS: [&str; 5] = ["Recall ↑", "Precision", "FID ↓", "Density", "Coverage ↑"];
