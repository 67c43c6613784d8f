use cachekit::cached;

#[cached]
async fn names() -> impl Iterator<Item = String> {
    Vec::new().into_iter()
}

fn main() {}
