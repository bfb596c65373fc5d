//! Parquet exports for analytics: one row per turn (with its labels as columns), and one
//! row per chat example. Rows are buffered and written as a record batch every
//! [`BATCH_ROWS`] rows, so memory stays bounded however large the corpus; pages are
//! Snappy-compressed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agora_core::Conversation;
use arrow_array::builder::{BooleanBuilder, StringBuilder, UInt32Builder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde_json::Value;

use crate::CorpusError;
use crate::build::ChatExample;

/// Rows buffered before a record batch is written.
pub const BATCH_ROWS: usize = 8_192;

pub(crate) fn parquet_error(
    path: &Path,
    error: impl std::error::Error + Send + Sync + 'static,
) -> CorpusError {
    CorpusError::io(path, std::io::Error::other(error))
}

fn open_writer(path: &Path, schema: SchemaRef) -> Result<ArrowWriter<File>, CorpusError> {
    let file = File::create(path).map_err(|error| CorpusError::io(path, error))?;
    let properties = WriterProperties::builder().set_compression(Compression::SNAPPY).build();
    ArrowWriter::try_new(file, schema, Some(properties)).map_err(|error| parquet_error(path, error))
}

/// Builders of one table's columns, emptied into arrays at every batch.
pub(crate) trait Columns {
    fn finish(&mut self) -> Vec<ArrayRef>;
}

/// The part both writers share: a Parquet file receiving record batches of at most
/// [`BATCH_ROWS`] buffered rows. Shared with [`crate::table`].
pub(crate) struct Batched<C: Columns> {
    pub(crate) path: PathBuf,
    writer: ArrowWriter<File>,
    schema: SchemaRef,
    pub(crate) columns: C,
    buffered: usize,
    pub(crate) rows: u64,
}

impl<C: Columns> Batched<C> {
    pub(crate) fn open(path: &Path, schema: SchemaRef, columns: C) -> Result<Batched<C>, CorpusError> {
        Ok(Batched {
            path: path.to_path_buf(),
            writer: open_writer(path, schema.clone())?,
            schema,
            columns,
            buffered: 0,
            rows: 0,
        })
    }

    /// Counts a row appended to the columns, writing a batch when enough are buffered.
    pub(crate) fn row_added(&mut self) -> Result<(), CorpusError> {
        self.buffered += 1;
        if self.buffered >= BATCH_ROWS { self.flush() } else { Ok(()) }
    }

    fn flush(&mut self) -> Result<(), CorpusError> {
        if self.buffered == 0 {
            return Ok(());
        }
        let batch = RecordBatch::try_new(self.schema.clone(), self.columns.finish())
            .map_err(|error| parquet_error(&self.path, error))?;
        self.writer.write(&batch).map_err(|error| parquet_error(&self.path, error))?;
        self.rows += self.buffered as u64;
        self.buffered = 0;
        Ok(())
    }

    /// Writes the buffered rows and the file footer; returns the number of rows.
    pub(crate) fn finish(mut self) -> Result<u64, CorpusError> {
        self.flush()?;
        self.writer.close().map_err(|error| parquet_error(&self.path, error))?;
        Ok(self.rows)
    }
}

/// The turn table's columns.
pub fn turn_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("conversation_id", DataType::Utf8, false),
        Field::new("corpus", DataType::Utf8, false),
        Field::new("original_conversation_id", DataType::Utf8, false),
        Field::new("turn_index", DataType::UInt32, false),
        Field::new("turn_original_id", DataType::Utf8, true),
        Field::new("speaker", DataType::Utf8, false),
        Field::new("role", DataType::Utf8, false),
        Field::new("text", DataType::Utf8, false),
        Field::new("reply_to", DataType::UInt32, true),
        Field::new("strategy", DataType::Utf8, true),
        Field::new("delta_giver", DataType::Utf8, true),
        Field::new("delta_confirmed", DataType::Boolean, true),
        Field::new("gives_delta", DataType::Boolean, false),
        // The labels without a column (the whole delta, feedback, extra labels) as a JSON
        // object; null when there are none.
        Field::new("labels_json", DataType::Utf8, true),
    ]))
}

/// Writes one row per turn of every conversation given to [`ParquetTurnWriter::write`].
pub struct ParquetTurnWriter {
    file: Batched<TurnColumns>,
}

impl std::fmt::Debug for ParquetTurnWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetTurnWriter")
            .field("path", &self.file.path)
            .field("rows", &self.file.rows)
            .finish()
    }
}

#[derive(Default)]
struct TurnColumns {
    conversation_id: StringBuilder,
    corpus: StringBuilder,
    original_conversation_id: StringBuilder,
    turn_index: UInt32Builder,
    turn_original_id: StringBuilder,
    speaker: StringBuilder,
    role: StringBuilder,
    text: StringBuilder,
    reply_to: UInt32Builder,
    strategy: StringBuilder,
    delta_giver: StringBuilder,
    delta_confirmed: BooleanBuilder,
    gives_delta: BooleanBuilder,
    labels_json: StringBuilder,
}

