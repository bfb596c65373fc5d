//! Flat table exports: every format round-trips the same rows (tricky text, nulls,
//! non-finite floats), CSV is exact RFC 4180 text, and bad rows are errors naming the row
//! and column.

use std::fs::File;
use std::path::Path;

use agora_corpus::table::{Cell, Column, ColumnType, TableFormat, TableWriter};
use arrow_array::{Array, BooleanArray, Float64Array, Int64Array, StringArray};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::{Value, json};

fn columns() -> Vec<Column> {
    vec![Column::text("text"), Column::integer("turn_index"), Column::float("score"), Column::bool("empty")]
}

/// Rows with commas, quotes, CR/LF, unicode, nulls in every column and odd floats.
fn rows() -> Vec<Vec<Cell>> {
    vec![
        vec!["plain".into(), Cell::Integer(0), Cell::Float(1.0), Cell::Bool(false)],
        vec!["a, b".into(), Cell::Integer(-7), Cell::Float(0.1), Cell::Bool(true)],
        vec!["say \"hi\"".into(), Cell::Integer(i64::MAX), Cell::Float(-2.5e300), Cell::Null],
        vec!["line one\nline two\r\nthree".into(), Cell::Null, Cell::Null, Cell::Bool(true)],
        vec!["ünïcødé — 日本語 🙂".into(), Cell::Integer(3), Cell::Float(f64::NAN), Cell::Bool(false)],
        vec![Cell::Null, Cell::Integer(4), Cell::Float(f64::INFINITY), Cell::Bool(false)],
        vec!["".into(), Cell::Integer(5), Cell::Float(f64::NEG_INFINITY), Cell::Null],
    ]
}

fn write(path: &Path, format: TableFormat, rows: &[Vec<Cell>]) -> u64 {
    let mut writer = TableWriter::create(path, format, columns()).unwrap();
    for row in rows {
        writer.write_row(row).unwrap();
    }
    writer.finish().unwrap()
}

/// A cell as JSONL writes it: non-finite floats become null.
fn as_json(cell: &Cell) -> Value {
    match cell {
        Cell::Null => Value::Null,
        Cell::Text(text) => json!(text),
        Cell::Integer(value) => json!(value),
        Cell::Float(value) => serde_json::Number::from_f64(*value).map_or(Value::Null, Value::Number),
        Cell::Bool(value) => json!(value),
    }
}

#[test]
fn formats_have_names_and_extensions() {
    for format in TableFormat::ALL {
        assert_eq!(format.name().parse::<TableFormat>().unwrap(), format);
        assert_eq!(format.extension(), format.name());
    }
    assert_eq!(" CSV ".parse::<TableFormat>().unwrap(), TableFormat::Csv);
    let error = "xlsx".parse::<TableFormat>().unwrap_err();
    assert!(error.contains("xlsx") && error.contains("jsonl, csv, parquet"), "{error}");
}

#[test]
fn jsonl_round_trips_with_keys_in_column_order() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("t.jsonl");
    assert_eq!(write(&path, TableFormat::Jsonl, &rows()), 7);
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7);
    assert!(text.ends_with('\n'));
    assert_eq!(lines[0], r#"{"text":"plain","turn_index":0,"score":1.0,"empty":false}"#);
    for (line, row) in lines.iter().zip(rows()) {
        let object: serde_json::Map<String, Value> = serde_json::from_str(line).unwrap();
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(keys, ["text", "turn_index", "score", "empty"]);
        let values: Vec<Value> = object.values().cloned().collect();
        let expected: Vec<Value> = row.iter().map(as_json).collect();
        assert_eq!(values, expected, "{line}");
    }
    assert_eq!(lines[4].split("\"score\":").nth(1).unwrap(), "null,\"empty\":false}");
}

