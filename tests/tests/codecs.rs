//! Codecs and compression against a private `redis-server`: what each writes (read back with a
//! plain redis-rs client), that each reads its own values back through every path (store,
//! in-process tier, cache-aside), and that a value of another codec is a miss that is loaded
//! and written again, never garbage.
//!
//! ```bash
//! cargo test -p cachekit-tests --test codecs
//! ```

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cachekit::codec::{Codec, CodecError, CustomCodec, DecodeInto};
use cachekit::{CacheConfig, CacheService, CacheServiceBuilder};
use cachekit_tests::{RedisServer, init_tracing, raw};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Document {
    id: u64,
    title: String,
    body: String,
}

/// A document of about `len` bytes of repetitive text, as cached records often are.
fn document(id: u64, len: usize) -> Document {
    Document {
        id,
        title: format!("document {id}"),
        body: "the quick brown fox jumps over the lazy dog. ".repeat(len / 45 + 1),
    }
}

fn builder(server: &RedisServer, prefix: &str) -> CacheServiceBuilder {
    CacheService::builder()
        .redis_url(server.url())
        .prefix(prefix)
}

async fn build(builder: CacheServiceBuilder) -> CacheService {
    builder.build().await.expect("a valid configuration builds")
}

/// `get_or_load` of `key`, with a loader that counts its calls and returns `value`.
async fn load(cache: &CacheService, key: &str, calls: &AtomicUsize, value: &Document) -> Document {
    let Ok(loaded) = cache
        .get_or_load(key, None, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, Infallible>(value.clone())
        })
        .await;
    loaded
}

#[tokio::test]
async fn messagepack_values_carry_their_header_and_read_back_through_every_path() {
    init_tracing();
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    for tier in [false, true] {
        let prefix = if tier { "mp_tier" } else { "mp" };
        let mut with = builder(&server, prefix).codec(Codec::MessagePack);
        if tier {
            with = with.local_tier(Duration::from_secs(60));
        }
        let cache = build(with).await;
        let doc = document(1, 200);
        let calls = AtomicUsize::new(0);
        assert_eq!(load(&cache, "docs:1", &calls, &doc).await, doc);
        assert_eq!(load(&cache, "docs:1", &calls, &doc).await, doc);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "the second call is a hit");

        let stored: Vec<u8> = raw::get(&mut conn, &format!("{prefix}:docs:1")).await;
        assert_eq!(&stored[..3], b"\x00m-", "tier {tier}");
        let json = serde_json::to_vec(&doc).unwrap();
        assert!(
            stored.len() < json.len(),
            "{} vs {}",
            stored.len(),
            json.len()
        );

        assert!(cache.set("docs:2", &doc, None).await);
        assert_eq!(cache.get::<Document>("docs:2").await, Some(doc.clone()));
        let stats = cache.stats();
        assert_eq!(stats.decode_errors, 0, "{stats:?}");
        assert_eq!(stats.errors, 0, "{stats:?}");
    }
}

#[tokio::test]
async fn large_values_are_stored_compressed_and_small_ones_stay_plain_json() {
    init_tracing();
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let cache = build(builder(&server, "lz").compress_above(1024)).await;
    let large = document(1, 8 * 1024);
    let small = document(2, 100);
    assert!(cache.set("docs:1", &large, None).await);
    assert!(cache.set("docs:2", &small, None).await);

    let stored: Vec<u8> = raw::get(&mut conn, "lz:docs:1").await;
    let json = serde_json::to_vec(&large).unwrap();
    assert_eq!(&stored[..3], b"\x00j4");
    assert!(
        stored.len() * 4 < json.len(),
        "{} compressed vs {} JSON",
        stored.len(),
        json.len()
    );
    let plain: Vec<u8> = raw::get(&mut conn, "lz:docs:2").await;
    assert_eq!(
        plain,
        serde_json::to_vec(&small).unwrap(),
        "below the threshold"
    );

    assert_eq!(cache.get::<Document>("docs:1").await, Some(large.clone()));
    // A reader that does not compress its own writes reads compressed values all the same.
    let reader = build(builder(&server, "lz")).await;
    assert_eq!(reader.get::<Document>("docs:1").await, Some(large));
    assert_eq!(reader.stats().decode_errors, 0);
}

/// Two services of different codecs sharing keys: each reads the other's value as a miss,
/// loads, and writes its own; no caller ever receives anything but its loader's value.
#[tokio::test]
async fn a_value_of_another_codec_is_a_miss_that_is_written_again() {
    init_tracing();
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let json = build(builder(&server, "mixed")).await;
    let msgpack = build(builder(&server, "mixed").codec(Codec::MessagePack)).await;
    let doc = document(7, 300);
    let (json_calls, msgpack_calls) = (AtomicUsize::new(0), AtomicUsize::new(0));

    assert_eq!(load(&json, "docs:7", &json_calls, &doc).await, doc);
    assert_eq!(load(&msgpack, "docs:7", &msgpack_calls, &doc).await, doc);
    assert_eq!(
        msgpack_calls.load(Ordering::SeqCst),
        1,
        "JSON is foreign to it"
    );
    assert_eq!(msgpack.stats().decode_errors, 1);
    let stored: Vec<u8> = raw::get(&mut conn, "mixed:docs:7").await;
    assert_eq!(&stored[..3], b"\x00m-", "rewritten in the reader's codec");
    assert_eq!(load(&msgpack, "docs:7", &msgpack_calls, &doc).await, doc);
    assert_eq!(msgpack_calls.load(Ordering::SeqCst), 1, "now a hit");

    assert_eq!(
        json.get::<Document>("docs:7").await,
        None,
        "MessagePack is foreign to JSON"
    );
    assert_eq!(json.stats().decode_errors, 1);

    // Bytes that happen to decode in the other format are still refused: JSON `5` is the
    // MessagePack integer 53.
    assert!(json.set("count", &5u64, None).await);
    assert_eq!(msgpack.get::<u64>("count").await, None);
    assert_eq!(msgpack.stats().decode_errors, 2);

    // A header no build knows, and a truncated compressed value, are misses too.
    raw::set(&mut conn, "mixed:docs:8", b"\x00z-whatever".as_slice()).await;
    raw::set(
        &mut conn,
        "mixed:docs:9",
        b"\x00j4\xff\xff\xff\x7f".as_slice(),
    )
    .await;
    for key in ["docs:8", "docs:9"] {
        let calls = AtomicUsize::new(0);
        assert_eq!(load(&json, key, &calls, &doc).await, doc, "{key}");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "{key}");
    }
    assert_eq!(json.stats().decode_errors, 3);
    assert_eq!(
        json.stats().errors,
        0,
        "foreign values are no backend fault"
    );
}

