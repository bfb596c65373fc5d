//! Typed access to a GGUF file's metadata: every getter names the key (and the file) when a
//! value is missing or has the wrong type.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};

use crate::{ModelError, Result};

/// Reads a GGUF file's header: metadata and tensor descriptions, not the tensor data.
pub fn read_gguf_content(path: &Path) -> Result<Content> {
    let file = File::open(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    let mut reader = BufReader::new(file);
    Content::read(&mut reader)
        .map_err(|error| ModelError::file(path, format!("not a readable GGUF file: {error}")))
}

/// A GGUF file's metadata, borrowed from its [`Content`], with the file's path for errors.
#[derive(Debug, Clone, Copy)]
pub struct GgufMetadata<'a> {
    path: &'a Path,
    values: &'a HashMap<String, Value>,
}

impl<'a> GgufMetadata<'a> {
    pub fn new(path: &'a Path, content: &'a Content) -> GgufMetadata<'a> {
        GgufMetadata { path, values: &content.metadata }
    }

    pub fn path(&self) -> &Path {
        self.path
    }

    pub fn contains(&self, key: &str) -> bool {
        self.values.contains_key(key)
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.values.get(key)
    }

    fn missing(&self, key: &str) -> ModelError {
        ModelError::file(self.path, format!("GGUF metadata has no `{key}`"))
    }

    fn wrong_type(&self, key: &str, expected: &str, value: &Value) -> ModelError {
        ModelError::file(
            self.path,
            format!("GGUF metadata `{key}` should be {expected}, found {:?}", value.value_type()),
        )
    }

    pub fn string(&self, key: &str) -> Result<&'a str> {
        self.optional_string(key)?.ok_or_else(|| self.missing(key))
    }

    /// `None` when the key is absent; an error when it holds something other than a string.
    pub fn optional_string(&self, key: &str) -> Result<Option<&'a str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.as_str())),
            Some(other) => Err(self.wrong_type(key, "a string", other)),
        }
    }

    /// An unsigned integer stored with any integer type (writers differ: u32, i32, u64...).
    pub fn u64(&self, key: &str) -> Result<u64> {
        self.optional_u64(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn optional_u64(&self, key: &str) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(value) => value_as_u64(value)
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, "a non-negative integer", value)),
        }
    }

    pub fn u32(&self, key: &str) -> Result<u32> {
        self.optional_u32(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn optional_u32(&self, key: &str) -> Result<Option<u32>> {
        match self.optional_u64(key)? {
            None => Ok(None),
            Some(number) => u32::try_from(number).map(Some).map_err(|_| {
                ModelError::file(
                    self.path,
                    format!("GGUF metadata `{key}` = {number} does not fit in 32 bits"),
                )
            }),
        }
    }

    pub fn usize(&self, key: &str) -> Result<usize> {
        let number = self.u64(key)?;
        usize::try_from(number).map_err(|_| {
            ModelError::file(self.path, format!("GGUF metadata `{key}` = {number} is too large"))
        })
    }

    pub fn f32(&self, key: &str) -> Result<f32> {
        self.optional_f32(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn optional_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(number)) => Ok(Some(*number)),
            Some(Value::F64(number)) => Ok(Some(*number as f32)),
            Some(other) => Err(self.wrong_type(key, "a float", other)),
        }
    }

    pub fn optional_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(flag)) => Ok(Some(*flag)),
            Some(other) => Err(self.wrong_type(key, "a bool", other)),
        }
    }

    fn array(&self, key: &str) -> Result<&'a [Value]> {
        match self.get(key) {
            None => Err(self.missing(key)),
            Some(Value::Array(values)) => Ok(values.as_slice()),
            Some(other) => Err(self.wrong_type(key, "an array", other)),
        }
    }

    pub fn string_array(&self, key: &str) -> Result<Vec<&'a str>> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(index, value)| match value {
                Value::String(text) => Ok(text.as_str()),
                other => Err(self.wrong_type(&format!("{key}[{index}]"), "a string", other)),
            })
            .collect()
    }

    pub fn optional_string_array(&self, key: &str) -> Result<Option<Vec<&'a str>>> {
        if self.contains(key) { self.string_array(key).map(Some) } else { Ok(None) }
    }

    /// An array of integers of any integer type, as i64.
    pub fn integer_array(&self, key: &str) -> Result<Vec<i64>> {
        self.array(key)?
            .iter()
            .enumerate()
            .map(|(index, value)| {
                value_as_i64(value)
                    .ok_or_else(|| self.wrong_type(&format!("{key}[{index}]"), "an integer", value))
            })
            .collect()
    }

    pub fn optional_integer_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        if self.contains(key) { self.integer_array(key).map(Some) } else { Ok(None) }
    }

    /// The path, owned (for errors built after the borrow ends).
    pub fn path_buf(&self) -> PathBuf {
        self.path.to_path_buf()
    }
}

fn value_as_i64(value: &Value) -> Option<i64> {
    match *value {
        Value::U8(number) => Some(i64::from(number)),
        Value::I8(number) => Some(i64::from(number)),
        Value::U16(number) => Some(i64::from(number)),
        Value::I16(number) => Some(i64::from(number)),
        Value::U32(number) => Some(i64::from(number)),
        Value::I32(number) => Some(i64::from(number)),
        Value::U64(number) => i64::try_from(number).ok(),
        Value::I64(number) => Some(number),
        _ => None,
    }
}

fn value_as_u64(value: &Value) -> Option<u64> {
    match *value {
        Value::U64(number) => Some(number),
        _ => value_as_i64(value).and_then(|number| u64::try_from(number).ok()),
    }
}