#[test]
fn csv_is_exact_rfc_4180_text() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("t.csv");
    assert_eq!(write(&path, TableFormat::Csv, &rows()), 7);
    let expected = concat!(
        "text,turn_index,score,empty\n",
        "plain,0,1.0,false\n",
        "\"a, b\",-7,0.1,true\n",
        "\"say \"\"hi\"\"\",9223372036854775807,-2.5e+300,\n",
        "\"line one\nline two\r\nthree\",,,true\n",
        "ünïcødé — 日本語 🙂,3,NaN,false\n",
        ",4,inf,false\n",
        ",5,-inf,\n",
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
}

/// A minimal RFC 4180 reader for the round trip: fields, with `""` inside quotes.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut characters = text.chars().peekable();
    while let Some(character) = characters.next() {
        match (quoted, character) {
            (true, '"') if characters.peek() == Some(&'"') => {
                characters.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, other) => field.push(other),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, other) => field.push(other),
        }
    }
    assert!(field.is_empty() && record.is_empty(), "CSV must end with a line end");
    records
}

#[test]
fn csv_round_trips_through_a_parser() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("t.csv");
    write(&path, TableFormat::Csv, &rows());
    let records = parse_csv(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(records[0], ["text", "turn_index", "score", "empty"]);
    assert_eq!(records.len(), 8);
    for (record, row) in records[1..].iter().zip(rows()) {
        let expected: Vec<String> = row
            .iter()
            .map(|cell| match cell {
                Cell::Null => String::new(),
                Cell::Text(text) => text.clone(),
                Cell::Integer(value) => value.to_string(),
                Cell::Float(value) if value.is_nan() => "NaN".into(),
                Cell::Float(value) if value.is_infinite() => {
                    (if *value > 0.0 { "inf" } else { "-inf" }).into()
                }
                Cell::Float(value) => as_json(&Cell::Float(*value)).to_string(),
                Cell::Bool(value) => value.to_string(),
            })
            .collect();
        assert_eq!(record, &expected);
        // Numbers read back as the same values.
        if let Cell::Float(value) = &row[2]
            && value.is_finite()
        {
            assert_eq!(record[2].parse::<f64>().unwrap(), *value);
        }
    }
}

#[test]
fn csv_quotes_header_names_too() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("h.csv");
    let writer =
        TableWriter::create(&path, TableFormat::Csv, vec![Column::text("a,b"), Column::text("q\"")]).unwrap();
    assert_eq!(writer.finish().unwrap(), 0);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "\"a,b\",\"q\"\"\"\n");
}

#[test]
fn parquet_round_trips_with_nullable_typed_columns() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("t.parquet");
    assert_eq!(write(&path, TableFormat::Parquet, &rows()), 7);
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap();
    let schema = builder.schema().clone();
    let kinds: Vec<(String, String, bool)> = schema
        .fields()
        .iter()
        .map(|field| (field.name().clone(), field.data_type().to_string(), field.is_nullable()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("text".to_string(), "Utf8".to_string(), true),
            ("turn_index".into(), "Int64".into(), true),
            ("score".into(), "Float64".into(), true),
            ("empty".into(), "Boolean".into(), true),
        ]
    );
    let mut read: Vec<Vec<Cell>> = Vec::new();
    for batch in builder.build().unwrap() {
        let batch = batch.unwrap();
        let text = batch.column(0).as_any().downcast_ref::<StringArray>().unwrap();
        let index = batch.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        let score = batch.column(2).as_any().downcast_ref::<Float64Array>().unwrap();
        let empty = batch.column(3).as_any().downcast_ref::<BooleanArray>().unwrap();
        for row in 0..batch.num_rows() {
            read.push(vec![
                if text.is_null(row) { Cell::Null } else { text.value(row).into() },
                if index.is_null(row) { Cell::Null } else { Cell::Integer(index.value(row)) },
                if score.is_null(row) { Cell::Null } else { Cell::Float(score.value(row)) },
                if empty.is_null(row) { Cell::Null } else { Cell::Bool(empty.value(row)) },
            ]);
        }
    }
    let expected = rows();
    assert_eq!(read.len(), expected.len());
    for (got, want) in read.iter().zip(&expected) {
        for (got, want) in got.iter().zip(want) {
            match (got, want) {
                // NaN != NaN: Parquet keeps it, so compare by kind.
                (Cell::Float(got), Cell::Float(want)) if want.is_nan() => assert!(got.is_nan()),
                _ => assert_eq!(got, want),
            }
        }
    }
}

