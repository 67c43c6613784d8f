//! The comparison scenarios, run in one process against one Redis.

use crate::names::*;
use crate::repo::{self, DbError, SLOW_LOAD, UserRepo};
use crate::report::{Machine, Report, Row, Settings};
use crate::stats::{mean, median, percentile};
use crate::{Error, Options, PREFIX, User};
use cachekit::CacheService;
use cachekit::codec::Codec;
use redis::AsyncConnectionConfig;
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What cachekit gives `set_pipeline_buffer_size` (`backend/redis.rs`); redis-rs's default is 50.
const PIPELINE_BUFFER: usize = 1024;

/// The `ConnectionManager` settings of cachekit's Redis backend with the default configuration
/// (`RedisBackend::connect_lazy`), for the raw contenders: the same connection settings.
pub(crate) fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        // As cachekit: no response timeout in the connection (cachekit's guard times each call).
        .set_response_timeout(None)
        .set_connection_timeout(Some(cachekit::DEFAULT_CONNECT_TIMEOUT))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(50))
        .set_max_delay(Duration::from_millis(200))
        .set_pipeline_buffer_size(PIPELINE_BUFFER)
}

/// The user every hit reads.
const HIT_ID: u64 = 1;
/// The keys of the spread concurrent scenario: users `1..=SPREAD_KEYS`.
const SPREAD_KEYS: u64 = 1_000;
/// TTL of the entries the benchmark writes itself.
const TTL_MS: u64 = 300_000;

/// How much work each scenario does.
#[derive(Debug, Clone)]
struct Plan {
    sequential_rounds: usize,
    sequential_calls: usize,
    warmup_calls: usize,
    concurrent_rounds: usize,
    concurrent_tasks: usize,
    concurrent_round: Duration,
    stampede_rounds: usize,
    stampede_calls: usize,
    invalidation_rounds: usize,
    invalidation_matching: usize,
    invalidation_others: usize,
    hot_key_rounds: usize,
    hot_key_round: Duration,
}

