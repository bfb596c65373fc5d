//! agora's measurements over stored results: inter-annotator agreement, means with
//! confidence intervals and label distributions (and, later, model metrics). Pure
//! functions over plain numbers and labels: no IO.
