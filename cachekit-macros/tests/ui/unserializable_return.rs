use cachekit::cached;

struct Connection;

#[cached(key = "conn:{id}")]
async fn connect(id: u64) -> Result<Connection, String> {
    let _ = id;
    Ok(Connection)
}

fn main() {}
