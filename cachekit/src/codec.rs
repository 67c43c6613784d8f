//! How cached values are written as bytes, and read back.
//!
//! JSON (serde_json) is the default and the documented cross-language format: a JSON value is
//! stored as plain JSON text, readable with `redis-cli GET` and by services in other languages.
//! The `Codec::MessagePack` codec (cargo feature `msgpack`) and compression (cargo feature
//! `compression`, [`CacheServiceBuilder::compress_above`](crate::CacheServiceBuilder::compress_above))
//! trade that readability for size and decode time; [`CustomCodec`] brings a format of the
//! application's own.
//!
//! # Which codec wrote a value
//!
//! Every value that is not plain JSON starts with a three-byte header: a zero byte (which no JSON
//! text starts with), the codec (`j` JSON, `m` MessagePack, `0x80` to `0xff` a custom codec's
//! tag) and the compression (`-` none,
//! `4` LZ4 block with its uncompressed size in front). So a MessagePack value reads in
//! `redis-cli` as `"\x00m-..."` and a compressed JSON one as `"\x00j4..."`.
//!
//! A reader decodes only what its own codec wrote. A value of another codec, of an unknown
//! one, or compressed when this build has no `compression` feature is a miss, never garbage:
//! the read counts a decode error, removes the entry and loads the value again, which writes it
//! in the reader's codec. Compressed values of the reader's codec are read whether or not the
//! reader compresses its own writes. Decompression is bounded by the maximum value size, so a
//! hostile value cannot make a reader allocate more than that.

use crate::CacheError;
use serde::{Serialize, de::DeserializeOwned};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// The serialization format of cached values. Every process sharing keys must use the same
/// one: a value of another codec reads as a miss (see the [module docs](self)).
///
/// Chosen with [`CacheServiceBuilder::codec`](crate::CacheServiceBuilder::codec) or
/// `CACHE_CODEC` (`json`, `msgpack`).
///
/// ```
/// use cachekit::codec::Codec;
///
/// assert_eq!(Codec::default(), Codec::Json);
/// assert_eq!("json".parse::<Codec>().unwrap(), Codec::Json);
/// assert_eq!(Codec::Json.name(), "json");
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub enum Codec {
    /// JSON through serde_json: plain text in the store, readable by any language. The default.
    #[default]
    Json,
    /// MessagePack through rmp-serde, structs written as maps of their field names (so a
    /// reordered struct still decodes by name). Smaller and faster to decode than JSON; the
    /// value carries a header, so only MessagePack readers that skip it can share it.
    #[cfg(feature = "msgpack")]
    #[cfg_attr(docsrs, doc(cfg(feature = "msgpack")))]
    MessagePack,
    /// A codec of the application's own: see [`CustomCodec`].
    Custom(Arc<dyn CustomCodec>),
}

/// Two codecs are the same when their values carry the same header byte.
impl PartialEq for Codec {
    fn eq(&self, other: &Self) -> bool {
        self.tag() == other.tag()
    }
}

impl Eq for Codec {}