impl Plan {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                sequential_rounds: 3,
                sequential_calls: 100,
                warmup_calls: 50,
                concurrent_rounds: 3,
                concurrent_tasks: 64,
                concurrent_round: Duration::from_millis(50),
                stampede_rounds: 1,
                stampede_calls: 1000,
                invalidation_rounds: 2,
                invalidation_matching: 100,
                invalidation_others: 10_000,
                hot_key_rounds: 1,
                hot_key_round: Duration::from_secs(3),
            }
        } else {
            Self {
                sequential_rounds: 30,
                sequential_calls: 1000,
                warmup_calls: 500,
                concurrent_rounds: 100,
                concurrent_tasks: 64,
                concurrent_round: Duration::from_millis(50),
                stampede_rounds: 5,
                stampede_calls: 1000,
                invalidation_rounds: 5,
                invalidation_matching: 10_000,
                invalidation_others: 1_000_000,
                hot_key_rounds: 3,
                hot_key_round: Duration::from_secs(10),
            }
        }
    }

    fn settings(&self) -> Settings {
        Settings {
            sequential_rounds: self.sequential_rounds,
            sequential_calls: self.sequential_calls,
            concurrent_rounds: self.concurrent_rounds,
            concurrent_tasks: self.concurrent_tasks,
            concurrent_round_ms: millis(self.concurrent_round),
            stampede_rounds: self.stampede_rounds,
            stampede_calls: self.stampede_calls,
            stampede_load_ms: millis(repo::SLOW_LOAD),
            invalidation_rounds: self.invalidation_rounds,
            invalidation_matching: self.invalidation_matching,
            invalidation_others: self.invalidation_others,
            record_bytes: User::sample_json(HIT_ID).len(),
            cached_crate_value_bytes: 0, // measured once the `cached` crate has stored it
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One way of reading the cached user: a contender of the hit scenarios.
#[derive(Clone)]
enum Hit {
    Raw(MultiplexedConnection),
    RawManager(ConnectionManager),
    /// Diagnostic: the ConnectionManager read inside a `tokio::time::timeout`, as cachekit's
    /// guard wraps every backend call.
    RawManagerTimeout(ConnectionManager),
    Get(CacheService),
    /// `CacheService::get` on Redis with the in-process tier on.
    TierGet(CacheService),
    /// Diagnostic: `CacheService::get` on Redis with the guard switched off.
    Unguarded(CacheService),
    /// Diagnostic: `CacheService::get` on Redis with every read sent on its own.
    Unbatched(CacheService),
    Macro(UserRepo),
    CachedCrate,
    MemoryGet(CacheService),
    MemoryMacro(UserRepo),
    /// Decoding the record's JSON, without any store: what every hit above pays.
    DecodeOnly(Arc<[u8]>),
}

impl Hit {
    fn name(&self) -> &'static str {
        match self {
            Self::Raw(_) => RAW,
            Self::RawManager(_) => RAW_MANAGER,
            Self::RawManagerTimeout(_) => RAW_MANAGER_TIMEOUT,
            Self::Get(_) => SERVICE_GET,
            Self::TierGet(_) => TIER_USER,
            Self::Unguarded(_) => SERVICE_GET_UNGUARDED,
            Self::Unbatched(_) => SERVICE_GET_UNBATCHED,
            Self::Macro(_) => MACRO,
            Self::CachedCrate => CACHED_CRATE,
            Self::MemoryGet(_) => MEMORY_GET,
            Self::MemoryMacro(_) => MEMORY_MACRO,
            Self::DecodeOnly(_) => DECODE_ONLY,
        }
    }

    /// One read of user `id`, as a user of each library would write it.
    async fn call(&mut self, id: u64) -> Result<User, Error> {
        match self {
            Self::Raw(conn) => raw_get(conn, &format!("{PREFIX}:users:{id}")).await,
            Self::RawManager(conn) => raw_get(conn, &format!("{PREFIX}:users:{id}")).await,
            Self::RawManagerTimeout(conn) => {
                let key = format!("{PREFIX}:users:{id}");
                tokio::time::timeout(cachekit::DEFAULT_TIMEOUT, raw_get(conn, &key))
                    .await
                    .map_err(|_| Error::new("timed out"))?
            }
            Self::Get(cache)
            | Self::TierGet(cache)
            | Self::Unguarded(cache)
            | Self::Unbatched(cache)
            | Self::MemoryGet(cache) => cache
                .get::<User>(&format!("users:{id}"))
                .await
                .ok_or_else(|| Error::new("CacheService::get missed a key it should hit")),
            Self::Macro(repo) | Self::MemoryMacro(repo) => Ok(repo.get_user(id).await?),
            Self::CachedCrate => Ok(repo::cached_crate_get_user(id).await?),
            Self::DecodeOnly(json) => Ok(serde_json::from_slice(json)?),
        }
    }
}

/// Raw redis-rs: `GET` and `serde_json` decoding, nothing else.
async fn raw_get(conn: &mut impl ConnectionLike, key: &str) -> Result<User, Error> {
    let bytes: Option<Vec<u8>> = redis::cmd("GET").arg(key).query_async(conn).await?;
    let bytes = bytes.ok_or_else(|| Error::new("raw GET missed a key it should hit"))?;
    Ok(serde_json::from_slice(&bytes)?)
}

/// What the hit scenarios found: per contender, per round, the latencies in µs.
type Latencies = Vec<Vec<Vec<f64>>>;

type Summary = fn(&[f64]) -> f64;

/// The latency figures: mean, median, 99th percentile.
const FIGURES: [(&str, Summary); 3] = [
    ("mean", mean),
    ("p50", |v| percentile(v, 50.0)),
    ("p99", |v| percentile(v, 99.0)),
];

pub(crate) struct Runner {
    plan: Plan,
    progress: bool,
    diagnostics: bool,
    /// The scenario groups to run; empty: all.
    only: Vec<String>,
    url: String,
    client: redis::Client,
    /// For setting up and cleaning up (long response timeout), not for measuring.
    admin: MultiplexedConnection,
    /// Runs of the `cached` crate's loader once its entry was primed: hits must not add any.
    cached_crate_primed: u64,
    /// Rows so far.
    rows: Vec<Row>,
}

impl Runner {
    pub(crate) async fn new(options: &Options, url: String) -> Result<Self, Error> {
        let client = redis::Client::open(url.as_str())?;
        let admin_config =
            AsyncConnectionConfig::new().set_response_timeout(Some(Duration::from_secs(30)));
        let admin = client
            .get_multiplexed_async_connection_with_config(&admin_config)
            .await?;
        Ok(Self {
            plan: Plan::new(options.quick),
            progress: options.progress,
            diagnostics: options.diagnostics,
            only: options.only.clone(),
            url,
            client,
            admin,
            cached_crate_primed: 0,
            rows: Vec::new(),
        })
    }

    /// Whether the scenario group `group` is to run.
    fn runs(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }

    fn say(&self, what: &str) {
        if self.progress {
            eprintln!("compare: {what}");
        }
    }

    /// A multiplexed connection for raw redis-rs, with the settings cachekit gives its own.
    async fn raw_connection(&self) -> Result<MultiplexedConnection, Error> {
        let config = AsyncConnectionConfig::new()
            // As cachekit: no response timeout in the connection (cachekit's guard times each call).
            .set_response_timeout(None)
            .set_connection_timeout(Some(cachekit::DEFAULT_CONNECT_TIMEOUT))
            .set_pipeline_buffer_size(PIPELINE_BUFFER);
        Ok(self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?)
    }

    /// A `ConnectionManager` for raw redis-rs, configured as cachekit configures its own.
    async fn raw_manager(&self) -> Result<ConnectionManager, Error> {
        Ok(ConnectionManager::new_with_config(self.client.clone(), manager_config()).await?)
    }

    /// A cachekit service on the benchmark's Redis, with the default settings.
    async fn service(&self) -> Result<CacheService, Error> {
        self.service_with(true).await
    }

    /// A cachekit service on the benchmark's Redis, with the invalidation index on or off.
    async fn service_with(&self, indexed: bool) -> Result<CacheService, Error> {
        let mut builder = CacheService::builder().redis_url(&self.url).prefix(PREFIX);
        if !indexed {
            builder = builder.__diagnostic_unindexed();
        }
        let cache = builder.build().await?;
        let health = cache.health().await;
        if !health.connected {
            return Err(Error::new(format!(
                "cachekit cannot reach Redis: {}",
                health.error.unwrap_or_default()
            )));
        }
        Ok(cache)
    }

    /// A cachekit service on the benchmark's Redis with the in-process tier on.
    async fn tiered(&self) -> Result<CacheService, Error> {
        let cache = CacheService::builder()
            .redis_url(&self.url)
            .prefix(PREFIX)
            .local_tier(Duration::from_millis(TTL_MS))
            .build()
            .await?;
        Ok(cache)
    }

    pub(crate) async fn run(&mut self, mode: &str, redis_kind: &str) -> Result<Report, Error> {
        let mut machine = Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpu_model(),
            load_before: load_average(),
            load_after: None,
            redis_version: self.redis_version().await?,
            redis: redis_kind.to_owned(),
        };
        let mut settings = self.plan.settings();
        self.clock();
        if self.runs("hits") {
            let (redis, embedded) = self.hit_contenders().await?;
            settings.cached_crate_value_bytes = self.cached_crate_value_bytes().await?;
            let baseline = self.sequential(&redis).await?;
            self.embedded(&embedded, baseline).await?;
            let mut concurrent = redis.clone();
            let tiered = self.tiered().await?;
            prime_local::<User>(&tiered, &format!("users:{HIT_ID}")).await?;
            concurrent.push(Hit::TierGet(tiered));
            self.concurrent(CONCURRENT, 1, &concurrent).await?;
            self.concurrent_spread(&redis).await?;
            self.check_no_misses(redis.iter().chain(&embedded))?;
        }
        if self.runs("local") {
            self.local().await?;
        }
        if self.runs("codecs") {
            self.codecs().await?;
        }
        if self.runs("stampede") {
            self.stampede().await?;
        }
        if self.runs("writes") {
            self.writes().await?;
        }
        if self.runs("invalidation") {
            self.invalidation().await?;
        }
        if self.runs("hotkey") {
            self.hot_key().await?;
        }
        if self.runs("cluster") {
            self.cluster_invalidation().await?;
        }
        machine.load_after = load_average();
        Ok(Report {
            mode: mode.to_owned(),
            profile: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
            .to_owned(),
            machine,
            settings,
            rows: std::mem::take(&mut self.rows),
        })
    }

    async fn redis_version(&mut self) -> Result<String, Error> {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut self.admin)
            .await?;
        Ok(info
            .lines()
            .find_map(|line| line.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_owned())
    }

    /// The size of what the `cached` crate stored for the user (its key format is its own).
    async fn cached_crate_value_bytes(&mut self) -> Result<usize, Error> {
        let (_, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg(format!("{PREFIX}:cached_crate_users:*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut self.admin)
            .await?;
        let key = keys
            .first()
            .ok_or_else(|| Error::new("the `cached` crate's entry is not where expected"))?;
        let len: usize = redis::cmd("STRLEN")
            .arg(key)
            .query_async(&mut self.admin)
            .await?;
        Ok(len)
    }

    /// What one timing sample costs by itself.
    fn clock(&mut self) {
        const PAIRS: u32 = 100_000;
        let started = Instant::now();
        for _ in 0..PAIRS {
            black_box(Instant::now().elapsed());
        }
        let mut row = Row::new(CLOCK_SCENARIO, CLOCK, "per sample", "ns");
        row.value = started.elapsed().as_nanos() as f64 / f64::from(PAIRS);
        self.rows.push(row);
    }

    /// The contenders on Redis and on the embedded store, each primed so that every measured
    /// call is a hit. Raw redis-rs on a multiplexed connection comes first: the baseline.
    async fn hit_contenders(&mut self) -> Result<(Vec<Hit>, Vec<Hit>), Error> {
        self.say("connecting and priming the cache");
        let service = self.service().await?;
        let memory = CacheService::memory();
        let user = User::sample(HIT_ID);
        let key = format!("users:{HIT_ID}");
        if !(service.set(&key, &user, None).await && memory.set(&key, &user, None).await) {
            return Err(Error::new("cannot prime the cache"));
        }
        repo::cached_crate_get_user(HIT_ID).await?; // the `cached` crate fills its own entry
        self.cached_crate_primed = repo::cached_crate_loads();
        let mut redis = vec![
            Hit::Raw(self.raw_connection().await?),
            Hit::RawManager(self.raw_manager().await?),
        ];
        if self.diagnostics {
            redis.push(Hit::RawManagerTimeout(self.raw_manager().await?));
        }
        redis.push(Hit::Get(service.clone()));
        if self.diagnostics {
            let unguarded = CacheService::builder()
                .redis_url(&self.url)
                .prefix(PREFIX)
                .__diagnostic_unguarded()
                .build()
                .await?;
            redis.push(Hit::Unguarded(unguarded));
            let unbatched = CacheService::builder()
                .redis_url(&self.url)
                .prefix(PREFIX)
                .__diagnostic_unbatched()
                .build()
                .await?;
            redis.push(Hit::Unbatched(unbatched));
        }
        redis.extend([Hit::Macro(UserRepo::new(service)), Hit::CachedCrate]);
        let embedded = vec![
            Hit::MemoryGet(memory.clone()),
            Hit::MemoryMacro(UserRepo::new(memory)),
            Hit::DecodeOnly(User::sample_json(HIT_ID).into()),
        ];
        for contender in redis.iter().chain(&embedded) {
            if contender.clone().call(HIT_ID).await? != user {
                return Err(Error::new(format!(
                    "{} read another value",
                    contender.name()
                )));
            }
        }
        Ok((redis, embedded))
    }

    /// `calls` sequential hits of the contender named `name` (see [`crate::names`]), untimed:
    /// a steady loop to run under a profiler.
    pub(crate) async fn hit_loop(&mut self, name: &str, calls: usize) -> Result<(), Error> {
        let (redis, embedded) = self.hit_contenders().await?;
        let mut contender = redis
            .into_iter()
            .chain(embedded)
            .find(|c| c.name() == name)
            .ok_or_else(|| Error::new(format!("no contender named `{name}`")))?;
        for _ in 0..calls {
            let user = contender.call(black_box(HIT_ID)).await?;
            if user.id != HIT_ID {
                return Err(Error::new("read another user"));
            }
        }
        Ok(())
    }

    /// Every hit scenario must have measured hits: no loader ran after priming.
    fn check_no_misses<'a>(&self, contenders: impl Iterator<Item = &'a Hit>) -> Result<(), Error> {
        for contender in contenders {
            if let Hit::Macro(repo) | Hit::MemoryMacro(repo) = contender
                && repo.loads() != 0
            {
                return Err(Error::new(format!(
                    "{}: the loader ran {} times during the hit scenarios",
                    contender.name(),
                    repo.loads()
                )));
            }
        }
        let misses = repo::cached_crate_loads() - self.cached_crate_primed;
        if misses != 0 {
            return Err(Error::new(format!(
                "{CACHED_CRATE}: the loader ran {misses} times during the hit scenarios"
            )));
        }
        Ok(())
    }

    /// Rounds of sequential calls, the contenders taking turns call by call; each call timed
    /// on its own. Returns raw redis-rs's pooled figures, the embedded store's baseline.
    async fn sequential(&mut self, contenders: &[Hit]) -> Result<[f64; 3], Error> {
        let mut contenders = contenders.to_vec();
        let latencies = self
            .take_turns(SEQUENTIAL, &mut contenders, 0x5EED_CAC4_E417)
            .await?;
        Ok(self.latency_rows(SEQUENTIAL, &contenders, &latencies))
    }

    /// The embedded store's hits, measured like the sequential Redis hits but in rounds of
    /// their own (between Redis calls they would run with cold CPU caches). Their ratio is to
    /// raw redis-rs's pooled sequential figure: there is no same-round baseline.
    async fn embedded(&mut self, contenders: &[Hit], baseline: [f64; 3]) -> Result<(), Error> {
        let mut contenders = contenders.to_vec();
        let latencies = self
            .take_turns(EMBEDDED, &mut contenders, 0x5EED_CAC4_E417)
            .await?;
        for (i, contender) in contenders.iter().enumerate() {
            for (f, (figure, summary)) in FIGURES.into_iter().enumerate() {
                let pooled: Vec<f64> = latencies[i].concat();
                let mut row = Row::new(EMBEDDED, contender.name(), figure, "µs");
                row.value = summary(&pooled);
                row.ratio = Some(row.value / baseline[f]);
                self.rows.push(row);
            }
        }
        Ok(())
    }

    /// In-process hits, against moka holding an `Arc<User>`: the in-process tier on Redis
    /// (returning `Arc<User>`, returning `User`, and through `#[cached]`) and on the embedded
    /// store. Measured like the sequential hits, in rounds of their own; ratios to moka.
    async fn local(&mut self) -> Result<(), Error> {
        self.say("in-process hit: priming the tiers");
        let key = format!("users:{HIT_ID}");
        let user = User::sample(HIT_ID);
        let moka = moka::sync::Cache::new(1_000);
        moka.insert(format!("{PREFIX}:{key}"), Arc::new(user.clone()));
        let memory = CacheService::builder()
            .memory(cachekit::DEFAULT_LOCAL_MAX_BYTES)
            .local_tier(Duration::from_millis(TTL_MS))
            .build()
            .await?;
        let (arc, plain, by_macro) = (
            self.tiered().await?,
            self.tiered().await?,
            self.tiered().await?,
        );
        if !(arc.set(&key, &user, None).await && memory.set(&key, &user, None).await) {
            return Err(Error::new("cannot prime the cache"));
        }
        prime_local::<Arc<User>>(&arc, &key).await?;
        prime_local::<User>(&plain, &key).await?;
        prime_local::<Arc<User>>(&memory, &key).await?;
        let repo = UserRepo::new(by_macro.clone());
        prime_local::<User>(&by_macro, &key).await?; // `get_user` reads the same entry
        let caches = [&arc, &plain, &by_macro, &memory];
        let store_hits: Vec<u64> = caches.iter().map(|c| c.stats().hits).collect();
        let mut contenders = [
            Local::Moka(moka),
            Local::Arc(arc.clone(), TIER_ARC),
            Local::User(plain.clone(), TIER_USER),
            Local::Macro(repo.clone()),
            Local::Arc(memory.clone(), MEMORY_TIER_ARC),
        ];
        let latencies = self
            .take_turns(LOCAL, &mut contenders, 0x5EED_10CA_E417)
            .await?;
        self.latency_rows(LOCAL, &contenders, &latencies);
        for (cache, before) in caches.iter().zip(store_hits) {
            let stats = cache.stats();
            if stats.hits != before || stats.local_flushes != 0 {
                return Err(Error::new(format!(
                    "in-process hit: a tier let {} reads through to the store ({} flushes)",
                    stats.hits - before,
                    stats.local_flushes
                )));
            }
        }
        if repo.loads() != 0 {
            return Err(Error::new("in-process hit: the #[cached] loader ran"));
        }
        Ok(())
    }

    /// The user record in each codec: its stored size (written through a service on the
    /// benchmark's Redis, read back with `STRLEN`) and a hit on the embedded store, which
    /// decodes the record on every read. Ratios to JSON.
    async fn codecs(&mut self) -> Result<(), Error> {
        self.say("codecs: stored size and hit time of the record");
        let key = format!("users:{HIT_ID}");
        let user = User::sample(HIT_ID);
        let variants = [
            (CODEC_JSON, Codec::Json, None),
            (CODEC_MSGPACK, Codec::MessagePack, None),
            (CODEC_JSON_LZ4, Codec::Json, Some(1)),
            (CODEC_MSGPACK_LZ4, Codec::MessagePack, Some(1)),
        ];
        let mut conn = self.raw_connection().await?;
        let mut contenders = Vec::new();
        let mut json_bytes = 0.0;
        for (name, codec, compress_above) in variants {
            let configure = |mut builder: cachekit::CacheServiceBuilder| {
                builder = builder.codec(codec.clone());
                if let Some(bytes) = compress_above {
                    builder = builder.compress_above(bytes);
                }
                builder
            };
            let sized = configure(CacheService::builder().redis_url(&self.url).prefix(PREFIX))
                .build()
                .await?;
            let sized_key = format!("codec:{name}");
            if !sized.set(&sized_key, &user, None).await {
                return Err(Error::new(format!("codec {name}: cannot write the record")));
            }
            let bytes: u64 = redis::cmd("STRLEN")
                .arg(format!("{PREFIX}:{sized_key}"))
                .query_async(&mut conn)
                .await?;
            let bytes = bytes as f64;
            if name == CODEC_JSON {
                json_bytes = bytes;
            }
            let mut row = Row::new(CODECS, name, "stored size", "bytes");
            row.value = bytes;
            row.ratio = Some(bytes / json_bytes);
            self.rows.push(row);

            let memory =
                configure(CacheService::builder().memory(cachekit::DEFAULT_LOCAL_MAX_BYTES))
                    .build()
                    .await?;
            if !memory.set(&key, &user, None).await {
                return Err(Error::new(format!("codec {name}: cannot prime the store")));
            }
            contenders.push(Local::User(memory, name));
        }
        let latencies = self
            .take_turns(CODECS, &mut contenders, 0x5EED_C0DE_C5E7)
            .await?;
        self.latency_rows(CODECS, &contenders, &latencies);
        for contender in &contenders {
            if let Local::User(cache, name) = contender
                && cache.stats().decode_errors != 0
            {
                return Err(Error::new(format!("codec {name}: a read did not decode")));
            }
        }
        Ok(())
    }

    /// Rounds in which the contenders take turns call by call, in a new random order each
    /// turn (A B C, C A B, B C A ...): a burst of noise hits them alike, and none always
    /// follows the same other. Each turn gets a number, new for every turn (writes use it to
    /// pick a key). Returns the latencies in µs, per contender, per round.
    async fn take_turns<C: Contender>(
        &self,
        scenario: &str,
        contenders: &mut [C],
        seed: u64,
    ) -> Result<Latencies, Error> {
        let plan = &self.plan;
        let mut turn = 0u64;
        for contender in contenders.iter_mut() {
            for _ in 0..plan.warmup_calls {
                turn += 1;
                contender.take_turn(turn).await?;
            }
        }
        let n = contenders.len();
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut latencies: Latencies = vec![Vec::new(); n];
        for round in 0..plan.sequential_rounds {
            if round % 10 == 0 {
                self.say(&format!(
                    "{scenario}: round {}/{}",
                    round + 1,
                    plan.sequential_rounds
                ));
            }
            let mut samples = vec![Vec::with_capacity(plan.sequential_calls); n];
            for _ in 0..plan.sequential_calls {
                rng.shuffle(&mut order);
                turn += 1;
                for &i in &order {
                    let started = Instant::now();
                    contenders[i].take_turn(black_box(turn)).await?;
                    samples[i].push(started.elapsed().as_nanos() as f64 / 1000.0);
                }
            }
            for (i, samples) in samples.into_iter().enumerate() {
                latencies[i].push(samples);
            }
        }
        Ok(latencies)
    }

    /// Interleaved rounds of 64 tasks calling in a loop for a fixed time, all on one key (the
    /// scenario `scenario`) or spread over `keys` keys: calls per second, and this process's
    /// CPU time per call (the client's cost; Redis runs in its own process).
    async fn concurrent(
        &mut self,
        scenario: &'static str,
        keys: u64,
        contenders: &[Hit],
    ) -> Result<(), Error> {
        let plan = self.plan.clone();
        let n = contenders.len();
        let (mut throughput, mut cpu) = (vec![Vec::new(); n], vec![Vec::new(); n]);
        for round in 0..plan.concurrent_rounds {
            if round % 25 == 0 {
                self.say(&format!(
                    "{scenario}: round {}/{}",
                    round + 1,
                    plan.concurrent_rounds
                ));
            }
            for k in 0..n {
                let i = (round + k) % n;
                let (ops, cpu_per_call) = run_concurrently(
                    &contenders[i],
                    plan.concurrent_tasks,
                    keys,
                    plan.concurrent_round,
                )
                .await?;
                throughput[i].push(ops);
                cpu[i].push(cpu_per_call);
            }
        }
        for (i, contender) in contenders.iter().enumerate() {
            for (figure, unit, values) in [
                ("throughput", "ops/s", &throughput),
                ("client CPU per call", "µs", &cpu),
            ] {
                let row = Row::new(scenario, contender.name(), figure, unit);
                self.rows.push(by_round(row, &values[i], &values[0]));
            }
        }
        Ok(())
    }

    /// The 64 tasks spread over 1,000 keys, where no two concurrent reads are likely to share
    /// a key: raw redis-rs against cachekit without the tier.
    async fn concurrent_spread(&mut self, redis: &[Hit]) -> Result<(), Error> {
        self.say(&format!("{CONCURRENT_SPREAD}: priming {SPREAD_KEYS} keys"));
        let service = self.service().await?;
        for id in 1..=SPREAD_KEYS {
            if !service
                .set(&format!("users:{id}"), &User::sample(id), None)
                .await
            {
                return Err(Error::new("cannot prime the spread keys"));
            }
        }
        let contenders: Vec<Hit> = redis
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    Hit::Raw(_) | Hit::Get(_) | Hit::Unbatched(_) | Hit::Macro(_)
                )
            })
            .cloned()
            .collect();
        self.concurrent(CONCURRENT_SPREAD, SPREAD_KEYS, &contenders)
            .await?;
        // Later scenarios count the keys of `users:*`: leave only the hit scenarios' user.
        let spread: Vec<String> = (HIT_ID + 1..=SPREAD_KEYS)
            .map(|id| format!("{PREFIX}:users:{id}"))
            .collect();
        let _: u64 = redis::cmd("UNLINK")
            .arg(&spread)
            .query_async(&mut self.admin)
            .await?;
        Ok(())
    }

    /// 1,000 concurrent calls on one cold key whose loader takes 50 ms: how often the loader
    /// runs, and how long until every call has its value.
    async fn stampede(&mut self) -> Result<(), Error> {
        let plan = self.plan.clone();
        let repo = UserRepo::new(self.service().await?);
        let raw_loads = Arc::new(AtomicU64::new(0));
        let contenders = [
            Stampede::Raw(self.raw_connection().await?, raw_loads.clone()),
            Stampede::Macro(repo.clone()),
            Stampede::CachedCrate,
        ];
        // Connect every contender first (the `cached` crate creates its store on first call).
        for contender in &contenders {
            contender.call(999_999).await?;
        }
        let n = contenders.len();
        let (mut runs, mut wall) = (vec![Vec::new(); n], vec![Vec::new(); n]);
        for round in 0..plan.stampede_rounds {
            self.say(&format!(
                "stampede: round {}/{}",
                round + 1,
                plan.stampede_rounds
            ));
            // A key no earlier round or run used: cold.
            let id = 1_000_000 + round as u64;
            for k in 0..n {
                let i = (round + k) % n;
                let contender = &contenders[i];
                let before = contender.loads();
                let started = Instant::now();
                let mut tasks = Vec::with_capacity(plan.stampede_calls);
                let barrier = Arc::new(tokio::sync::Barrier::new(plan.stampede_calls));
                for _ in 0..plan.stampede_calls {
                    let (contender, barrier) = (contender.clone(), barrier.clone());
                    tasks.push(tokio::spawn(async move {
                        barrier.wait().await;
                        contender.call(id).await
                    }));
                }
                for task in tasks {
                    let user = task.await??;
                    if user.id != id {
                        return Err(Error::new(format!(
                            "{} read another user",
                            contender.name()
                        )));
                    }
                }
                wall[i].push(started.elapsed().as_secs_f64() * 1000.0);
                runs[i].push((contender.loads() - before) as f64);
            }
        }
        for (i, contender) in contenders.iter().enumerate() {
            for (figure, unit, values) in [("loader runs", "runs", &runs), ("time", "ms", &wall)] {
                let row = Row::new(STAMPEDE, contender.name(), figure, unit);
                self.rows.push(by_round(row, &values[i], &values[0]));
            }
        }
        Ok(())
    }

    /// The hot-key scenario, refresh-ahead off and on, taking turns round by round (each on a
    /// key of its own): the reads that found the key missing (each one a caller that waited
    /// for a loader, its own or another's), the loader runs, and the latency every caller saw.
    async fn hot_key(&mut self) -> Result<(), Error> {
        let plan = self.plan.clone();
        let refreshing = CacheService::builder()
            .redis_url(&self.url)
            .prefix(PREFIX)
            .refresh_ahead(1.0)
            .build()
            .await?;
        let contenders = [
            (self.service().await?, HotRead::Load, REFRESH_OFF),
            (refreshing.clone(), HotRead::Load, REFRESH_ON),
            (refreshing, HotRead::Refresh, REFRESH_BACKGROUND),
        ];
        let n = contenders.len();
        let (mut misses, mut loads, mut latencies) =
            (vec![vec![]; n], vec![vec![]; n], vec![vec![]; n]);
        for round in 0..plan.hot_key_rounds {
            for k in 0..n {
                let i = (round + k) % n;
                let (cache, read, name) = &contenders[i];
                self.say(&format!(
                    "hot key: round {}/{}, {name}",
                    round + 1,
                    plan.hot_key_rounds,
                ));
                let key = format!("hot_users:{round}:{i}");
                let run = hot_key_round(cache, *read, &key, plan.hot_key_round).await?;
                misses[i].push(run.misses as f64);
                loads[i].push(run.loads as f64);
                latencies[i].push(run.latencies);
            }
        }
        for (i, (_, _, name)) in contenders.iter().enumerate() {
            for (figure, unit, values) in [
                ("caller-visible misses", "reads", &misses),
                ("loader runs", "runs", &loads),
            ] {
                let row = Row::new(HOT_KEY, name, figure, unit);
                self.rows.push(by_round(row, &values[i], &values[0]));
            }
        }
        for (figure, p) in [
            ("p50", 50.0),
            ("p99", 99.0),
            ("p99.9", 99.9),
            ("max", 100.0),
        ] {
            for (i, (_, _, name)) in contenders.iter().enumerate() {
                let mut row = Row::new(HOT_KEY, name, figure, "µs");
                row.value = percentile(&latencies[i].concat(), p);
                row.round_ratios = (0..latencies[i].len())
                    .map(|r| percentile(&latencies[i][r], p) / percentile(&latencies[0][r], p))
                    .collect();
                row.ratio = Some(median(&row.round_ratios));
                self.rows.push(row);
            }
        }
        Ok(())
    }

    /// Sequential writes and fills, the contenders taking turns call by call: what filing an
    /// entry in the invalidation index adds to a write, against the same service with the
    /// index off; and beside them the same writes by hand on redis-rs, a plain `SET` and the
    /// transaction that files it, whose ratio is the floor of the service's.
    async fn writes(&mut self) -> Result<(), Error> {
        let (indexed, unindexed) = (
            self.service_with(true).await?,
            self.service_with(false).await?,
        );
        let mut sets = [
            Write::Set(unindexed.clone(), "writes_off"),
            Write::Set(indexed.clone(), "writes"),
            Write::Raw(self.raw_connection().await?),
            Write::RawFiled(self.raw_connection().await?),
        ];
        let latencies = self
            .take_turns(SEQUENTIAL_WRITE, &mut sets, 0x5EED_3217_E417)
            .await?;
        self.latency_rows(SEQUENTIAL_WRITE, &sets, &latencies);
        let mut fills = [
            Write::Fill(unindexed, "fills_off"),
            Write::Fill(indexed, "fills"),
        ];
        let latencies = self
            .take_turns(SEQUENTIAL_FILL, &mut fills, 0x5EED_3217_E417)
            .await?;
        self.latency_rows(SEQUENTIAL_FILL, &fills, &latencies);
        Ok(())
    }

    /// Rows of mean, p50 and p99 for each contender, with per-round ratios to the first;
    /// returns the first's figures.
    fn latency_rows<C: Contender>(
        &mut self,
        scenario: &str,
        contenders: &[C],
        latencies: &Latencies,
    ) -> [f64; 3] {
        let mut baseline = [0.0; 3];
        for (i, contender) in contenders.iter().enumerate() {
            for (f, (figure, summary)) in FIGURES.into_iter().enumerate() {
                let pooled: Vec<f64> = latencies[i].concat();
                let mut row = Row::new(scenario, contender.name(), figure, "µs");
                row.value = summary(&pooled);
                row.round_ratios = (0..latencies[i].len())
                    .map(|r| summary(&latencies[i][r]) / summary(&latencies[0][r]))
                    .collect();
                row.ratio = Some(median(&row.round_ratios));
                if i == 0 {
                    baseline[f] = row.value;
                }
                self.rows.push(row);
            }
        }
        baseline
    }

    /// `invalidate_pattern("users:*")` with the matching keys among many others, against the
    /// same `SCAN` + `UNLINK` walk written by hand, the service with its index off (which
    /// walks too), and `UNLINK` of the names known in advance. The matching entries are written
    /// through the service, so the index holds them; the others are written directly, so the
    /// index is rebuilt once (timed) before the rounds.
    async fn invalidation(&mut self) -> Result<(), Error> {
        let plan = self.plan.clone();
        self.say(&format!(
            "invalidation: writing {} other keys",
            plan.invalidation_others
        ));
        let loading = Instant::now();
        populate_others(&mut self.admin, plan.invalidation_others).await?;
        self.say(&format!(
            "invalidation: wrote them in {:.1} s",
            loading.elapsed().as_secs_f64()
        ));
        let service = self.service().await?;
        let unindexed = self.service_with(false).await?;
        let rebuilding = Instant::now();
        let filed = service.rebuild_index().await?;
        self.say(&format!(
            "invalidation: rebuilt the index ({filed} keys filed) in {:.1} s",
            rebuilding.elapsed().as_secs_f64()
        ));
        let mut raw = self.raw_connection().await?;
        let names = [
            RAW_SCAN,
            SERVICE_INVALIDATE,
            SERVICE_INVALIDATE_UNINDEXED,
            RAW_UNLINK_KNOWN,
        ];
        let n = names.len();
        let (mut time, mut removed) = (vec![Vec::new(); n], vec![Vec::new(); n]);
        let mut per_entry = Vec::new();
        for round in 0..plan.invalidation_rounds {
            self.say(&format!(
                "invalidation: round {}/{}",
                round + 1,
                plan.invalidation_rounds
            ));
            for k in 0..n {
                let i = (round + k) % n;
                populate_matching(&service, plan.invalidation_matching).await?;
                if per_entry.len() <= round {
                    per_entry.push(index_bytes_per_entry(&mut self.admin).await?);
                }
                let started = Instant::now();
                let count = match i {
                    0 => scan_unlink(&mut raw, &format!("{PREFIX}:users:*")).await?,
                    1 => service.try_invalidate_pattern("users:*").await?,
                    2 => unindexed.try_invalidate_pattern("users:*").await?,
                    _ => unlink_known(&mut raw, plan.invalidation_matching).await?,
                };
                time[i].push(started.elapsed().as_secs_f64() * 1000.0);
                removed[i].push(checked_count(names[i], count, plan.invalidation_matching)?);
            }
        }
        self.removal_rows(INVALIDATION, &names, &time, &removed);
        let mut row = Row::new(INDEX_MEMORY, INDEX_PER_ENTRY, "per entry", "bytes");
        row.value = median(&per_entry);
        self.rows.push(row);
        Ok(())
    }

    /// The invalidation scenario on a private Redis Cluster (3 primaries, 3 replicas): the
    /// service with its index (kept per slot there), against the same service with its index
    /// off (a `SCAN` walk of every primary, the baseline) and `UNLINK` of the names known in
    /// advance; and the index's memory per entry. The other keys are written directly and
    /// filed by one rebuild, as in the single-server scenario.
    async fn cluster_invalidation(&mut self) -> Result<(), Error> {
        let plan = self.plan.clone();
        self.say("cluster: starting 3 primaries and 3 replicas");
        let cluster = tokio::task::spawn_blocking(cachekit_tests::RedisCluster::start)
            .await
            .map_err(|e| Error::new(format!("the cluster did not start: {e}")))?;
        let service_with = |indexed: bool| {
            let mut builder = CacheService::builder()
                .redis_cluster(cluster.urls())
                .prefix(PREFIX);
            if !indexed {
                builder = builder.__diagnostic_unindexed();
            }
            builder.build()
        };
        let (service, unindexed) = (service_with(true).await?, service_with(false).await?);
        if let Some(error) = service.health().await.error {
            return Err(Error::new(format!(
                "cachekit cannot reach the cluster: {error}"
            )));
        }
        let mut raw = cluster.connection().await;
        self.say(&format!(
            "cluster: writing {} other keys",
            plan.invalidation_others
        ));
        populate_others_across_slots(&mut raw, plan.invalidation_others).await?;
        let rebuilding = Instant::now();
        let filed = service.rebuild_index().await?;
        self.say(&format!(
            "cluster: rebuilt the index ({filed} keys filed) in {:.1} s",
            rebuilding.elapsed().as_secs_f64()
        ));
        let names = [
            SERVICE_INVALIDATE_UNINDEXED,
            SERVICE_INVALIDATE,
            RAW_UNLINK_KNOWN,
        ];
        let n = names.len();
        let (mut time, mut removed) = (vec![Vec::new(); n], vec![Vec::new(); n]);
        let mut per_entry = Vec::new();
        for round in 0..plan.invalidation_rounds {
            self.say(&format!(
                "cluster: round {}/{}",
                round + 1,
                plan.invalidation_rounds
            ));
            for k in 0..n {
                let i = (round + k) % n;
                populate_matching(&service, plan.invalidation_matching).await?;
                if per_entry.len() <= round {
                    let entries = plan.invalidation_others + plan.invalidation_matching;
                    per_entry.push(cluster_index_bytes(&cluster).await? / entries as f64);
                }
                let started = Instant::now();
                let count = match i {
                    0 => unindexed.try_invalidate_pattern("users:*").await?,
                    1 => service.try_invalidate_pattern("users:*").await?,
                    _ => unlink_known(&mut raw, plan.invalidation_matching).await?,
                };
                time[i].push(started.elapsed().as_secs_f64() * 1000.0);
                removed[i].push(checked_count(names[i], count, plan.invalidation_matching)?);
            }
        }
        self.removal_rows(CLUSTER_INVALIDATION, &names, &time, &removed);
        let mut row = Row::new(INDEX_MEMORY, CLUSTER_INDEX_PER_ENTRY, "per entry", "bytes");
        row.value = median(&per_entry);
        self.rows.push(row);
        Ok(())
    }

    /// The rows of a removal scenario: each contender's time and keys removed, round by round,
    /// against the first contender's.
    fn removal_rows(
        &mut self,
        scenario: &'static str,
        names: &[&'static str],
        time: &[Vec<f64>],
        removed: &[Vec<f64>],
    ) {
        for (i, name) in names.iter().enumerate() {
            for (figure, unit, values) in [("time", "ms", time), ("keys removed", "keys", removed)]
            {
                let row = Row::new(scenario, name, figure, unit);
                self.rows.push(by_round(row, &values[i], &values[0]));
            }
        }
    }

    /// Removes every key the run wrote (for a Redis the runner did not start).
    pub(crate) async fn clean_up(&mut self) -> Result<u64, Error> {
        self.say("removing the benchmark's keys");
        scan_unlink(&mut self.admin, &format!("{PREFIX}*")).await
    }
}

