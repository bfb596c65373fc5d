//! Flat tables of experiment results (turns, annotations, judgements, continuations) as
//! JSONL, CSV or Parquet: a small typed table model ([`Column`], [`Cell`]) and one
//! streaming [`TableWriter`] for all three formats, so every exporter describes its rows
//! once and the user picks the format.
//!
//! - JSONL: one object per row, keys in column order; `Null` and non-finite floats are
//!   `null` (JSON has no NaN or infinity).
//! - CSV: RFC 4180 with `\n` line ends: a header row, fields quoted when they hold `,`,
//!   `"`, CR or LF, `""` inside quotes; `Null` is an empty field; non-finite floats are
//!   `NaN`, `inf`, `-inf`, which pandas and R read back as such. Written by hand: the
//!   format is small and a dependency would be larger than this file.
//! - Parquet: nullable Utf8 / Int64 / Float64 / Boolean columns, written in record batches
//!   of [`crate::parquet_export::BATCH_ROWS`] rows with Snappy pages, like the corpus
//!   exports (the batching is shared with [`crate::parquet_export`]).

use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use arrow_array::ArrayRef;
use arrow_array::builder::{BooleanBuilder, Float64Builder, Int64Builder, StringBuilder};
use arrow_schema::{DataType, Field, Schema};

use crate::parquet_export::{Batched, Columns};
use crate::{CorpusError, Location};

/// The type of a column's values (every column also accepts [`Cell::Null`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ColumnType {
    Text,
    Integer,
    Float,
    Bool,
}

impl ColumnType {
    pub fn name(self) -> &'static str {
        match self {
            ColumnType::Text => "text",
            ColumnType::Integer => "integer",
            ColumnType::Float => "float",
            ColumnType::Bool => "bool",
        }
    }

    fn arrow_type(self) -> DataType {
        match self {
            ColumnType::Text => DataType::Utf8,
            ColumnType::Integer => DataType::Int64,
            ColumnType::Float => DataType::Float64,
            ColumnType::Bool => DataType::Boolean,
        }
    }
}

/// A named, typed column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    pub kind: ColumnType,
}

impl Column {
    pub fn new(name: impl Into<String>, kind: ColumnType) -> Column {
        Column { name: name.into(), kind }
    }

    pub fn text(name: impl Into<String>) -> Column {
        Column::new(name, ColumnType::Text)
    }

    pub fn integer(name: impl Into<String>) -> Column {
        Column::new(name, ColumnType::Integer)
    }

    pub fn float(name: impl Into<String>) -> Column {
        Column::new(name, ColumnType::Float)
    }

    pub fn bool(name: impl Into<String>) -> Column {
        Column::new(name, ColumnType::Bool)
    }
}

/// One value of a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl Cell {
    /// The column type this cell fits; `None` for `Null`, which fits every column.
    pub fn kind(&self) -> Option<ColumnType> {
        match self {
            Cell::Null => None,
            Cell::Text(_) => Some(ColumnType::Text),
            Cell::Integer(_) => Some(ColumnType::Integer),
            Cell::Float(_) => Some(ColumnType::Float),
            Cell::Bool(_) => Some(ColumnType::Bool),
        }
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Cell {
        Cell::Text(text.to_string())
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Cell {
        Cell::Text(text)
    }
}

impl From<i64> for Cell {
    fn from(value: i64) -> Cell {
        Cell::Integer(value)
    }
}

impl From<u32> for Cell {
    fn from(value: u32) -> Cell {
        Cell::Integer(i64::from(value))
    }
}

impl From<f64> for Cell {
    fn from(value: f64) -> Cell {
        Cell::Float(value)
    }
}

impl From<bool> for Cell {
    fn from(value: bool) -> Cell {
        Cell::Bool(value)
    }
}

impl<T: Into<Cell>> From<Option<T>> for Cell {
    fn from(value: Option<T>) -> Cell {
        value.map_or(Cell::Null, Into::into)
    }
}

/// The file formats a table can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableFormat {
    Jsonl,
    Csv,
    Parquet,
}

impl TableFormat {
    pub const ALL: [TableFormat; 3] = [TableFormat::Jsonl, TableFormat::Csv, TableFormat::Parquet];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TableFormat::Jsonl => "jsonl",
            TableFormat::Csv => "csv",
            TableFormat::Parquet => "parquet",
        }
    }

    /// The file extension, without the dot (the same as the name).
    pub fn extension(self) -> &'static str {
        self.name()
    }
}

impl fmt::Display for TableFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TableFormat {
    type Err = String;

    fn from_str(name: &str) -> Result<TableFormat, String> {
        let lowered = name.trim().to_ascii_lowercase();
        TableFormat::ALL.into_iter().find(|format| format.name() == lowered).ok_or_else(|| {
            let known: Vec<&str> = TableFormat::ALL.iter().map(|format| format.name()).collect();
            format!("unknown table format `{name}` (expected one of: {})", known.join(", "))
        })
    }
}

