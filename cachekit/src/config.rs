//! Configuration: [`CacheConfig`], its builder, and reading it from the environment.

use crate::CacheError;
use crate::backend::{Backend, MemoryBackend};
use crate::codec::Codec;
use std::fmt;
#[cfg(feature = "tls")]
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// The prefix used when none is configured: physical keys look like `cachekit:users:1`.
pub const DEFAULT_PREFIX: &str = "cachekit";
/// The TTL used when a call gives none: 300 seconds.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);
/// The bound on one cache operation (a `GET`, a `SET`): 250 ms.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
/// The bound on making a connection: 1 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The bound on a whole pattern removal (`invalidate_pattern`, `clear_all`), which walks the
/// keyspace in many steps: 30 s.
pub const DEFAULT_ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Consecutive failures that open the circuit breaker: 5.
pub const DEFAULT_BREAKER_THRESHOLD: u32 = 5;
/// How long an open breaker skips the backend before probing it: 5 s.
pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(5);
/// How long a loader's lease on a missing key lasts, and the longest another caller waits for
/// that loader before loading for itself: 10 s.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
/// TTL of entries in the in-process fallback store: 30 s.
pub const DEFAULT_FALLBACK_TTL: Duration = Duration::from_secs(30);
/// The largest encoded value the cache stores: 4 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: u64 = 4 * 1024 * 1024;
/// The in-process tier's default bound: 64 MiB of entries, weighed by their encoded size.
pub const DEFAULT_LOCAL_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// [`MAX_TTL`] in seconds. `cachekit-macros` repeats the number (it cannot depend on this
/// crate); `__private::checked_ttl_secs` fails the build of any `#[cached(ttl = ...)]` if the
/// two disagree.
pub(crate) const MAX_TTL_SECS: u64 = 315_360_000;

/// The longest TTL, lease or timeout cachekit accepts: 10 years (315,360,000 s).
///
/// A longer one is almost surely a unit mistake (milliseconds passed as seconds, or
/// `Duration::MAX` meaning "forever"), and the bound keeps `Instant + ttl` and Redis's
/// millisecond `PX` arithmetic far from overflow. [`CacheServiceBuilder::build`] rejects a
/// configuration above it, [`CacheConfig::from_env`] a variable above it, a write with a longer
/// TTL is refused, and `#[cached(ttl = ...)]` above it does not compile:
///
/// ```
/// # use std::time::Duration;
/// assert_eq!(cachekit::MAX_TTL, Duration::from_secs(10 * 365 * 24 * 60 * 60));
///
/// // The longest TTL the macro accepts is this one.
/// #[cachekit::cached(ttl = 315_360_000)]
/// async fn settings() -> Vec<String> {
///     Vec::new()
/// }
///
/// # cachekit::__doc_block_on(async {
/// let built = cachekit::CacheService::builder().lease_ttl(Duration::MAX).build().await;
/// assert!(built.unwrap_err().is_config());
/// # });
/// ```
pub const MAX_TTL: Duration = Duration::from_secs(MAX_TTL_SECS);

/// The smallest value a duration setting accepts.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Least {
    /// Zero is allowed.
    Zero,
    /// Anything above zero.
    AboveZero,
    /// One millisecond: the resolution of Redis's `PX`.
    Millisecond,
}

/// Checks that `value`, the setting `name`, is at least `least` and at most [`MAX_TTL`].
fn check_duration(name: &str, value: Duration, least: Least) -> Result<Duration, CacheError> {
    if value > MAX_TTL {
        return Err(CacheError::Config(format!(
            "{name} must be at most {MAX_TTL_SECS} seconds (10 years, cachekit::MAX_TTL)"
        )));
    }
    let too_small = match least {
        Least::Zero => None,
        Least::AboveZero => value.is_zero().then_some("greater than zero"),
        Least::Millisecond => {
            (value < Duration::from_millis(1)).then_some("at least 1 millisecond")
        }
    };
    match too_small {
        Some(bound) => Err(CacheError::Config(format!("{name} must be {bound}"))),
        None => Ok(value),
    }
}

/// The largest `max_value_bytes` accepted: 512 MiB, the largest string Redis stores.
const MAX_VALUE_BYTES_LIMIT: u64 = 512 * 1024 * 1024;

/// Checks a TTL given for one write (`set(key, value, Some(ttl))`): from 1 ms to [`MAX_TTL`].
/// The error names the bound, not the key.
pub(crate) fn check_ttl(ttl: Duration) -> Result<Duration, CacheError> {
    check_duration("a TTL", ttl, Least::Millisecond)
}

/// What a service does when its primary backend (Redis) cannot be used: it failed, timed out,
/// or the circuit breaker is open.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fallback {
    /// Reads miss and go to the loader (the database); writes are dropped. Always consistent:
    /// nothing is served that an invalidation could have missed. The default.
    Passthrough,
    /// Reads and writes use a small in-process store with a short TTL while Redis is
    /// unavailable, so a hot key does not hit the database on every call during an outage.
    ///
    /// The trade-off: an invalidation made by *another* process during the outage does not
    /// reach this store, so this process may serve a value up to `ttl` old that another process
    /// has invalidated. Invalidations made in this process are applied to both stores. The
    /// store is emptied when Redis comes back.
    Memory {
        /// How long an entry lives in the fallback store: from 1 ms to [`MAX_TTL`].
        ttl: Duration,
        /// The bound on the fallback store, in bytes: keys, values and an estimated per-entry
        /// overhead ([`MemoryBackend::ENTRY_OVERHEAD_BYTES`](crate::backend::MemoryBackend::ENTRY_OVERHEAD_BYTES)).
        max_bytes: u64,
    },
}

impl Fallback {
    /// The in-process fallback with the default TTL (30 s) and bound (64 MiB).
    pub fn memory() -> Self {
        Self::Memory {
            ttl: DEFAULT_FALLBACK_TTL,
            max_bytes: MemoryBackend::DEFAULT_MAX_BYTES,
        }
    }
}

/// Which store a service uses as its primary backend.
#[derive(Clone)]
#[non_exhaustive]
pub enum StoreConfig {
    /// A Redis server.
    Redis(RedisConfig),
    /// A Redis Cluster.
    RedisCluster(RedisClusterConfig),
    /// The embedded in-process store, bounded to `max_bytes`.
    Memory {
        /// The bound in bytes: keys, values and an estimated per-entry overhead.
        max_bytes: u64,
    },
    /// No store: every read misses.
    Disabled,
    /// A user-supplied backend.
    Custom(Arc<dyn Backend>),
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Redis(redis) => f.debug_tuple("Redis").field(redis).finish(),
            Self::RedisCluster(cluster) => f.debug_tuple("RedisCluster").field(cluster).finish(),
            Self::Memory { max_bytes } => f
                .debug_struct("Memory")
                .field("max_bytes", max_bytes)
                .finish(),
            Self::Disabled => f.write_str("Disabled"),
            Self::Custom(backend) => f.debug_tuple("Custom").field(backend).finish(),
        }
    }
}

/// Where a Redis server is. Built from a URL or from parts; either way `Debug` and logs show
/// only host, port, db, user name and TLS, never the password.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Database number.
    pub db: u16,
    /// ACL user name (Redis 6+), if any.
    pub username: Option<String>,
    /// Password, if any. Never printed.
    pub password: Option<String>,
    /// Whether to connect with TLS (`rediss://`).
    pub tls: bool,
    /// A private CA to trust, and a client certificate for mutual TLS. Used only with
    /// [`tls`](Self::tls); without a CA file, the system's trust store verifies the server.
    pub tls_options: TlsOptions,
}

/// The files of a TLS connection beyond the system's trust store: a CA to trust instead (a
/// private CA, or a managed service's), and a client certificate and key for a server that
/// demands mutual TLS. All are PEM files, read when the service is built; a file that cannot be
/// read or holds no PEM certificate (or key) is a configuration error naming the file.
///
/// ```
/// use cachekit::TlsOptions;
/// let tls = TlsOptions::default()
///     .ca_file("/etc/redis/ca.pem")
///     .client_cert("/etc/redis/client.pem", "/etc/redis/client.key");
/// assert!(tls.is_set());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsOptions {
    /// PEM certificates of the CA(s) to trust. When set, only these are trusted: the system's
    /// trust store is not consulted.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), presented to a server that requires client
    /// certificates (`tls-auth-clients yes`). Needs [`client_key_file`](Self::client_key_file).
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of [`client_cert_file`](Self::client_cert_file). Its contents are never
    /// logged.
    pub client_key_file: Option<PathBuf>,
}