/// `count` as a figure, if it is the `expected` number of keys a removal by `name` had to find.
/// How the hot-key scenario reads.
#[derive(Debug, Clone, Copy)]
enum HotRead {
    /// `get_or_load`.
    Load,
    /// `get_or_refresh`.
    Refresh,
}

/// What one round of the hot-key scenario saw.
struct HotKeyRound {
    /// Reads that found the key missing, after the first fill.
    misses: u64,
    /// Loader runs, after the first fill.
    loads: u64,
    /// Every call's latency, in µs.
    latencies: Vec<f64>,
}

/// 10 tasks reading `key` every 10 ms each for `run` (TTL 1 s, a 50 ms loader), after one first
/// fill the same way.
async fn hot_key_round(
    cache: &CacheService,
    read: HotRead,
    key: &str,
    run: Duration,
) -> Result<HotKeyRound, Error> {
    let loads = Arc::new(AtomicU64::new(0));
    let load = {
        let loads = loads.clone();
        move || {
            let loads = loads.clone();
            async move {
                loads.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(SLOW_LOAD).await;
                Ok::<_, DbError>(User::sample(HIT_ID))
            }
        }
    };
    let ttl = Some(Duration::from_secs(1));
    let get = move |cache: CacheService, key: String| {
        let load = load.clone();
        async move {
            match read {
                HotRead::Load => cache.get_or_load(&key, ttl, load).await,
                HotRead::Refresh => cache.get_or_refresh(&key, ttl, load).await,
            }
        }
    };
    get(cache.clone(), key.to_owned()).await?;
    let (loads_before, misses_before) = (loads.load(Ordering::Relaxed), cache.stats().misses);
    let stop = Instant::now() + run;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (cache, key, get) = (cache.clone(), key.to_owned(), get.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while Instant::now() < stop {
                tick.tick().await;
                let started = Instant::now();
                let user = get(cache.clone(), key.clone()).await?;
                latencies.push(started.elapsed().as_secs_f64() * 1e6);
                if user.id != HIT_ID {
                    return Err(Error::new("the hot key read another user"));
                }
            }
            Ok::<_, Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok(HotKeyRound {
        misses: cache.stats().misses - misses_before,
        loads: loads.load(Ordering::Relaxed) - loads_before,
        latencies,
    })
}

fn checked_count(name: &str, count: u64, expected: usize) -> Result<f64, Error> {
    if count == expected as u64 {
        Ok(count as f64)
    } else {
        Err(Error::new(format!(
            "{name} removed {count} keys, not {expected}"
        )))
    }
}

/// `row` with one figure per round in `values`: its value the median round, its ratios those of
/// each round to the same round of `baseline`.
fn by_round(mut row: Row, values: &[f64], baseline: &[f64]) -> Row {
    row.value = median(values);
    row.round_ratios = values.iter().zip(baseline).map(|(v, b)| v / b).collect();
    row.ratio = Some(median(&row.round_ratios));
    row
}

/// `tasks` tasks calling `contender` until `duration` has passed, on user `HIT_ID` alone
/// (`keys` 1) or each task walking users `1..=keys` from its own starting point; returns calls
/// per second and this process's CPU time per call in µs.
async fn run_concurrently(
    contender: &Hit,
    tasks: usize,
    keys: u64,
    duration: Duration,
) -> Result<(f64, f64), Error> {
    let cpu_before = process_cpu()?;
    let started = Instant::now();
    let deadline = started + duration;
    let handles: Vec<_> = (0..tasks)
        .map(|task| {
            let mut contender = contender.clone();
            tokio::spawn(async move {
                let mut calls = 0u64;
                let mut id = HIT_ID + (task as u64 * 7_919) % keys;
                while Instant::now() < deadline {
                    let user = contender.call(black_box(id)).await?;
                    if user.id != id {
                        return Err(Error::new("read another user"));
                    }
                    calls += 1;
                    id = if id >= keys { HIT_ID } else { id + 1 };
                }
                Ok::<_, Error>(calls)
            })
        })
        .collect();
    let mut calls = 0;
    for handle in handles {
        calls += handle.await??;
    }
    let elapsed = started.elapsed();
    let cpu = process_cpu()? - cpu_before;
    let calls = calls.max(1) as f64;
    Ok((
        calls / elapsed.as_secs_f64(),
        cpu.as_nanos() as f64 / 1000.0 / calls,
    ))
}

/// CPU time used so far by all threads of this process.
fn process_cpu() -> Result<Duration, Error> {
    let time = nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map_err(|errno| Error::new(format!("clock_gettime: {errno}")))?;
    Ok(Duration::from(time))
}

/// A contender of the stampede.
#[derive(Clone)]
enum Stampede {
    /// Hand-written cache-aside on redis-rs: `GET`; on a miss, load and `SET`.
    Raw(MultiplexedConnection, Arc<AtomicU64>),
    Macro(UserRepo),
    CachedCrate,
}

impl Stampede {
    fn name(&self) -> &'static str {
        match self {
            Self::Raw(..) => RAW_CACHE_ASIDE,
            Self::Macro(_) => MACRO,
            Self::CachedCrate => CACHED_CRATE,
        }
    }

    fn loads(&self) -> u64 {
        match self {
            Self::Raw(_, loads) => loads.load(Ordering::SeqCst),
            Self::Macro(repo) => repo.loads(),
            Self::CachedCrate => repo::cached_crate_slow_loads(),
        }
    }

    async fn call(&self, id: u64) -> Result<User, Error> {
        match self {
            Self::Raw(conn, loads) => {
                let mut conn = conn.clone();
                let key = format!("{PREFIX}:raw_slow_users:{id}");
                let bytes: Option<Vec<u8>> =
                    redis::cmd("GET").arg(&key).query_async(&mut conn).await?;
                if let Some(bytes) = bytes {
                    return Ok(serde_json::from_slice(&bytes)?);
                }
                loads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(repo::SLOW_LOAD).await;
                let user = User::sample(id);
                redis::cmd("SET")
                    .arg(&key)
                    .arg(serde_json::to_vec(&user)?)
                    .arg("PX")
                    .arg(TTL_MS)
                    .exec_async(&mut conn)
                    .await?;
                Ok(user)
            }
            Self::Macro(repo) => Ok(repo.get_user_slowly(id).await?),
            Self::CachedCrate => Ok(repo::cached_crate_get_user_slowly(id).await?),
        }
    }
}

