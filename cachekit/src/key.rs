//! Keys: prefixing, hashed parameters, glob escaping and Redis's glob dialect.
//!
//! # The key format
//!
//! A logical key such as `users:1` is stored under the physical key `{prefix}:{logical}`
//! (`myapp:users:1`). The macros build logical keys this way, so that any language can
//! compute the same key:
//!
//! 1. Render the template, replacing each `{arg}` with the argument's `Display` form, escaped
//!    by [`escape_part`]: `%` is written `%25` and `:` is written `%3A`, every other character
//!    as is.
//! 2. If some arguments are not named in the template, append `:` and the lowercase hex
//!    SHA-256 of the serde_json encoding of those arguments as one JSON array, in declaration
//!    order ([`hash_args`]).
//! 3. With no template, the function's module path and name stand in for step 1.
//!
//! The escaping keeps distinct arguments apart: with `key = "route:{from}:{to}"`, the
//! arguments `("a:b", "c")` give `route:a%3Ab:c` and `("a", "b:c")` give `route:a:b%3Ac`,
//! where unescaped both would be `route:a:b:c`. A value without `%` or `:` renders as is, so
//! `users:{id}` with id 1 is `users:1`. `#[invalidates]` patterns escape their placeholder
//! values the same way, then [`escape_glob`] them: `#[invalidates("route:{from}:{to}")]` on
//! `("a:b", "c")` removes exactly `route:a%3Ab:c`.
//!
//! ```
//! use cachekit::key::escape_part;
//! let key = |from: &str, to: &str| format!("route:{}:{}", escape_part(from), escape_part(to));
//! assert_eq!(key("a:b", "c"), "route:a%3Ab:c");
//! assert_eq!(key("a", "b:c"), "route:a:b%3Ac");
//! assert_eq!(key("50%", "x"), "route:50%25:x");
//! ```
//!
//! For `list_users(skip: 0, limit: 100)` with `key = "users:list"` the logical key is
//! `users:list:` followed by `hex(sha256(b"[0,100]"))`:
//!
//! ```
//! let key = format!("users:list:{}", cachekit::key::hash_args(&(0u32, 100u32)));
//! assert_eq!(
//!     key,
//!     "users:list:ba9e2e0a09d7b9299347d9d498a66648dcf88929d89755628674e2ef922ccbd7"
//! );
//! ```

use serde::Serialize;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::fmt;
use std::io;

/// Escapes a placeholder value for a key: `%` becomes `%25` and `:` becomes `%3A` (their
/// percent-encodings); every other character stays as it is. The macros apply this to the
/// `Display` form of every placeholder value, so that a value containing `:` cannot make two
/// argument tuples share a key (see [the key format](self#the-key-format)).
///
/// Borrows when there is nothing to escape.
///
/// ```
/// use cachekit::key::escape_part;
/// assert_eq!(escape_part("ada@example.com"), "ada@example.com");
/// assert_eq!(escape_part("a:b"), "a%3Ab");
/// assert_eq!(escape_part("100%:x"), "100%25%3Ax");
/// ```
pub fn escape_part(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', ':']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A logical key as logs show it: in full, or with `redact` its namespace (the first
/// `:`-separated segment) and `:#` and the first 8 hex digits of the SHA-256 of the whole key,
/// as in `users:#3fa9c1d2`; a key without `:` shows only `#3fa9c1d2`. The hash lets the lines
/// about one key be matched up without showing the email or id in it.
///
/// Give it the logical key: with the physical one, the namespace would be the prefix.
pub(crate) struct LogKey<'a> {
    key: &'a str,
    redact: bool,
}

impl<'a> LogKey<'a> {
    pub(crate) fn new(key: &'a str, redact: bool) -> Self {
        Self { key, redact }
    }
}

impl fmt::Display for LogKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.redact {
            return f.write_str(self.key);
        }
        let digest = Sha256::digest(self.key.as_bytes());
        let hash = hex::encode(&digest[..4]);
        match self.key.split_once(':') {
            Some((namespace, _)) => write!(f, "{namespace}:#{hash}"),
            None => write!(f, "#{hash}"),
        }
    }
}

impl fmt::Debug for LogKey<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The lowercase hex SHA-256 of the serde_json encoding of `args`.
///
/// Pass the unnamed arguments as a tuple: a tuple encodes as a JSON array, so
/// `hash_args(&(0u32, 100u32))` hashes the bytes `[0,100]`. A value that serde_json cannot
/// encode (a map with non-string keys, a failing `Serialize` impl) hashes the bytes written
/// before the failure followed by its error text, so the key stays deterministic.
pub fn hash_args<S: Serialize + ?Sized>(args: &S) -> String {
    let mut writer = HashWriter(Sha256::new());
    if let Err(error) = serde_json::to_writer(&mut writer, args) {
        // Deterministic for the same input; such arguments are a programming error that the
        // log makes visible, not a reason to fail the caller.
        tracing::warn!(%error, "cache key arguments did not serialize; hashing the error");
        writer.0.update(error.to_string().as_bytes());
    }
    hex::encode(writer.0.finalize())
}

