//! Parquet exports of conversations (one row per turn) and of training examples.
