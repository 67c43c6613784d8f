//! Placeholder so the crate builds; the quickstart example.
fn main() {}
