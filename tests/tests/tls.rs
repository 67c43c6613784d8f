//! `rediss://` reaches Redis over TLS. The server here has a self-signed certificate that no
//! trust store knows, so the handshake must fail on the certificate (which proves TLS was
//! spoken, with the rustls provider installed and no panic), and the service must degrade as
//! for any other unreachable Redis: it builds, reads miss, the loader runs, health says why.

use cachekit::CacheService;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A redis-server listening only for TLS; killed on drop.
struct TlsRedis {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("a self-signed certificate");
        let cert_path = dir.path().join("cert.pem");
        let key_path = dir.path().join("key.pem");
        std::fs::write(&cert_path, key.cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.signing_key.serialize_pem()).expect("write key");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string(), "--tls-auth-clients", "no"])
            .arg("--tls-cert-file")
            .arg(&cert_path)
            .arg("--tls-key-file")
            .arg(&key_path)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server starts (install it: sudo apt-get install -y redis-server, \
                 brew install redis, or run bash scripts/test.sh)",
            );
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "the TLS redis-server never listened on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            port,
            _dir: dir,
        }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_speaks_tls_and_an_untrusted_certificate_degrades_cleanly() {
    cachekit_tests::init_tracing();
    let server = TlsRedis::start();
    let cache = CacheService::builder()
        .redis_url(format!("rediss://:s3cret@localhost:{}/0", server.port))
        .prefix("tls")
        .build()
        .await
        .expect("an unreachable (untrusted) Redis still builds");

    assert_eq!(cache.get::<String>("k").await, None);
    let loaded = cache
        .get_or_load("k", None, || async { Ok::<_, std::io::Error>(7u8) })
        .await
        .expect("the loader's value");
    assert_eq!(loaded, 7);

    let health = cache.health().await;
    assert!(!health.connected);
    let error = health.error.expect("health says why");
    assert!(
        error.to_lowercase().contains("certificate"),
        "the failure is the TLS certificate check: {error}"
    );
    assert!(!error.contains("s3cret"), "{error}");
    assert!(!format!("{cache:?}").contains("s3cret"));
}
