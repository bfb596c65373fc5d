//! The `agora` binary.

fn main() {}
