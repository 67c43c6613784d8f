//! A private `redis-server` process per test.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{self, Signal};
use nix::sys::wait::{self, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use redis::IntoConnectionInfo;
use tempfile::TempDir;

use crate::binary;
use crate::port::{self, PortReservation};

/// How long a starting server may take to answer `PING`.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Connect and read timeout of one readiness probe.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);
/// Pause between readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Fresh ports tried by `start` when another process takes the chosen one first.
const START_ATTEMPTS: usize = 5;
/// Pause between attempts of `restart` while its port is still busy.
const RESTART_RETRY: Duration = Duration::from_millis(100);
/// Lines of each log shown when the server fails to start.
const TAIL_LINES: usize = 40;
/// The server's log, as written by `--logfile`.
const LOG_FILE: &str = "redis.log";
/// The process's stdout and stderr: errors in the arguments are printed before logging starts.
const OUTPUT_FILE: &str = "redis.out";

/// A `redis-server` process of this test only, on a free loopback port, killed when dropped.
///
/// The server persists nothing (`--save ""`, `--appendonly no`); its working directory and log
/// live in a temporary directory removed on drop. Every method takes `&self`, so a server can be
/// shared (for instance in an `Arc`) between the test and tasks that pause or kill it.
///
/// Methods that wait for the process ([`start`](Self::start), [`restart`](Self::restart),
/// [`pause`](Self::pause)) block the calling thread briefly; they are meant for tests, sync or
/// async alike.
#[must_use = "the server is killed as soon as its handle is dropped"]
pub struct RedisServer {
    port: PortReservation,
    /// Extra arguments given to `start_with_args`, kept for `restart`.
    args: Vec<OsString>,
    /// The `--requirepass` value, used by `client` and `connection`.
    password: Option<String>,
    dir: TempDir,
    process: Mutex<Process>,
}

#[derive(Debug, Default)]
struct Process {
    /// `None` once killed (or if it died while being paused).
    child: Option<Child>,
    /// Stopped with `SIGSTOP` and not yet continued.
    paused: bool,
}

/// Why one launch of `redis-server` did not produce a ready server.
enum LaunchError {
    /// It could not bind its port: someone else holds it, try again.
    PortTaken,
    /// Anything else, with an explanation; retrying will not help.
    Failed(String),
}

impl RedisServer {
    /// Starts a server with the default settings and waits until it answers `PING`.
    ///
    /// # Panics
    ///
    /// If `redis-server` is not installed (the message says how to install it), or if the server
    /// does not become ready within 10 seconds (the message shows the tail of its log).
    pub fn start() -> Self {
        Self::start_with_args::<&str>(&[])
    }

    /// Starts a server with extra command-line arguments, which override the defaults.
    ///
    /// For example `&["--requirepass", "secret"]`, or an ACL user with
    /// `&["--user", "alice", "on", ">pw", "~*", "+@all"]`. A `--requirepass` password is used by
    /// [`client`](Self::client) and [`connection`](Self::connection), but never appears in
    /// [`url`](Self::url): build an authenticated URL with [`url_with_auth`](Self::url_with_auth).
    ///
    /// # Panics
    ///
    /// As [`start`](Self::start); also when the arguments are rejected by `redis-server`.
    pub fn start_with_args<S: AsRef<OsStr>>(args: &[S]) -> Self {
        let args: Vec<OsString> = args.iter().map(|arg| arg.as_ref().to_owned()).collect();
        let dir = tempfile::Builder::new()
            .prefix("cachekit-redis-")
            .tempdir()
            .unwrap_or_else(|error| panic!("cannot create a temp dir for redis-server: {error}"));
        for _ in 0..START_ATTEMPTS {
            let port = PortReservation::new();
            match launch(port.port(), &args, dir.path()) {
                Ok(child) => {
                    return Self {
                        port,
                        password: requirepass(&args),
                        args,
                        dir,
                        process: Mutex::new(Process {
                            child: Some(child),
                            paused: false,
                        }),
                    };
                }
                Err(LaunchError::PortTaken) => {}
                Err(LaunchError::Failed(why)) => panic!("{}", failure_report(&why, dir.path())),
            }
        }
        let why = format!("redis-server found each of {START_ATTEMPTS} free ports taken");
        panic!("{}", failure_report(&why, dir.path()))
    }

    /// The server's TCP port on `127.0.0.1`.
    pub fn port(&self) -> u16 {
        self.port.port()
    }

    /// The server's socket address, `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port()))
    }

    /// `redis://127.0.0.1:port/0`, without credentials.
    pub fn url(&self) -> String {
        self.url_db(0)
    }

    /// `redis://127.0.0.1:port/db`, without credentials.
    pub fn url_db(&self, db: u32) -> String {
        format!("redis://{}/{db}", self.addr())
    }

    /// `redis://username:password@127.0.0.1:port/0`, or `redis://:password@...` without a
    /// username; both parts are percent-encoded.
    pub fn url_with_auth(&self, username: Option<&str>, password: &str) -> String {
        format!(
            "redis://{}:{}@{}/0",
            percent_encode(username.unwrap_or("")),
            percent_encode(password),
            self.addr()
        )
    }

    /// A client for raw access in assertions (`get_connection` for sync use), authenticated with
    /// the `--requirepass` password if one was given.
    pub fn client(&self) -> redis::Client {
        let mut settings = redis::RedisConnectionInfo::default();
        if let Some(password) = &self.password {
            settings = settings.set_password(password);
        }
        let info = redis::ConnectionAddr::Tcp(Ipv4Addr::LOCALHOST.to_string(), self.port())
            .into_connection_info()
            .expect("a TCP address is valid connection info")
            .set_redis_settings(settings);
        redis::Client::open(info).expect("a TCP address is a valid client")
    }

    /// A new async connection for raw access in assertions; needs a tokio runtime.
    ///
    /// # Panics
    ///
    /// If the server does not accept the connection (it is killed, for instance).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        self.client()
            .get_multiplexed_async_connection()
            .await
            .unwrap_or_else(|error| {
                panic!("cannot connect to redis-server at {}: {error}", self.addr())
            })
    }

    /// Whether the process is alive; a paused server is alive.
    pub fn is_running(&self) -> bool {
        let mut process = self.process();
        process
            .child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Kills the server with `SIGKILL` and waits for it to exit; its data is lost. Connections
    /// are then refused on its port until [`restart`](Self::restart). Does nothing if the server
    /// is not running.
    pub fn kill(&self) {
        kill(&mut self.process());
    }

    /// Stops the server with `SIGSTOP` and waits until it is stopped: it keeps its port and its
    /// connections, and the kernel still accepts new ones, but nothing is answered until
    /// [`resume`](Self::resume). This is what a hung or overloaded Redis looks like to a client.
    /// Does nothing if the server is already paused.
    ///
    /// # Panics
    ///
    /// If the server is not running.
    pub fn pause(&self) {
        let mut process = self.process();
        if process.paused {
            return;
        }
        let pid = running_pid(&process, "pause");
        signal::kill(pid, Signal::SIGSTOP)
            .unwrap_or_else(|error| panic!("cannot send SIGSTOP to redis-server: {error}"));
        // Wait for the stop itself: a command sent right after `pause` must not be answered.
        let status = loop {
            match wait::waitpid(pid, Some(WaitPidFlag::WUNTRACED)) {
                Err(Errno::EINTR) => {}
                other => break other,
            }
        };
        match status {
            Ok(WaitStatus::Stopped(..)) => process.paused = true,
            other => {
                // The process is gone, and possibly reaped by `waitpid`: forget it.
                process.child = None;
                panic!("redis-server did not stop on SIGSTOP: {other:?}");
            }
        }
    }

    /// Continues a server stopped by [`pause`](Self::pause) with `SIGCONT`; it then answers
    /// everything that was sent meanwhile. Does nothing if the server is not paused.
    pub fn resume(&self) {
        let mut process = self.process();
        if !process.paused {
            return;
        }
        let pid = running_pid(&process, "resume");
        signal::kill(pid, Signal::SIGCONT)
            .unwrap_or_else(|error| panic!("cannot send SIGCONT to redis-server: {error}"));
        process.paused = false;
    }

    /// Starts the server again, empty, on the same port and with the same arguments, and waits
    /// until it answers `PING`; a running server is killed first. Retries for a while if the port
    /// is still busy.
    ///
    /// # Panics
    ///
    /// If the server does not become ready within 10 seconds.
    pub fn restart(&self) {
        let mut process = self.process();
        kill(&mut process);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match launch(self.port(), &self.args, self.dir.path()) {
                Ok(child) => {
                    process.child = Some(child);
                    return;
                }
                Err(LaunchError::PortTaken) if Instant::now() < deadline => {
                    thread::sleep(RESTART_RETRY);
                }
                Err(LaunchError::PortTaken) => {
                    let why = format!(
                        "port {} stayed busy for {READY_TIMEOUT:?}: redis-server cannot restart",
                        self.port()
                    );
                    panic!("{}", failure_report(&why, self.dir.path()));
                }
                Err(LaunchError::Failed(why)) => {
                    panic!("{}", failure_report(&why, self.dir.path()))
                }
            }
        }
    }

    /// The server's log so far, across restarts.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join(LOG_FILE)).unwrap_or_default()
    }

    fn process(&self) -> MutexGuard<'_, Process> {
        // A panic while holding the lock leaves the state usable: `child` is always accurate.
        self.process.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        kill(
            self.process
                .get_mut()
                .unwrap_or_else(PoisonError::into_inner),
        );
    }
}