impl TlsOptions {
    /// Trusts the CA certificates in the PEM file at `path` instead of the system's.
    pub fn ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// Presents the client certificate in `cert` (PEM), with its private key in `key` (PEM).
    pub fn client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.client_cert_file = Some(cert.into());
        self.client_key_file = Some(key.into());
        self
    }

    /// Whether any file is given.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.client_cert_file.is_some() || self.client_key_file.is_some()
    }

    fn validate(&self, tls: bool) -> Result<(), CacheError> {
        if self.is_set() && !tls {
            return Err(CacheError::Config(
                "a TLS CA file or client certificate is set, but the connection is not TLS: use a \
                 rediss:// URL or REDIS_SSL=true"
                    .into(),
            ));
        }
        match (&self.client_cert_file, &self.client_key_file) {
            (Some(_), None) => Err(CacheError::Config(
                "a TLS client certificate needs its private key file too (REDIS_TLS_KEY_FILE)"
                    .into(),
            )),
            (None, Some(_)) => Err(CacheError::Config(
                "a TLS client key needs its certificate file too (REDIS_TLS_CERT_FILE)".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The files' contents, checked to hold what they should, in redis-rs's form.
    #[cfg(feature = "tls")]
    fn certificates(&self) -> Result<redis::TlsCertificates, CacheError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let certificates = |path: &Path, what: &str| -> Result<Vec<u8>, CacheError> {
            let pem = read_tls_file(path, what)?;
            let found = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| {
                    CacheError::Config(format!(
                        "the TLS {what} {} is not valid PEM ({e})",
                        path.display()
                    ))
                })?;
            if found.is_empty() {
                return Err(CacheError::Config(format!(
                    "the TLS {what} {} holds no PEM certificate",
                    path.display()
                )));
            }
            Ok(pem)
        };
        let root_cert = self
            .ca_file
            .as_deref()
            .map(|path| certificates(path, "CA file"))
            .transpose()?;
        let client_tls = match (&self.client_cert_file, &self.client_key_file) {
            (Some(cert), Some(key)) => {
                let client_cert = certificates(cert, "client certificate")?;
                let client_key = read_tls_file(key, "client key")?;
                // The parse error names the PEM section, never the key's bytes.
                PrivateKeyDer::from_pem_slice(&client_key).map_err(|_| {
                    CacheError::Config(format!(
                        "the TLS client key {} holds no PEM private key",
                        key.display()
                    ))
                })?;
                Some(redis::ClientTlsConfig {
                    client_cert,
                    client_key,
                })
            }
            _ => None,
        };
        Ok(redis::TlsCertificates {
            client_tls,
            root_cert,
        })
    }
}

#[cfg(feature = "tls")]
fn read_tls_file(path: &Path, what: &str) -> Result<Vec<u8>, CacheError> {
    std::fs::read(path).map_err(|e| {
        CacheError::Config(format!(
            "cannot read the TLS {what} {} ({e})",
            path.display()
        ))
    })
}

impl RedisConfig {
    /// `127.0.0.1:6379`, db 0, no credentials, no TLS.
    pub fn localhost() -> Self {
        Self {
            host: "127.0.0.1".into(),
            port: 6379,
            db: 0,
            username: None,
            password: None,
            tls: false,
            tls_options: TlsOptions::default(),
        }
    }

    /// Parses a `redis://[user[:password]@]host[:port][/db]` or `rediss://...` URL. Percent-
    /// encoded user names and passwords are decoded.
    ///
    /// An error names the problem and quotes no part of the URL, which may hold a password.
    /// A password containing `/`, `?`, `#` or `@` must be percent-encoded (`%2F`, `%3F`, `%23`,
    /// `%40`); unencoded, the URL has an `@` after the host, which is reported as such. A
    /// query or fragment is an error rather than ignored.
    ///
    /// ```
    /// use cachekit::RedisConfig;
    /// let c = RedisConfig::from_url("rediss://app:s3cret@cache.example.com:6380/2").unwrap();
    /// assert_eq!((c.host.as_str(), c.port, c.db, c.tls), ("cache.example.com", 6380, 2, true));
    /// assert!(!format!("{c:?}").contains("s3cret"));
    /// assert!(RedisConfig::from_url("http://localhost").is_err());
    ///
    /// let err = RedisConfig::from_url("redis://app:s3/cret@cache.example.com").unwrap_err();
    /// assert!(err.to_string().contains("percent-encode"));
    /// assert!(!err.to_string().contains("cret"));
    /// let c = RedisConfig::from_url("redis://app:s3%2Fcret@cache.example.com").unwrap();
    /// assert_eq!(c.password.as_deref(), Some("s3/cret"));
    /// ```
    pub fn from_url(input: &str) -> Result<Self, CacheError> {
        let input = input.trim();
        if has_at_after_authority(input) {
            return Err(CacheError::Config(
                "the Redis URL has an `@` after the host: percent-encode `/`, `?`, `#` and `@` \
                 in the password (`%2F`, `%3F`, `%23`, `%40`)"
                    .into(),
            ));
        }
        // `url`'s error messages are fixed texts ("invalid port number"), never the input.
        let url = url::Url::parse(input)
            .map_err(|e| CacheError::Config(format!("the Redis URL is not a valid URL ({e})")))?;
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            // Not quoted: without `redis://`, what parses as the scheme may be a user name.
            _ => {
                return Err(CacheError::Config(
                    "the Redis URL must start with redis:// or rediss://".into(),
                ));
            }
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err(CacheError::Config(
                "the Redis URL has a query (`?...`) or fragment (`#...`), which cachekit does \
                 not read: the form is redis://[user[:password]@]host[:port][/db]; percent-encode \
                 `?` and `#` in a password (`%3F`, `%23`)"
                    .into(),
            ));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(addr)) => addr.to_string(),
            Some(host) => host.to_string(),
            None => return Err(CacheError::Config("the Redis URL has no host".into())),
        };
        if host.is_empty() {
            return Err(CacheError::Config("the Redis URL has no host".into()));
        }
        let port = url.port().unwrap_or(6379);
        let db = match url.path().trim_matches('/') {
            "" => 0,
            path => parse_db(path).map_err(|_| {
                CacheError::Config(
                    "the Redis URL's path must be a database number from 0 to 65535, as in `/2`"
                        .into(),
                )
            })?,
        };
        let decode = |s: &str, what: &str| -> Result<String, CacheError> {
            percent_decode(s).ok_or_else(|| {
                CacheError::Config(format!(
                    "the Redis URL's {what} is not valid percent-encoded UTF-8"
                ))
            })
        };
        let username = match url.username() {
            "" => None,
            user => Some(decode(user, "user name")?),
        };
        let password = url.password().map(|p| decode(p, "password")).transpose()?;
        Ok(Self {
            host,
            port,
            db,
            username,
            password,
            tls,
            tls_options: TlsOptions::default(),
        })
    }

    /// `host:port/db`, for logs: no user name, no password.
    pub fn endpoint(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}/{}", self.host, self.port, self.db)
        } else {
            format!("{}:{}/{}", self.host, self.port, self.db)
        }
    }

    pub(crate) fn validate(&self) -> Result<(), CacheError> {
        if self.host.trim().is_empty() {
            return Err(CacheError::Config("the Redis host is empty".into()));
        }
        if self.port == 0 {
            return Err(CacheError::Config(
                "the Redis port must be between 1 and 65535".into(),
            ));
        }
        if self.tls && !cfg!(feature = "tls") {
            return Err(CacheError::Config(
                "a TLS connection (rediss:// or REDIS_SSL=true) needs cachekit's `tls` feature"
                    .into(),
            ));
        }
        self.tls_options.validate(self.tls)
    }

    /// The redis-rs client for this server. Connects nothing.
    pub(crate) fn client(&self) -> Result<redis::Client, CacheError> {
        self.client_speaking(redis::ProtocolVersion::RESP2)
    }

    /// The client for the in-process tier's invalidation channel: RESP3, which carries
    /// invalidation messages on the connection that asked for them.
    pub(crate) fn tracking_client(&self) -> Result<redis::Client, CacheError> {
        self.client_speaking(redis::ProtocolVersion::RESP3)
    }

    fn client_speaking(
        &self,
        protocol: redis::ProtocolVersion,
    ) -> Result<redis::Client, CacheError> {
        let info = self.connection_info(protocol)?;
        #[cfg(feature = "tls")]
        if self.tls && self.tls_options.is_set() {
            let certificates = self.tls_options.certificates()?;
            return info
                .and_then(|info| redis::Client::build_with_tls(info, certificates))
                .map_err(|e| {
                    CacheError::Config(format!(
                        "Redis client rejected the TLS configuration ({:?})",
                        e.kind()
                    ))
                });
        }
        // The error text of an invalid client configuration names no credentials, but do not
        // rely on that: report our own words.
        info.and_then(redis::Client::open).map_err(|e| {
            CacheError::Config(format!(
                "Redis client rejected the configuration ({:?})",
                e.kind()
            ))
        })
    }

    /// Where and how to connect, in redis-rs's form. `Err` only from a check of this
    /// configuration; redis-rs's own refusal is the inner `Err`, reported by the caller.
    fn connection_info(
        &self,
        protocol: redis::ProtocolVersion,
    ) -> Result<redis::RedisResult<redis::ConnectionInfo>, CacheError> {
        self.validate()?;
        if self.tls {
            install_crypto_provider();
        }
        let addr = if self.tls {
            redis::ConnectionAddr::TcpTls {
                host: self.host.clone(),
                port: self.port,
                insecure: false,
                tls_params: None,
            }
        } else {
            redis::ConnectionAddr::Tcp(self.host.clone(), self.port)
        };
        let mut settings = redis::RedisConnectionInfo::default()
            .set_db(i64::from(self.db))
            .set_protocol(protocol);
        if let Some(user) = &self.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        Ok(redis::IntoConnectionInfo::into_connection_info(addr)
            .map(|info| info.set_redis_settings(settings)))
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("db", &self.db)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("tls_options", &self.tls_options)
            .finish()
    }
}

/// A Redis Cluster: the nodes to start from, of which any one that answers is enough (the
/// others are learned from it). Every node shares the credentials, the TLS setting and files,
/// and database 0, the only one a cluster has. `Debug` and logs never show the password.
///
/// ```
/// use cachekit::RedisClusterConfig;
/// let c = RedisClusterConfig::from_urls(["redis://:s3cret@10.0.0.1:7000", "redis://10.0.0.2:7000"]).unwrap();
/// assert_eq!(c.endpoint(), "cluster 10.0.0.1:7000,10.0.0.2:7000");
/// assert!(!format!("{c:?}").contains("s3cret"));
/// assert!(RedisClusterConfig::from_urls(["redis://10.0.0.1:7000/2"]).is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisClusterConfig {
    /// The nodes to start from. Credentials given on one apply to all.
    pub nodes: Vec<RedisConfig>,
}