/// The lowercase hex SHA-256 of `bytes`; what [`hash_args`] computes over the JSON text.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Feeds serde_json's output straight into the hasher, without an intermediate buffer.
struct HashWriter(Sha256);

impl io::Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Escapes Redis glob metacharacters (`*`, `?`, `[`, `]`, `\`) so that `s` matches only itself
/// inside a pattern. The macros apply this to every placeholder value of an `#[invalidates]`
/// pattern, so an argument of `*` can never widen an invalidation.
///
/// ```
/// assert_eq!(cachekit::key::escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
/// ```
pub fn escape_glob(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Whether `pattern` contains an unescaped glob metacharacter, i.e. can match more than one
/// key. A pattern without one names exactly one key (after [`unescape_glob`]).
///
/// ```
/// assert!(cachekit::key::has_glob("users:*"));
/// assert!(!cachekit::key::has_glob("users:\\*"));
/// ```
pub fn has_glob(pattern: &str) -> bool {
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// Removes glob escapes: the one key a pattern without metacharacters names.
///
/// ```
/// assert_eq!(cachekit::key::unescape_glob("users:\\*"), "users:*");
/// ```
pub fn unescape_glob(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Matches `text` against a Redis glob `pattern`, with the semantics of Redis's `SCAN MATCH`
/// and `KEYS` (its `stringmatchlen`): `*` any run, `?` one character, `[abc]`, `[^abc]`,
/// `[a-z]` classes, and `\` escaping the next character. Matching is per byte, as in Redis.
///
/// The embedded store uses this so that a pattern removes the same entries there as in Redis;
/// no crate implements this dialect (`glob` and `globset` are path globs with other rules), and
/// the integration suite checks it against a real Redis.
///
/// ```
/// use cachekit::key::glob_match;
/// assert!(glob_match("users:*", "users:1"));
/// assert!(glob_match("user[^x]:?", "users:1"));
/// assert!(!glob_match("users:\\*", "users:1"));
/// ```
pub fn glob_match(pattern: &str, text: &str) -> bool {
    glob_match_bytes(pattern.as_bytes(), text.as_bytes())
}

fn glob_match_bytes(mut p: &[u8], mut s: &[u8]) -> bool {
    // Iterative with one backtrack point for the last `*`: linear-ish, and no recursion depth
    // for hostile patterns such as `*a*a*a*a*...`.
    let mut star: Option<(&[u8], &[u8])> = None;
    loop {
        if let Some((&pc, prest)) = p.split_first() {
            if pc == b'*' {
                // Collapse runs of `*`.
                let mut rest = prest;
                while let Some((b'*', r)) = rest.split_first() {
                    rest = r;
                }
                if rest.is_empty() {
                    return true;
                }
                star = Some((rest, s));
                p = rest;
                continue;
            }
            if let Some((&sc, srest)) = s.split_first()
                && let Some(prest_after) = match_one(p, sc)
            {
                p = prest_after;
                s = srest;
                continue;
            }
        } else if s.is_empty() {
            return true;
        }
        // Mismatch: backtrack to the last star, letting it swallow one more byte.
        match star {
            Some((sp, ss)) if !ss.is_empty() => {
                let next = &ss[1..];
                star = Some((sp, next));
                p = sp;
                s = next;
            }
            _ => return false,
        }
    }
}

/// Matches one pattern element (not `*`) at the head of `p` against the byte `c`; returns the
/// rest of the pattern on a match.
fn match_one(p: &[u8], c: u8) -> Option<&[u8]> {
    match p[0] {
        b'?' => Some(&p[1..]),
        b'\\' if p.len() >= 2 => (p[1] == c).then_some(&p[2..]),
        b'[' => match_class(&p[1..], c),
        other => (other == c).then_some(&p[1..]),
    }
}

/// A `[...]` class as Redis reads it: `^` negates, `\x` is a literal, `a-z` a range (either
/// order), and an unterminated class runs to the end of the pattern.
fn match_class(mut p: &[u8], c: u8) -> Option<&[u8]> {
    let negate = p.first() == Some(&b'^');
    if negate {
        p = &p[1..];
    }
    let mut matched = false;
    loop {
        match p {
            [] => break,
            [b'\\', x, rest @ ..] => {
                matched |= *x == c;
                p = rest;
            }
            [b']', rest @ ..] => {
                p = rest;
                return (matched != negate).then_some(p);
            }
            [a, b'-', b, rest @ ..] => {
                let (lo, hi) = if a <= b { (*a, *b) } else { (*b, *a) };
                matched |= (lo..=hi).contains(&c);
                p = rest;
            }
            [x, rest @ ..] => {
                matched |= *x == c;
                p = rest;
            }
        }
    }
    // Unterminated class: Redis treats the end of the pattern as the closing bracket.
    (matched != negate).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_vector_matches_the_documented_format() {
        // hex(sha256(b"[0,100]")), computed with an independent SHA-256 implementation.
        let expected = "ba9e2e0a09d7b9299347d9d498a66648dcf88929d89755628674e2ef922ccbd7";
        assert_eq!(sha256_hex(b"[0,100]"), expected);
        assert_eq!(hash_args(&(0u32, 100u32)), expected);
    }

    #[test]
    fn strings_hash_as_json_strings() {
        assert_eq!(
            hash_args(&("a\"b",)),
            "14ca67106e8063cad91f941e5c3760dcb4c1ddb2d8c86a65fa93e75ca425004b"
        );
    }

    #[test]
    fn escape_part_encodes_only_percent_and_colon() {
        assert!(matches!(escape_part("users"), Cow::Borrowed("users")));
        for (raw, escaped) in [
            ("", ""),
            ("42", "42"),
            ("a:b", "a%3Ab"),
            (":", "%3A"),
            ("%", "%25"),
            ("%3A", "%253A"),
            ("a b/c*d?[e]\\f@g#", "a b/c*d?[e]\\f@g#"),
            ("é:ü", "é%3Aü"),
        ] {
            assert_eq!(escape_part(raw), escaped, "{raw}");
        }
        // Injective on what matters: escaped parts joined with `:` split back apart.
        let join = |parts: &[&str]| {
            parts
                .iter()
                .map(|p| escape_part(p))
                .collect::<Vec<_>>()
                .join(":")
        };
        assert_ne!(join(&["a:b", "c"]), join(&["a", "b:c"]));
        assert_ne!(join(&["a%3Ab", "c"]), join(&["a:b", "c"]));
        assert_eq!(join(&["a:b", "c"]).split(':').count(), 2);
    }

    #[test]
    fn log_keys_are_redacted_to_namespace_and_hash() {
        let key = "users:email:ada@example.com";
        assert_eq!(LogKey::new(key, false).to_string(), key);
        let hash = &sha256_hex(key.as_bytes())[..8];
        let redacted = LogKey::new(key, true).to_string();
        assert_eq!(redacted, format!("users:#{hash}"));
        assert!(!redacted.contains("ada"), "{redacted}");
        assert_eq!(format!("{:?}", LogKey::new(key, true)), redacted);

        // hex(sha256(b"users:1")), computed with an independent SHA-256 implementation.
        assert_eq!(LogKey::new("users:1", true).to_string(), "users:#646351ee");
        assert_eq!(LogKey::new("ada", true).to_string(), "#fdee430d");
        assert_eq!(
            LogKey::new(":x", true).to_string(),
            format!(":#{}", &sha256_hex(b":x")[..8])
        );
        // Keys that differ only after the namespace are told apart.
        assert_ne!(
            LogKey::new("users:1", true).to_string(),
            LogKey::new("users:2", true).to_string()
        );
    }

    #[test]
    fn escape_then_match_is_literal() {
        for hostile in ["*", "?", "[a-z]", "\\", "a*b", "]", "[", "^"] {
            let pattern = format!("users:{}", escape_glob(hostile));
            assert!(
                glob_match(&pattern, &format!("users:{hostile}")),
                "{hostile}"
            );
            assert!(!glob_match(&pattern, "users:1"), "{hostile}");
            assert!(!has_glob(&pattern), "{hostile}");
            assert_eq!(unescape_glob(&pattern), format!("users:{hostile}"));
        }
    }

    #[test]
    fn glob_semantics() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything", true),
            ("users:*", "users:", true),
            ("users:*", "user:1", false),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h*llo", "heeeello", true),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h[b-a]llo", "hallo", true),
            ("h[a-b]llo", "hcllo", false),
            ("a\\*b", "a*b", true),
            ("a\\*b", "axb", false),
            (
                "*a*a*a*a*a*a*a*b",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                false,
            ),
            ("[\\]]", "]", true),
            ("a[", "a", false),
            ("[a-]", "]", true),
            ("\\", "\\", true),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(glob_match(pattern, text), *expected, "{pattern} vs {text}");
        }
    }
}
