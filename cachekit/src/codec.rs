//! Serialization of cached values.
//!
//! Values are stored as JSON (serde_json): readable with `redis-cli GET`, and shareable with
//! services written in other languages. The encoding is part of the stable key/value format
//! documented on the crate root.

use crate::CacheError;
use serde::{Serialize, de::DeserializeOwned};

/// Encodes `value` as JSON bytes.
pub(crate) fn encode<T: Serialize + ?Sized>(key: &str, value: &T) -> Result<Vec<u8>, CacheError> {
    serde_json::to_vec(value).map_err(|source| CacheError::Encode {
        key: key.to_owned(),
        source,
    })
}

/// Decodes JSON bytes into `T`. The error does not include the bytes: cached values may hold
/// personal data and must not reach logs.
pub(crate) fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, CacheError> {
    serde_json::from_slice(bytes).map_err(|error| CacheError::Decode {
        key: key.to_owned(),
        source: redacted::<T>(&error),
    })
}

/// serde_json's messages quote the data they reject (`invalid type: string "ada@example.com",
/// expected u64`); keep only the kind of problem, the requested type and the position.
fn redacted<T>(error: &serde_json::Error) -> serde_json::Error {
    use serde_json::error::Category;
    let problem = match error.classify() {
        Category::Syntax => "not valid JSON",
        Category::Eof => "truncated or empty JSON",
        Category::Data => "JSON of another shape",
        Category::Io => "unreadable JSON",
    };
    serde::de::Error::custom(format_args!(
        "{problem} for `{}` (line {}, column {})",
        std::any::type_name::<T>(),
        error.line(),
        error.column()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_foreign_bytes() {
        let bytes = encode("k", &vec![1u32, 2, 3]).unwrap();
        assert_eq!(bytes, b"[1,2,3]");
        assert_eq!(decode::<Vec<u32>>("k", &bytes).unwrap(), vec![1, 2, 3]);
        let err = decode::<Vec<u32>>("k", b"\xff\x00not json").unwrap_err();
        assert!(err.is_decode());
        let err = decode::<String>("k", b"[1,2,3]").unwrap_err();
        assert!(err.is_decode());
    }

    #[test]
    fn decode_errors_never_quote_the_value() {
        let err = decode::<u64>("k", br#""ada@example.com""#).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("ada@"), "{text}");
        assert!(text.contains("u64") && text.contains("column"), "{text}");
    }
}
