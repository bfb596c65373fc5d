//! agora's HTTP side: the OpenAI-compatible API served by `agora serve` (and, later, the
//! local web viewer). The only crate that serves HTTP.