#[test]
fn parquet_writes_many_batches() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("many.parquet");
    let mut writer = TableWriter::create(&path, TableFormat::Parquet, vec![Column::integer("n")]).unwrap();
    let total = agora_corpus::parquet_export::BATCH_ROWS as i64 * 2 + 5;
    for n in 0..total {
        writer.write_row(&[Cell::Integer(n)]).unwrap();
    }
    assert_eq!(writer.rows(), total as u64);
    assert_eq!(writer.finish().unwrap(), total as u64);
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(File::open(&path).unwrap()).unwrap().build().unwrap();
    let mut expected = 0;
    for batch in reader {
        let batch = batch.unwrap();
        let values = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        for value in values.values().iter() {
            assert_eq!(*value, expected);
            expected += 1;
        }
    }
    assert_eq!(expected, total);
}

#[test]
fn rows_that_do_not_fit_are_errors_naming_row_and_column() {
    let folder = tempfile::tempdir().unwrap();
    for format in TableFormat::ALL {
        let path = folder.path().join(format!("bad.{}", format.extension()));
        let mut writer = TableWriter::create(&path, format, columns()).unwrap();
        writer.write_row(&rows()[0]).unwrap();

        let short = writer.write_row(&["x".into(), Cell::Integer(1)]).unwrap_err().to_string();
        assert!(short.contains("row 2") && short.contains("`score`") && short.contains("2 cells"), "{short}");

        let mut long = rows()[0].clone();
        long.push(Cell::Null);
        let long = writer.write_row(&long).unwrap_err().to_string();
        assert!(long.contains("row 2") && long.contains("cell 5") && long.contains("5 cells"), "{long}");

        let wrong_type = [Cell::Null, Cell::Float(1.0), Cell::Null, Cell::Null];
        let wrong_type = writer.write_row(&wrong_type).unwrap_err().to_string();
        assert!(
            wrong_type.contains("row 2")
                && wrong_type.contains("`turn_index`")
                && wrong_type.contains("integer"),
            "{wrong_type}"
        );

        // Rejected rows leave nothing behind: the next good row is row 2.
        writer.write_row(&rows()[1]).unwrap();
        assert_eq!(writer.finish().unwrap(), 2, "{format}");
    }
    let text = std::fs::read_to_string(folder.path().join("bad.csv")).unwrap();
    assert_eq!(text.lines().count(), 3);
}

#[test]
fn bad_column_lists_are_refused() {
    let folder = tempfile::tempdir().unwrap();
    let path = folder.path().join("x.jsonl");
    let none = TableWriter::create(&path, TableFormat::Jsonl, Vec::new()).unwrap_err().to_string();
    assert!(none.contains("at least one column"), "{none}");
    let twice = vec![Column::text("a"), Column::new("a", ColumnType::Integer)];
    let twice = TableWriter::create(&path, TableFormat::Parquet, twice).unwrap_err().to_string();
    assert!(twice.contains("`a`") && twice.contains("twice"), "{twice}");
}

#[test]
fn cells_from_plain_values() {
    assert_eq!(Cell::from("a"), Cell::Text("a".into()));
    assert_eq!(Cell::from(3u32), Cell::Integer(3));
    assert_eq!(Cell::from(Some(2.5)), Cell::Float(2.5));
    assert_eq!(Cell::from(None::<bool>), Cell::Null);
    assert_eq!(Cell::Null.kind(), None);
    assert_eq!(Cell::from(true).kind(), Some(ColumnType::Bool));
}
