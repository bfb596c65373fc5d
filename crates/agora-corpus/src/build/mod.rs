//! Training-data builders: corpora to SFT, DPO and KTO examples, and seeded grouped splits.