/// Writes `count` small keys `{PREFIX}:orders:{i}` with pipelined `MSET`s.
async fn populate_others(conn: &mut MultiplexedConnection, count: usize) -> Result<(), Error> {
    const PER_MSET: usize = 1000;
    const PER_PIPELINE: usize = 20;
    let mut next = 0;
    while next < count {
        let mut pipe = redis::pipe();
        for _ in 0..PER_PIPELINE {
            if next >= count {
                break;
            }
            let end = (next + PER_MSET).min(count);
            let mut mset = redis::cmd("MSET");
            for i in next..end {
                mset.arg(format!("{PREFIX}:orders:{i}")).arg(i);
            }
            pipe.add_command(mset).ignore();
            next = end;
        }
        pipe.exec_async(conn).await?;
    }
    Ok(())
}

/// [`populate_others`] on a cluster: one `MSET` of 1,000 keys at a time, which redis-rs splits
/// by slot (a cluster pipeline must stay in one slot).
async fn populate_others_across_slots(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    count: usize,
) -> Result<(), Error> {
    for start in (0..count).step_by(1000) {
        let mut mset = redis::cmd("MSET");
        for i in start..(start + 1000).min(count) {
            mset.arg(format!("{PREFIX}:orders:{i}")).arg(i);
        }
        mset.exec_async(&mut *conn).await?;
    }
    Ok(())
}

