//! The one error type of the crate.

use std::time::Duration;

/// What went wrong in a cache operation or in building a [`CacheService`](crate::CacheService).
///
/// The infallible methods of `CacheService` (`get`, `set`, ...) never return this: they log it,
/// count it in [`CacheStats`](crate::CacheStats) and degrade. The `try_*` methods and
/// [`CacheServiceBuilder::build`](crate::CacheServiceBuilder::build) return it.
///
/// Decide on the kind with the `is_*` classifiers, never on the message text. No variant
/// carries a password: URLs are redacted before they reach an error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The configuration is invalid: a bad URL, an out-of-range number, an unknown option.
    #[error("invalid cache configuration: {0}")]
    Config(String),

    /// The backend did not answer within the operation timeout.
    #[error("cache operation `{op}` timed out after {timeout:?}")]
    Timeout {
        /// The operation that timed out (`get`, `set`, ...).
        op: &'static str,
        /// The timeout that was exceeded.
        timeout: Duration,
    },

    /// The circuit breaker is open: the backend failed recently and is being skipped.
    #[error("cache backend skipped: circuit breaker is open")]
    CircuitOpen,

    /// The Redis backend returned an error (connection refused, dropped, server error...).
    #[error("redis error: {0}")]
    Redis(#[source] redis::RedisError),

    /// A value could not be encoded for the cache.
    #[error("could not encode value for key `{key}`: {source}")]
    Encode {
        /// The logical key.
        key: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },

    /// A stored value did not decode into the requested type. The entry has been deleted.
    #[error("cached value under key `{key}` did not decode (entry removed): {source}")]
    Decode {
        /// The logical key.
        key: String,
        /// The deserializer's error.
        #[source]
        source: serde_json::Error,
    },

    /// A user-supplied [`Backend`](crate::Backend) failed.
    #[error("cache backend error: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl CacheError {
    /// The operation exceeded its timeout.
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::Timeout { .. } => true,
            Self::Redis(e) => e.is_timeout(),
            _ => false,
        }
    }

    /// The backend refused the connection (nothing listening, or it is restarting).
    pub fn is_connection_refusal(&self) -> bool {
        matches!(self, Self::Redis(e) if e.is_connection_refusal())
    }

    /// The connection was lost or could not be made (I/O level).
    pub fn is_connection_error(&self) -> bool {
        matches!(self, Self::Redis(e) if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal())
    }

    /// The call was skipped because the circuit breaker is open.
    pub fn is_circuit_open(&self) -> bool {
        matches!(self, Self::CircuitOpen)
    }

    /// The configuration is invalid.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config(_))
    }

    /// A stored value was not of the requested type (or not valid JSON).
    pub fn is_decode(&self) -> bool {
        matches!(self, Self::Decode { .. })
    }

    /// Whether this error says the backend is unhealthy, so it counts toward the breaker.
    /// Encoding and decoding problems are the caller's data, not the backend's health.
    pub(crate) fn is_backend_fault(&self) -> bool {
        !matches!(
            self,
            Self::Encode { .. } | Self::Decode { .. } | Self::CircuitOpen | Self::Config(_)
        )
    }
}

impl From<redis::RedisError> for CacheError {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(e)
    }
}
