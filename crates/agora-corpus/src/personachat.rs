//! Persona-Chat / ConvAI2 `*_original_no_cands.txt` and its `self`/`revised` variants.
