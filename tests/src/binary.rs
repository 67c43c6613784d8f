//! Locating the `redis-server` executable.

use std::env;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// Environment variable naming a specific `redis-server` binary to use instead of searching.
const OVERRIDE_VAR: &str = "CACHEKIT_REDIS_SERVER";

/// Directories searched after `PATH`: where package managers put it even when `PATH` is minimal.
const EXTRA_DIRS: [&str; 3] = ["/usr/bin", "/usr/local/bin", "/opt/homebrew/bin"];

/// The `redis-server` to run; panics with installation instructions if there is none.
pub(crate) fn redis_server() -> &'static Path {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    match FOUND.get_or_init(find) {
        Some(path) => path,
        None => panic!("{}", missing_message()),
    }
}

fn find() -> Option<PathBuf> {
    if let Some(path) = env::var_os(OVERRIDE_VAR) {
        let path = PathBuf::from(path);
        assert!(
            is_executable(&path),
            "{OVERRIDE_VAR}={} is not an executable file",
            path.display()
        );
        return Some(path);
    }
    let path_dirs = env::var_os("PATH")
        .map(|paths| env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(EXTRA_DIRS.iter().map(PathBuf::from))
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

fn missing_message() -> String {
    format!(
        "redis-server was not found on PATH (nor in {dirs}).\n\
         The cachekit integration tests start their own private redis-server processes, so it \
         must be installed:\n\
         \x20 Debian/Ubuntu: sudo apt-get install -y redis-server\n\
         \x20 macOS:         brew install redis\n\
         or run `bash scripts/test.sh` from the repository root, which installs it and runs the \
         whole suite.\n\
         To use a specific binary, set {OVERRIDE_VAR}=/path/to/redis-server.",
        dirs = EXTRA_DIRS.join(", "),
    )
}

/// The `redis-cli` to run: beside `redis-server`, else on `PATH`; panics with installation
/// instructions if there is none.
pub(crate) fn redis_cli() -> &'static Path {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = FOUND.get_or_init(|| {
        let beside = redis_server().parent().map(|dir| dir.join("redis-cli"));
        let path_dirs = env::var_os("PATH")
            .map(|paths| env::split_paths(&paths).collect::<Vec<_>>())
            .unwrap_or_default();
        beside
            .into_iter()
            .chain(
                path_dirs
                    .into_iter()
                    .chain(EXTRA_DIRS.iter().map(PathBuf::from))
                    .map(|dir| dir.join("redis-cli")),
            )
            .find(|candidate| is_executable(candidate))
    });
    match found {
        Some(path) => path,
        None => panic!(
            "redis-cli was not found beside redis-server nor on PATH. The cluster tests create \
             their cluster with `redis-cli --cluster create`:\n\
             \x20 Debian/Ubuntu: sudo apt-get install -y redis-tools (installed with redis-server)\n\
             \x20 macOS:         brew install redis\n\
             or run `bash scripts/test.sh` from the repository root."
        ),
    }
}