/// What [`CustomCodec::decode`] hands its deserializer to: it builds the caller's type from it.
pub type DecodeInto<'a> = dyn for<'de> FnMut(&mut dyn erased_serde::Deserializer<'de>) -> Result<(), erased_serde::Error>
    + 'a;

/// A codec of the application's own, for a format cachekit does not build in (CBOR, bincode,
/// JSON encrypted at rest...), chosen with `Codec::Custom`. Values pass through
/// [`erased_serde`] trait objects, so each encode and decode costs a virtual call per field
/// that the built-in codecs do not pay.
///
/// Its values carry the same three-byte header as MessagePack's, with [`tag`](Self::tag) as
/// the codec byte: a reader of another codec treats them as misses, and this codec never sees
/// another's values. The service's compression, if on, applies to what `encode` returns.
///
/// ```
/// use cachekit::codec::{Codec, CodecError, CustomCodec, DecodeInto};
/// use std::sync::Arc;
///
/// /// JSON with its bytes reversed: a stand-in for a transform such as encryption.
/// #[derive(Debug)]
/// struct Reversed;
///
/// impl CustomCodec for Reversed {
///     fn name(&self) -> &str {
///         "reversed-json"
///     }
///     fn tag(&self) -> u8 {
///         0x80
///     }
///     fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError> {
///         let mut bytes = serde_json::to_vec(value).map_err(CodecError::custom)?;
///         bytes.reverse();
///         Ok(bytes)
///     }
///     fn decode(
///         &self,
///         bytes: &[u8],
///         into: &mut DecodeInto<'_>,
///     ) -> Result<(), CodecError> {
///         let json: Vec<u8> = bytes.iter().rev().copied().collect();
///         let mut json = serde_json::Deserializer::from_slice(&json);
///         into(&mut <dyn erased_serde::Deserializer<'_>>::erase(&mut json)).map_err(CodecError::custom)
///     }
/// }
///
/// # cachekit::__doc_block_on(async {
/// let cache = cachekit::CacheService::builder()
///     .memory(1 << 20)
///     .codec(Codec::Custom(Arc::new(Reversed)))
///     .build()
///     .await
///     .unwrap();
/// cache.set("users:1", &"Ada", None).await;
/// assert_eq!(cache.get::<String>("users:1").await.as_deref(), Some("Ada"));
/// # });
/// ```
pub trait CustomCodec: Send + Sync + fmt::Debug + 'static {
    /// The codec's name, for logs and errors.
    fn name(&self) -> &str;

    /// The byte that names this codec in each value's header: from `0x80` to `0xff` (the
    /// bytes below are cachekit's), and never changed once values are stored.
    fn tag(&self) -> u8;

    /// Encodes `value`. The error should not quote the value: it reaches logs.
    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError>;

    /// Decodes `bytes` (the body after the header, decompressed) by handing a deserializer of
    /// them to `into`, which builds the caller's type, and returning its outcome.
    fn decode(&self, bytes: &[u8], into: &mut DecodeInto<'_>) -> Result<(), CodecError>;
}

impl Codec {
    /// The codec's name: `json` or `msgpack` (as `CACHE_CODEC` takes them), or a custom
    /// codec's own.
    pub fn name(&self) -> &str {
        match self {
            Self::Json => "json",
            #[cfg(feature = "msgpack")]
            Self::MessagePack => "msgpack",
            Self::Custom(codec) => codec.name(),
        }
    }

    /// The byte that names the codec in a value's header.
    fn tag(&self) -> u8 {
        match self {
            Self::Json => b'j',
            #[cfg(feature = "msgpack")]
            Self::MessagePack => b'm',
            Self::Custom(codec) => codec.tag(),
        }
    }

    /// The codec whose header byte is `tag`, known to this build or not, for messages.
    fn named_by(tag: u8) -> Cow<'static, str> {
        match tag {
            b'j' => "json".into(),
            b'm' => "msgpack".into(),
            0x80.. => format!("a custom codec (tag {tag:#04x})").into(),
            _ => "an unknown codec".into(),
        }
    }

    /// Why this codec cannot be used, if it cannot: a custom codec's tag must not be one of
    /// cachekit's.
    pub(crate) fn problem(&self) -> Option<String> {
        match self {
            Self::Custom(codec) if codec.tag() < 0x80 => Some(format!(
                "the custom codec `{}` has tag {:#04x}: custom codecs take 0x80 to 0xff",
                codec.name(),
                codec.tag()
            )),
            _ => None,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Codec {
    type Err = CacheError;

    /// `json` or `msgpack` (also `messagepack`), any case; `msgpack` needs the `msgpack`
    /// feature.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            #[cfg(feature = "msgpack")]
            "msgpack" | "messagepack" => Ok(Self::MessagePack),
            #[cfg(not(feature = "msgpack"))]
            "msgpack" | "messagepack" => Err(CacheError::Config(
                "the msgpack codec needs cachekit's `msgpack` cargo feature".into(),
            )),
            _ => Err(CacheError::Config(format!(
                "unknown codec `{s}`: expected `json` or `msgpack`"
            ))),
        }
    }
}

/// Why a value could not be encoded or decoded. Never quotes the value: cached values may hold
/// personal data and must not reach logs.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CodecError {
    message: String,
    foreign: bool,
}