impl fmt::Debug for RedisServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Arguments and password stay out: they may hold secrets.
        f.debug_struct("RedisServer")
            .field("addr", &self.addr())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

/// Kills and reaps the process, continuing it first if it is paused.
fn kill(process: &mut Process) {
    if let Some(mut child) = process.child.take() {
        if process.paused {
            let _ = signal::kill(pid_of(&child), Signal::SIGCONT);
        }
        // Errors mean the process has already exited; the wait reaps it either way.
        let _ = child.kill();
        let _ = child.wait();
    }
    process.paused = false;
}

fn running_pid(process: &Process, action: &str) -> Pid {
    let child = process
        .child
        .as_ref()
        .unwrap_or_else(|| panic!("cannot {action} redis-server: it is not running"));
    pid_of(child)
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("process ids fit in i32"))
}

/// Runs `redis-server` on `port` and waits until it answers `PING`.
fn launch(port: u16, args: &[OsString], dir: &Path) -> Result<Child, LaunchError> {
    let binary = binary::redis_server();
    let log = dir.join(LOG_FILE);
    let log_start = fs::metadata(&log).map_or(0, |meta| meta.len());
    let open_output = || {
        File::options()
            .create(true)
            .append(true)
            .open(dir.join(OUTPUT_FILE))
    };
    let (stdout, stderr) = open_output()
        .and_then(|file| Ok((file.try_clone()?, file)))
        .map_err(|error| LaunchError::Failed(format!("cannot create {OUTPUT_FILE}: {error}")))?;
    let mut child = Command::new(binary)
        .arg("--port")
        .arg(port.to_string())
        .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(&log)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|error| {
            LaunchError::Failed(format!("cannot run {}: {error}", binary.display()))
        })?;

    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => return Err(exited_early(status, port, &log, log_start)),
            Err(error) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LaunchError::Failed(format!(
                    "cannot watch redis-server: {error}"
                )));
            }
        }
        // Still alive after answering: the answer came from our process, not from another
        // one that took the port while ours was failing to bind it.
        if answers_ping(port) && matches!(child.try_wait(), Ok(None)) {
            return Ok(child);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LaunchError::Failed(format!(
                "redis-server did not answer PING on 127.0.0.1:{port} within {READY_TIMEOUT:?}"
            )));
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Classifies an exit before readiness: a busy port is worth another try, anything else is not.
fn exited_early(status: ExitStatus, port: u16, log: &Path, log_start: u64) -> LaunchError {
    let new_log = read_from(log, log_start).unwrap_or_default();
    if new_log.contains("Address already in use") || !port::is_free(port) {
        LaunchError::PortTaken
    } else {
        LaunchError::Failed(format!(
            "redis-server exited ({status}) before answering PING on 127.0.0.1:{port}"
        ))
    }
}

