//! The tensor side of training: losses (SFT cross-entropy, DPO and its variants), the
//! optimizer (AdamW) with gradient accumulation and clipping. agora-train drives them.