impl CodecError {
    /// An error with this message, for a [`CustomCodec`]. The message must not quote the value.
    pub fn custom(message: impl fmt::Display) -> Self {
        Self::new(message.to_string())
    }

    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            foreign: false,
        }
    }

    fn foreign(message: String) -> Self {
        Self {
            message,
            foreign: true,
        }
    }

    /// Whether the value was written by another codec, or compressed in a way this build
    /// cannot read, rather than being malformed.
    pub fn is_foreign(&self) -> bool {
        self.foreign
    }
}

/// The first byte of every value that is not plain JSON: no JSON text starts with it.
const MARK: u8 = 0;
/// The compression byte of a header: none.
const RAW: u8 = b'-';
/// The compression byte of a header: an LZ4 block, its uncompressed size in front.
const LZ4: u8 = b'4';
#[cfg(feature = "compression")]
const HEADER_LEN: usize = 3;

/// How one service writes and reads values: its codec, when it compresses, and the largest
/// value it handles.
#[derive(Debug, Clone)]
pub(crate) struct Format {
    pub(crate) codec: Codec,
    /// Encoded values of at least this many bytes are stored compressed (when that is smaller).
    pub(crate) compress_above: Option<u64>,
    /// The largest encoded value, before compression, that is written or decompressed.
    pub(crate) max_value_bytes: u64,
}

impl Format {
    /// JSON, uncompressed, with `max_value_bytes` as the largest value.
    #[cfg(test)]
    pub(crate) fn json(max_value_bytes: u64) -> Self {
        Self {
            codec: Codec::Json,
            compress_above: None,
            max_value_bytes,
        }
    }