/// Writes the matching entries `users:{i}`, each holding the user record, through the
/// service (so that its index files them), 256 at a time.
async fn populate_matching(service: &CacheService, count: usize) -> Result<(), Error> {
    const AT_ONCE: usize = 256;
    let user = User::sample(HIT_ID);
    let ttl = Some(Duration::from_millis(TTL_MS));
    let mut next = 0;
    while next < count {
        let end = (next + AT_ONCE).min(count);
        let mut writes = tokio::task::JoinSet::new();
        for i in next..end {
            let (service, user) = (service.clone(), user.clone());
            writes.spawn(async move { service.try_set(&format!("users:{i}"), &user, ttl).await });
        }
        while let Some(written) = writes.join_next().await {
            written.map_err(|e| Error::new(e.to_string()))??;
        }
        next = end;
    }
    Ok(())
}

/// `UNLINK` of `{PREFIX}:users:{i}` for `i` below `count`, 1,000 names a command, pipelined.
/// On a cluster, one `UNLINK` of 1,000 names at a time, which redis-rs splits by slot.
async fn unlink_known(
    conn: &mut (impl redis::aio::ConnectionLike + Send),
    count: usize,
) -> Result<u64, Error> {
    let mut removed = 0;
    for start in (0..count).step_by(1000) {
        let names: Vec<String> = (start..(start + 1000).min(count))
            .map(|i| format!("{PREFIX}:users:{i}"))
            .collect();
        let n: u64 = redis::cmd("UNLINK").arg(names).query_async(conn).await?;
        removed += n;
    }
    Ok(removed)
}

