//! Tan et al. 2016 r/changemyview `*.jsonlist`: reply trees, deltas, footnote removal.