impl RedisClusterConfig {
    /// Parses each of `urls` as [`RedisConfig::from_url`] does.
    pub fn from_urls<S: AsRef<str>>(urls: impl IntoIterator<Item = S>) -> Result<Self, CacheError> {
        let nodes = urls
            .into_iter()
            .map(|url| RedisConfig::from_url(url.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        let config = Self { nodes };
        config.validate()?;
        Ok(config)
    }

    /// `cluster host:port,host:port`, for logs: no credentials.
    pub fn endpoint(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|node| {
                let endpoint = node.endpoint();
                endpoint
                    .strip_suffix(&format!("/{}", node.db))
                    .map_or(endpoint.clone(), str::to_owned)
            })
            .collect();
        format!("cluster {}", nodes.join(","))
    }

    /// Whether the nodes are reached over TLS.
    pub fn tls(&self) -> bool {
        self.nodes.first().is_some_and(|node| node.tls)
    }

    pub(crate) fn validate(&self) -> Result<(), CacheError> {
        let Some(first) = self.nodes.first() else {
            return Err(CacheError::Config(
                "a Redis Cluster needs at least one node URL".into(),
            ));
        };
        let credentials = |n: &RedisConfig| (n.username.clone(), n.password.clone());
        let given: Vec<_> = self
            .nodes
            .iter()
            .filter(|n| n.password.is_some() || n.username.is_some())
            .map(credentials)
            .collect();
        if given.windows(2).any(|pair| pair[0] != pair[1]) {
            return Err(CacheError::Config(
                "the Redis Cluster node URLs give different user names or passwords: give them \
                 once, or the same on every node"
                    .into(),
            ));
        }
        for node in &self.nodes {
            node.validate()?;
            if node.db != 0 {
                return Err(CacheError::Config(
                    "a Redis Cluster has only database 0: drop the `/db` from the node URLs".into(),
                ));
            }
            if node.tls != first.tls || node.tls_options != first.tls_options {
                return Err(CacheError::Config(
                    "the Redis Cluster node URLs mix redis:// and rediss://".into(),
                ));
            }
        }
        Ok(())
    }

    /// A node's settings with the cluster's credentials, for connections to nodes learned
    /// from the cluster (whose host and port replace these).
    pub(crate) fn tracking_template(&self) -> RedisConfig {
        let (username, password) = self.credentials();
        let first = self
            .nodes
            .first()
            .cloned()
            .unwrap_or_else(RedisConfig::localhost);
        RedisConfig {
            username,
            password,
            db: 0,
            ..first
        }
    }

    /// The user name and password given on any node.
    fn credentials(&self) -> (Option<String>, Option<String>) {
        self.nodes
            .iter()
            .find(|n| n.password.is_some() || n.username.is_some())
            .map(|n| (n.username.clone(), n.password.clone()))
            .unwrap_or_default()
    }

    /// The redis-rs cluster client: each node's connection made within `connect_timeout`,
    /// and no answer awaited longer than `response_timeout`. Connects nothing.
    pub(crate) fn client(
        &self,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<redis::cluster::ClusterClient, CacheError> {
        self.validate()?;
        let reject = |e: redis::RedisError| {
            CacheError::Config(format!(
                "Redis Cluster client rejected the configuration ({:?})",
                e.kind()
            ))
        };
        let (username, password) = self.credentials();
        let mut infos = Vec::with_capacity(self.nodes.len());
        for node in &self.nodes {
            let node = RedisConfig {
                username: username.clone(),
                password: password.clone(),
                ..node.clone()
            };
            infos.push(
                node.connection_info(redis::ProtocolVersion::RESP2)?
                    .map_err(reject)?,
            );
        }
        #[allow(unused_mut, reason = "TLS files are set only with the `tls` feature")]
        let mut builder = redis::cluster::ClusterClientBuilder::new(infos)
            .connection_timeout(connect_timeout)
            .response_timeout(response_timeout);
        #[cfg(feature = "tls")]
        if let Some(first) = self.nodes.first()
            && first.tls
            && first.tls_options.is_set()
        {
            builder = builder.certs(first.tls_options.certificates()?);
        }
        builder.build().map_err(reject)
    }
}

/// redis-rs builds its TLS configuration with rustls's process-wide crypto provider, which
/// rustls can only pick by itself when exactly one provider is compiled in; an application that
/// also links another (aws-lc-rs, through some other crate) would make that a panic at the first
/// `rediss://` connect. Installing ring, ours, up front avoids it; if the application installed
/// a provider already, that one stays.
fn install_crypto_provider() {
    #[cfg(feature = "tls")]
    {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

fn parse_db(s: &str) -> Result<u16, CacheError> {
    s.trim().parse::<u16>().map_err(|_| {
        CacheError::Config(format!(
            "the Redis database number `{s}` is not a whole number from 0 to 65535"
        ))
    })
}

/// Whether an `@` follows the authority of `url` (in its path, query or fragment): what an
/// unencoded `/`, `?` or `#` in a password makes of `redis://user:pa/ss@host`.
fn has_at_after_authority(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    rest.find(['/', '?', '#'])
        .is_some_and(|end| rest[end..].contains('@'))
}

fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

/// Everything a [`CacheService`](crate::CacheService) is built from. Usually made with
/// [`CacheService::builder`](crate::CacheService::builder) or [`CacheConfig::from_env`];
/// `Debug` never shows a password.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CacheConfig {
    /// The primary store.
    pub store: StoreConfig,
    /// Prepended to every key as `{prefix}:`. Never empty.
    pub prefix: String,
    /// TTL for writes that give none.
    pub default_ttl: Duration,
    /// The bound on one operation.
    pub timeout: Duration,
    /// The bound on making a connection.
    pub connect_timeout: Duration,
    /// The bound on a whole pattern removal.
    pub admin_timeout: Duration,
    /// Consecutive backend failures that open the circuit breaker.
    pub breaker_threshold: u32,
    /// How long the open breaker skips the backend before probing it.
    pub breaker_open_for: Duration,
    /// What to do while the primary store is unavailable.
    pub fallback: Fallback,
    /// Concurrent misses of one key in this process run the loader once; the others wait for
    /// its value.
    pub single_flight: bool,
    /// Misses take a lease in the store: one loader per key across processes, and a value
    /// loaded before an invalidation is never written after it.
    pub leases: bool,
    /// How long a lease lasts (and so the longest a caller waits for another's loader).
    pub lease_ttl: Duration,
    /// Refresh-ahead for cache-aside calls: reload a value before it expires, with the
    /// probability of probabilistic early recomputation, with this `beta` (`1.0` is the usual
    /// choice; larger refreshes earlier). `None` (the default): off. See
    /// [`CacheServiceBuilder::refresh_ahead`].
    pub refresh_ahead: Option<f64>,
    /// Stale-if-error: how long a value is kept past its TTL, to be served only when its
    /// loader fails. `None` (the default): off. See [`CacheServiceBuilder::stale_if_error`].
    pub stale_if_error: Option<Duration>,
    /// Report metrics through the `metrics` facade. Default: off. See
    /// [`CacheServiceBuilder::metrics`].
    pub metrics: bool,
    /// Log keys as their namespace and a hash (`users:#3fa9c1d2`) rather than in full, for
    /// keys that hold personal data (emails, ids).
    pub redact_keys: bool,
    /// The largest encoded value the cache stores, in bytes. A larger value is not cached
    /// (logged and counted); a larger one found in the store reads as a miss and is removed.
    pub max_value_bytes: u64,
    /// The in-process tier of decoded values in front of the store: how long it holds an
    /// entry. `None` (the default): no tier. See
    /// [`CacheServiceBuilder::local_tier`].
    pub local_ttl: Option<Duration>,
    /// The in-process tier's bound in bytes (entries weighed by their encoded size).
    pub local_max_bytes: u64,
    /// How values are written: JSON (the default) or, with the `msgpack` feature,
    /// MessagePack. See [`CacheServiceBuilder::codec`].
    pub codec: Codec,
    /// Values whose encoding has at least this many bytes are stored LZ4-compressed (needs the
    /// `compression` feature). `None` (the default): never. See
    /// [`CacheServiceBuilder::compress_above`].
    pub compress_above: Option<u64>,
    /// Diagnostics only: calls skip the guard (no timeout, no breaker, no fault counting).
    pub(crate) unguarded: bool,
    /// Diagnostics only: Redis writes skip the invalidation index and patterns walk.
    pub(crate) unindexed: bool,
    /// Diagnostics only: every Redis read goes out on its own, never queued into a batch.
    pub(crate) unbatched: bool,
}

impl Default for CacheConfig {
    /// The embedded store with every other setting at its default.
    fn default() -> Self {
        Self {
            store: StoreConfig::Memory {
                max_bytes: MemoryBackend::DEFAULT_MAX_BYTES,
            },
            prefix: DEFAULT_PREFIX.into(),
            default_ttl: DEFAULT_TTL,
            timeout: DEFAULT_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            admin_timeout: DEFAULT_ADMIN_TIMEOUT,
            breaker_threshold: DEFAULT_BREAKER_THRESHOLD,
            breaker_open_for: DEFAULT_BREAKER_OPEN_FOR,
            fallback: Fallback::Passthrough,
            single_flight: true,
            leases: true,
            lease_ttl: DEFAULT_LEASE_TTL,
            refresh_ahead: None,
            stale_if_error: None,
            metrics: false,
            redact_keys: false,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            local_ttl: None,
            local_max_bytes: DEFAULT_LOCAL_MAX_BYTES,
            codec: Codec::Json,
            compress_above: None,
            unguarded: false,
            unindexed: false,
            unbatched: false,
        }
    }
}

impl CacheConfig {
    /// Reads the configuration from the process environment; see the crate docs for the
    /// variables and their defaults. An invalid value is an `Err` naming the variable (and
    /// never its value when it may hold a secret).
    pub fn from_env() -> Result<Self, CacheError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`from_env`](Self::from_env), reading variables through `lookup`, so a
    /// configuration can come from a `.env` map or a test without touching the process
    /// environment.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// let vars = HashMap::from([("REDIS_HOST", "cache.internal"), ("CACHE_TTL", "60")]);
    /// let config = cachekit::CacheConfig::from_lookup(|k| vars.get(k).map(|v| v.to_string())).unwrap();
    /// assert_eq!(config.default_ttl, std::time::Duration::from_secs(60));
    /// ```
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, CacheError> {
        let var = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut config = Self::default();

        let url = var("REDIS_URL");
        let host = var("REDIS_HOST");
        let cluster_nodes = var("REDIS_CLUSTER_NODES");
        if cluster_nodes.is_some() && url.is_some() {
            return Err(CacheError::Config(
                "REDIS_CLUSTER_NODES and REDIS_URL are both set: give one".into(),
            ));
        }
        let enabled = var("REDIS_ENABLED")
            .map(|v| parse_bool("REDIS_ENABLED", &v))
            .transpose()?;

        if let Some(fallback) = var("CACHE_FALLBACK") {
            config.fallback = match fallback.to_ascii_lowercase().as_str() {
                "passthrough" | "none" | "loader" => Fallback::Passthrough,
                "memory" => Fallback::memory(),
                _ => {
                    return Err(CacheError::Config(format!(
                        "CACHE_FALLBACK must be `passthrough` or `memory`, not `{fallback}`"
                    )));
                }
            };
        }
        if let Some(ttl) = var("CACHE_FALLBACK_TTL") {
            let ttl = parse_secs("CACHE_FALLBACK_TTL", &ttl)?;
            if let Fallback::Memory { ttl: t, .. } = &mut config.fallback {
                *t = ttl;
            }
        }
        let memory_max_bytes = var("CACHE_MEMORY_MAX_BYTES")
            .map(|v| parse_num::<u64>("CACHE_MEMORY_MAX_BYTES", &v))
            .transpose()?
            .unwrap_or(MemoryBackend::DEFAULT_MAX_BYTES);

        let tls_options = TlsOptions {
            ca_file: var("REDIS_TLS_CA_FILE").map(PathBuf::from),
            client_cert_file: var("REDIS_TLS_CERT_FILE").map(PathBuf::from),
            client_key_file: var("REDIS_TLS_KEY_FILE").map(PathBuf::from),
        };
        let redis = || -> Result<RedisConfig, CacheError> {
            if let Some(url) = &url {
                let mut redis = RedisConfig::from_url(url).map_err(|e| match e {
                    CacheError::Config(msg) => CacheError::Config(format!("REDIS_URL: {msg}")),
                    other => other,
                })?;
                redis.tls_options = tls_options.clone();
                redis.validate()?;
                return Ok(redis);
            }
            let mut redis = RedisConfig::localhost();
            redis.tls_options = tls_options.clone();
            if let Some(host) = &host {
                redis.host = host.clone();
            }
            if let Some(port) = var("REDIS_PORT") {
                redis.port = parse_num("REDIS_PORT", &port)?;
            }
            if let Some(db) = var("REDIS_DB") {
                redis.db = parse_db(&db).map_err(|_| {
                    CacheError::Config(format!(
                        "REDIS_DB must be a whole number from 0 to 65535, not `{db}`"
                    ))
                })?;
            }
            redis.username = var("REDIS_USERNAME");
            redis.password = var("REDIS_PASSWORD");
            if let Some(ssl) = var("REDIS_SSL") {
                redis.tls = parse_bool("REDIS_SSL", &ssl)?;
            }
            redis.validate()?;
            Ok(redis)
        };

        let cluster = || -> Result<StoreConfig, CacheError> {
            let nodes = cluster_nodes.as_deref().unwrap_or_default();
            let mut cluster = RedisClusterConfig::from_urls(
                nodes.split(',').map(str::trim).filter(|n| !n.is_empty()),
            )
            .map_err(|e| match e {
                CacheError::Config(msg) => {
                    CacheError::Config(format!("REDIS_CLUSTER_NODES: {msg}"))
                }
                other => other,
            })?;
            let (username, password) = (var("REDIS_USERNAME"), var("REDIS_PASSWORD"));
            for node in &mut cluster.nodes {
                if node.username.is_none() && node.password.is_none() {
                    node.username.clone_from(&username);
                    node.password.clone_from(&password);
                }
                node.tls_options = tls_options.clone();
            }
            cluster.validate()?;
            Ok(StoreConfig::RedisCluster(cluster))
        };
        let redis_store = || -> Result<StoreConfig, CacheError> {
            if cluster_nodes.is_some() {
                cluster()
            } else {
                Ok(StoreConfig::Redis(redis()?))
            }
        };

        config.store = match var("CACHE_BACKEND")
            .map(|b| b.to_ascii_lowercase())
            .as_deref()
        {
            Some("redis") => redis_store()?,
            Some("memory") => StoreConfig::Memory {
                max_bytes: memory_max_bytes,
            },
            Some("none" | "disabled") => StoreConfig::Disabled,
            Some(other) => {
                return Err(CacheError::Config(format!(
                    "CACHE_BACKEND must be `redis`, `memory` or `none`, not `{other}`"
                )));
            }
            None => match enabled {
                Some(false) => match config.fallback {
                    Fallback::Memory { .. } => StoreConfig::Memory {
                        max_bytes: memory_max_bytes,
                    },
                    Fallback::Passthrough => StoreConfig::Disabled,
                },
                Some(true) => redis_store()?,
                None if url.is_some() || host.is_some() || cluster_nodes.is_some() => {
                    redis_store()?
                }
                None => StoreConfig::Memory {
                    max_bytes: memory_max_bytes,
                },
            },
        };

        if let Some(ttl) = var("CACHE_TTL").or_else(|| var("REDIS_DEFAULT_TTL")) {
            let name = if var("CACHE_TTL").is_some() {
                "CACHE_TTL"
            } else {
                "REDIS_DEFAULT_TTL"
            };
            config.default_ttl = parse_secs(name, &ttl)?;
        }
        if let Some(prefix) = var("CACHE_PREFIX") {
            config.prefix = prefix;
        }
        if let Some(ms) = var("CACHE_TIMEOUT_MS") {
            config.timeout = parse_millis("CACHE_TIMEOUT_MS", &ms)?;
        }
        if let Some(ms) = var("CACHE_CONNECT_TIMEOUT_MS") {
            config.connect_timeout = parse_millis("CACHE_CONNECT_TIMEOUT_MS", &ms)?;
        }
        if let Some(ms) = var("CACHE_ADMIN_TIMEOUT_MS") {
            config.admin_timeout = parse_millis("CACHE_ADMIN_TIMEOUT_MS", &ms)?;
        }
        if let Some(n) = var("CACHE_BREAKER_THRESHOLD") {
            config.breaker_threshold = parse_num("CACHE_BREAKER_THRESHOLD", &n)?;
        }
        if let Some(ms) = var("CACHE_BREAKER_OPEN_MS") {
            config.breaker_open_for = parse_millis("CACHE_BREAKER_OPEN_MS", &ms)?;
        }
        if let Some(on) = var("CACHE_SINGLE_FLIGHT") {
            config.single_flight = parse_bool("CACHE_SINGLE_FLIGHT", &on)?;
        }
        if let Some(on) = var("CACHE_LEASES") {
            config.leases = parse_bool("CACHE_LEASES", &on)?;
        }
        if let Some(ms) = var("CACHE_LEASE_TTL_MS") {
            config.lease_ttl = parse_millis("CACHE_LEASE_TTL_MS", &ms)?;
        }
        if let Some(beta) = var("CACHE_REFRESH_AHEAD") {
            config.refresh_ahead = parse_beta("CACHE_REFRESH_AHEAD", &beta)?;
        }
        if let Some(secs) = var("CACHE_STALE_IF_ERROR_SECS") {
            let secs = parse_bounded("CACHE_STALE_IF_ERROR_SECS", &secs, MAX_TTL_SECS, "seconds")?;
            config.stale_if_error = (secs > 0).then(|| Duration::from_secs(secs));
        }
        if let Some(on) = var("CACHE_METRICS") {
            config.metrics = parse_bool("CACHE_METRICS", &on)?;
        }
        if let Some(on) = var("CACHE_REDACT_KEYS") {
            config.redact_keys = parse_bool("CACHE_REDACT_KEYS", &on)?;
        }
        if let Some(n) = var("CACHE_MAX_VALUE_BYTES") {
            config.max_value_bytes = parse_num("CACHE_MAX_VALUE_BYTES", &n)?;
            if config.max_value_bytes == 0 {
                return Err(CacheError::Config(
                    "CACHE_MAX_VALUE_BYTES must be at least 1".into(),
                ));
            }
        }
        if let Some(ms) = var("CACHE_LOCAL_TTL_MS") {
            config.local_ttl = Some(parse_millis("CACHE_LOCAL_TTL_MS", &ms)?);
        }
        if let Some(n) = var("CACHE_LOCAL_MAX_BYTES") {
            config.local_max_bytes = parse_num("CACHE_LOCAL_MAX_BYTES", &n)?;
        }
        if let Some(codec) = var("CACHE_CODEC") {
            config.codec = codec.parse().map_err(|error| match error {
                CacheError::Config(why) => CacheError::Config(format!("CACHE_CODEC: {why}")),
                other => other,
            })?;
        }
        if let Some(n) = var("CACHE_COMPRESS_ABOVE") {
            let n: u64 = parse_num("CACHE_COMPRESS_ABOVE", &n)?;
            config.compress_above = (n > 0).then_some(n);
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting; what [`CacheServiceBuilder::build`] runs first.
    pub fn validate(&self) -> Result<(), CacheError> {
        if self.prefix.is_empty() {
            return Err(CacheError::Config(
                "the key prefix must not be empty".into(),
            ));
        }
        if self.prefix.chars().any(char::is_control) {
            return Err(CacheError::Config(
                "the key prefix must not contain control characters".into(),
            ));
        }
        if self.prefix.contains('#') {
            return Err(CacheError::Config(
                "the key prefix must not contain `#`: the invalidation index keeps its own keys \
                 under `{prefix}#`"
                    .into(),
            ));
        }
        for (name, value, least) in [
            ("default_ttl", self.default_ttl, Least::Millisecond),
            ("lease_ttl", self.lease_ttl, Least::Millisecond),
            ("timeout", self.timeout, Least::AboveZero),
            ("connect_timeout", self.connect_timeout, Least::AboveZero),
            ("admin_timeout", self.admin_timeout, Least::AboveZero),
            ("breaker_open_for", self.breaker_open_for, Least::Zero),
        ] {
            check_duration(name, value, least)?;
        }
        if let Some(beta) = self.refresh_ahead {
            check_beta(beta)?;
        }
        if let Some(grace) = self.stale_if_error {
            check_duration("stale_if_error", grace, Least::Millisecond)?;
        }
        if self.breaker_threshold == 0 {
            return Err(CacheError::Config(
                "breaker_threshold must be at least 1".into(),
            ));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > MAX_VALUE_BYTES_LIMIT {
            return Err(CacheError::Config(format!(
                "max_value_bytes must be from 1 to {MAX_VALUE_BYTES_LIMIT} (512 MiB, the largest \
                 string Redis stores)"
            )));
        }
        if let Some(problem) = self.codec.problem() {
            return Err(CacheError::Config(problem));
        }
        if self.compress_above.is_some() && !cfg!(feature = "compression") {
            return Err(CacheError::Config(
                "compress_above (CACHE_COMPRESS_ABOVE) needs cachekit's `compression` cargo \
                 feature"
                    .into(),
            ));
        }
        if let Fallback::Memory { ttl, max_bytes } = &self.fallback {
            check_duration("the memory fallback's ttl", *ttl, Least::Millisecond)?;
            if *max_bytes == 0 {
                return Err(CacheError::Config(
                    "the memory fallback's max_bytes must be above zero".into(),
                ));
            }
        }
        if let Some(ttl) = self.local_ttl {
            check_duration("the local tier's ttl", ttl, Least::Millisecond)?;
            if self.local_max_bytes == 0 {
                return Err(CacheError::Config(
                    "the local tier's max_bytes must be above zero".into(),
                ));
            }
            if matches!(self.store, StoreConfig::Custom(_)) {
                return Err(CacheError::Config(
                    "the local tier needs Redis or the embedded store: it cannot learn of the \
                     writes a custom backend's other clients make"
                        .into(),
                ));
            }
        }
        if matches!(self.store, StoreConfig::RedisCluster(_)) && self.prefix.contains(['{', '}']) {
            return Err(CacheError::Config(
                "on a Redis Cluster the key prefix must not contain `{` or `}`: the invalidation \
                 index names its keys with a hash tag after the prefix"
                    .into(),
            ));
        }
        match &self.store {
            StoreConfig::Redis(redis) => redis.validate(),
            StoreConfig::RedisCluster(cluster) => cluster.validate(),
            StoreConfig::Memory { max_bytes: 0 } => Err(CacheError::Config(
                "the memory store's max_bytes must be above zero".into(),
            )),
            _ => Ok(()),
        }
    }

    /// A warning about a valid but risky prefix, for the service to log when it is built:
    /// a prefix containing `:` nests with the prefix before that `:`. With prefixes `app` and
    /// `app:users`, `app:users:1` is both key `users:1` of the first and key `1` of the second,
    /// so the first's patterns and `clear_all` reach the second's keys.
    #[allow(
        dead_code,
        reason = "for the service's build, which takes it up separately"
    )]
    pub(crate) fn prefix_warning(&self) -> Option<&'static str> {
        self.prefix.contains(':').then_some(
            "the key prefix contains `:`, so it nests inside the prefix before the `:`: \
             patterns and clear_all of that shorter prefix also match this service's keys, \
             and the two can name the same key; prefer a prefix without `:` (`app_users`)",
        )
    }
}

fn parse_bool(name: &str, value: &str) -> Result<bool, CacheError> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(CacheError::Config(format!(
            "{name} must be true or false, not `{value}`"
        ))),
    }
}