    /// Encodes `value` in the service's codec, compressed if it is large enough and that saves
    /// space. Fails with [`CacheError::TooLarge`] when the encoding exceeds the maximum value
    /// size.
    pub(crate) fn encode<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
    ) -> Result<Vec<u8>, CacheError> {
        let failed = |source: CodecError| CacheError::Encode {
            key: key.to_owned(),
            source,
        };
        let encoded = match &self.codec {
            Codec::Json => serde_json::to_vec(value)
                .map_err(|error| failed(CodecError::new(error.to_string())))?,
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => {
                let mut out = vec![MARK, self.codec.tag(), RAW];
                rmp_serde::encode::write_named(&mut out, value)
                    .map_err(|error| failed(CodecError::new(error.to_string())))?;
                out
            }
            Codec::Custom(codec) => {
                let body = codec.encode(&Erased(value)).map_err(failed)?;
                let mut out = Vec::with_capacity(body.len() + 3);
                out.extend_from_slice(&[MARK, codec.tag(), RAW]);
                out.extend_from_slice(&body);
                out
            }
        };
        // Bounds the value as stored, header included (what a reader fetches), and so its
        // body (what a reader decompresses): compression only ever makes it smaller.
        if encoded.len() as u64 > self.max_value_bytes {
            return Err(CacheError::TooLarge {
                max: self.max_value_bytes,
            });
        }
        Ok(self.compressed(encoded))
    }

    /// What a stored value weighs once decoded, for the in-process tier's bound: the
    /// uncompressed size of a compressed value (at most the maximum value size), else its
    /// stored size.
    pub(crate) fn weight(&self, bytes: &[u8]) -> usize {
        #[cfg(feature = "compression")]
        if let [MARK, _, LZ4, body @ ..] = bytes
            && let Ok((size, _)) = lz4_flex::block::uncompressed_size(body)
        {
            return size.min(usize::try_from(self.max_value_bytes).unwrap_or(usize::MAX));
        }
        bytes.len()
    }

    /// How many header bytes an uncompressed value of this codec carries.
    #[cfg(feature = "compression")]
    fn header_len(&self) -> usize {
        if matches!(self.codec, Codec::Json) {
            0
        } else {
            HEADER_LEN
        }
    }

    /// `encoded` compressed with its header, when compression is on, the value is large enough
    /// and compressing it saves space; else `encoded` unchanged.
    #[cfg(feature = "compression")]
    fn compressed(&self, encoded: Vec<u8>) -> Vec<u8> {
        let body = &encoded[self.header_len()..];
        match self.compress_above {
            Some(above) if body.len() as u64 >= above => {
                let packed = lz4_flex::block::compress_prepend_size(body);
                if packed.len() + HEADER_LEN >= encoded.len() {
                    return encoded;
                }
                let mut out = Vec::with_capacity(HEADER_LEN + packed.len());
                out.extend_from_slice(&[MARK, self.codec.tag(), LZ4]);
                out.extend_from_slice(&packed);
                out
            }
            _ => encoded,
        }
    }

    #[cfg(not(feature = "compression"))]
    fn compressed(&self, encoded: Vec<u8>) -> Vec<u8> {
        debug_assert!(
            self.compress_above.is_none(),
            "the configuration refuses compress_above without the feature"
        );
        encoded
    }

    /// Decodes a stored value into `T`, if the service's codec wrote it. The error does not
    /// include the bytes.
    pub(crate) fn decode<T: DeserializeOwned>(
        &self,
        key: &str,
        bytes: &[u8],
    ) -> Result<T, CacheError> {
        self.decode_body(bytes)
            .map_err(|source| CacheError::Decode {
                key: key.to_owned(),
                source,
            })
    }

    fn decode_body<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (tag, compression, body) = match bytes {
            [MARK, tag, compression, body @ ..] => (*tag, *compression, body),
            [MARK, ..] => return Err(CodecError::new("truncated value header")),
            _ => (Codec::Json.tag(), RAW, bytes),
        };
        if tag != self.codec.tag() {
            return Err(CodecError::foreign(format!(
                "written by {}, read as {}",
                Codec::named_by(tag),
                self.codec
            )));
        }
        let body = self.decompressed(compression, body)?;
        match &self.codec {
            Codec::Json => serde_json::from_slice(&body).map_err(|error| redacted::<T>(&error)),
            Codec::Custom(codec) => decode_custom(codec.as_ref(), &body),
            #[cfg(feature = "msgpack")]
            Codec::MessagePack => {
                let mut deserializer = rmp_serde::Deserializer::from_read_ref(&*body);
                // serde_json's limit: a hostile value nested deeper cannot exhaust the stack.
                deserializer.set_max_depth(128);
                T::deserialize(&mut deserializer).map_err(|error| {
                    CodecError::new(format!(
                        "{} for `{}`",
                        msgpack_problem(&error),
                        std::any::type_name::<T>()
                    ))
                })
            }
        }
    }

    /// The body of a value whose header names `compression`, decompressed if need be.
    fn decompressed<'a>(
        &self,
        compression: u8,
        body: &'a [u8],
    ) -> Result<Cow<'a, [u8]>, CodecError> {
        match compression {
            RAW => Ok(Cow::Borrowed(body)),
            #[cfg(feature = "compression")]
            LZ4 => {
                let bad = |_| CodecError::new("corrupt LZ4 block");
                let (size, packed) = lz4_flex::block::uncompressed_size(body).map_err(bad)?;
                // LZ4 expands at most about 255 times: a larger claim is corrupt, and is
                // refused before the buffer it claims is allocated.
                if size > packed.len().saturating_mul(255).saturating_add(16) {
                    return Err(CodecError::new(
                        "LZ4 block claims more than it can expand to",
                    ));
                }
                if size as u64 > self.max_value_bytes {
                    return Err(CodecError::new(format!(
                        "compressed value of {size} bytes exceeds the {} allowed",
                        self.max_value_bytes
                    )));
                }
                lz4_flex::block::decompress_size_prepended(body)
                    .map(Cow::Owned)
                    .map_err(bad)
            }
            #[cfg(not(feature = "compression"))]
            LZ4 => Err(CodecError::foreign(
                "compressed with LZ4, and this build has no `compression` feature".into(),
            )),
            _ => Err(CodecError::foreign("compressed in an unknown way".into())),
        }
    }
}