/// Streams rows to a file in one [`TableFormat`]. Rows are checked against the columns:
/// a row of the wrong width or a cell of the wrong type is an error naming the row
/// (1-based) and the column. Call [`TableWriter::finish`]: a writer dropped without it
/// leaves a JSONL or CSV file possibly short of its last rows and a Parquet file without
/// its footer.
pub struct TableWriter {
    path: PathBuf,
    columns: Vec<Column>,
    rows: u64,
    sink: Sink,
}

enum Sink {
    Jsonl(BufWriter<File>),
    Csv(BufWriter<File>),
    Parquet(Box<Batched<ArrowColumns>>),
}

impl fmt::Debug for TableWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let format = match self.sink {
            Sink::Jsonl(_) => TableFormat::Jsonl,
            Sink::Csv(_) => TableFormat::Csv,
            Sink::Parquet(_) => TableFormat::Parquet,
        };
        f.debug_struct("TableWriter")
            .field("path", &self.path)
            .field("format", &format)
            .field("columns", &self.columns)
            .field("rows", &self.rows)
            .finish()
    }
}

impl TableWriter {
    /// Creates (or truncates) `path`. The columns must be at least one, with distinct
    /// names. CSV writes its header row here.
    pub fn create(
        path: &Path,
        format: TableFormat,
        columns: Vec<Column>,
    ) -> Result<TableWriter, CorpusError> {
        if columns.is_empty() {
            return Err(CorpusError::invalid(Location::file(path), "a table needs at least one column"));
        }
        for (index, column) in columns.iter().enumerate() {
            if columns[..index].iter().any(|earlier| earlier.name == column.name) {
                return Err(CorpusError::invalid(
                    Location::file(path).with_field(column.name.clone()),
                    "column name given twice",
                ));
            }
        }
        let sink = match format {
            TableFormat::Jsonl => Sink::Jsonl(create_text_file(path)?),
            TableFormat::Csv => {
                let mut file = create_text_file(path)?;
                let mut header = String::new();
                for (index, column) in columns.iter().enumerate() {
                    if index > 0 {
                        header.push(',');
                    }
                    push_csv_field(&mut header, &column.name);
                }
                header.push('\n');
                file.write_all(header.as_bytes()).map_err(|error| CorpusError::io(path, error))?;
                Sink::Csv(file)
            }
            TableFormat::Parquet => {
                let fields: Vec<Field> = columns
                    .iter()
                    .map(|column| Field::new(&column.name, column.kind.arrow_type(), true))
                    .collect();
                let builders = columns.iter().map(|column| ArrowColumn::new(column.kind)).collect();
                Sink::Parquet(Box::new(Batched::open(
                    path,
                    Arc::new(Schema::new(fields)),
                    ArrowColumns(builders),
                )?))
            }
        };
        Ok(TableWriter { path: path.to_path_buf(), columns, rows: 0, sink })
    }

    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// Rows accepted so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Appends one row, after checking it against the columns.
    pub fn write_row(&mut self, row: &[Cell]) -> Result<(), CorpusError> {
        let row_number = self.rows + 1;
        self.check_row(row, row_number)?;
        let path = &self.path;
        match &mut self.sink {
            Sink::Jsonl(file) => {
                let mut line = String::from("{");
                for (index, (column, cell)) in self.columns.iter().zip(row).enumerate() {
                    if index > 0 {
                        line.push(',');
                    }
                    push_json_string(&mut line, &column.name);
                    line.push(':');
                    push_json_cell(&mut line, cell);
                }
                line.push_str("}\n");
                file.write_all(line.as_bytes()).map_err(|error| CorpusError::io(path, error))?;
            }
            Sink::Csv(file) => {
                let mut line = String::new();
                for (index, cell) in row.iter().enumerate() {
                    if index > 0 {
                        line.push(',');
                    }
                    push_csv_cell(&mut line, cell);
                }
                line.push('\n');
                file.write_all(line.as_bytes()).map_err(|error| CorpusError::io(path, error))?;
            }
            Sink::Parquet(file) => {
                for (builder, cell) in file.columns.0.iter_mut().zip(row) {
                    builder.append(cell);
                }
                file.row_added()?;
            }
        }
        self.rows = row_number;
        Ok(())
    }

    /// Flushes the rows (and for Parquet writes the footer); returns the number of rows.
    pub fn finish(self) -> Result<u64, CorpusError> {
        let path = self.path;
        match self.sink {
            Sink::Jsonl(mut file) | Sink::Csv(mut file) => {
                file.flush().map_err(|error| CorpusError::io(&path, error))?;
                Ok(self.rows)
            }
            Sink::Parquet(file) => file.finish(),
        }
    }

