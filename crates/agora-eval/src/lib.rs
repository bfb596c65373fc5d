//! agora's measurements over stored results: inter-annotator agreement, means with
//! confidence intervals and label distributions (and, later, model metrics). Pure
//! functions over plain numbers and labels: no IO.

pub mod agreement;
pub mod distribution;
pub mod stats;

pub use agreement::{Alpha, Level, krippendorff_alpha, krippendorff_alpha_labels};
pub use distribution::Distribution;
pub use stats::{Summary, student_t_quantile, summarize};
