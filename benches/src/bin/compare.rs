//! Side-by-side comparison of cachekit, raw redis-rs and the `cached` crate, in one process.
//!
//! ```text
//! cargo run --release -p cachekit-benches --bin compare [-- --quick] [--json FILE] [--redis-url URL] [--diagnostics] [--only GROUP,..]
//! ```
//!
//! Without `--redis-url` (or `REDIS_URL`) it starts a private `redis-server` on a free port.
//! Prints progress on stderr and the table (Markdown) on stdout.

use cachekit_benches::{GROUPS, Options, run};
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "\
usage: compare [--quick] [--json FILE] [--redis-url URL] [--diagnostics] [--only GROUP,..]

  --quick          far less work (a few seconds), for CI; figures not worth quoting
  --json FILE      also write the report as JSON to FILE
  --diagnostics    also measure raw redis-rs inside cachekit's per-call timeout,
                   and cachekit without it
  --only GROUP,..  run only these scenario groups: hits, local, codecs, stampede,
                   writes, invalidation, hotkey, cluster
  --redis-url URL  use this Redis (default: REDIS_URL, else a private redis-server);
                   the run writes keys under `cachekit-bench` (a million in full mode)
                   and removes them at the end";

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let mut options = Options {
        progress: true,
        redis_url: std::env::var("REDIS_URL")
            .ok()
            .filter(|url| !url.is_empty()),
        ..Options::default()
    };
    let mut json: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--diagnostics" => options.diagnostics = true,
            "--json" => match args.next() {
                Some(file) => json = Some(file.into()),
                None => return usage("--json needs a file name"),
            },
            "--only" => match args.next() {
                Some(groups) => {
                    for group in groups.split(',') {
                        if !GROUPS.contains(&group) {
                            return usage(&format!("unknown scenario group `{group}`"));
                        }
                        options.only.push(group.to_owned());
                    }
                }
                None => return usage("--only needs a scenario group"),
            },
            "--redis-url" => match args.next() {
                Some(url) => options.redis_url = Some(url),
                None => return usage("--redis-url needs a URL"),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage(&format!("unknown argument `{other}`")),
        }
    }

    let report = match run(&options) {
        Ok(report) => report,
        Err(error) => {
            eprintln!("compare: {error}");
            return ExitCode::FAILURE;
        }
    };
    if report.profile == "debug" {
        eprintln!("compare: this is a debug build; run with --release for figures worth reading");
    }
    print!("{}", report.to_markdown());
    if let Some(path) = json {
        if let Err(error) = std::fs::write(&path, report.to_json()) {
            eprintln!("compare: cannot write {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("compare: wrote {}", path.display());
    }
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("compare: {problem}\n{USAGE}");
    ExitCode::from(2)
}
