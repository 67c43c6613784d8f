use cachekit::cached;

#[cached]
struct User;

fn main() {}