/// A refresh-ahead `beta`: a positive number, or `off`/`false`/`0` for none.
fn parse_beta(name: &str, value: &str) -> Result<Option<f64>, CacheError> {
    let value = value.trim();
    if matches!(value.to_ascii_lowercase().as_str(), "off" | "false" | "0") {
        return Ok(None);
    }
    let beta: f64 = value.parse().map_err(|_| {
        CacheError::Config(format!(
            "{name} must be a positive number (the refresh-ahead beta, e.g. 1.0) or `off`, not `{value}`"
        ))
    })?;
    check_beta(beta)?;
    Ok(Some(beta))
}

/// The largest refresh-ahead `beta`: at 100 a value is refreshed about 100 load times before it
/// expires, already far more than any use calls for.
pub(crate) const MAX_BETA: f64 = 100.0;

pub(crate) fn check_beta(beta: f64) -> Result<(), CacheError> {
    if beta.is_finite() && beta > 0.0 && beta <= MAX_BETA {
        Ok(())
    } else {
        Err(CacheError::Config(format!(
            "refresh_ahead: beta must be above 0 and at most {MAX_BETA}, not {beta}"
        )))
    }
}

fn parse_num<T: std::str::FromStr>(name: &str, value: &str) -> Result<T, CacheError> {
    value.parse().map_err(|_| {
        CacheError::Config(format!(
            "{name} must be a whole number in range, not `{value}`"
        ))
    })
}

