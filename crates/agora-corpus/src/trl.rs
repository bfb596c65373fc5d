//! TRL dataset files (JSONL): `messages`, `prompt`/`completion`, preference and KTO formats.
