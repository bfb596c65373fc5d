//! Words for JSON values in error messages ("expected a string, found a number"), one
//! spelling for every reader of JSON in agora.

use serde_json::Value;

/// The kind of a JSON value with its article: "null", "a boolean", "a number",
/// "a string", "a list", "an object".
pub fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}