/// The memory of every key of the index on the cluster's primaries (`{PREFIX}#*`: the index,
/// drain sets and registries of each slot), by `MEMORY USAGE` with every element sampled.
async fn cluster_index_bytes(cluster: &cachekit_tests::RedisCluster) -> Result<f64, Error> {
    let mut bytes = 0u64;
    for node in cluster.primaries() {
        let mut conn = node.connection().await;
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{PREFIX}#*"))
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            if !keys.is_empty() {
                let mut pipe = redis::pipe();
                for key in &keys {
                    pipe.cmd("MEMORY")
                        .arg("USAGE")
                        .arg(key)
                        .arg("SAMPLES")
                        .arg(0);
                }
                let sizes: Vec<Option<u64>> = pipe.query_async(&mut conn).await?;
                bytes += sizes.into_iter().flatten().sum::<u64>();
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(bytes as f64)
}

/// The `users` index's memory per member: `MEMORY USAGE` (all of it sampled) over `ZCARD`.
async fn index_bytes_per_entry(conn: &mut MultiplexedConnection) -> Result<f64, Error> {
    let index = format!("{PREFIX}#ix:users");
    let (bytes, members): (Option<u64>, u64) = redis::pipe()
        .cmd("MEMORY")
        .arg("USAGE")
        .arg(&index)
        .arg("SAMPLES")
        .arg(0)
        .cmd("ZCARD")
        .arg(&index)
        .query_async(conn)
        .await?;
    match bytes {
        Some(bytes) if members > 0 => Ok(bytes as f64 / members as f64),
        _ => Err(Error::new(format!("the index {index} is empty"))),
    }
}

/// The hand-written pattern removal: `SCAN ... MATCH ... COUNT 1000`, `UNLINK` each batch.
async fn scan_unlink(conn: &mut MultiplexedConnection, pattern: &str) -> Result<u64, Error> {
    let mut cursor: u64 = 0;
    let mut removed = 0;
    loop {
        let (next, keys): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        if !keys.is_empty() {
            let n: u64 = redis::cmd("UNLINK").arg(&keys).query_async(conn).await?;
            removed += n;
        }
        if next == 0 {
            return Ok(removed);
        }
        cursor = next;
    }
}

/// A contender of the sequential scenarios: one call a turn, the turn's number given.
trait Contender {
    fn name(&self) -> &'static str;
    async fn take_turn(&mut self, turn: u64) -> Result<(), Error>;
}

impl Contender for Hit {
    fn name(&self) -> &'static str {
        Hit::name(self)
    }

    /// A read of the user every hit reads, checked to be that user.
    async fn take_turn(&mut self, _turn: u64) -> Result<(), Error> {
        let user = self.call(black_box(HIT_ID)).await?;
        if user.id != HIT_ID {
            return Err(Error::new(format!("{} read another user", Hit::name(self))));
        }
        Ok(())
    }
}

/// The record every write writes.
static RECORD: LazyLock<User> = LazyLock::new(|| User::sample(HIT_ID));

/// One way of writing the user record: a contender of the write scenarios.
enum Write {
    /// redis-rs `SET ... PX` of the record's JSON, over 1,000 keys.
    Raw(MultiplexedConnection),
    /// The same `SET`, filed in an index in one transaction as `CacheService::set` files it.
    RawFiled(MultiplexedConnection),
    /// `CacheService::set` over 1,000 keys of a namespace.
    Set(CacheService, &'static str),
    /// `CacheService::get_or_load` of a new key of a namespace: a miss, a lease, the loader
    /// (returning the record at once), the fill.
    Fill(CacheService, &'static str),
}

impl Write {
    fn name(&self) -> &'static str {
        match self {
            Self::Raw(_) => RAW_SET,
            Self::RawFiled(_) => RAW_SET_FILED,
            // The contenders with the index off write namespaces named `*_off`.
            Self::Set(_, ns) if ns.ends_with("_off") => SERVICE_SET_UNINDEXED,
            Self::Set(..) => SERVICE_SET,
            Self::Fill(_, ns) if ns.ends_with("_off") => SERVICE_FILL_UNINDEXED,
            Self::Fill(..) => SERVICE_FILL,
        }
    }
}

impl Contender for Write {
    fn name(&self) -> &'static str {
        Write::name(self)
    }

    async fn take_turn(&mut self, n: u64) -> Result<(), Error> {
        let user = &*RECORD;
        let ttl = Some(Duration::from_millis(TTL_MS));
        match self {
            Self::Raw(conn) => {
                let json = serde_json::to_vec(user)?;
                redis::cmd("SET")
                    .arg(format!("{PREFIX}:writes_raw:{}", n % 1000))
                    .arg(json)
                    .arg("PX")
                    .arg(TTL_MS)
                    .exec_async(conn)
                    .await?;
            }
            Self::RawFiled(conn) => {
                let json = serde_json::to_vec(user)?;
                let member = format!("writes_raw_filed:{}", n % 1000);
                let index = format!("{PREFIX}#ix:writes_raw_filed");
                let expires = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |since| since.as_millis())
                    + u128::from(TTL_MS);
                redis::pipe()
                    .atomic()
                    .cmd("SET")
                    .arg(format!("{PREFIX}:{member}"))
                    .arg(json)
                    .arg("PX")
                    .arg(TTL_MS)
                    .cmd("ZADD")
                    .arg(&index)
                    .arg("LT")
                    .arg(expires.to_string())
                    .arg(&member)
                    .cmd("SADD")
                    .arg(format!("{PREFIX}#ns"))
                    .arg(&index)
                    .exec_async(conn)
                    .await?;
            }
            Self::Set(cache, ns) => {
                cache
                    .try_set(&format!("{ns}:{}", n % 1000), user, ttl)
                    .await?;
            }
            Self::Fill(cache, ns) => {
                let fetched = cache
                    .get_or_load_with_status(&format!("{ns}:{n}"), ttl, || async {
                        Ok::<_, Error>(user.clone())
                    })
                    .await?;
                if fetched.from_cache || fetched.value.id != user.id {
                    return Err(Error::new(format!("{ns}:{n} was not a miss")));
                }
            }
        }
        Ok(())
    }
}

