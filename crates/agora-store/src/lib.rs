//! The workspace store (SQLite): the only crate that writes SQL.
