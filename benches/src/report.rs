//! What a comparison run found: rows of figures with their ratios to raw redis-rs, printable as a
//! Markdown table and serializable as JSON.

use serde::Serialize;
use std::fmt::Write as _;

/// Everything one run of the comparison measured, and where.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// `"full"` or `"quick"`.
    pub mode: String,
    /// `"release"` or `"debug"`: figures from a debug build say little.
    pub profile: String,
    /// The machine and the server.
    pub machine: Machine,
    /// How much work each scenario did.
    pub settings: Settings,
    /// The figures, in the order printed.
    pub rows: Vec<Row>,
}

/// Where the run happened.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Machine {
    /// Logical CPUs available to the process.
    pub cpus: usize,
    /// The CPU model from `/proc/cpuinfo`, when there is one.
    pub cpu_model: Option<String>,
    /// The load averages (1, 5, 15 minutes) when the run started: other work on the machine.
    pub load_before: Option<String>,
    /// The load averages when the run ended.
    pub load_after: Option<String>,
    /// The Redis server's version (`INFO server`).
    pub redis_version: String,
    /// `"private redis-server"` (started by the runner) or `"external"` (`--redis-url` or
    /// `REDIS_URL`).
    pub redis: String,
}

/// The amount of work behind the figures.
#[derive(Debug, Clone, Serialize)]
#[non_exhaustive]
pub struct Settings {
    /// Interleaved rounds of the sequential-hit scenario.
    pub sequential_rounds: usize,
    /// Calls per contender per sequential round.
    pub sequential_calls: usize,
    /// Interleaved rounds of the concurrent-hit scenario.
    pub concurrent_rounds: usize,
    /// Tasks calling at once in the concurrent-hit scenario.
    pub concurrent_tasks: usize,
    /// How long each contender runs per concurrent round, in milliseconds.
    pub concurrent_round_ms: u64,
    /// Rounds of the stampede scenario.
    pub stampede_rounds: usize,
    /// Concurrent calls on one cold key per stampede.
    pub stampede_calls: usize,
    /// How long the stampede's loader takes, in milliseconds.
    pub stampede_load_ms: u64,
    /// Interleaved rounds of the invalidation scenario.
    pub invalidation_rounds: usize,
    /// Keys matching `users:*` per invalidation round.
    pub invalidation_matching: usize,
    /// Other keys in the database during invalidation.
    pub invalidation_others: usize,
    /// Size of the cached user record's JSON, in bytes: what cachekit and raw redis-rs store.
    pub record_bytes: usize,
    /// Size of the value the `cached` crate stores for the same record (MessagePack in a
    /// versioned envelope), in bytes.
    pub cached_crate_value_bytes: usize,
}

/// One figure.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Row {
    /// What was measured: `"sequential hit"`, `"concurrent hit"`, `"stampede"`...
    pub scenario: String,
    /// Who was measured: `"raw redis-rs"`, `"cachekit #[cached]"`...
    pub contender: String,
    /// Which figure: `"mean"`, `"p99"`, `"throughput"`, `"loader runs"`...
    pub figure: String,
    /// The unit of `value`: `"µs"`, `"ops/s"`, `"ms"`, `"runs"`, `"keys"`.
    pub unit: String,
    /// The figure over all rounds (samples pooled for latencies; the median round otherwise).
    pub value: f64,
    /// The median over rounds of this figure divided by the same figure of the scenario's raw
    /// redis-rs baseline in the same round. `None` when there is no baseline to divide by.
    pub ratio: Option<f64>,
    /// The per-round ratios the median was taken of.
    pub round_ratios: Vec<f64>,
}

impl Row {
    pub(crate) fn new(scenario: &str, contender: &str, figure: &str, unit: &str) -> Self {
        Self {
            scenario: scenario.into(),
            contender: contender.into(),
            figure: figure.into(),
            unit: unit.into(),
            value: 0.0,
            ratio: None,
            round_ratios: Vec::new(),
        }
    }
}

impl Report {
    /// The row of `scenario`, `contender` and `figure`, if the run produced it.
    pub fn row(&self, scenario: &str, contender: &str, figure: &str) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.scenario == scenario && r.contender == contender && r.figure == figure)
    }

    /// The report as pretty-printed JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }

    /// The header lines and the table, as Markdown.
    pub fn to_markdown(&self) -> String {
        let mut out = String::new();
        let m = &self.machine;
        let s = &self.settings;
        let _ = writeln!(
            out,
            "cachekit comparison, {} mode, {} build; {} CPUs ({}), load average {} before, {} \
             after; Redis {} ({})",
            self.mode,
            self.profile,
            m.cpus,
            m.cpu_model.as_deref().unwrap_or("unknown CPU"),
            m.load_before.as_deref().unwrap_or("unknown"),
            m.load_after.as_deref().unwrap_or("unknown"),
            m.redis_version,
            m.redis,
        );
        let _ = writeln!(
            out,
            "value: {} B JSON user record ({} B as the cached crate stores it); sequential: {} rounds x {} calls each, taking turns; concurrent: {} \
             rounds x {} ms, {} tasks; stampede: {} rounds x {} calls, loader {} ms; \
             invalidation: {} rounds, {} matching among {} other keys",
            s.record_bytes,
            s.cached_crate_value_bytes,
            s.sequential_rounds,
            s.sequential_calls,
            s.concurrent_rounds,
            s.concurrent_round_ms,
            s.concurrent_tasks,
            s.stampede_rounds,
            s.stampede_calls,
            s.stampede_load_ms,
            s.invalidation_rounds,
            s.invalidation_matching,
            s.invalidation_others,
        );
        out.push('\n');
        out.push_str(
            "| scenario | contender | figure | value | ratio to raw redis-rs (median) | per-round ratios (min-max) |\n",
        );
        out.push_str("|---|---|---|---:|---:|---:|\n");
        for row in &self.rows {
            let ratio = row.ratio.map_or_else(|| "-".to_string(), format_ratio);
            let range = match (
                row.round_ratios.iter().copied().reduce(f64::min),
                row.round_ratios.iter().copied().reduce(f64::max),
            ) {
                (Some(lo), Some(hi)) if row.round_ratios.len() > 1 => {
                    format!("{}-{}", format_ratio(lo), format_ratio(hi))
                }
                _ => "-".to_string(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} {} | {} | {} |",
                row.scenario,
                row.contender,
                row.figure,
                format_value(row.value),
                row.unit,
                ratio,
                range,
            );
        }
        out
    }
}

fn format_ratio(ratio: f64) -> String {
    if ratio != 0.0 && ratio.abs() < 0.01 {
        format!("{ratio:.4}")
    } else {
        format!("{ratio:.3}")
    }
}

fn format_value(value: f64) -> String {
    if value.fract() == 0.0 || value.abs() >= 1000.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}