/// Whether something on `port` answers an inline `PING` like a ready Redis: `+PONG`, or an
/// error such as `-NOAUTH` when a password is required, but not `-LOADING`.
fn answers_ping(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) else {
        return false;
    };
    if stream.set_read_timeout(Some(PROBE_TIMEOUT)).is_err()
        || stream.write_all(b"PING\r\n").is_err()
    {
        return false;
    }
    let mut reply = [0_u8; 64];
    match stream.read(&mut reply) {
        Ok(len) if len > 0 => {
            let reply = &reply[..len];
            reply.starts_with(b"+") || (reply.starts_with(b"-") && !reply.starts_with(b"-LOADING"))
        }
        _ => false,
    }
}

/// The value of the last `--requirepass` argument.
fn requirepass(args: &[OsString]) -> Option<String> {
    args.windows(2)
        .rev()
        .find(|pair| pair[0] == "--requirepass")
        .map(|pair| pair[1].to_string_lossy().into_owned())
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|byte| match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(byte).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

fn read_from(path: &Path, offset: u64) -> io::Result<String> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(offset))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `why`, then the tails of the server's log and output.
fn failure_report(why: &str, dir: &Path) -> String {
    let mut report = format!("{why}\n");
    for name in [LOG_FILE, OUTPUT_FILE] {
        let path = dir.join(name);
        let tail = match fs::read(&path) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n")
            }
            Err(error) => format!("(cannot read it: {error})"),
        };
        report.push_str(&format!("--- end of {} ---\n{tail}\n", path.display()));
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requirepass_takes_the_last_value() {
        let args: Vec<OsString> = [
            "--requirepass",
            "a",
            "--maxmemory",
            "1mb",
            "--requirepass",
            "b",
        ]
        .iter()
        .map(OsString::from)
        .collect();
        assert_eq!(requirepass(&args).as_deref(), Some("b"));
        assert_eq!(requirepass(&[]), None);
    }

    #[test]
    fn percent_encoding_keeps_only_unreserved_characters() {
        assert_eq!(percent_encode("a-Z_0.9~"), "a-Z_0.9~");
        assert_eq!(percent_encode("p@ss:w/rd é"), "p%40ss%3Aw%2Frd%20%C3%A9");
    }
}
