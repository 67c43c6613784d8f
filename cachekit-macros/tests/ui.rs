//! Compile-time behaviour: each misuse is an error pointing at the mistake (`tests/ui/*.rs`
//! with their `.stderr`), and every supported shape compiles (`tests/ui/pass/*.rs`).
//!
//! Regenerate the expected output with
//! `TRYBUILD=overwrite cargo test -p cachekit-redis-macros --test ui` and read the diff.

#[test]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/*.rs");
}
