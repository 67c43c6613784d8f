//! A redis-server that speaks TLS, with certificates made for the test.
//!
//! [`Pki`] generates a private CA and, signed by it, a server certificate for `localhost` and a
//! client certificate, as PEM files in a temporary directory. [`TlsRedis`] starts a
//! [`RedisServer`] that listens both in plain text (its [`RedisServer::port`], for the harness
//! and raw access) and with TLS on [`TlsRedis::tls_port`], presenting that server certificate.
//!
//! ```
//! use cachekit_tests::tls::{Pki, TlsRedis};
//!
//! let pki = Pki::generate();
//! let server = TlsRedis::start(&pki, false);
//! assert!(server.url("localhost").starts_with("rediss://localhost:"));
//! assert!(std::fs::read_to_string(pki.ca_file()).unwrap().contains("BEGIN CERTIFICATE"));
//! ```

use std::ffi::OsString;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

use crate::RedisServer;
use crate::port::PortReservation;

/// A private CA and the certificates it signed, as PEM files that live as long as this value.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    /// A new CA, a server certificate for `localhost` only (so a connection to `127.0.0.1`
    /// fails the host name check), and a client certificate.
    ///
    /// # Panics
    ///
    /// If a key or certificate cannot be made or written.
    pub fn generate() -> Self {
        Self::generate_for(&["localhost"])
    }

    /// Like [`generate`](Self::generate), with a server certificate for `names` (host names
    /// or IP addresses): a cluster's nodes announce themselves by address, so a client that
    /// follows a redirect checks the certificate against `127.0.0.1`.
    pub fn generate_for(names: &[&str]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cachekit-pki-")
            .tempdir()
            .unwrap_or_else(|error| panic!("cannot create a temp dir for certificates: {error}"));
        let write = |name: &str, pem: String| {
            std::fs::write(dir.path().join(name), pem)
                .unwrap_or_else(|error| panic!("cannot write {name}: {error}"));
        };

        let mut ca = CertificateParams::new(Vec::new()).expect("no names is valid");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "cachekit test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().expect("a CA key");
        let ca_cert = ca
            .self_signed(&ca_key)
            .expect("a self-signed CA certificate");
        write("ca.pem", ca_cert.pem());
        let issuer = Issuer::new(ca, ca_key);

        let server_names: Vec<String> = names.iter().map(|n| (*n).to_string()).collect();
        for (name, purposes, common_name, names) in [
            // Cluster nodes and replicas also connect to each other with it: client use too.
            (
                "server",
                vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
                names.first().copied().unwrap_or("localhost"),
                server_names.clone(),
            ),
            (
                "client",
                vec![ExtendedKeyUsagePurpose::ClientAuth],
                "cachekit",
                vec!["localhost".to_string()],
            ),
        ] {
            let mut params = CertificateParams::new(names).expect("valid names");
            params
                .distinguished_name
                .push(DnType::CommonName, common_name);
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = purposes;
            params.use_authority_key_identifier_extension = true;
            let key = KeyPair::generate().expect("a key");
            let cert = params
                .signed_by(&key, &issuer)
                .expect("a certificate signed by the CA");
            write(&format!("{name}.pem"), cert.pem());
            write(&format!("{name}.key"), key.serialize_pem());
        }
        Self { dir }
    }

    /// The CA certificate (PEM).
    pub fn ca_file(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// The server certificate (PEM), for `localhost`.
    pub fn server_cert(&self) -> PathBuf {
        self.path("server.pem")
    }

    /// The server certificate's private key (PEM).
    pub fn server_key(&self) -> PathBuf {
        self.path("server.key")
    }

    /// The client certificate (PEM), for mutual TLS.
    pub fn client_cert(&self) -> PathBuf {
        self.path("client.pem")
    }

    /// The client certificate's private key (PEM).
    pub fn client_key(&self) -> PathBuf {
        self.path("client.key")
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The redis-server arguments that make it listen for TLS on `port` with this PKI's server
    /// certificate, trusting its CA for client certificates (required or not).
    pub fn server_args(&self, port: u16, require_client_cert: bool) -> Vec<OsString> {
        vec![
            "--tls-port".into(),
            port.to_string().into(),
            "--tls-cert-file".into(),
            self.server_cert().into(),
            "--tls-key-file".into(),
            self.server_key().into(),
            "--tls-ca-cert-file".into(),
            self.ca_file().into(),
            "--tls-auth-clients".into(),
            if require_client_cert { "yes" } else { "no" }.into(),
        ]
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A [`RedisServer`] that also listens with TLS, with the server certificate of a [`Pki`].
pub struct TlsRedis {
    server: RedisServer,
    tls_port: PortReservation,
}

impl TlsRedis {
    /// Starts the server; with `require_client_cert`, a TLS client must present a certificate
    /// the CA signed (`tls-auth-clients yes`). Waits until the TLS port accepts connections.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`], and when the TLS port does not listen within 10 seconds.
    pub fn start(pki: &Pki, require_client_cert: bool) -> Self {
        Self::start_with_args::<&str>(pki, require_client_cert, &[])
    }

    /// [`start`](Self::start) with extra redis-server arguments, such as `--requirepass`.
    pub fn start_with_args<S: AsRef<std::ffi::OsStr>>(
        pki: &Pki,
        require_client_cert: bool,
        extra: &[S],
    ) -> Self {
        let tls_port = PortReservation::new();
        let mut args = pki.server_args(tls_port.port(), require_client_cert);
        args.extend(extra.iter().map(|arg| arg.as_ref().to_owned()));
        let server = RedisServer::start_with_args(&args);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", tls_port.port())).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server never listened for TLS on {}",
                tls_port.port()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Self { server, tls_port }
    }

    /// The TLS port on `127.0.0.1`.
    pub fn tls_port(&self) -> u16 {
        self.tls_port.port()
    }

    /// `rediss://{host}:{tls_port}/0`: `localhost` passes the host name check, `127.0.0.1`
    /// does not.
    pub fn url(&self, host: &str) -> String {
        format!("rediss://{host}:{}/0", self.tls_port())
    }

    /// The server, for raw plain-text access and for faults.
    pub fn server(&self) -> &RedisServer {
        &self.server
    }
}
