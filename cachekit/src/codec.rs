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
    serde_json::from_slice(bytes).map_err(|source| CacheError::Decode {
        key: key.to_owned(),
        source,
    })
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
}
