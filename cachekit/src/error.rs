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
        source: crate::codec::CodecError,
    },

    /// A stored value did not decode into the requested type. The entry has been deleted.
    #[error("cached value under key `{key}` did not decode (entry removed): {source}")]
    Decode {
        /// The logical key.
        key: String,
        /// The deserializer's error; [`CodecError::is_foreign`](crate::codec::CodecError::is_foreign)
        /// when another codec wrote the value.
        #[source]
        source: crate::codec::CodecError,
    },

    /// An earlier step of the same call met a timeout, an unreachable backend or the open
    /// breaker, so this step skipped the backend: a call adds about one operation timeout at
    /// most, not one per step.
    #[error("cache backend skipped: an earlier step of this call failed")]
    Skipped,

    /// Invalidations that could not reach the backend earlier wait to be applied, so no read is
    /// served from it yet: a replay runs in the background, and reads resume once it applied
    /// them all.
    #[error("cache backend skipped: earlier invalidations are being applied first")]
    InvalidationsPending,

    /// A stored value is larger than the configured maximum value size; it was not read.
    #[error("cached value is larger than the {max} bytes allowed")]
    TooLarge {
        /// The configured maximum, in bytes.
        max: u64,
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

    /// The error without the key it may name, for log lines that show the key their own way
    /// (redacted when asked).
    pub(crate) fn detail(&self) -> Detail<'_> {
        Detail(self)
    }

    /// The backend was not asked: the breaker is open, an earlier step of the same call
    /// failed, or earlier invalidations wait to be applied.
    pub fn is_skipped(&self) -> bool {
        matches!(
            self,
            Self::CircuitOpen | Self::Skipped | Self::InvalidationsPending
        )
    }

    /// The configuration is invalid.
    pub fn is_config(&self) -> bool {
        matches!(self, Self::Config(_))
    }

    /// A stored value was not of the requested type (or not valid JSON).
    pub fn is_decode(&self) -> bool {
        matches!(self, Self::Decode { .. })
    }

    /// What kind of fault this is, when it is one of the backend's: a transport fault (the
    /// server unreachable or too slow) or a reply the server gave to this one operation.
    /// `None` for the caller's own data (encoding, decoding), configuration, and calls skipped
    /// by the open breaker.
    pub fn fault_kind(&self) -> Option<FaultKind> {
        match self {
            Self::Timeout { .. } => Some(FaultKind::Timeout),
            Self::Backend(_) => Some(FaultKind::Connection),
            Self::TooLarge { .. } => Some(FaultKind::TooLarge),
            Self::Redis(e) => Some(redis_fault_kind(e)),
            Self::Config(_)
            | Self::CircuitOpen
            | Self::Skipped
            | Self::InvalidationsPending
            | Self::Encode { .. }
            | Self::Decode { .. } => None,
        }
    }

    /// Whether this error says the backend cannot be reached or is too slow: a timeout, a
    /// refused, reset or closed connection, an I/O error, or a failure of a user-supplied
    /// backend. Only these count toward the circuit breaker; a server's reply to one operation
    /// (out of memory, no permission, wrong type, ...) fails that operation alone.
    pub fn is_transport(&self) -> bool {
        self.fault_kind().is_some_and(FaultKind::is_transport)
    }
}

/// What [`CacheError::detail`] displays.
pub(crate) struct Detail<'a>(&'a CacheError);

impl std::fmt::Display for Detail<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            CacheError::Encode { source, .. } => write!(f, "could not encode value: {source}"),
            CacheError::Decode { source, .. } => write!(f, "cached value did not decode: {source}"),
            other => other.fmt(f),
        }
    }
}

/// The kinds of backend fault, counted in [`FaultStats`](crate::FaultStats).
///
/// [`Timeout`](Self::Timeout) and [`Connection`](Self::Connection) are *transport* faults:
/// they say the server is unreachable or too slow, and only they count toward the circuit
/// breaker. The others are replies the server gave to one operation; they fail that operation
/// and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultKind {
    /// No answer within the operation timeout.
    Timeout,
    /// Refused, reset or closed connection, other I/O errors, a failed handshake or
    /// authentication, an unparsable reply; and any failure of a user-supplied backend.
    Connection,
    /// `OOM`: the server is at `maxmemory` and its policy refuses writes.
    OutOfMemory,
    /// `NOPERM` or `NOAUTH`: the ACL user may not run the command or touch the key.
    NoPermission,
    /// `WRONGTYPE`: the key holds another type than a string.
    WrongType,
    /// `READONLY`: the server is a replica.
    ReadOnly,
    /// `BUSY` (a script or function runs too long) or `LOADING` (the dataset is loading).
    Busy,
    /// A stored value larger than the configured maximum, not read.
    TooLarge,
    /// Any other error reply (`ERR ...`, script errors, out-of-range arguments).
    OtherReply,
}

impl FaultKind {
    /// Whether this kind says the server is unreachable or too slow (counts toward the breaker).
    pub fn is_transport(self) -> bool {
        matches!(self, Self::Timeout | Self::Connection)
    }

    /// A short stable name, for logs and as the `kind` label of metrics: `timeout`,
    /// `connection`, `out_of_memory`, `no_permission`, `wrong_type`, `read_only`, `busy`,
    /// `too_large` or `other_reply` (the names of [`FaultStats`](crate::FaultStats)' fields).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::OutOfMemory => "out_of_memory",
            Self::NoPermission => "no_permission",
            Self::WrongType => "wrong_type",
            Self::ReadOnly => "read_only",
            Self::Busy => "busy",
            Self::TooLarge => "too_large",
            Self::OtherReply => "other_reply",
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Classifies a redis-rs error by its kind and reply code, never by its message.
fn redis_fault_kind(e: &redis::RedisError) -> FaultKind {
    use redis::{ErrorKind, ServerErrorKind};
    if e.is_timeout() {
        return FaultKind::Timeout;
    }
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::ReadOnly) => FaultKind::ReadOnly,
        ErrorKind::Server(ServerErrorKind::NoPerm) => FaultKind::NoPermission,
        ErrorKind::Server(ServerErrorKind::BusyLoading) => FaultKind::Busy,
        ErrorKind::Server(_) | ErrorKind::Extension => match e.code() {
            Some("OOM") => FaultKind::OutOfMemory,
            Some("WRONGTYPE") => FaultKind::WrongType,
            Some("NOPERM" | "NOAUTH") => FaultKind::NoPermission,
            Some("BUSY" | "LOADING") => FaultKind::Busy,
            Some("READONLY") => FaultKind::ReadOnly,
            _ => FaultKind::OtherReply,
        },
        // A reply of an unexpected shape is our bug or a foreign value, not the server's health.
        ErrorKind::UnexpectedReturnType | ErrorKind::Client | ErrorKind::InvalidClientConfig => {
            FaultKind::OtherReply
        }
        // I/O, protocol desynchronisation, authentication on (re)connect, and the rest: the
        // connection is not usable.
        _ => FaultKind::Connection,
    }
}

impl From<redis::RedisError> for CacheError {
    fn from(e: redis::RedisError) -> Self {
        Self::Redis(e)
    }
}