/// A value as an `erased_serde::Serialize`, whatever its size.
struct Erased<'a, T: ?Sized>(&'a T);

impl<T: Serialize + ?Sized> Serialize for Erased<'_, T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// Decodes a `T` through a custom codec. The deserializer's own error may quote the data it
/// rejects, so the codec is handed a redacted one, and that is what the caller sees.
fn decode_custom<T: DeserializeOwned>(
    codec: &dyn CustomCodec,
    body: &[u8],
) -> Result<T, CodecError> {
    let mut decoded = None;
    let mut shape_error = false;
    let outcome = codec.decode(
        body,
        &mut |deserializer| match erased_serde::deserialize::<T>(deserializer) {
            Ok(value) => {
                decoded = Some(value);
                Ok(())
            }
            Err(_) => {
                shape_error = true;
                Err(serde::de::Error::custom("value of another shape"))
            }
        },
    );
    let of_type = std::any::type_name::<T>();
    match (outcome, decoded) {
        (Ok(()), Some(value)) => Ok(value),
        _ if shape_error => Err(CodecError::new(format!(
            "{} value of another shape for `{of_type}`",
            codec.name()
        ))),
        (Err(error), _) => Err(error),
        (Ok(()), None) => Err(CodecError::new(format!(
            "{} decoded nothing for `{of_type}`",
            codec.name()
        ))),
    }
}

/// serde_json's messages quote the data they reject (`invalid type: string "ada@example.com",
/// expected u64`); keep only the kind of problem, the requested type and the position.
fn redacted<T>(error: &serde_json::Error) -> CodecError {
    use serde_json::error::Category;
    let problem = match error.classify() {
        Category::Syntax => "not valid JSON",
        Category::Eof => "truncated or empty JSON",
        Category::Data => "JSON of another shape",
        Category::Io => "unreadable JSON",
    };
    CodecError::new(format!(
        "{problem} for `{}` (line {}, column {})",
        std::any::type_name::<T>(),
        error.line(),
        error.column()
    ))
}