/// The 1, 5 and 15 minute load averages, from `/proc/loadavg`: how busy the machine was.
fn load_average() -> Option<String> {
    let loadavg = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(
        loadavg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
    )
}

/// The CPU model, from `/proc/cpuinfo`.
fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        (name.trim() == "model name").then(|| value.trim().to_owned())
    })
}

/// Reads `key` on `cache` as a `T` until its in-process tier serves it: the tier's channel comes
/// up in the background.
async fn prime_local<T>(cache: &CacheService, key: &str) -> Result<(), Error>
where
    T: serde::de::DeserializeOwned + Clone + Send + Sync + 'static,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let before = cache.stats().local_hits;
        if cache.get::<T>(key).await.is_none() {
            return Err(Error::new(format!("{key} is not cached")));
        }
        if cache.stats().local_hits > before {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Err(Error::new(
        "the in-process tier did not come up within 10 s",
    ))
}

/// One way of reading the user from an in-process cache: a contender of the in-process hits.
enum Local {
    /// moka's `sync::Cache<String, Arc<User>>`.
    Moka(moka::sync::Cache<String, Arc<User>>),
    /// `CacheService::get::<Arc<User>>`, with its name.
    Arc(CacheService, &'static str),
    /// `CacheService::get::<User>`, with its name.
    User(CacheService, &'static str),
    /// `#[cached]` returning `User`.
    Macro(UserRepo),
}

impl Contender for Local {
    fn name(&self) -> &'static str {
        match self {
            Self::Moka(_) => MOKA_ARC,
            Self::Arc(_, name) => name,
            Self::User(_, name) => name,
            Self::Macro(_) => TIER_MACRO,
        }
    }

    async fn take_turn(&mut self, _turn: u64) -> Result<(), Error> {
        let id = black_box(HIT_ID);
        let found = match self {
            Self::Moka(cache) => cache.get(&format!("{PREFIX}:users:{id}")).map(|u| u.id),
            Self::Arc(cache, _) => cache
                .get::<Arc<User>>(&format!("users:{id}"))
                .await
                .map(|u| u.id),
            Self::User(cache, _) => cache
                .get::<User>(&format!("users:{id}"))
                .await
                .map(|u| u.id),
            Self::Macro(repo) => Some(repo.get_user(id).await?.id),
        };
        if found != Some(id) {
            return Err(Error::new(format!("{}: missed", self.name())));
        }
        Ok(())
    }
}
