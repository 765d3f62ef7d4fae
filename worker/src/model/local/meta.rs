//! Typed reads of GGUF metadata values (`general.architecture`, `tokenizer.ggml.*`, …), which
//! files store with whichever integer width their writer chose.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

/// A GGUF file's metadata, by key.
pub(super) type Metadata = HashMap<String, Value>;

/// The integer in `value`, whatever its width.
pub(super) fn as_int(value: &Value) -> Option<i64> {
    match *value {
        Value::U8(v) => Some(v.into()),
        Value::I8(v) => Some(v.into()),
        Value::U16(v) => Some(v.into()),
        Value::I16(v) => Some(v.into()),
        Value::U32(v) => Some(v.into()),
        Value::I32(v) => Some(v.into()),
        Value::U64(v) => i64::try_from(v).ok(),
        Value::I64(v) => Some(v),
        _ => None,
    }
}

/// The string at `key`, if present and a string.
pub(super) fn string<'a>(metadata: &'a Metadata, key: &str) -> Option<&'a str> {
    match metadata.get(key) {
        Some(Value::String(text)) => Some(text),
        _ => None,
    }
}

/// The integer at `key`, if present and an integer.
pub(super) fn int(metadata: &Metadata, key: &str) -> Option<i64> {
    metadata.get(key).and_then(as_int)
}

/// The token id at `key`, if present and a valid id.
pub(super) fn id(metadata: &Metadata, key: &str) -> Option<u32> {
    int(metadata, key).and_then(|v| u32::try_from(v).ok())
}

/// The boolean at `key`, if present and a boolean.
pub(super) fn flag(metadata: &Metadata, key: &str) -> Option<bool> {
    match metadata.get(key) {
        Some(Value::Bool(v)) => Some(*v),
        _ => None,
    }
}

/// The array at `key`; an error names the key when it is missing or not an array.
pub(super) fn array<'a>(metadata: &'a Metadata, key: &str) -> Result<&'a [Value], String> {
    match metadata.get(key) {
        Some(Value::Array(values)) => Ok(values),
        Some(_) => Err(format!("GGUF metadata `{key}` is not an array")),
        None => Err(format!("GGUF metadata has no `{key}`")),
    }
}

/// The array of strings at `key`.
pub(super) fn strings<'a>(metadata: &'a Metadata, key: &str) -> Result<Vec<&'a str>, String> {
    array(metadata, key)?
        .iter()
        .map(|value| match value {
            Value::String(text) => Ok(text.as_str()),
            _ => Err(format!("GGUF metadata `{key}` holds a non-string")),
        })
        .collect()
}
