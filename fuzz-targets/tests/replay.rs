//! Replays every corpus entry and every kept crash of each fuzz target through its body, so plain
//! `cargo test` checks what the fuzzers found without libFuzzer (see fuzz/README.md).

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_file()).collect();
    out.sort();
    out
}

/// Runs `fuzz/corpus/<name>/*` and `fuzz/artifacts/<name>/*` through the target's body.
fn replay(name: &str) {
    let body = fuzz_targets::TARGETS.iter().find(|(n, _)| *n == name).map(|(_, b)| *b).expect("a known target");
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let corpus = files(&fuzz.join("corpus").join(name));
    assert!(!corpus.is_empty(), "fuzz/corpus/{name} is empty: seed it (fuzz/README.md)");
    let artifacts = files(&fuzz.join("artifacts").join(name));
    for path in corpus.iter().chain(&artifacts) {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        eprintln!("replaying {}", path.display());
        body(&data);
    }
}

#[test]
fn every_target_has_a_replay_test() {
    let names: Vec<&str> = fuzz_targets::TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, ["scan", "stream", "dropsonde", "json", "syslog", "query", "promql", "tls"]);
}

#[test]
fn scan() {
    replay("scan");
}

#[test]
fn stream() {
    replay("stream");
}

#[test]
fn dropsonde() {
    replay("dropsonde");
}

#[test]
fn json() {
    replay("json");
}

#[test]
fn syslog() {
    replay("syslog");
}

#[test]
fn query() {
    replay("query");
}

#[test]
fn promql() {
    replay("promql");
}

#[test]
fn tls() {
    replay("tls");
}
