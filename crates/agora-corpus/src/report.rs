//! What an import did: how much it read, what it skipped (each skip counted and the
//! first few kept with their place), and what it normalised.

use std::collections::BTreeMap;
use std::fmt;

use crate::CorpusError;

/// How many skipped records keep their full message; the rest are only counted.
const KEPT_SKIPS: usize = 20;

#[derive(Debug, Default, Clone)]
pub struct ImportReport {
    pub conversations: u64,
    pub turns: u64,
    pub bytes: u64,
    /// Records skipped because they failed to parse (with `keep_going`).
    pub skipped: u64,
    /// The first skipped records' errors.
    pub skipped_examples: Vec<String>,
    /// Normalisations and notable counts, e.g. `strategy "Questions" -> "Question"`,
    /// `deltas confirmed by DeltaBot`, `empty comments removed`.
    pub notes: BTreeMap<String, u64>,
}

impl ImportReport {
    pub fn note(&mut self, key: impl Into<String>, count: u64) {
        *self.notes.entry(key.into()).or_default() += count;
    }

    pub fn skip(&mut self, error: &CorpusError) {
        self.skipped += 1;
        if self.skipped_examples.len() < KEPT_SKIPS {
            self.skipped_examples.push(error.to_string());
        }
    }

    /// Folds `error` into the report when `keep_going` is set, or returns it.
    pub fn skip_or_fail(&mut self, keep_going: bool, error: CorpusError) -> Result<(), CorpusError> {
        match error {
            CorpusError::Invalid { .. } if keep_going => {
                self.skip(&error);
                Ok(())
            }
            other => Err(other),
        }
    }

    pub fn merge(&mut self, other: ImportReport) {
        self.conversations += other.conversations;
        self.turns += other.turns;
        self.bytes += other.bytes;
        self.skipped += other.skipped;
        for example in other.skipped_examples {
            if self.skipped_examples.len() < KEPT_SKIPS {
                self.skipped_examples.push(example);
            }
        }
        for (key, count) in other.notes {
            self.note(key, count);
        }
    }
}

impl fmt::Display for ImportReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "conversations: {}", self.conversations)?;
        writeln!(f, "turns: {}", self.turns)?;
        writeln!(f, "skipped records: {}", self.skipped)?;
        for example in &self.skipped_examples {
            writeln!(f, "  skipped: {example}")?;
        }
        if self.skipped as usize > self.skipped_examples.len() {
            writeln!(f, "  ... and {} more", self.skipped as usize - self.skipped_examples.len())?;
        }
        for (key, count) in &self.notes {
            writeln!(f, "{key}: {count}")?;
        }
        Ok(())
    }
}