    fn check_row(&self, row: &[Cell], row_number: u64) -> Result<(), CorpusError> {
        let location = || Location::file(&self.path).with_record(format!("row {row_number}"));
        if row.len() != self.columns.len() {
            // Name the first column missing, or the first cell too many.
            let field = match self.columns.get(row.len()) {
                Some(column) => column.name.clone(),
                None => format!("cell {} (after the last column)", self.columns.len() + 1),
            };
            return Err(CorpusError::invalid(
                location().with_field(field),
                format!("row has {} cells, the table has {} columns", row.len(), self.columns.len()),
            ));
        }
        for (column, cell) in self.columns.iter().zip(row) {
            if let Some(kind) = cell.kind()
                && kind != column.kind
            {
                return Err(CorpusError::invalid(
                    location().with_field(column.name.clone()),
                    format!("expected a {} value, found a {} value", column.kind.name(), kind.name()),
                ));
            }
        }
        Ok(())
    }
}

fn create_text_file(path: &Path) -> Result<BufWriter<File>, CorpusError> {
    let file = File::create(path).map_err(|error| CorpusError::io(path, error))?;
    Ok(BufWriter::with_capacity(1 << 16, file))
}

fn push_json_string(out: &mut String, text: &str) {
    // Serializing a &str into a String cannot fail; the fallback keeps that a non-panic.
    out.push_str(&serde_json::to_string(text).unwrap_or_else(|_| String::from("null")));
}

/// JSON numbers use serde_json's shortest round-trip formatting (`0.1`, `1.0`, `1e+300`).
fn push_json_cell(out: &mut String, cell: &Cell) {
    match cell {
        Cell::Null => out.push_str("null"),
        Cell::Text(text) => push_json_string(out, text),
        Cell::Integer(value) => out.push_str(&value.to_string()),
        Cell::Float(value) => out.push_str(&serde_json::Value::from(*value).to_string()),
        Cell::Bool(value) => out.push_str(if *value { "true" } else { "false" }),
    }
}

fn push_csv_field(out: &mut String, text: &str) {
    if text.contains([',', '"', '\r', '\n']) {
        out.push('"');
        out.push_str(&text.replace('"', "\"\""));
        out.push('"');
    } else {
        out.push_str(text);
    }
}

fn push_csv_cell(out: &mut String, cell: &Cell) {
    match cell {
        Cell::Null => {}
        Cell::Text(text) => push_csv_field(out, text),
        Cell::Integer(value) => out.push_str(&value.to_string()),
        Cell::Float(value) if value.is_nan() => out.push_str("NaN"),
        Cell::Float(value) if value.is_infinite() => out.push_str(if *value > 0.0 { "inf" } else { "-inf" }),
        // The same digits as JSONL, so both text formats agree on every value.
        Cell::Float(value) => out.push_str(&serde_json::Value::from(*value).to_string()),
        Cell::Bool(value) => out.push_str(if *value { "true" } else { "false" }),
    }
}

/// One Parquet column's builder.
enum ArrowColumn {
    Text(StringBuilder),
    Integer(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
}

impl ArrowColumn {
    fn new(kind: ColumnType) -> ArrowColumn {
        match kind {
            ColumnType::Text => ArrowColumn::Text(StringBuilder::new()),
            ColumnType::Integer => ArrowColumn::Integer(Int64Builder::new()),
            ColumnType::Float => ArrowColumn::Float(Float64Builder::new()),
            ColumnType::Bool => ArrowColumn::Bool(BooleanBuilder::new()),
        }
    }

    /// Appends a cell already checked against this column's type; a cell of another type
    /// (impossible after the check) is stored as null rather than panicking.
    fn append(&mut self, cell: &Cell) {
        match (self, cell) {
            (ArrowColumn::Text(builder), Cell::Text(text)) => builder.append_value(text),
            (ArrowColumn::Integer(builder), Cell::Integer(value)) => builder.append_value(*value),
            (ArrowColumn::Float(builder), Cell::Float(value)) => builder.append_value(*value),
            (ArrowColumn::Bool(builder), Cell::Bool(value)) => builder.append_value(*value),
            (ArrowColumn::Text(builder), _) => builder.append_null(),
            (ArrowColumn::Integer(builder), _) => builder.append_null(),
            (ArrowColumn::Float(builder), _) => builder.append_null(),
            (ArrowColumn::Bool(builder), _) => builder.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ArrowColumn::Text(builder) => Arc::new(builder.finish()),
            ArrowColumn::Integer(builder) => Arc::new(builder.finish()),
            ArrowColumn::Float(builder) => Arc::new(builder.finish()),
            ArrowColumn::Bool(builder) => Arc::new(builder.finish()),
        }
    }
}

struct ArrowColumns(Vec<ArrowColumn>);

impl Columns for ArrowColumns {
    fn finish(&mut self) -> Vec<ArrayRef> {
        self.0.iter_mut().map(ArrowColumn::finish).collect()
    }
}
