//! Runs the comparison in quick mode, so that the runner cannot rot: every row is there and
//! every value is sane. Timings are never asserted.

use cachekit_benches::names::*;
use cachekit_benches::{Options, Report, run};

fn quick() -> Report {
    let options = Options {
        quick: true,
        redis_url: None, // always a private redis-server, never the environment's REDIS_URL
        progress: false,
        diagnostics: true,
        only: Vec::new(), // every scenario group
    };
    run(&options).expect("the quick comparison runs")
}

#[test]
fn quick_mode_reports_every_figure() {
    let report = quick();
    assert_eq!(report.mode, "quick");
    assert!(report.machine.cpus > 0);
    assert!(!report.machine.redis_version.is_empty());
    assert!((900..=1200).contains(&report.settings.record_bytes));

    let expect = |scenario: &str, contender: &str, figure: &str| {
        let row = report
            .row(scenario, contender, figure)
            .unwrap_or_else(|| panic!("no row {scenario} / {contender} / {figure}"));
        assert!(
            row.value.is_finite() && row.value > 0.0,
            "{scenario} / {contender} / {figure}: {}",
            row.value
        );
        row
    };
    let ratio = |scenario: &str, contender: &str, figure: &str| {
        let row = expect(scenario, contender, figure);
        let ratio = row.ratio.expect("a ratio to raw redis-rs");
        assert!(ratio.is_finite() && ratio > 0.0, "{row:?}");
        assert!(!row.round_ratios.is_empty(), "{row:?}");
        ratio
    };

    expect(CLOCK_SCENARIO, CLOCK, "per sample");
    let redis = [
        RAW,
        RAW_MANAGER,
        RAW_MANAGER_TIMEOUT,
        SERVICE_GET,
        SERVICE_GET_UNGUARDED,
        MACRO,
        CACHED_CRATE,
    ];
    for contender in redis {
        for figure in ["mean", "p50", "p99"] {
            ratio(SEQUENTIAL, contender, figure);
        }
        ratio(CONCURRENT, contender, "throughput");
        ratio(CONCURRENT, contender, "client CPU per call");
    }
    assert_eq!(ratio(SEQUENTIAL, RAW, "mean"), 1.0);
    for contender in [MEMORY_GET, MEMORY_MACRO, DECODE_ONLY] {
        for figure in ["mean", "p50", "p99"] {
            let row = expect(EMBEDDED, contender, figure);
            assert!(row.ratio.is_some_and(|r| r > 0.0), "{row:?}");
        }
    }
    assert!(report.settings.cached_crate_value_bytes > 0);
    for contender in [RAW, SERVICE_GET, MACRO] {
        ratio(CONCURRENT_SPREAD, contender, "throughput");
        ratio(CONCURRENT_SPREAD, contender, "client CPU per call");
    }
    ratio(CONCURRENT, TIER_USER, "throughput");
    ratio(CONCURRENT, TIER_USER, "client CPU per call");
    for contender in [MOKA_ARC, TIER_ARC, TIER_USER, TIER_MACRO, MEMORY_TIER_ARC] {
        for figure in ["mean", "p50", "p99"] {
            ratio(LOCAL, contender, figure);
        }
    }
    assert_eq!(ratio(LOCAL, MOKA_ARC, "mean"), 1.0);

    let calls = report.settings.stampede_calls as f64;
    for contender in [RAW_CACHE_ASIDE, MACRO, CACHED_CRATE] {
        let runs = expect(STAMPEDE, contender, "loader runs").value;
        assert!(
            (1.0..=calls).contains(&runs),
            "{contender}: {runs} loader runs"
        );
        ratio(STAMPEDE, contender, "time");
    }

    let matching = report.settings.invalidation_matching as f64;
    for contender in [
        RAW_SCAN,
        SERVICE_INVALIDATE,
        SERVICE_INVALIDATE_UNINDEXED,
        RAW_UNLINK_KNOWN,
    ] {
        ratio(INVALIDATION, contender, "time");
        assert_eq!(
            expect(INVALIDATION, contender, "keys removed").value,
            matching
        );
    }

    for contender in [SERVICE_SET_UNINDEXED, SERVICE_SET, RAW_SET, RAW_SET_FILED] {
        for figure in ["mean", "p50", "p99"] {
            ratio(SEQUENTIAL_WRITE, contender, figure);
        }
    }
    for contender in [SERVICE_FILL_UNINDEXED, SERVICE_FILL] {
        for figure in ["mean", "p50", "p99"] {
            ratio(SEQUENTIAL_FILL, contender, figure);
        }
    }
    let per_entry = expect(INDEX_MEMORY, INDEX_PER_ENTRY, "per entry").value;
    assert!(
        (10.0..1000.0).contains(&per_entry),
        "{per_entry} bytes per entry"
    );

    for contender in [REFRESH_OFF, REFRESH_ON, REFRESH_BACKGROUND] {
        // Misses may be none (refresh-ahead); loader runs never are in 3 TTLs.
        assert!(
            report
                .row(HOT_KEY, contender, "caller-visible misses")
                .is_some()
        );
        expect(HOT_KEY, contender, "loader runs");
        for figure in ["p50", "p99", "p99.9", "max"] {
            expect(HOT_KEY, contender, figure);
        }
    }

    // The table has a line per row; the JSON round-trips.
    let table = report.to_markdown();
    assert_eq!(
        table.lines().filter(|l| l.starts_with("| ")).count(),
        report.rows.len() + 1,
        "{table}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    std::fs::write(&path, report.to_json()).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), report.rows.len());
    assert_eq!(json["mode"], "quick");
}
