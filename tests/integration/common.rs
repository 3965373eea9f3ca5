//! Shared helpers: running the job in-process, reading its outputs, locating conformance data.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use ttpflow::rules::{self, LoadOptions};
use ttpflow::runtime::{self, RunOptions, Summary};

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Whether data a test needs must be there (`TTPFLOW_REQUIRE_CONFORMANCE=1`): then its
/// absence fails the test instead of skipping it.
pub fn data_required() -> bool {
    std::env::var("TTPFLOW_REQUIRE_CONFORMANCE").is_ok_and(|v| v == "1")
}

/// Skips (returns `None` after saying why) or, when the data is required, fails.
pub fn missing<T>(what: &str, path: &Path) -> Option<T> {
    assert!(!data_required(), "{what} needs {} (TTPFLOW_REQUIRE_CONFORMANCE=1)", path.display());
    println!("skipping {what}: {} not found", path.display());
    None
}

/// DECNET's conformance data (`TTPFLOW_CONFORMANCE_DIR`, else `../shared/conformance`),
/// or `None` after printing why the caller skips.
pub fn conformance(what: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("TTPFLOW_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("../shared/conformance"));
    if dir.join("decnet/rules").is_dir() {
        Some(dir)
    } else {
        missing(what, &dir.join("decnet/rules"))
    }
}

/// The output of one run.
pub struct Output {
    pub summary: Summary,
    pub tags: Vec<Value>,
    pub dead_letters: Vec<Value>,
    pub tags_text: String,
    pub dead_letters_text: String,
    pub rollups_text: String,
    _dir: tempfile::TempDir,
}

pub fn read_jsonl(path: &Path) -> (String, Vec<Value>) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let rows = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", path.display())))
        .collect();
    (text, rows)
}

/// Runs the embedded job over `inputs` with the pack in `rules_dir`.
pub fn run(rules_dir: &Path, inputs: &[PathBuf], workers: usize, epoch_records: u64) -> Output {
    run_with_artifacts(rules_dir, inputs, workers, epoch_records, None)
}

/// [`run`], reading stored email bodies from `artifacts_dir` when given.
pub fn run_with_artifacts(
    rules_dir: &Path,
    inputs: &[PathBuf],
    workers: usize,
    epoch_records: u64,
    artifacts_dir: Option<&Path>,
) -> Output {
    let loaded = rules::load(rules_dir, &LoadOptions::default()).expect("pack loads");
    let dir = tempfile::tempdir().expect("temp dir");
    let summary = runtime::run_files(RunOptions {
        inputs: inputs.to_vec(),
        out: dir.path().to_path_buf(),
        workers,
        epoch_records,
        pack: Arc::new(loaded.pack),
        artifacts_dir: artifacts_dir.map(Path::to_path_buf),
        postgres: None,
        sink_timeout: None,
        stage_times: None,
    })
    .expect("run succeeds");
    let (tags_text, tags) = read_jsonl(&dir.path().join("tags.jsonl"));
    let (dead_letters_text, dead_letters) = read_jsonl(&dir.path().join("dead_letters.jsonl"));
    let (rollups_text, _) = read_jsonl(&dir.path().join("rollups.jsonl"));
    Output { summary, tags, dead_letters, tags_text, dead_letters_text, rollups_text, _dir: dir }
}

/// Writes a pack of `(rule_id, yaml)` rules to `dir/rules` and returns its path.
pub fn write_pack(dir: &Path, rules: &[(&str, &str)]) -> PathBuf {
    let pack = dir.join("rules");
    std::fs::create_dir_all(&pack).expect("create the pack directory");
    for (rule_id, yaml) in rules {
        std::fs::write(pack.join(format!("{rule_id}.yaml")), yaml).expect("write a rule");
    }
    pack
}

/// Writes `lines` to a file in `dir` and returns its path.
pub fn write_input(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").expect("write input");
    path
}