impl Columns for TurnColumns {
    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.conversation_id.finish()),
            Arc::new(self.corpus.finish()),
            Arc::new(self.original_conversation_id.finish()),
            Arc::new(self.turn_index.finish()),
            Arc::new(self.turn_original_id.finish()),
            Arc::new(self.speaker.finish()),
            Arc::new(self.role.finish()),
            Arc::new(self.text.finish()),
            Arc::new(self.reply_to.finish()),
            Arc::new(self.strategy.finish()),
            Arc::new(self.delta_giver.finish()),
            Arc::new(self.delta_confirmed.finish()),
            Arc::new(self.gives_delta.finish()),
            Arc::new(self.labels_json.finish()),
        ]
    }
}

impl ParquetTurnWriter {
    pub fn new(path: &Path) -> Result<ParquetTurnWriter, CorpusError> {
        Ok(ParquetTurnWriter { file: Batched::open(path, turn_schema(), TurnColumns::default())? })
    }

    pub fn write(&mut self, conversation: &Conversation) -> Result<(), CorpusError> {
        for turn in &conversation.turns {
            let columns = &mut self.file.columns;
            columns.conversation_id.append_value(&conversation.id);
            columns.corpus.append_value(&conversation.source.corpus);
            columns.original_conversation_id.append_value(&conversation.source.original_id);
            columns.turn_index.append_value(turn.index);
            columns.turn_original_id.append_option(turn.original_id.as_deref());
            columns.speaker.append_value(&turn.speaker);
            columns.role.append_value(turn.role.as_str());
            columns.text.append_value(&turn.text);
            columns.reply_to.append_option(turn.reply_to);
            columns.strategy.append_option(turn.labels.strategy.map(|strategy| strategy.name()));
            columns.delta_giver.append_option(turn.labels.delta.as_ref().map(|delta| delta.giver.as_str()));
            columns.delta_confirmed.append_option(turn.labels.delta.as_ref().map(|delta| delta.confirmed));
            columns.gives_delta.append_value(turn.labels.gives_delta);
            columns.labels_json.append_option(remaining_labels_json(&turn.labels));
            self.file.row_added()?;
        }
        Ok(())
    }

    /// Writes the buffered rows and the file footer; returns the number of rows.
    pub fn finish(self) -> Result<u64, CorpusError> {
        self.file.finish()
    }
}

/// The labels that have no column of their own, as a JSON object, or `None`.
fn remaining_labels_json(labels: &agora_core::TurnLabels) -> Option<String> {
    let mut rest = serde_json::Map::new();
    if let Some(delta) = &labels.delta {
        rest.insert("delta".into(), serde_json::to_value(delta).unwrap_or(Value::Null));
    }
    if let Some(feedback) = &labels.feedback {
        rest.insert("feedback".into(), Value::from(feedback.clone()));
    }
    if !labels.extra.is_empty() {
        rest.insert("extra".into(), Value::Object(labels.extra.clone()));
    }
    (!rest.is_empty()).then(|| Value::Object(rest).to_string())
}

/// The example table's columns.
pub fn example_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("group", DataType::Utf8, false),
        Field::new("messages_json", DataType::Utf8, false),
        Field::new("meta_json", DataType::Utf8, false),
    ]))
}

/// Writes one row per chat example: its group, its messages and its meta as JSON.
pub struct ParquetExampleWriter {
    file: Batched<ExampleColumns>,
}

#[derive(Default)]
struct ExampleColumns {
    group: StringBuilder,
    messages_json: StringBuilder,
    meta_json: StringBuilder,
}

impl Columns for ExampleColumns {
    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.group.finish()),
            Arc::new(self.messages_json.finish()),
            Arc::new(self.meta_json.finish()),
        ]
    }
}

impl std::fmt::Debug for ParquetExampleWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParquetExampleWriter")
            .field("path", &self.file.path)
            .field("rows", &self.file.rows)
            .finish()
    }
}

impl ParquetExampleWriter {
    pub fn new(path: &Path) -> Result<ParquetExampleWriter, CorpusError> {
        Ok(ParquetExampleWriter { file: Batched::open(path, example_schema(), ExampleColumns::default())? })
    }

    pub fn write(&mut self, example: &ChatExample) -> Result<(), CorpusError> {
        let path = &self.file.path;
        let messages =
            serde_json::to_string(&example.messages).map_err(|error| parquet_error(path, error))?;
        let columns = &mut self.file.columns;
        columns.group.append_value(&example.group);
        columns.messages_json.append_value(messages);
        columns.meta_json.append_value(Value::Object(example.meta.clone()).to_string());
        self.file.row_added()
    }

    /// Writes the buffered rows and the file footer; returns the number of rows.
    pub fn finish(self) -> Result<u64, CorpusError> {
        self.file.finish()
    }
}