/// A whole number up to `max` (of `unit`s); the error for a larger one names the maximum.
fn parse_bounded(name: &str, value: &str, max: u64, unit: &str) -> Result<u64, CacheError> {
    let too_large = || {
        CacheError::Config(format!(
            "{name} is too large: at most {max} {unit} (10 years, cachekit::MAX_TTL)"
        ))
    };
    match value.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        Ok(_) => Err(too_large()),
        // Digits only, yet no u64: a number beyond u64::MAX.
        Err(_) if value.bytes().all(|b| b.is_ascii_digit()) => Err(too_large()),
        Err(_) => parse_num(name, value),
    }
}

fn parse_secs(name: &str, value: &str) -> Result<Duration, CacheError> {
    let secs = parse_bounded(name, value, MAX_TTL_SECS, "seconds")?;
    if secs == 0 {
        return Err(CacheError::Config(format!(
            "{name} must be at least 1 second"
        )));
    }
    Ok(Duration::from_secs(secs))
}

fn parse_millis(name: &str, value: &str) -> Result<Duration, CacheError> {
    let ms = parse_bounded(name, value, MAX_TTL_SECS * 1000, "milliseconds")?;
    if ms == 0 {
        return Err(CacheError::Config(format!(
            "{name} must be at least 1 millisecond"
        )));
    }
    Ok(Duration::from_millis(ms))
}

/// Builds a [`CacheService`](crate::CacheService): consuming setters, then
/// [`build`](Self::build).
///
/// ```no_run
/// # async fn demo() -> Result<(), cachekit::CacheError> {
/// use std::time::Duration;
/// let cache = cachekit::CacheService::builder()
///     .redis_url("redis://127.0.0.1:6379/0")
///     .prefix("myapp")
///     .default_ttl(Duration::from_secs(300))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
#[must_use = "a builder does nothing until `build` is awaited"]
pub struct CacheServiceBuilder {
    config: CacheConfig,
    url_error: Option<String>,
    /// TLS files given to the builder, laid over the Redis store's own at the end.
    tls: TlsOptions,
}

impl CacheServiceBuilder {
    /// Starts from `config`.
    pub fn from_config(config: CacheConfig) -> Self {
        Self {
            config,
            url_error: None,
            tls: TlsOptions::default(),
        }
    }

    /// Uses the Redis server at `url` (`redis://` or `rediss://`, with optional user, password
    /// and `/db`). An invalid URL makes [`build`](Self::build) fail.
    pub fn redis_url(mut self, url: impl AsRef<str>) -> Self {
        match RedisConfig::from_url(url.as_ref()) {
            Ok(redis) => {
                self.config.store = StoreConfig::Redis(redis);
                self.url_error = None;
            }
            Err(e) => self.url_error = Some(e.to_string()),
        }
        self
    }