/// rmp-serde's messages may quote the data they reject; keep only the kind of problem.
#[cfg(feature = "msgpack")]
fn msgpack_problem(error: &rmp_serde::decode::Error) -> &'static str {
    use rmp_serde::decode::Error;
    match error {
        Error::InvalidMarkerRead(_) | Error::InvalidDataRead(_) => "truncated MessagePack",
        Error::TypeMismatch(_) | Error::LengthMismatch(_) | Error::Syntax(_) => {
            "MessagePack of another shape"
        }
        Error::OutOfRange => "MessagePack number out of range",
        Error::Utf8Error(_) => "MessagePack string that is not UTF-8",
        Error::DepthLimitExceeded => "MessagePack nested too deep",
        Error::Uncategorized(_) => "invalid MessagePack",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 1 << 20;

    #[test]
    fn json_is_plain_and_round_trips() {
        let json = Format::json(MAX);
        let bytes = json.encode("k", &vec![1u32, 2, 3]).unwrap();
        assert_eq!(bytes, b"[1,2,3]");
        assert_eq!(json.decode::<Vec<u32>>("k", &bytes).unwrap(), vec![1, 2, 3]);
        let err = json
            .decode::<Vec<u32>>("k", b"\xff\x00not json")
            .unwrap_err();
        assert!(err.is_decode());
        let err = json.decode::<String>("k", b"[1,2,3]").unwrap_err();
        assert!(err.is_decode());
    }

    #[test]
    fn decode_errors_never_quote_the_value() {
        let err = Format::json(MAX)
            .decode::<u64>("k", br#""ada@example.com""#)
            .unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("ada@"), "{text}");
        assert!(text.contains("u64") && text.contains("column"), "{text}");
    }

    #[test]
    fn values_larger_than_the_maximum_are_refused() {
        let err = Format::json(4).encode("k", "12345").unwrap_err();
        assert!(matches!(err, CacheError::TooLarge { max: 4 }), "{err}");
    }

    /// The source of a decode error, for its foreign flag.
    fn source(err: CacheError) -> CodecError {
        match err {
            CacheError::Decode { source, .. } => source,
            other => panic!("not a decode error: {other}"),
        }
    }

    #[test]
    fn headers_of_unknown_codecs_or_compressions_are_foreign() {
        let json = Format::json(MAX);
        for bytes in [&b"\x00x-1"[..], b"\x00j?1", b"\x00m-\x01"] {
            let err = source(json.decode::<u32>("k", bytes).unwrap_err());
            assert!(err.is_foreign(), "{err}");
        }
        let err = source(json.decode::<u32>("k", b"\x00j").unwrap_err());
        assert!(!err.is_foreign(), "{err}");
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_is_tagged_and_foreign_to_json() {
        #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        struct User {
            id: u64,
            email: String,
        }
        let msgpack = Format {
            codec: Codec::MessagePack,
            ..Format::json(MAX)
        };
        let user = User {
            id: 7,
            email: "ada@example.com".into(),
        };
        let bytes = msgpack.encode("k", &user).unwrap();
        assert_eq!(&bytes[..3], b"\x00m-");
        assert_eq!(msgpack.decode::<User>("k", &bytes).unwrap(), user);
        // Each codec refuses the other's values as foreign, never as garbage.
        let err = source(Format::json(MAX).decode::<User>("k", &bytes).unwrap_err());
        assert!(err.is_foreign(), "{err}");
        let json = Format::json(MAX).encode("k", &user).unwrap();
        let err = source(msgpack.decode::<User>("k", &json).unwrap_err());
        assert!(err.is_foreign(), "{err}");
        // A MessagePack value of another shape names the type, never the data.
        let err = msgpack.decode::<u64>("k", &bytes).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(!text.contains("ada@") && text.contains("u64"), "{text}");
    }

    #[cfg(feature = "msgpack")]
    #[test]
    fn msgpack_values_are_bounded_as_stored_and_in_depth() {
        let msgpack = Format {
            codec: Codec::MessagePack,
            ..Format::json(MAX)
        };
        let value = "x".repeat(100);
        let stored = msgpack.encode("k", &value).unwrap();
        // A body that fits while body and header do not is refused: readers fetch at most the
        // maximum, header included.
        let tight = Format {
            max_value_bytes: stored.len() as u64 - 1,
            ..msgpack.clone()
        };
        let err = tight.encode("k", &value).unwrap_err();
        assert!(matches!(err, CacheError::TooLarge { .. }), "{err}");
        // Arrays nested 200 deep: refused, not decoded on a deep stack.
        let mut nested = b"\x00m-".to_vec();
        nested.extend(std::iter::repeat_n(0x91u8, 200));
        nested.push(0xc0);
        let err = msgpack
            .decode::<serde_json::Value>("k", &nested)
            .unwrap_err();
        assert!(err.to_string().contains("too deep"), "{err}");
    }

    /// JSON with its bytes reversed, tagged `tag`: a custom codec for the tests.
    #[derive(Debug)]
    struct Reversed(u8);

    impl CustomCodec for Reversed {
        fn name(&self) -> &str {
            "reversed"
        }
        fn tag(&self) -> u8 {
            self.0
        }
        fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError> {
            let mut bytes = serde_json::to_vec(value).map_err(CodecError::custom)?;
            bytes.reverse();
            Ok(bytes)
        }
        fn decode(&self, bytes: &[u8], into: &mut DecodeInto<'_>) -> Result<(), CodecError> {
            let json: Vec<u8> = bytes.iter().rev().copied().collect();
            let mut json = serde_json::Deserializer::from_slice(&json);
            into(&mut <dyn erased_serde::Deserializer<'_>>::erase(&mut json))
                .map_err(CodecError::custom)
        }
    }

    #[test]
    fn custom_codecs_are_tagged_foreign_to_others_and_redacted() {
        let custom = Format {
            codec: Codec::Custom(Arc::new(Reversed(0x80))),
            ..Format::json(MAX)
        };
        let bytes = custom.encode("k", "ada@example.com").unwrap();
        assert_eq!(&bytes[..3], b"\x00\x80-");
        assert_eq!(&bytes[3..], br#""moc.elpmaxe@ada""#);
        assert_eq!(
            custom.decode::<String>("k", &bytes).unwrap(),
            "ada@example.com"
        );
        // Unsized values encode too.
        assert!(custom.encode("k", &[1u8, 2][..]).is_ok());
        // Foreign both ways, and to another custom codec.
        let err = source(Format::json(MAX).decode::<String>("k", &bytes).unwrap_err());
        assert!(
            err.is_foreign() && err.to_string().contains("0x80"),
            "{err}"
        );
        let json = Format::json(MAX).encode("k", "x").unwrap();
        assert!(source(custom.decode::<String>("k", &json).unwrap_err()).is_foreign());
        let other = Format {
            codec: Codec::Custom(Arc::new(Reversed(0x81))),
            ..Format::json(MAX)
        };
        assert!(source(other.decode::<String>("k", &bytes).unwrap_err()).is_foreign());
        // A value of another shape names the type, never the data.
        let err = custom.decode::<u64>("k", &bytes).unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(
            !text.contains("ada@") && !text.contains("moc.") && text.contains("u64"),
            "{text}"
        );
        // Tags below 0x80 are cachekit's.
        assert!(Codec::Custom(Arc::new(Reversed(b'j'))).problem().is_some());
        assert!(Codec::Custom(Arc::new(Reversed(0xff))).problem().is_none());
    }

    #[cfg(feature = "compression")]
    #[test]
    fn compressed_values_weigh_and_are_bounded_by_their_decoded_size() {
        let compressing = Format {
            compress_above: Some(64),
            ..Format::json(MAX)
        };
        let text = "all work and no play ".repeat(100);
        let stored = compressing.encode("k", &text).unwrap();
        let decoded = serde_json::to_vec(&text).unwrap().len();
        assert!(stored.len() * 4 < decoded);
        assert_eq!(compressing.weight(&stored), decoded);
        assert_eq!(compressing.weight(b"[1,2]"), 5);
        // A block claiming far more than LZ4 can expand to is corrupt, refused before the
        // buffer it claims is allocated.
        let mut bomb = b"\x00j4".to_vec();
        bomb.extend_from_slice(&1_000_000u32.to_le_bytes());
        bomb.extend_from_slice(&[0x1f, b'a', 0, 0]);
        let err = compressing.decode::<String>("k", &bomb).unwrap_err();
        assert!(err.to_string().contains("claims more"), "{err}");
    }

    #[cfg(feature = "compression")]
    #[test]
    fn large_values_are_compressed_and_bounded_on_the_way_back() {
        let compressing = Format {
            compress_above: Some(64),
            ..Format::json(MAX)
        };
        let small = compressing.encode("k", "short").unwrap();
        assert_eq!(small, b"\"short\"");
        let text = "all work and no play ".repeat(100);
        let bytes = compressing.encode("k", &text).unwrap();
        assert_eq!(&bytes[..3], b"\x00j4");
        assert!(bytes.len() < text.len() / 4, "{} bytes", bytes.len());
        assert_eq!(compressing.decode::<String>("k", &bytes).unwrap(), text);
        // A reader that does not compress still reads it.
        assert_eq!(
            Format::json(MAX).decode::<String>("k", &bytes).unwrap(),
            text
        );
        // One that allows less than it expands to refuses it before allocating.
        let err = Format::json(100).decode::<String>("k", &bytes).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
        // A corrupt block is an error, not a panic.
        let mut corrupt = bytes.clone();
        corrupt.truncate(bytes.len() / 2);
        assert!(Format::json(MAX).decode::<String>("k", &corrupt).is_err());
        // Incompressible data stays as it is.
        let noise: String = (0..200u32)
            .map(|i| char::from(b'a' + (i.wrapping_mul(2_654_435_761) >> 24) as u8 % 26))
            .collect();
        let bytes = compressing.encode("k", &noise).unwrap();
        assert_eq!(bytes[0], b'"');
    }
}