/// A codec of the application's own: CBOR-like in spirit, here JSON with every byte XORed, a
/// stand-in for encryption at rest.
#[derive(Debug)]
struct Masked;

const MASK: u8 = 0x5a;

impl CustomCodec for Masked {
    fn name(&self) -> &str {
        "masked-json"
    }
    fn tag(&self) -> u8 {
        0xc5
    }
    fn encode(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError> {
        let json = serde_json::to_vec(value).map_err(CodecError::custom)?;
        Ok(json.into_iter().map(|b| b ^ MASK).collect())
    }
    fn decode(&self, bytes: &[u8], into: &mut DecodeInto<'_>) -> Result<(), CodecError> {
        let json: Vec<u8> = bytes.iter().map(|b| b ^ MASK).collect();
        let mut json = serde_json::Deserializer::from_slice(&json);
        into(&mut <dyn erased_serde::Deserializer<'_>>::erase(&mut json))
            .map_err(CodecError::custom)
    }
}

#[tokio::test]
async fn a_custom_codec_stores_its_own_bytes_and_reads_them_through_every_path() {
    init_tracing();
    let server = RedisServer::start();
    let mut conn = server.connection().await;
    let custom = || Codec::Custom(Arc::new(Masked));
    let cache = build(
        builder(&server, "masked")
            .codec(custom())
            .compress_above(1024)
            .local_tier(Duration::from_secs(60)),
    )
    .await;
    let doc = document(3, 200);
    let calls = AtomicUsize::new(0);
    assert_eq!(load(&cache, "docs:3", &calls, &doc).await, doc);
    assert_eq!(load(&cache, "docs:3", &calls, &doc).await, doc);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the second call is a hit");
    let stored: Vec<u8> = raw::get(&mut conn, "masked:docs:3").await;
    assert_eq!(&stored[..3], b"\x00\xc5-");
    assert!(
        !String::from_utf8_lossy(&stored).contains("document 3"),
        "the codec's bytes, not JSON"
    );
    // Compression applies to what the codec returns.
    let large = document(4, 8 * 1024);
    assert!(cache.set("docs:4", &large, None).await);
    let stored: Vec<u8> = raw::get(&mut conn, "masked:docs:4").await;
    assert_eq!(&stored[..3], b"\x00\xc54");
    // Another service of the same codec reads it from the store.
    let other = build(builder(&server, "masked").codec(custom())).await;
    assert_eq!(other.get::<Document>("docs:4").await, Some(large));
    // A JSON reader sees a miss.
    let json = build(builder(&server, "masked")).await;
    assert_eq!(json.get::<Document>("docs:3").await, None);
    assert_eq!(json.stats().decode_errors, 1);
    assert_eq!(cache.stats().decode_errors + other.stats().decode_errors, 0);

    // A custom codec may not take one of cachekit's tags.
    #[derive(Debug)]
    struct Squatter;
    impl CustomCodec for Squatter {
        fn name(&self) -> &str {
            "squatter"
        }
        fn tag(&self) -> u8 {
            b'j'
        }
        fn encode(&self, _: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecError> {
            Err(CodecError::custom("never used"))
        }
        fn decode(&self, _: &[u8], _: &mut DecodeInto<'_>) -> Result<(), CodecError> {
            Err(CodecError::custom("never used"))
        }
    }
    let refused = builder(&server, "masked")
        .codec(Codec::Custom(Arc::new(Squatter)))
        .build()
        .await
        .expect_err("a custom codec with tag `j` is refused");
    assert!(refused.to_string().contains("0x80"), "{refused}");
}

#[test]
fn the_environment_chooses_the_codec_and_the_compression() {
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        CacheConfig::from_lookup(move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_string())
        })
    };
    let config = env(&[("CACHE_CODEC", "MsgPack"), ("CACHE_COMPRESS_ABOVE", "2048")]).unwrap();
    assert_eq!(config.codec, Codec::MessagePack);
    assert_eq!(config.compress_above, Some(2048));
    let config = env(&[("CACHE_CODEC", "json"), ("CACHE_COMPRESS_ABOVE", "0")]).unwrap();
    assert_eq!(config.codec, Codec::Json);
    assert_eq!(config.compress_above, None);
    let error = env(&[("CACHE_CODEC", "xml")]).unwrap_err().to_string();
    assert!(
        error.contains("CACHE_CODEC") && error.contains("xml"),
        "{error}"
    );
    let error = env(&[("CACHE_COMPRESS_ABOVE", "lots")])
        .unwrap_err()
        .to_string();
    assert!(error.contains("CACHE_COMPRESS_ABOVE"), "{error}");
}