    /// Trusts the CA certificates in the PEM file at `path` instead of the system's trust
    /// store: for a Redis whose certificate a private CA signed. Needs a `rediss://` URL; applies
    /// to the Redis store set before or after it. A file that cannot be read or holds no
    /// certificate makes [`build`](Self::build) fail, naming the file.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cachekit::CacheError> {
    /// let cache = cachekit::CacheService::builder()
    ///     .redis_url("rediss://:password@redis.internal:6380")
    ///     .tls_ca_file("/etc/redis/ca.pem")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn tls_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.tls.ca_file = Some(path.into());
        self
    }

    /// Presents the client certificate in the PEM file `cert`, with its private key in `key`,
    /// to a Redis that requires mutual TLS (`tls-auth-clients yes`). Needs a `rediss://` URL.
    pub fn tls_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls.client_cert_file = Some(cert.into());
        self.tls.client_key_file = Some(key.into());
        self
    }

    /// Uses the Redis Cluster reached through any of `urls` (`redis://` or `rediss://`, as
    /// for [`redis_url`](Self::redis_url), without a `/db`): one node that answers is enough,
    /// the others are learned from it. An invalid URL makes [`build`](Self::build) fail.
    ///
    /// On a cluster the invalidation index is kept per slot: a namespace pattern drains only
    /// the slots that hold it, while `clear_all` walks every primary with `SCAN`. The prefix
    /// may hold no `{` or `}`. The in-process tier tracks every primary.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cachekit::CacheError> {
    /// let cache = cachekit::CacheService::builder()
    ///     .redis_cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn redis_cluster<S: AsRef<str>>(mut self, urls: impl IntoIterator<Item = S>) -> Self {
        match RedisClusterConfig::from_urls(urls) {
            Ok(cluster) => {
                self.config.store = StoreConfig::RedisCluster(cluster);
                self.url_error = None;
            }
            Err(e) => self.url_error = Some(e.to_string()),
        }
        self
    }

    /// Uses the Redis server described by `redis`.
    pub fn redis(mut self, redis: RedisConfig) -> Self {
        self.config.store = StoreConfig::Redis(redis);
        self.url_error = None;
        self
    }

    /// Uses the embedded in-process store, bounded to `max_bytes` of keys, values and an
    /// estimated per-entry overhead (see [`MemoryBackend`](crate::backend::MemoryBackend)).
    pub fn memory(mut self, max_bytes: u64) -> Self {
        self.config.store = StoreConfig::Memory { max_bytes };
        self
    }

    /// Caches nothing: every read misses and the loader always runs.
    pub fn disabled(mut self) -> Self {
        self.config.store = StoreConfig::Disabled;
        self
    }

    /// Uses a backend of your own.
    pub fn backend(mut self, backend: impl Backend) -> Self {
        self.config.store = StoreConfig::Custom(Arc::new(backend));
        self
    }

    /// Every physical key starts with `{prefix}:`. Default: [`DEFAULT_PREFIX`].
    ///
    /// Prefer a prefix without `:` (`app_users`, not `app:users`); the service logs a warning
    /// at build for one with it. Prefixes nest: with `app` and `app:users`, the physical key
    /// `app:users:1` is key `users:1` of the first and key `1` of the second, so
    /// `invalidate_pattern("users:*")` or `clear_all` on the `app` service removes the other's
    /// entries.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.config.prefix = prefix.into();
        self
    }

    /// TTL for writes that give none, from 1 ms to [`MAX_TTL`]. Default: [`DEFAULT_TTL`].
    pub fn default_ttl(mut self, ttl: Duration) -> Self {
        self.config.default_ttl = ttl;
        self
    }

    /// The bound on one operation; above zero, at most [`MAX_TTL`]. Default:
    /// [`DEFAULT_TIMEOUT`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// The bound on making a connection; above zero, at most [`MAX_TTL`]. Default:
    /// [`DEFAULT_CONNECT_TIMEOUT`].
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// The bound on a whole pattern removal; above zero, at most [`MAX_TTL`]. Default:
    /// [`DEFAULT_ADMIN_TIMEOUT`].
    pub fn admin_timeout(mut self, timeout: Duration) -> Self {
        self.config.admin_timeout = timeout;
        self
    }

    /// Opens the breaker after `threshold` consecutive failures and keeps it open for
    /// `open_for` (at most [`MAX_TTL`]) before probing. Defaults: [`DEFAULT_BREAKER_THRESHOLD`],
    /// [`DEFAULT_BREAKER_OPEN_FOR`].
    pub fn circuit_breaker(mut self, threshold: u32, open_for: Duration) -> Self {
        self.config.breaker_threshold = threshold;
        self.config.breaker_open_for = open_for;
        self
    }

    /// What to do while the primary store is unavailable. Default: [`Fallback::Passthrough`].
    pub fn fallback(mut self, fallback: Fallback) -> Self {
        self.config.fallback = fallback;
        self
    }

    /// Whether concurrent misses of one key in this process share one loader. Default: on.
    pub fn single_flight(mut self, on: bool) -> Self {
        self.config.single_flight = on;
        self
    }

    /// Whether misses take a lease in the store (one loader per key across processes, and no
    /// stale value written after an invalidation). Default: on.
    pub fn leases(mut self, on: bool) -> Self {
        self.config.leases = on;
        self
    }

    /// How long a lease lasts, and so the longest a caller waits for another's loader before
    /// loading for itself. From 1 ms to [`MAX_TTL`]. Default: [`DEFAULT_LEASE_TTL`].
    pub fn lease_ttl(mut self, ttl: Duration) -> Self {
        self.config.lease_ttl = ttl;
        self
    }

    /// Refresh-ahead: a cache-aside call that reads a value close to its expiry may reload it
    /// before it expires, so a hot key never goes cold. Each read draws: it refreshes when
    /// `now - delta * beta * ln(rand) >= expiry`, where `delta` is how long the key's last load
    /// took (probabilistic early recomputation, XFetch). Readers of a hot key draw often, so
    /// one of them refreshes a little before expiry; a key read rarely is seldom refreshed
    /// early. `beta` 1.0 is the usual choice, larger refreshes earlier; from above 0 to 100.
    ///
    /// One caller fleet-wide refreshes a key at a time (a claim beside the key in the store);
    /// it runs the loader and returns the new value; every other caller keeps getting the
    /// current one without waiting. The new value is written only if the key was neither
    /// written nor removed since it was read, so a refresh never writes over an invalidation.
    /// If the refresh's loader fails, its caller gets the current value, which is still within
    /// its TTL. The stored value stays plain JSON: the remaining TTL and a version (its expiry
    /// time, `PEXPIRETIME`, Redis 7.0 or later) are read in the same round trip, only when the
    /// option is on. A custom backend without TTLs never refreshes early.
    ///
    /// Per function: `#[cached(ttl = 60, key = "...", refresh_ahead)]`, or
    /// `refresh_ahead = 2.0` for another beta. Env: `CACHE_REFRESH_AHEAD=1.0`. Default: off.
    pub fn refresh_ahead(mut self, beta: f64) -> Self {
        self.config.refresh_ahead = Some(beta);
        self
    }

    /// Stale-if-error: cache-aside values are kept `grace` past their TTL, and a value in that
    /// period is served (flagged [`Fetched::stale`](crate::Fetched::stale), counted in
    /// [`CacheStats::stale_served`](crate::CacheStats::stale_served)) only when its loader
    /// fails. Otherwise a read past the TTL is a miss: one caller fleet-wide reloads it (the
    /// others wait for its value, as for a lease) and writes it back, unless it was written or
    /// removed meanwhile.
    ///
    /// The staleness it adds: a value up to `grace` older than its TTL, and only while the
    /// loader fails. A value an invalidation removed is never served: it is gone from the
    /// store, and a stale value is served only after reading again that the key still holds
    /// it, unchanged. Keys are stored for TTL + `grace`, so Redis holds them that much longer;
    /// [`get`](crate::CacheService::get) and [`set`](crate::CacheService::set) follow the
    /// service's grace. Needs `PEXPIRETIME` (Redis 7.0 or later).
    ///
    /// Per function: `#[cached(ttl = 60, key = "...", grace = 600)]`. Env:
    /// `CACHE_STALE_IF_ERROR_SECS=600`. Default: off.
    pub fn stale_if_error(mut self, grace: Duration) -> Self {
        self.config.stale_if_error = Some(grace);
        self
    }

    /// Whether the service reports metrics through the [`metrics`](https://docs.rs/metrics)
    /// facade, to whatever recorder the application installs (Prometheus, OpenTelemetry,
    /// StatsD...): hits and misses by tier, loads, load errors and load time, entries
    /// invalidated, coalesced calls, stale sets prevented, refreshes, stale values served,
    /// faults by kind, backend operation time, and the breaker's state. The crate docs,
    /// "Metrics", list every name and label. Labels are bounded: a key's namespace (the part
    /// before its first `:`), never the key. Install the recorder before the service's first
    /// call: each namespace's handles are registered when first used. Env: `CACHE_METRICS`.
    /// Default: off (then nothing is measured or reported beyond [`stats`](crate::CacheService::stats)).
    pub fn metrics(mut self, on: bool) -> Self {
        self.config.metrics = on;
        self
    }

    /// Whether logs show keys as their namespace and a hash (`users:#3fa9c1d2`: the first
    /// `:`-separated segment, then the first 8 hex digits of the SHA-256 of the whole key)
    /// instead of in full, for keys that contain emails, user names or other personal data.
    /// The hash lets log lines about one key be matched up. Default: off.
    pub fn redact_keys(mut self, on: bool) -> Self {
        self.config.redact_keys = on;
        self
    }

    /// The largest encoded (JSON) value the cache stores, in bytes; above zero. A larger value
    /// is not cached: the write is skipped, logged and counted, and the loader's value is still
    /// returned. A larger value found in the store (written by another program or an older
    /// configuration) reads as a miss and is removed, so one huge entry cannot slow every
    /// reader of its key. Default: [`DEFAULT_MAX_VALUE_BYTES`] (4 MiB).
    pub fn max_value_bytes(mut self, max_bytes: u64) -> Self {
        self.config.max_value_bytes = max_bytes;
        self
    }

    /// Turns on the in-process tier: decoded values held in this process for up to `ttl`, in
    /// front of the store, so a hit neither crosses the network nor decodes. From 1 ms to
    /// [`MAX_TTL`]. Default: off.
    ///
    /// On Redis the tier stays coherent through Redis's client tracking: a write or removal of
    /// a key under the prefix, by any instance or any other client, evicts it here, typically
    /// within a millisecond. Reads on this instance after its own write or invalidation
    /// returned never see an older value. If the channel that carries the invalidations fails,
    /// the tier is flushed and bypassed until it is back. See the crate docs, "The in-process
    /// tier", for what staleness it can have.
    ///
    /// Values are read through the tier only as the type they were stored as there: a hit
    /// returns a clone (return `Arc<T>` to make it a reference count).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), cachekit::CacheError> {
    /// use std::time::Duration;
    /// let cache = cachekit::CacheService::builder()
    ///     .redis_url("redis://127.0.0.1:6379")
    ///     .local_tier(Duration::from_secs(30))
    ///     .local_tier_max_bytes(32 << 20)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn local_tier(mut self, ttl: Duration) -> Self {
        self.config.local_ttl = Some(ttl);
        self
    }

    /// The in-process tier's bound in bytes, above zero; entries are weighed by their encoded
    /// size plus a fixed overhead, and the least useful are evicted past it (moka's TinyLFU).
    /// Default: [`DEFAULT_LOCAL_MAX_BYTES`] (64 MiB). Takes effect with
    /// [`local_tier`](Self::local_tier).
    pub fn local_tier_max_bytes(mut self, max_bytes: u64) -> Self {
        self.config.local_max_bytes = max_bytes;
        self
    }

    /// How values are written to the store. [`Codec::Json`] (the default) is plain JSON,
    /// readable with `redis-cli GET` and by services in other languages;
    /// `Codec::MessagePack` (cargo feature `msgpack`) is smaller and faster to decode, behind
    /// a three-byte header (see [`codec`](crate::codec)). Every process sharing the keys must
    /// use the same codec: a value of another one reads as a miss and is written again in the
    /// reader's codec. Env: `CACHE_CODEC` (`json`, `msgpack`).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.config.codec = codec;
        self
    }

    /// Stores values whose encoding has at least `bytes` bytes LZ4-compressed, when that saves
    /// space (cargo feature `compression`; without it, [`build`](Self::build) fails). Every
    /// build with the feature reads compressed values whatever its own setting; one without it
    /// reads them as misses. Costs CPU on every write and every read of such a value: worth it
    /// for large, repetitive values (JSON documents of several KB) when Redis memory or
    /// bandwidth is the limit. `0` turns it off, as in the environment:
    /// `CACHE_COMPRESS_ABOVE`. Default: off.
    pub fn compress_above(mut self, bytes: u64) -> Self {
        self.config.compress_above = (bytes > 0).then_some(bytes);
        self
    }

    /// Diagnostics only, for the benchmarks that measure what the guard costs: backend calls
    /// skip the timeout, the circuit breaker and fault counting. A service built so can hang on
    /// a stalled server; never use it in an application.
    #[doc(hidden)]
    pub fn __diagnostic_unguarded(mut self) -> Self {
        self.config.unguarded = true;
        self
    }

    /// Diagnostics only, for the benchmarks that measure what the invalidation index costs and
    /// saves: Redis writes do not file keys in the index, and every pattern walks the keyspace.
    /// Entries written so are missed by services that use the index; never use it in an
    /// application.
    #[doc(hidden)]
    pub fn __diagnostic_unindexed(mut self) -> Self {
        self.config.unindexed = true;
        self
    }

    /// Diagnostics only, for the benchmarks that measure what batching reads saves: every
    /// Redis read goes out on its own, however many are in flight.
    #[doc(hidden)]
    pub fn __diagnostic_unbatched(mut self) -> Self {
        self.config.unbatched = true;
        self
    }

    /// The configuration this builder holds, or the error of an invalid URL given to it.
    /// [`build`](Self::build) starts with this.
    pub fn into_config(mut self) -> Result<CacheConfig, CacheError> {
        if let Some(message) = self.url_error {
            return Err(CacheError::Config(message));
        }
        if self.tls.is_set() {
            let nodes = match &mut self.config.store {
                StoreConfig::Redis(redis) => std::slice::from_mut(redis),
                StoreConfig::RedisCluster(cluster) => cluster.nodes.as_mut_slice(),
                _ => {
                    return Err(CacheError::Config(
                        "a TLS CA file or client certificate was given, but the store is not \
                         Redis"
                            .into(),
                    ));
                }
            };
            for node in nodes {
                let options = &mut node.tls_options;
                if self.tls.ca_file.is_some() {
                    options.ca_file.clone_from(&self.tls.ca_file);
                }
                if self.tls.client_cert_file.is_some() {
                    options
                        .client_cert_file
                        .clone_from(&self.tls.client_cert_file);
                    options
                        .client_key_file
                        .clone_from(&self.tls.client_key_file);
                }
            }
        }
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CacheService;
    use std::collections::HashMap;

    fn from(vars: &[(&str, &str)]) -> Result<CacheConfig, CacheError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CacheConfig::from_lookup(|k| map.get(k).cloned())
    }

    fn redis_of(config: &CacheConfig) -> &RedisConfig {
        match &config.store {
            StoreConfig::Redis(r) => r,
            other => panic!("expected redis, got {other:?}"),
        }
    }

    #[test]
    fn nothing_configured_is_the_embedded_store() {
        let c = from(&[]).unwrap();
        assert!(matches!(c.store, StoreConfig::Memory { .. }));
        assert_eq!(c.default_ttl, DEFAULT_TTL);
        assert_eq!(c.prefix, DEFAULT_PREFIX);
    }

    #[test]
    fn refresh_ahead_and_stale_if_error_from_the_environment() {
        let c = from(&[
            ("CACHE_REFRESH_AHEAD", "1.5"),
            ("CACHE_STALE_IF_ERROR_SECS", "600"),
        ])
        .unwrap();
        assert_eq!(c.refresh_ahead, Some(1.5));
        assert_eq!(c.stale_if_error, Some(Duration::from_secs(600)));
        let off = from(&[
            ("CACHE_REFRESH_AHEAD", "off"),
            ("CACHE_STALE_IF_ERROR_SECS", "0"),
        ])
        .unwrap();
        assert_eq!((off.refresh_ahead, off.stale_if_error), (None, None));
        for (name, bad) in [
            ("CACHE_REFRESH_AHEAD", "-1"),
            ("CACHE_REFRESH_AHEAD", "NaN"),
            ("CACHE_REFRESH_AHEAD", "1000"),
            ("CACHE_REFRESH_AHEAD", "soon"),
            ("CACHE_STALE_IF_ERROR_SECS", "1.5"),
            ("CACHE_STALE_IF_ERROR_SECS", "99999999999"),
        ] {
            let err = from(&[(name, bad)]).unwrap_err().to_string();
            assert!(
                err.contains(name) || err.contains("refresh_ahead"),
                "{name}={bad}: {err}"
            );
        }
    }

    #[tokio::test]
    async fn a_bad_beta_or_grace_fails_the_build() {
        for builder in [
            CacheService::builder().refresh_ahead(0.0),
            CacheService::builder().refresh_ahead(f64::INFINITY),
            CacheService::builder().stale_if_error(Duration::ZERO),
            CacheService::builder().stale_if_error(Duration::MAX),
        ] {
            let err = builder.build().await.unwrap_err().to_string();
            assert!(
                err.contains("refresh_ahead") || err.contains("stale_if_error"),
                "{err}"
            );
        }
    }

    #[test]
    fn url_wins_over_parts() {
        let c = from(&[
            ("REDIS_URL", "redis://u:p%40ss@h1:7000/3"),
            ("REDIS_HOST", "h2"),
        ])
        .unwrap();
        let r = redis_of(&c);
        assert_eq!((r.host.as_str(), r.port, r.db), ("h1", 7000, 3));
        assert_eq!(r.username.as_deref(), Some("u"));
        assert_eq!(r.password.as_deref(), Some("p@ss"));
    }

    #[test]
    fn tls_files_apply_to_a_url_and_to_parts_and_need_tls() {
        for base in [
            &[("REDIS_URL", "rediss://cache.example.com:6380")][..],
            &[("REDIS_HOST", "cache.example.com"), ("REDIS_SSL", "true")][..],
        ] {
            let mut vars = base.to_vec();
            vars.extend([
                ("REDIS_TLS_CA_FILE", "/etc/ca.pem"),
                ("REDIS_TLS_CERT_FILE", "/etc/client.pem"),
                ("REDIS_TLS_KEY_FILE", "/etc/client.key"),
            ]);
            let c = from(&vars).unwrap();
            let tls = &redis_of(&c).tls_options;
            assert_eq!(
                tls,
                &TlsOptions::default()
                    .ca_file("/etc/ca.pem")
                    .client_cert("/etc/client.pem", "/etc/client.key")
            );
        }
        for (vars, expected) in [
            (
                vec![("REDIS_URL", "redis://h"), ("REDIS_TLS_CA_FILE", "/ca.pem")],
                "not TLS",
            ),
            (
                vec![("REDIS_HOST", "h"), ("REDIS_TLS_CA_FILE", "/ca.pem")],
                "not TLS",
            ),
            (
                vec![
                    ("REDIS_URL", "rediss://h"),
                    ("REDIS_TLS_KEY_FILE", "/k.pem"),
                ],
                "REDIS_TLS_CERT_FILE",
            ),
        ] {
            let error = from(&vars).unwrap_err().to_string();
            assert!(error.contains(expected), "{vars:?}: {error}");
        }
    }

    #[test]
    fn builder_tls_files_reach_the_redis_store_given_before_or_after_them() {
        let before = CacheServiceBuilder::default()
            .redis_url("rediss://h")
            .tls_ca_file("/ca.pem")
            .into_config()
            .unwrap();
        let after = CacheServiceBuilder::default()
            .tls_ca_file("/ca.pem")
            .redis_url("rediss://h")
            .into_config()
            .unwrap();
        for c in [before, after] {
            let tls = &redis_of(&c).tls_options;
            assert_eq!(
                tls.ca_file.as_deref(),
                Some(std::path::Path::new("/ca.pem"))
            );
            assert_eq!(tls.client_cert_file, None);
        }
    }

    #[test]
    fn parts_from_the_seeds_env_files() {
        let c = from(&[
            ("REDIS_HOST", "cache.local"),
            ("REDIS_PORT", "6380"),
            ("REDIS_DB", "2"),
            ("REDIS_PASSWORD", "hunter2"),
            ("REDIS_SSL", "true"),
            ("REDIS_DEFAULT_TTL", "120"),
        ])
        .unwrap();
        let r = redis_of(&c);
        assert_eq!(
            (r.host.as_str(), r.port, r.db, r.tls),
            ("cache.local", 6380, 2, true)
        );
        assert_eq!(c.default_ttl, Duration::from_secs(120));
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn the_local_tier_from_the_environment() {
        let c = from(&[("REDIS_HOST", "h")]).unwrap();
        assert_eq!(c.local_ttl, None, "off by default");
        let c = from(&[
            ("REDIS_HOST", "h"),
            ("CACHE_LOCAL_TTL_MS", "1500"),
            ("CACHE_LOCAL_MAX_BYTES", "1048576"),
        ])
        .unwrap();
        assert_eq!(c.local_ttl, Some(Duration::from_millis(1500)));
        assert_eq!(c.local_max_bytes, 1 << 20);
        for (vars, needle) in [
            (vec![("CACHE_LOCAL_TTL_MS", "soon")], "CACHE_LOCAL_TTL_MS"),
            (
                vec![("CACHE_LOCAL_TTL_MS", "0")],
                "CACHE_LOCAL_TTL_MS must be at least",
            ),
            (
                vec![("CACHE_LOCAL_TTL_MS", "10"), ("CACHE_LOCAL_MAX_BYTES", "0")],
                "max_bytes",
            ),
            (
                vec![("CACHE_LOCAL_MAX_BYTES", "-1")],
                "CACHE_LOCAL_MAX_BYTES",
            ),
        ] {
            let error = from(&vars).unwrap_err().to_string();
            assert!(error.contains(needle), "{vars:?}: {error}");
        }
    }

    #[test]
    fn the_local_tier_refuses_a_custom_backend() {
        let config = CacheConfig {
            store: StoreConfig::Custom(std::sync::Arc::new(MemoryBackend::default())),
            local_ttl: Some(Duration::from_secs(1)),
            ..CacheConfig::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("custom backend"), "{error}");
    }

    #[test]
    fn cache_ttl_wins_over_redis_default_ttl() {
        let c = from(&[("CACHE_TTL", "10"), ("REDIS_DEFAULT_TTL", "20")]).unwrap();
        assert_eq!(c.default_ttl, Duration::from_secs(10));
    }

    #[test]
    fn redis_enabled_false_respects_the_fallback() {
        let c = from(&[("REDIS_ENABLED", "False"), ("REDIS_HOST", "h")]).unwrap();
        assert!(matches!(c.store, StoreConfig::Disabled));
        let c = from(&[("REDIS_ENABLED", "false"), ("CACHE_FALLBACK", "memory")]).unwrap();
        assert!(matches!(c.store, StoreConfig::Memory { .. }));
        let c = from(&[("REDIS_ENABLED", "true")]).unwrap();
        assert_eq!(redis_of(&c).host, "127.0.0.1");
    }

    #[test]
    fn bad_values_are_clear_errors_without_secrets() {
        for (vars, needle) in [
            (
                vec![("REDIS_PORT", "abc"), ("REDIS_HOST", "h")],
                "REDIS_PORT",
            ),
            (
                vec![("REDIS_PORT", "70000"), ("REDIS_HOST", "h")],
                "REDIS_PORT",
            ),
            (vec![("REDIS_DB", "-1"), ("REDIS_HOST", "h")], "REDIS_DB"),
            (vec![("CACHE_TTL", "0")], "CACHE_TTL"),
            (vec![("CACHE_TTL", "soon")], "CACHE_TTL"),
            (vec![("REDIS_ENABLED", "maybe")], "REDIS_ENABLED"),
            (vec![("CACHE_FALLBACK", "disk")], "CACHE_FALLBACK"),
            (vec![("CACHE_BACKEND", "etcd")], "CACHE_BACKEND"),
            (vec![("REDIS_URL", "http://user:topsecret@h")], "redis://"),
            (
                vec![("REDIS_URL", "redis://user:topsecret@h/notanumber")],
                "database",
            ),
            (
                vec![("REDIS_URL", "redis://user:top/secret@h/0")],
                "percent-encode",
            ),
            (vec![("REDIS_URL", "not a url topsecret")], "REDIS_URL"),
        ] {
            let err = from(&vars).unwrap_err();
            let text = err.to_string();
            assert!(err.is_config(), "{text}");
            assert!(text.contains(needle), "{text} should mention {needle}");
            assert!(!text.contains("topsecret"), "{text} leaks the password");
        }
    }

    #[test]
    fn durations_above_max_ttl_are_config_errors() {
        let over = MAX_TTL + Duration::from_nanos(1);
        type With = fn(CacheConfig, Duration) -> CacheConfig;
        let cases: Vec<(&str, With)> = vec![
            ("default_ttl", |c, d| CacheConfig {
                default_ttl: d,
                ..c
            }),
            ("lease_ttl", |c, d| CacheConfig { lease_ttl: d, ..c }),
            ("timeout", |c, d| CacheConfig { timeout: d, ..c }),
            ("connect_timeout", |c, d| CacheConfig {
                connect_timeout: d,
                ..c
            }),
            ("admin_timeout", |c, d| CacheConfig {
                admin_timeout: d,
                ..c
            }),
            ("breaker_open_for", |c, d| CacheConfig {
                breaker_open_for: d,
                ..c
            }),
            ("fallback", |c, d| CacheConfig {
                fallback: Fallback::Memory {
                    ttl: d,
                    max_bytes: 1024,
                },
                ..c
            }),
        ];
        for (name, with) in cases {
            with(CacheConfig::default(), MAX_TTL).validate().unwrap();
            for value in [over, Duration::MAX] {
                let err = with(CacheConfig::default(), value).validate().unwrap_err();
                let text = err.to_string();
                assert!(err.is_config(), "{text}");
                assert!(text.contains(name), "{text} should name {name}");
                assert!(text.contains("315360000"), "{text} should name the bound");
            }
        }
    }

    #[test]
    fn ttls_are_at_least_a_millisecond_and_timeouts_above_zero() {
        let tiny = Duration::from_micros(999);
        for config in [
            CacheConfig {
                default_ttl: tiny,
                ..CacheConfig::default()
            },
            CacheConfig {
                lease_ttl: tiny,
                ..CacheConfig::default()
            },
            CacheConfig {
                fallback: Fallback::Memory {
                    ttl: tiny,
                    max_bytes: 1024,
                },
                ..CacheConfig::default()
            },
            CacheConfig {
                timeout: Duration::ZERO,
                ..CacheConfig::default()
            },
            CacheConfig {
                admin_timeout: Duration::ZERO,
                ..CacheConfig::default()
            },
            CacheConfig {
                prefix: "app#1".into(),
                ..CacheConfig::default()
            },
        ] {
            assert!(config.validate().is_err(), "{config:?}");
        }
        CacheConfig {
            default_ttl: Duration::from_millis(1),
            timeout: Duration::from_micros(1),
            breaker_open_for: Duration::ZERO,
            ..CacheConfig::default()
        }
        .validate()
        .unwrap();
    }

    #[tokio::test]
    async fn a_lease_ttl_of_duration_max_fails_the_build() {
        let built = CacheService::builder()
            .lease_ttl(Duration::MAX)
            .build()
            .await;
        let err = built.expect_err("the build fails");
        assert!(err.is_config());
        assert!(err.to_string().contains("lease_ttl"), "{err}");
        let built = CacheService::builder()
            .default_ttl(Duration::MAX)
            .build()
            .await;
        assert!(built.is_err());
    }

    #[test]
    fn env_durations_above_max_ttl_name_the_variable_and_the_bound() {
        for (var, value, bound) in [
            ("CACHE_TTL", "18446744073709551615", "315360000 seconds"),
            ("CACHE_TTL", "315360001", "315360000 seconds"),
            ("CACHE_TTL", "99999999999999999999999", "315360000 seconds"),
            (
                "REDIS_DEFAULT_TTL",
                "18446744073709551615",
                "315360000 seconds",
            ),
            (
                "CACHE_FALLBACK_TTL",
                "18446744073709551615",
                "315360000 seconds",
            ),
            (
                "CACHE_LEASE_TTL_MS",
                "18446744073709551615",
                "315360000000 milliseconds",
            ),
            (
                "CACHE_LEASE_TTL_MS",
                "315360000001",
                "315360000000 milliseconds",
            ),
            (
                "CACHE_TIMEOUT_MS",
                "18446744073709551615",
                "315360000000 milliseconds",
            ),
            (
                "CACHE_CONNECT_TIMEOUT_MS",
                "18446744073709551615",
                "315360000000 milliseconds",
            ),
            (
                "CACHE_ADMIN_TIMEOUT_MS",
                "18446744073709551615",
                "315360000000 milliseconds",
            ),
            (
                "CACHE_BREAKER_OPEN_MS",
                "18446744073709551615",
                "315360000000 milliseconds",
            ),
        ] {
            let err = from(&[(var, value), ("CACHE_FALLBACK", "memory")]).unwrap_err();
            let text = err.to_string();
            assert!(err.is_config(), "{text}");
            assert!(text.contains(var), "{text} should name {var}");
            assert!(text.contains(bound), "{text} should name {bound}");
        }
        let c = from(&[
            ("CACHE_TTL", "315360000"),
            ("CACHE_LEASE_TTL_MS", "315360000000"),
            ("CACHE_FALLBACK", "memory"),
            ("CACHE_FALLBACK_TTL", "315360000"),
        ])
        .unwrap();
        assert_eq!((c.default_ttl, c.lease_ttl), (MAX_TTL, MAX_TTL));
        assert_eq!(
            c.fallback,
            Fallback::Memory {
                ttl: MAX_TTL,
                max_bytes: MemoryBackend::DEFAULT_MAX_BYTES
            }
        );
        // Not numbers at all: still the plain message.
        let text = from(&[("CACHE_TTL", "-5")]).unwrap_err().to_string();
        assert!(text.contains("whole number"), "{text}");
    }

    #[test]
    fn a_write_ttl_is_checked_against_the_bounds() {
        for ok in [Duration::from_millis(1), DEFAULT_TTL, MAX_TTL] {
            assert_eq!(check_ttl(ok).unwrap(), ok);
        }
        for bad in [MAX_TTL + Duration::from_nanos(1), Duration::MAX] {
            let text = check_ttl(bad).unwrap_err().to_string();
            assert!(text.contains("at most 315360000 seconds"), "{text}");
            assert!(text.contains("MAX_TTL"), "{text}");
        }
        for bad in [Duration::ZERO, Duration::from_micros(999)] {
            let text = check_ttl(bad).unwrap_err().to_string();
            assert!(text.contains("at least 1 millisecond"), "{text}");
        }
    }

    #[test]
    fn max_ttl_is_ten_years_in_every_spelling() {
        assert_eq!(MAX_TTL, Duration::from_secs(10 * 365 * 24 * 60 * 60));
        assert_eq!(MAX_TTL.as_secs(), MAX_TTL_SECS);
        // What the macro passes along with every `ttl`; a mismatch panics (at compile time in
        // an expansion).
        assert_eq!(crate::__private::checked_ttl_secs(60, 315_360_000), 60);
    }

    #[test]
    #[should_panic(expected = "disagree on MAX_TTL")]
    fn a_macro_with_another_bound_is_refused() {
        crate::__private::checked_ttl_secs(60, 315_360_001);
    }

    #[test]
    fn a_prefix_with_a_colon_is_warned_about() {
        let with = |prefix: &str| CacheConfig {
            prefix: prefix.into(),
            ..CacheConfig::default()
        };
        assert_eq!(CacheConfig::default().prefix_warning(), None);
        assert_eq!(with("app").prefix_warning(), None);
        assert_eq!(with("app-users.v2").prefix_warning(), None);
        for nested in ["app:users", "app:", ":app", "a:b:c"] {
            let config = with(nested);
            config.validate().unwrap();
            let warning = config.prefix_warning().expect(nested);
            assert!(warning.contains("`:`"), "{warning}");
        }
    }

    #[test]
    fn redact_keys_is_off_unless_set() {
        assert!(!CacheConfig::default().redact_keys);
        assert!(CacheService::builder().redact_keys(true).config.redact_keys);
        assert!(from(&[("CACHE_REDACT_KEYS", "yes")]).unwrap().redact_keys);
        assert!(!from(&[("CACHE_REDACT_KEYS", "0")]).unwrap().redact_keys);
        let text = from(&[("CACHE_REDACT_KEYS", "sometimes")])
            .unwrap_err()
            .to_string();
        assert!(text.contains("CACHE_REDACT_KEYS"), "{text}");
    }

    #[test]
    fn max_value_bytes_is_within_what_redis_stores() {
        let mut config = CacheConfig {
            max_value_bytes: MAX_VALUE_BYTES_LIMIT,
            ..CacheConfig::default()
        };
        config.validate().unwrap();
        config.max_value_bytes = MAX_VALUE_BYTES_LIMIT + 1;
        assert!(
            config
                .validate()
                .unwrap_err()
                .to_string()
                .contains("512 MiB")
        );
        assert!(from(&[("CACHE_MAX_VALUE_BYTES", "18446744073709551615")]).is_err());
    }

    #[test]
    fn max_value_bytes_is_above_zero() {
        assert_eq!(DEFAULT_MAX_VALUE_BYTES, 4 * 1024 * 1024);
        assert_eq!(
            CacheConfig::default().max_value_bytes,
            DEFAULT_MAX_VALUE_BYTES
        );
        let b = CacheService::builder().max_value_bytes(1024);
        assert_eq!(b.config.max_value_bytes, 1024);
        let c = from(&[("CACHE_MAX_VALUE_BYTES", "65536")]).unwrap();
        assert_eq!(c.max_value_bytes, 65536);

        for bad in ["0", "4MB", "-1", "18446744073709551616"] {
            let text = from(&[("CACHE_MAX_VALUE_BYTES", bad)])
                .unwrap_err()
                .to_string();
            assert!(text.contains("CACHE_MAX_VALUE_BYTES"), "{bad}: {text}");
        }

        let err = CacheConfig {
            max_value_bytes: 0,
            ..CacheConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.is_config());
        assert!(err.to_string().contains("max_value_bytes"), "{err}");
    }

    /// Passwords with every character that breaks a URL, each fragment distinctive enough
    /// that finding it in a message can only mean a leak.
    const PASSWORDS: &[&str] = &[
        "Xq7/Zr9#Kp",
        "Mv4?Tn8@Lw",
        "Hb2#Qy6/Rd?Ws",
        "Pz5@Jk3:Nf",
        "Gc8%Vu1%Ye",
        "Gc8%41Vu1",
        "Ot3 Wl9 Ia",
        "Fr6[Ex2]Dq",
        "Sé7/Ñø9#Zßq",
        "密码Kx9/Wq4",
        "Bn1:/?#@%[] Cm4",
        "Yt5//Ua8##Io2",
        "Qw3@@Er6",
        "/Lq9x?",
        "Tr8x#",
        "@Vb7?",
    ];

    /// URL shapes, valid and not, with `{pw}` for the password as written into the URL.
    const URLS: &[&str] = &[
        "redis://user:{pw}@cache.example.com:6380/2",
        "redis://:{pw}@cache.example.com",
        "rediss://user:{pw}@cache.example.com/2?protocol=resp3",
        "redis://user:{pw}@cache.example.com/2#top",
        "redis://user:{pw}@cache.example.com/notadb",
        "redis://user:{pw}@cache.example.com/2/3",
        "redis://user:{pw}@cache.example.com:99999",
        "redis://user:{pw}@cache.example.com:port",
        "redis://user:{pw}@/0",
        "redis://user:{pw}@[::1",
        "http://user:{pw}@cache.example.com",
        "user:{pw}@cache.example.com",
        "redis:user:{pw}@cache.example.com",
    ];

    fn encoded(password: &str) -> String {
        percent_encoding::utf8_percent_encode(password, percent_encoding::NON_ALPHANUMERIC)
            .to_string()
    }

    /// Panics if `text` contains `password` or one of its `/`, `?`, `#`, `@`-separated
    /// fragments of three characters or more, raw or percent-encoded.
    fn assert_hidden(text: &str, password: &str, context: &str) {
        let fragments = password
            .split(['/', '?', '#', '@'])
            .filter(|f| f.chars().count() >= 3);
        for secret in std::iter::once(password).chain(fragments) {
            assert!(
                !text.contains(secret) && !text.contains(&encoded(secret)),
                "{context}: `{text}` shows `{secret}`"
            );
        }
    }

    fn assert_result_hidden<T: fmt::Debug>(
        result: &Result<T, CacheError>,
        password: &str,
        context: &str,
    ) {
        match result {
            Ok(value) => assert_hidden(&format!("{value:?}"), password, context),
            Err(err) => {
                assert!(err.is_config(), "{context}: {err}");
                assert_hidden(&err.to_string(), password, context);
                assert_hidden(&format!("{err:?}"), password, context);
            }
        }
    }

    #[test]
    fn no_url_error_or_debug_shows_any_part_of_a_password() {
        for password in PASSWORDS {
            for shape in URLS {
                for written in [password.to_string(), encoded(password)] {
                    let url = shape.replace("{pw}", &written);
                    let context = format!("from_url({url:?})");
                    assert_result_hidden(&RedisConfig::from_url(&url), password, &context);

                    let lookup = from(&[("REDIS_URL", &url)]);
                    assert_result_hidden(&lookup, password, &format!("REDIS_URL={url:?}"));

                    let builder = CacheService::builder().redis_url(&url);
                    assert_hidden(&format!("{builder:?}"), password, &context);
                }
            }
        }
    }

    #[test]
    fn percent_encoded_passwords_round_trip() {
        for password in PASSWORDS {
            let url = format!(
                "redis://user:{}@cache.example.com:6380/2",
                encoded(password)
            );
            let config = RedisConfig::from_url(&url).unwrap();
            assert_eq!(config.password.as_deref(), Some(*password));
            assert_eq!(config.endpoint(), "cache.example.com:6380/2");
        }
    }

    #[test]
    fn an_unencoded_delimiter_in_a_password_is_named_as_the_cause() {
        for password in PASSWORDS.iter().filter(|p| p.contains(['/', '?', '#'])) {
            let url = format!("redis://user:{password}@cache.example.com:6380/2");
            let text = RedisConfig::from_url(&url).unwrap_err().to_string();
            assert!(
                text.contains("`@` after the host") && text.contains("percent-encode"),
                "{password}: {text}"
            );
        }
    }

    #[test]
    fn a_query_or_fragment_is_an_error_not_ignored() {
        for url in [
            "redis://cache.example.com/2?protocol=resp3",
            "redis://cache.example.com/2?",
            "redis://cache.example.com#x",
        ] {
            let text = RedisConfig::from_url(url).unwrap_err().to_string();
            assert!(text.contains("query"), "{url}: {text}");
            assert!(!text.contains("resp3"), "{url}: {text}");
        }
    }

    #[test]
    fn redis_password_from_the_environment_never_shows() {
        for password in PASSWORDS {
            let ok = from(&[
                ("REDIS_HOST", "cache.example.com"),
                ("REDIS_PASSWORD", password),
            ]);
            assert_eq!(
                redis_of(ok.as_ref().unwrap()).password.as_deref(),
                Some(*password)
            );
            assert_result_hidden(&ok, password, "REDIS_PASSWORD");
            for bad in [
                ("REDIS_PORT", "port"),
                ("REDIS_DB", "db"),
                ("REDIS_SSL", "maybe"),
                ("CACHE_TTL", "18446744073709551615"),
            ] {
                let result = from(&[
                    ("REDIS_HOST", "cache.example.com"),
                    ("REDIS_PASSWORD", password),
                    bad,
                ]);
                assert!(result.is_err(), "{bad:?}");
                assert_result_hidden(&result, password, "REDIS_PASSWORD");
            }
        }
    }

    #[test]
    fn ipv6_and_default_port() {
        let r = RedisConfig::from_url("redis://[::1]").unwrap();
        assert_eq!((r.host.as_str(), r.port, r.db), ("::1", 6379, 0));
        assert_eq!(r.endpoint(), "[::1]:6379/0");
    }
}
