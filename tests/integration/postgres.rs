//! PostgreSQL sink: tables equal the JSONL outputs, idempotent migrations and reruns, kill -9 recovery, views, Navigator export.
//!
//! A throw-away server is started once per test binary from the installed PostgreSQL
//! binaries (`TTPFLOW_PG_BIN`, default `/usr/lib/postgresql/15/bin`), with its unix socket in
//! its own directory and no TCP listener; each test creates its own database. A watcher
//! process stops the server when the test binary exits, however it exits, and servers left
//! by an earlier binary that was killed are stopped at the next start.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use ttpflow::rules::{self, LoadOptions};
use ttpflow::runtime::{self, RunOptions, Summary};

use crate::common::{self, read_jsonl, root};

/// Where the servers of test binaries live, one directory per binary's process id.
const BASE: &str = "/tmp/ttpflow-pg-tests";

pub(crate) struct Server {
    socket_dir: PathBuf,
    port: u16,
    /// `pg_ctl`, the data directory, the server's options and log, and whether it runs as
    /// the `postgres` user: what stopping and starting it again take.
    pg_ctl: PathBuf,
    data: String,
    options: String,
    log: String,
    as_postgres: bool,
    /// Outlives this process on purpose, to stop the server after it.
    _watcher: std::process::Child,
}

impl Server {
    pub(crate) fn url(&self, db: &str) -> String {
        format!("host={} port={} user=postgres dbname={db}", self.socket_dir.display(), self.port)
    }

    /// Stops the server at once, as a crash or an outage would.
    pub(crate) fn stop(&self) {
        run_checked(
            pg_command(&self.pg_ctl, &["-D", &self.data, "stop", "-m", "immediate", "-w"], self.as_postgres),
            "pg_ctl stop",
        );
    }

    pub(crate) fn start(&self) {
        run_checked(
            pg_command(
                &self.pg_ctl,
                &["-D", &self.data, "-o", &self.options, "-l", &self.log, "-w", "start"],
                self.as_postgres,
            ),
            "pg_ctl start",
        );
    }
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Runs a PostgreSQL binary, as the `postgres` user when we are root (the server refuses root).
fn pg_command(bin: &Path, args: &[&str], as_postgres: bool) -> Command {
    let mut cmd = if as_postgres {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", "postgres", "--"]).arg(bin);
        cmd
    } else {
        Command::new(bin)
    };
    cmd.args(args).current_dir("/tmp").stdin(Stdio::null());
    cmd
}

fn run_checked(mut cmd: Command, what: &str) {
    let output = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Stops the servers of test binaries that are gone.
fn stop_stale(pg_ctl: &Path, as_postgres: bool) {
    let Ok(entries) = std::fs::read_dir(BASE) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let pid = name.to_str().and_then(|s| s.split('-').next()).and_then(|s| s.parse::<u32>().ok());
        let Some(pid) = pid else { continue };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let data = entry.path().join("data");
        if data.join("postmaster.pid").exists() {
            let data = data.display().to_string();
            let _ = pg_command(pg_ctl, &["-D", &data, "stop", "-m", "immediate", "-w"], as_postgres).output();
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

/// Starts a server of this test binary named `name` (`shared` for the one most tests use).
/// A server that is to be crashed keeps `synchronous_commit` on, so that a commit it has
/// acknowledged survives the crash (as in production); the others skip it, for speed.
pub(crate) fn start_server(name: &str, crashed: bool) -> Server {
    let bin = std::env::var_os("TTPFLOW_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"));
    let (initdb, pg_ctl) = (bin.join("initdb"), bin.join("pg_ctl"));
    assert!(
        initdb.exists() && pg_ctl.exists(),
        "the PostgreSQL tests need initdb and pg_ctl in {} (install postgresql-15, or set TTPFLOW_PG_BIN); \
         .ci/run installs them",
        bin.display()
    );
    let as_postgres = is_root();
    stop_stale(&pg_ctl, as_postgres);
    let dir = PathBuf::from(BASE).join(format!("{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the server directory");
    std::fs::set_permissions(BASE, std::os::unix::fs::PermissionsExt::from_mode(0o1777)).ok();
    if as_postgres {
        run_checked(
            {
                let mut cmd = Command::new("chown");
                cmd.arg("postgres:postgres").arg(&dir);
                cmd
            },
            "chown the server directory to postgres",
        );
    }
    let data = dir.join("data").display().to_string();
    run_checked(
        pg_command(&initdb, &["-D", &data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"], as_postgres),
        "initdb",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().unwrap().port();
    let options = format!(
        "-k {} -p {port} -c listen_addresses='' -c fsync=off -c synchronous_commit={} -c full_page_writes=off",
        dir.display(),
        if crashed { "on" } else { "off" }
    );
    let log = dir.join("server.log").display().to_string();
    run_checked(
        pg_command(&pg_ctl, &["-D", &data, "-o", &options, "-l", &log, "-w", "start"], as_postgres),
        "pg_ctl start",
    );
    // Stop the server when this process ends, whether it returns, panics or is killed.
    let stop = pg_command(&pg_ctl, &["-D", &data, "stop", "-m", "immediate", "-w"], as_postgres);
    let stop_line = format!(
        "{} {}",
        stop.get_program().to_string_lossy(),
        stop.get_args().map(|a| format!("'{}'", a.to_string_lossy())).collect::<Vec<_>>().join(" ")
    );
    let watcher = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; cd /tmp; {stop_line} >/dev/null 2>&1; rm -rf '{dir}'",
        pid = std::process::id(),
        dir = dir.display()
    );
    let watcher = Command::new("sh")
        .args(["-c", &watcher])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the server's watcher");
    Server { socket_dir: dir, port, pg_ctl, data, options, log, as_postgres, _watcher: watcher }
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| start_server("shared", false))
}

pub(crate) fn url(db: &str) -> String {
    server().url(db)
}

/// A fresh database named `name`.
pub(crate) fn database(name: &str) -> String {
    let mut admin = ttpflow::postgres::connect(&url("postgres")).expect("connect to the test server");
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).expect("drop database");
    admin.batch_execute(&format!("CREATE DATABASE {name}")).expect("create database");
    url(name)
}

pub(crate) fn client(url: &str) -> postgres::Client {
    ttpflow::postgres::connect(url).expect("connect")
}

/// What an in-process run with `--postgres` wrote besides the database.
struct PgRun {
    summary: Summary,
    /// tags.jsonl
    tags: Vec<Value>,
    /// rollups.jsonl
    rollups: Vec<Value>,
    /// dead_letters.jsonl
    dead_letters: Vec<Value>,
}

/// Runs the job in-process with `--postgres url`.
fn run_pg(rules_dir: &Path, inputs: &[PathBuf], epoch_records: u64, url: &str) -> PgRun {
    let loaded = rules::load(rules_dir, &LoadOptions::default()).expect("pack loads");
    let dir = tempfile::tempdir().expect("temp dir");
    let summary = runtime::run_files(RunOptions {
        inputs: inputs.to_vec(),
        out: dir.path().to_path_buf(),
        workers: 1,
        epoch_records,
        pack: std::sync::Arc::new(loaded.pack),
        artifacts_dir: None,
        postgres: Some(url.to_string()),
        sink_timeout: None,
        stage_times: None,
    })
    .expect("run succeeds");
    let tags = read_jsonl(&dir.path().join("tags.jsonl")).1;
    let dead_letters = read_jsonl(&dir.path().join("dead_letters.jsonl")).1;
    PgRun { summary, tags, rollups: read_jsonl(&dir.path().join("rollups.jsonl")).1, dead_letters }
}

/// `ttp_tag` as tags.jsonl objects by uuid (without `created_at`).
pub(crate) fn stored_tags(url: &str) -> BTreeMap<String, Value> {
    let rows = client(url)
        .query(
            "SELECT uuid::text, source_kind, source_id, attacker_uuid, identity_uuid, session_id, decky_id, tactic, \
             technique_id, sub_technique_id, confidence, rule_id, rule_version, evidence::text, attack_release, \
             to_char(observed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM ttp_tag",
            &[],
        )
        .expect("read ttp_tag");
    rows.iter()
        .map(|r| {
            let evidence: String = r.get(13);
            let tag = json!({
                "uuid": r.get::<_, String>(0),
                "source_kind": r.get::<_, String>(1),
                "source_id": r.get::<_, String>(2),
                "attacker_uuid": r.get::<_, Option<String>>(3),
                "identity_uuid": r.get::<_, Option<String>>(4),
                "session_id": r.get::<_, Option<String>>(5),
                "decky_id": r.get::<_, Option<String>>(6),
                "tactic": r.get::<_, String>(7),
                "technique_id": r.get::<_, String>(8),
                "sub_technique_id": r.get::<_, Option<String>>(9),
                "confidence": r.get::<_, f64>(10),
                "rule_id": r.get::<_, String>(11),
                "rule_version": r.get::<_, i32>(12),
                "evidence": serde_json::from_str::<Value>(&evidence).expect("evidence is JSON"),
                "attack_release": r.get::<_, String>(14),
                "observed_at": r.get::<_, Option<String>>(15),
            });
            (r.get(0), tag)
        })
        .collect()
}

/// A rollup row's key as text: scope kind, scope id, technique, sub-technique, tactic.
fn rollup_key(row: &Value) -> String {
    ["scope_kind", "scope_id", "technique_id", "sub_technique_id", "tactic"]
        .iter()
        .map(|field| row[field].as_str().unwrap_or_else(|| panic!("{field} of {row}")))
        .collect::<Vec<_>>()
        .join("|")
}

/// `ttp_rollup` as rollups.jsonl objects by key (timestamps as rollups.jsonl writes them).
pub(crate) fn stored_rollups(url: &str) -> BTreeMap<String, Value> {
    let rows = client(url)
        .query(
            "SELECT scope_kind, scope_id, technique_id, sub_technique_id, tactic, tag_count, attacker_count, \
             identity_count, to_char(first_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
             to_char(last_seen AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), confidence_max \
             FROM ttp_rollup",
            &[],
        )
        .expect("read ttp_rollup");
    rows.iter()
        .map(|r| {
            let row = json!({
                "scope_kind": r.get::<_, String>(0),
                "scope_id": r.get::<_, String>(1),
                "technique_id": r.get::<_, String>(2),
                "sub_technique_id": r.get::<_, String>(3),
                "tactic": r.get::<_, String>(4),
                "tag_count": r.get::<_, i64>(5),
                "attacker_count": r.get::<_, i64>(6),
                "identity_count": r.get::<_, i64>(7),
                "first_seen": r.get::<_, Option<String>>(8),
                "last_seen": r.get::<_, Option<String>>(9),
                "confidence_max": r.get::<_, f64>(10),
            });
            (rollup_key(&row), row)
        })
        .collect()
}

/// Compares two rollup rows field by field (confidence within float parsing error).
pub(crate) fn assert_same_rollup(stored: &Value, written: &Value, what: &str) {
    let key = rollup_key(written);
    let (a, b) = (stored["confidence_max"].as_f64().unwrap(), written["confidence_max"].as_f64().unwrap());
    assert!((a - b).abs() < 1e-12, "{what}: confidence_max of {key}: {a} != {b}");
    let without = |v: &Value| {
        let mut v = v.clone();
        v.as_object_mut().unwrap().remove("confidence_max");
        v
    };
    assert_eq!(without(stored), without(written), "{what}: ttp_rollup row {key} differs");
}

fn assert_same_rollups(stored: &BTreeMap<String, Value>, rollups: &[Value], what: &str) {
    let written: BTreeMap<String, &Value> = rollups.iter().map(|r| (rollup_key(r), r)).collect();
    assert_eq!(written.len(), rollups.len(), "{what}: rollups.jsonl repeats a key");
    let missing: Vec<&String> = written.keys().filter(|k| !stored.contains_key(*k)).take(5).collect();
    let extra: Vec<&String> = stored.keys().filter(|k| !written.contains_key(*k)).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{what}: keys missing from ttp_rollup {missing:?}, extra {extra:?}"
    );
    for (key, row) in &written {
        assert_same_rollup(&stored[key], row, what);
    }
}

/// Every row of `ttp_tag`, `ttp_rollup` and `ttp_progress` as text, with its `created_at` and
/// its transaction id (which an update would change).
fn raw_rows(url: &str) -> Vec<String> {
    let mut rows: Vec<String> = client(url)
        .query(
            "SELECT 'tag ' || xmin::text || ' ' || t::text FROM ttp_tag t \
             UNION ALL SELECT 'rollup ' || xmin::text || ' ' || r::text FROM ttp_rollup r \
             UNION ALL SELECT 'progress ' || xmin::text || ' ' || p::text FROM ttp_progress p \
             UNION ALL SELECT 'job ' || xmin::text || ' ' || j::text FROM ttp_job j",
            &[],
        )
        .expect("read the tables")
        .iter()
        .map(|r| r.get(0))
        .collect();
    rows.sort();
    rows
}

fn progress(url: &str) -> BTreeMap<String, i64> {
    client(url)
        .query("SELECT input, next_offset FROM ttp_progress WHERE partition = 0", &[])
        .expect("read ttp_progress")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

fn line_counts(inputs: &[PathBuf]) -> BTreeMap<String, i64> {
    inputs
        .iter()
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            (ttpflow::postgres::input_name(p), text.lines().count() as i64)
        })
        .collect()
}

/// The bundled example, and DECNET's dev corpus when the conformance data is there.
fn corpora(dir: &Path) -> Vec<(&'static str, PathBuf, Vec<PathBuf>)> {
    let mut cases = vec![("fleet", root().join("rules"), vec![root().join("examples/fleet.jsonl")])];
    if let Some(conf) = common::conformance("the dev corpus part of the postgres tests") {
        let events =
            crate::regression::gunzip_to(&conf.join("corpus/dev_events.jsonl.gz"), &dir.join("dev_events.jsonl"));
        cases.push(("dev", conf.join("decnet/rules"), vec![conf.join("corpus/dev_tables.jsonl"), events]));
    }
    cases
}

fn assert_same_tags(stored: &BTreeMap<String, Value>, tags: &[Value], what: &str) {
    assert_eq!(stored.len(), tags.len(), "{what}: ttp_tag and tags.jsonl have different row counts");
    for tag in tags {
        let uuid = tag["uuid"].as_str().unwrap();
        let row = stored.get(uuid).unwrap_or_else(|| panic!("{what}: tag {uuid} missing from ttp_tag"));
        // serde_json's default float parser may be one unit in the last place off.
        let (stored, written) = (row["confidence"].as_f64().unwrap(), tag["confidence"].as_f64().unwrap());
        assert!((stored - written).abs() < 1e-12, "{what}: confidence of {uuid}: {stored} != {written}");
        let without = |v: &Value| {
            let mut v = v.clone();
            v.as_object_mut().unwrap().remove("confidence");
            v
        };
        assert_eq!(without(row), without(tag), "{what}: ttp_tag row differs from tags.jsonl");
    }
}

#[test]
fn stored_tags_rollups_and_progress_equal_the_jsonl_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for (name, rules_dir, inputs) in corpora(dir.path()) {
        let url = database(&format!("equal_{name}"));
        let started = Instant::now();
        // The example is small: small epochs, so its rows change across epochs too.
        let epoch_records = if name == "fleet" { 4 } else { 256 };
        let PgRun { summary, tags, rollups, .. } = run_pg(&rules_dir, &inputs, epoch_records, &url);
        let stats = summary.postgres.expect("sink stats");
        println!(
            "{name}: {} tags and {} rollup upserts, {} deletes in {} epochs, sink {:.0} rows/s ({:?} committing), \
             run {:?}",
            stats.rows_inserted,
            stats.rollups_upserted,
            stats.rollups_deleted,
            stats.epochs_committed,
            stats.rows_per_second(),
            stats.elapsed,
            started.elapsed()
        );
        assert!(!tags.is_empty(), "{name}: the corpus yields tags");
        assert_eq!(stats.rows_inserted, tags.len() as u64, "{name}");
        assert_eq!(stats.epochs_skipped, 0, "{name}: a fresh database skips nothing");
        assert_same_tags(&stored_tags(&url), &tags, name);
        assert!(!rollups.is_empty(), "{name}: the corpus yields rollup rows");
        assert!(stats.rollups_upserted > rollups.len() as u64, "{name}: rows are updated across epochs");
        if name == "dev" {
            assert!(stats.rollups_deleted > 0, "{name}: the corpus's merges take identity rows away");
        }
        assert_same_rollups(&stored_rollups(&url), &rollups, name);
        assert_eq!(progress(&url), line_counts(&inputs), "{name}: progress is the line count of every input");
    }
}

#[test]
fn records_postgresql_cannot_store_as_given_do_not_stop_the_sink() {
    let dir = tempfile::tempdir().unwrap();
    let rules = crate::common::write_pack(dir.path(), &[(
        "N0001",
        "rule_id: N0001\nrule_version: 1\nname: os_release\napplies_to: [command]\nmatch: {pattern: 'os-release'}\nemits:\n  - {tactic: TA0007, technique_id: T1082, confidence: 0.6}\nevidence_fields: [command_text]\n",
    )]);
    let lines = [
        r#"{"topic":"decnet.attackers","key":"a-1","value":{"uuid":"a-1","ip":"192.0.2.1"}}"#,
        // A NUL in evidence, in session and decky ids; a time before 4713 BC; then good records.
        r#"{"topic":"attacker.session.ended","type":"session.ended","payload":{"attacker_uuid":"a-1","session_id":"s-1","commands":["cat /etc/os-release; echo \u0000"]}}"#,
        r#"{"topic":"attacker.session.ended","type":"session.ended","payload":{"attacker_uuid":"a-1","session_id":"s-\u0000","decky_id":"d\u0000","commands":["cat /etc/os-release"]}}"#,
        r#"{"topic":"attacker.session.ended","type":"session.ended","payload":{"attacker_uuid":"a-1","session_id":"s-3","ended_at":-220000000000,"commands":["cat /etc/os-release"]}}"#,
        r#"{"topic":"attacker.session.ended","type":"session.ended","payload":{"attacker_uuid":"a-1","session_id":"s-4","ended_at":"9999-12-31T23:59:59Z","commands":["cat /etc/os-release"]}}"#,
        r#"{"topic":"attacker.session.ended","type":"session.ended","payload":{"attacker_uuid":"a-1","session_id":"s-5","commands":["uname -a; cat /etc/os-release"]}}"#,
    ];
    // An id longer than an index row holds (random, so that PostgreSQL cannot compress it).
    let mut seed = 7u64;
    let long_id: String = (0..3000)
        .map(|_| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            char::from(b'a' + (seed >> 59) as u8 % 26)
        })
        .collect();
    let long = format!(
        r#"{{"topic":"attacker.session.ended","type":"session.ended","payload":{{"attacker_uuid":"a-1","session_id":"{long_id}","commands":["cat /etc/os-release"]}}}}"#
    );
    let lines: Vec<&str> = lines.iter().copied().chain([long.as_str()]).collect();
    let input = crate::common::write_input(dir.path(), "hostile.jsonl", &lines);
    let url = database("hostile_values");
    let PgRun { tags, rollups, dead_letters, .. } = run_pg(&rules, std::slice::from_ref(&input), 1, &url);
    let reasons: Vec<(&str, i64)> =
        dead_letters.iter().map(|d| (d["reason"].as_str().unwrap(), d["line"].as_i64().unwrap())).collect();
    assert_eq!(reasons, [("wrong_type", 4), ("oversize", 7)], "{dead_letters:?}");
    let sessions: BTreeSet<&str> = tags.iter().filter_map(|t| t["session_id"].as_str()).collect();
    assert_eq!(sessions, BTreeSet::from(["s-1", "s-\u{FFFD}", "s-4", "s-5"]), "the time out of range is a dead letter");
    assert!(tags.iter().any(|t| t["evidence"]["command_text"] == "cat /etc/os-release; echo \u{FFFD}"));
    assert_same_tags(&stored_tags(&url), &tags, "hostile values");
    assert_same_rollups(&stored_rollups(&url), &rollups, "hostile values");
    assert_eq!(progress(&url), line_counts(std::slice::from_ref(&input)), "every record is committed");
}

/// A row the server refuses (here for a CHECK constraint a site added) is left out as a
/// `sink_rejected` dead letter with the server's message; every other row is stored and
/// the run goes on to the end.
#[test]
fn a_tag_the_server_refuses_is_a_dead_letter_and_the_run_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let rules = crate::common::write_pack(dir.path(), &[(
        "N0001",
        "rule_id: N0001\nrule_version: 1\nname: os_release\napplies_to: [command]\nmatch: {pattern: 'os-release'}\nemits:\n  - {tactic: TA0007, technique_id: T1082, confidence: 0.6}\nevidence_fields: [command_text]\n",
    )]);
    let session = |id: &str| {
        format!(
            r#"{{"topic":"attacker.session.ended","type":"session.ended","payload":{{"attacker_uuid":"a-1","session_id":"{id}","commands":["cat /etc/os-release"]}}}}"#
        )
    };
    let lines = [
        r#"{"topic":"decnet.attackers","key":"a-1","value":{"uuid":"a-1","ip":"192.0.2.1"}}"#.to_string(),
        session("s-1"),
        session("s-poison"),
        session("s-3"),
        session("s-4"),
        session("s-5"),
    ];
    let input =
        crate::common::write_input(dir.path(), "refused.jsonl", &lines.iter().map(String::as_str).collect::<Vec<_>>());
    let url = database("refused_rows");
    let mut admin = client(&url);
    ttpflow::postgres::migrate(&mut admin).expect("migrate");
    admin
        .batch_execute(
            "ALTER TABLE ttp_tag ADD CONSTRAINT site_no_poison CHECK (session_id IS DISTINCT FROM 's-poison')",
        )
        .unwrap();
    let PgRun { tags, dead_letters, .. } = run_pg(&rules, std::slice::from_ref(&input), 4, &url);
    assert_eq!(tags.len(), 5, "tags.jsonl has every tag");
    let stored: BTreeSet<String> =
        stored_tags(&url).values().map(|t| t["session_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(
        stored,
        ["s-1", "s-3", "s-4", "s-5"].map(String::from).into(),
        "the rest of the epoch and the next are stored"
    );
    assert_eq!(dead_letters.len(), 1, "{dead_letters:?}");
    let letter = &dead_letters[0];
    assert_eq!((letter["reason"].as_str(), letter["line"].as_i64()), (Some("sink_rejected"), Some(3)));
    let detail = letter["detail"].as_str().unwrap();
    assert!(detail.contains("23514") && detail.contains("site_no_poison") && detail.contains("N0001"), "{detail}");
    assert_eq!(progress(&url), line_counts(std::slice::from_ref(&input)), "every record is committed");
}

/// Progress is stored under an input's canonical path: a rerun that names the same file
/// another way resumes (progress a run stored under the literal path is renamed), and a
/// run over other files is refused with what to do.
#[test]
fn a_rerun_naming_the_inputs_another_way_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let rules = crate::common::write_pack(dir.path(), &[(
        "N0001",
        "rule_id: N0001\nrule_version: 1\nname: os_release\napplies_to: [command]\nmatch: {pattern: 'os-release'}\nemits:\n  - {tactic: TA0007, technique_id: T1082, confidence: 0.6}\nevidence_fields: [command_text]\n",
    )]);
    std::fs::create_dir_all(dir.path().join("sub")).unwrap();
    let lines = [
        r#"{"topic":"decnet.attackers","key":"a-1","value":{"uuid":"a-1","ip":"192.0.2.1"}}"#,
        r#"{"topic":"attacker.session.ended","type":"session.ended","payload":{"attacker_uuid":"a-1","session_id":"s-1","commands":["cat /etc/os-release"]}}"#,
    ];
    let input = crate::common::write_input(dir.path(), "events.jsonl", &lines);
    let url = database("input_names");
    let first = run_pg(&rules, std::slice::from_ref(&input), 1, &url);
    let first = first.summary.postgres.unwrap();
    assert!(first.epochs_committed > 0);
    assert_eq!(progress(&url), line_counts(std::slice::from_ref(&input)));
    // The same file through another path: everything is covered already.
    let other = dir.path().join("sub/../events.jsonl");
    let second = run_pg(&rules, std::slice::from_ref(&other), 1, &url);
    let stats = second.summary.postgres.unwrap();
    assert_eq!((stats.epochs_committed, stats.epochs_skipped), (0, first.epochs_committed), "the rerun resumes");
    // Progress stored under a literal path (as runs before canonical names did) is renamed.
    client(&url).execute("UPDATE ttp_progress SET input = $1", &[&other.display().to_string()]).unwrap();
    let third = run_pg(&rules, std::slice::from_ref(&input), 1, &url);
    assert_eq!(third.summary.postgres.unwrap().epochs_committed, 0);
    assert_eq!(progress(&url), line_counts(std::slice::from_ref(&input)), "renamed to the canonical path");
    // Another file: refused, saying what to do.
    let elsewhere = crate::common::write_input(dir.path(), "other.jsonl", &lines);
    let loaded = rules::load(&rules, &LoadOptions::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let refused = runtime::run_files(RunOptions {
        inputs: vec![elsewhere],
        out: out.path().to_path_buf(),
        workers: 1,
        epoch_records: 1,
        pack: std::sync::Arc::new(loaded.pack),
        artifacts_dir: None,
        postgres: Some(url.clone()),
        sink_timeout: None,
        stage_times: None,
    });
    let error = refused.expect_err("refused");
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    assert!(
        message.contains("events.jsonl") && message.contains("give the inputs of the run that stored it"),
        "{message}"
    );
}

#[test]
fn migrations_apply_once() {
    let url = database("migrations");
    let mut c = client(&url);
    let all: Vec<i32> = ttpflow::postgres::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(ttpflow::postgres::migrate(&mut c).unwrap(), all, "a fresh database gets every migration");
    assert_eq!(ttpflow::postgres::migrate(&mut c).unwrap(), Vec::<i32>::new(), "a second start applies nothing");
    let versions: Vec<i32> = c
        .query("SELECT version FROM ttpflow_migrations ORDER BY version", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(versions, all);
    // A run on the migrated database applies nothing either.
    let run = run_pg(&root().join("rules"), &[root().join("examples/fleet.jsonl")], 4, &url);
    assert!(!run.tags.is_empty());
    let count: i64 = c.query_one("SELECT count(*) FROM ttpflow_migrations", &[]).unwrap().get(0);
    assert_eq!(count, all.len() as i64);
}

#[test]
fn rule_states_are_read_from_ttp_rule_state_and_applied_by_the_watcher() {
    use ttpflow::reload::{Reload, RuleWatcher};
    use ttpflow_dataflows::rules::{RuleState, StateMode};
    let url = database("rule_states");
    let mut c = client(&url);
    ttpflow::postgres::migrate(&mut c).expect("migrate");
    c.batch_execute(
        "INSERT INTO ttp_rule_state (rule_id, state, confidence_max, expires_at, reason, set_by) VALUES
             ('TF0001', 'disabled', NULL, NULL, 'noisy on the staging fleet', 'analyst'),
             ('TF0002', 'clipped', 0.5, now() + interval '1 hour', 'under review', 'analyst'),
             ('TF0003', 'enabled', NULL, '2000-01-01T00:00:00Z', NULL, NULL),
             ('TF9999', 'clipped', 0.4, 'infinity', NULL, NULL)",
    )
    .expect("insert rule states");
    assert!(
        c.execute("INSERT INTO ttp_rule_state (rule_id, state) VALUES ('TF0004', 'paused')", &[]).is_err(),
        "the table holds the three states only"
    );
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    let states = ttpflow::postgres::read_rule_states(&mut c, now).expect("read the rule states");
    let state = |mode, confidence_max, expired| RuleState { mode, confidence_max, expired };
    assert_eq!(
        states.into_iter().collect::<Vec<_>>(),
        [
            ("TF0001".to_string(), state(StateMode::Disabled, None, false)),
            ("TF0002".to_string(), state(StateMode::Clipped, Some(0.5), false)),
            ("TF0003".to_string(), state(StateMode::Enabled, None, true)),
            ("TF9999".to_string(), state(StateMode::Clipped, Some(0.4), false)),
        ]
    );
    let mut watcher = RuleWatcher::new(root().join("rules"), LoadOptions::default()).expect("the pack loads");
    watcher.set_states(ttpflow::postgres::read_rule_states(&mut c, now).unwrap());
    let Reload::Swapped { pack, .. } = watcher.poll(now) else { panic!("new states swap") };
    let rule = |id: &str| pack.rules().iter().find(|r| r.rule_id == id).unwrap().state.clone();
    assert!(!rule("TF0001").is_active() && !rule("TF0003").is_active(), "disabled, expired");
    assert_eq!(rule("TF0002").apply_ceiling(0.95), 0.5);
    assert_eq!(rule("TF0004"), RuleState::default());
}

#[test]
fn a_second_run_commits_nothing_and_changes_no_row() {
    let dir = tempfile::tempdir().unwrap();
    let (name, rules_dir, inputs) = corpora(dir.path()).pop().unwrap();
    let url = database("rerun");
    let first = run_pg(&rules_dir, &inputs, 500, &url).summary;
    let before = raw_rows(&url);
    assert!(before.iter().any(|row| row.starts_with("rollup ")), "{name}: the first run stores rollup rows");
    let PgRun { summary: second, tags, rollups, .. } = run_pg(&rules_dir, &inputs, 500, &url);
    let (first, second) = (first.postgres.unwrap(), second.postgres.unwrap());
    assert!(first.epochs_committed > 0);
    assert_eq!(second.epochs_committed, 0, "{name}: every epoch is covered by the stored progress");
    assert_eq!(second.epochs_skipped, first.epochs_committed + first.epochs_skipped);
    assert_eq!(second.rows_inserted, 0);
    assert_eq!((second.rollups_upserted, second.rollups_deleted), (0, 0), "{name}: skipped epochs apply no rollups");
    assert!(before == raw_rows(&url), "{name}: the rerun changed rows");
    assert_same_tags(&stored_tags(&url), &tags, name);
    assert_same_rollups(&stored_rollups(&url), &rollups, name);
    // Progress that no epoch of 7 records ends at (as if left by a run with another epoch
    // size) is refused.
    let first_input = ttpflow::postgres::input_name(&inputs[0]);
    let at: i64 = if line_counts(&inputs)[&first_input] >= 500 { 500 } else { 10 };
    let mut c = client(&url);
    c.execute(
        "UPDATE ttp_progress SET next_offset = CASE WHEN input = $1 THEN $2::bigint ELSE 0 END",
        &[&first_input, &at],
    )
    .unwrap();
    let before = raw_rows(&url);
    let loaded = rules::load(&rules_dir, &LoadOptions::default()).unwrap();
    let out = tempfile::tempdir().unwrap();
    let refused = runtime::run_files(RunOptions {
        inputs: inputs.clone(),
        out: out.path().to_path_buf(),
        workers: 1,
        epoch_records: 7,
        pack: std::sync::Arc::new(loaded.pack),
        artifacts_dir: None,
        postgres: Some(url.clone()),
        sink_timeout: None,
        stage_times: None,
    });
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    let names_it = message.contains(&format!(": {at},")) || message.contains(&format!(": {at})"));
    assert!(message.contains("not on an epoch boundary") && names_it, "{message}");
    assert!(before == raw_rows(&url), "{name}: a refused run changes nothing");
}

/// A small pseudo-random number from the clock (the moments of the kills).
pub(crate) fn jitter(bound: u64) -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
    (nanos.wrapping_mul(6364136223846793005) >> 20) % bound.max(1)
}

fn ttpflow_command(rules_dir: &Path, inputs: &[PathBuf], out: &Path, url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ttpflow"));
    cmd.arg("run").arg("--rules").arg(rules_dir).arg("--out").arg(out).args(["--epoch-records", "100"]);
    for input in inputs {
        cmd.arg("--input").arg(input);
    }
    cmd.env("TTPFLOW_POSTGRES", url).env("TTPFLOW_LOG", "warn").stdin(Stdio::null()).stdout(Stdio::null());
    cmd
}

#[test]
fn kill_9_and_rerun_give_the_tables_of_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (name, rules_dir, inputs) = corpora(dir.path()).pop().unwrap();
    let inputs = if name == "fleet" {
        // Without the dev corpus: a larger input from the example, with its sessions renamed
        // per copy so every copy yields its own tags.
        let text = std::fs::read_to_string(&inputs[0]).unwrap();
        let big: String =
            (0..400).map(|i| text.replace("\"session_id\":\"", &format!("\"session_id\":\"c{i}-"))).collect();
        let path = dir.path().join("big.jsonl");
        std::fs::write(&path, big).unwrap();
        vec![path]
    } else {
        inputs
    };
    let whole = database("kill_whole");
    let out = dir.path().join("out");
    let started = Instant::now();
    let status = ttpflow_command(&rules_dir, &inputs, &out, &whole).status().expect("ttpflow runs");
    assert!(status.success());
    let duration = started.elapsed();

    let killed = database("kill_killed");
    ttpflow::postgres::migrate(&mut client(&killed)).expect("migrate");
    let mut partial = Vec::new();
    for _ in 0..4 {
        let mut child = ttpflow_command(&rules_dir, &inputs, &out, &killed).spawn().expect("ttpflow starts");
        std::thread::sleep(Duration::from_millis(jitter(duration.as_millis() as u64 * 3 / 4)));
        // SIGKILL; a child that has finished already is still there to be killed (unreaped).
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        partial.push(progress(&killed).values().sum::<i64>());
    }
    println!("{name}: uninterrupted run {duration:?}; stored progress after each kill: {partial:?}");
    let status = ttpflow_command(&rules_dir, &inputs, &out, &killed).status().expect("ttpflow runs");
    assert!(status.success());
    assert_eq!(progress(&killed), progress(&whole));
    assert_eq!(progress(&killed), line_counts(&inputs));
    let (want, got) = (stored_tags(&whole), stored_tags(&killed));
    assert_eq!(want.len(), got.len(), "{name}: row counts after the kills");
    assert!(want == got, "{name}: ttp_tag after kill -9 and rerun differs from an uninterrupted run");
    let (want, got) = (stored_rollups(&whole), stored_rollups(&killed));
    assert!(!want.is_empty());
    assert_eq!(want.len(), got.len(), "{name}: ttp_rollup row counts after the kills");
    for (key, row) in &want {
        let other = got.get(key).unwrap_or_else(|| panic!("{name}: rollup {key} missing after the kills"));
        assert_same_rollup(other, row, &format!("{name} after kill -9 and rerun"));
    }
    // The last run wrote rollups.jsonl from the whole input, as the uninterrupted one did.
    assert_same_rollups(&got, &read_jsonl(&out.join("rollups.jsonl")).1, name);
}

/// A run that meets a PostgreSQL outage waits it out and stores what an uninterrupted run
/// does; with `--sink-timeout` it gives up instead, with the reason.
#[test]
fn a_file_run_waits_out_an_outage_of_postgresql() {
    let dir = tempfile::tempdir().unwrap();
    let rules = crate::common::write_pack(dir.path(), &[(
        "N0001",
        "rule_id: N0001\nrule_version: 1\nname: os_release\napplies_to: [command]\nmatch: {pattern: 'os-release'}\nemits:\n  - {tactic: TA0007, technique_id: T1082, confidence: 0.6}\nevidence_fields: [command_text]\n",
    )]);
    let mut lines =
        vec![r#"{"topic":"decnet.attackers","key":"a-1","value":{"uuid":"a-1","ip":"192.0.2.1"}}"#.to_string()];
    lines.extend((0..59).map(|i| {
        format!(
            r#"{{"topic":"attacker.session.ended","type":"session.ended","payload":{{"attacker_uuid":"a-1","session_id":"s-{i}","commands":["cat /etc/os-release"]}}}}"#
        )
    }));
    let whole_input =
        crate::common::write_input(dir.path(), "outage.jsonl", &lines.iter().map(String::as_str).collect::<Vec<_>>());
    let whole = database("outage_whole");
    let status = Command::new(env!("CARGO_BIN_EXE_ttpflow"))
        .args(["run", "--epoch-records", "10", "--input", "-"])
        .arg("--rules")
        .arg(&rules)
        .arg("--out")
        .arg(dir.path().join("whole"))
        .env("TTPFLOW_POSTGRES", &whole)
        .stdin(std::fs::File::open(&whole_input).unwrap())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());

    let private = start_server("outage", true);
    let url = {
        let mut admin = ttpflow::postgres::connect(&private.url("postgres")).expect("connect to the private server");
        admin.batch_execute("CREATE DATABASE outage").expect("create database");
        private.url("outage")
    };
    let log = dir.path().join("outage.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ttpflow"))
        .args(["run", "--epoch-records", "10", "--input", "-"])
        .arg("--rules")
        .arg(&rules)
        .arg("--out")
        .arg(dir.path().join("out"))
        .env("TTPFLOW_POSTGRES", &url)
        .env("TTPFLOW_LOG", "info")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("ttpflow starts");
    let mut stdin = child.stdin.take().unwrap();
    let mut feed = |part: &[String]| {
        use std::io::Write as _;
        for line in part {
            writeln!(stdin, "{line}").unwrap();
        }
        stdin.flush().unwrap();
    };
    feed(&lines[..20]);
    std::thread::sleep(Duration::from_millis(500));
    private.stop();
    // The next epochs find no server: well past the six attempts (3.2 s) of old.
    feed(&lines[20..40]);
    std::thread::sleep(Duration::from_secs(5));
    assert!(child.try_wait().unwrap().is_none(), "the run waits: {}", std::fs::read_to_string(&log).unwrap());
    private.start();
    feed(&lines[40..]);
    drop(stdin);
    let status = child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(text.contains("postgres unavailable, retrying until it is back"), "the outage is logged: {text}");
    assert!(text.contains("postgres is back"), "the recovery is logged: {text}");
    assert_eq!(progress(&url), progress(&whole));
    let (got, want) = (stored_tags(&url), stored_tags(&whole));
    assert!(got == want, "the tags of an uninterrupted run: {:?}", got.iter().zip(&want).find(|(a, b)| a != b));
    assert!(stored_rollups(&url) == stored_rollups(&whole), "the rollups of an uninterrupted run");
    assert_eq!(stored_tags(&url).len(), 59);

    // With a sink timeout, an outage ends the run, with the reason.
    private.stop();
    let started = Instant::now();
    let output = Command::new(env!("CARGO_BIN_EXE_ttpflow"))
        .args(["run", "--sink-timeout", "1", "--input"])
        .arg(&whole_input)
        .arg("--rules")
        .arg(&rules)
        .arg("--out")
        .arg(dir.path().join("timeout"))
        .env("TTPFLOW_POSTGRES", &url)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("of PostgreSQL being unavailable (the sink timeout)"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30), "it gives up");
}

/// A pack of three command rules: a sub-technique under credential access, one under command
/// and control, and a technique under discovery.
fn merge_pack(dir: &Path) -> PathBuf {
    let rule = |id: &str, pattern: &str, emits: &str| {
        format!(
            "rule_id: {id}\nrule_version: 1\nname: {id}\napplies_to: [command]\nmatch:\n  field: command_text\n  \
             pattern: '{pattern}'\nemits:\n  - {emits}\nevidence_fields: [command_text]\n"
        )
    };
    common::write_pack(
        dir,
        &[
            (
                "P0001",
                &rule(
                    "P0001",
                    r"/etc/shadow\b",
                    "{tactic: TA0006, technique_id: T1003, sub_technique_id: T1003.008, confidence: 0.9}",
                ),
            ),
            (
                "P0002",
                &rule(
                    "P0002",
                    r"^curl\s",
                    "{tactic: TA0011, technique_id: T1071, sub_technique_id: T1071.001, confidence: 0.6}",
                ),
            ),
            ("P0003", &rule("P0003", r"^uname\b", "{tactic: TA0007, technique_id: T1082, confidence: 0.5}")),
        ],
    )
}

fn session(ip: &str, id: &str, commands: &[(&str, &str)]) -> String {
    let commands: Vec<Value> = commands
        .iter()
        .enumerate()
        .map(|(i, (text, ts))| json!({"command_text": text, "id": format!("{id}#{i}"), "ts": ts}))
        .collect();
    json!({"topic": "attacker.session.ended", "type": "session.ended", "payload": {
        "attacker_ip": ip, "attacker_uuid": null, "session_id": id, "decky_id": "d-1", "commands": commands}})
    .to_string()
}

fn table(topic: &str, key: &str, value: Value) -> String {
    json!({"topic": topic, "key": key, "value": value}).to_string()
}

/// Two attackers of two identities in two campaigns, their sessions, then the second
/// identity merged into the first: the merge retracts the second identity's and campaign's
/// rows and raises the first's.
fn merge_input(dir: &Path) -> PathBuf {
    let identity = |id: &str, campaign: &str, into: Option<&str>| {
        table("decnet.attacker_identities", id, json!({"uuid": id, "campaign_id": campaign, "merged_into_uuid": into}))
    };
    let attacker = |id: &str, ip: &str, identity: &str| {
        table("decnet.attackers", id, json!({"uuid": id, "ip": ip, "identity_id": identity}))
    };
    let lines = [
        table("decnet.campaigns", "c-1", json!({"uuid": "c-1", "merged_into_uuid": null})),
        table("decnet.campaigns", "c-2", json!({"uuid": "c-2", "merged_into_uuid": null})),
        identity("i-1", "c-1", None),
        identity("i-2", "c-2", None),
        attacker("a-1", "192.0.2.1", "i-1"),
        attacker("a-2", "192.0.2.2", "i-2"),
        session(
            "192.0.2.1",
            "s-1",
            &[
                ("uname -a", "2026-01-01T10:00:00Z"),
                ("cat /etc/shadow", "2026-01-01T10:00:05Z"),
                ("curl http://203.0.113.9/x", "2026-01-01T10:00:10Z"),
            ],
        ),
        session(
            "192.0.2.2",
            "s-2",
            &[("uname -r", "2026-01-01T11:00:00Z"), ("cat /etc/shadow", "2026-01-01T11:00:30Z")],
        ),
        session("192.0.2.1", "s-3", &[("uname", "2026-01-01T12:00:00Z")]),
        identity("i-2", "c-2", Some("i-1")),
    ];
    let path = dir.join("merge.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[test]
fn a_merge_moves_rollup_rows_with_updates_and_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let (rules_dir, input) = (merge_pack(dir.path()), merge_input(dir.path()));
    let url = database("merge");
    // One record per epoch: every row is inserted, updated and deleted in its own epoch.
    let PgRun { summary, tags, rollups, .. } = run_pg(&rules_dir, &[input], 1, &url);
    let stats = summary.postgres.unwrap();
    assert_eq!(tags.len(), 6);
    let stored = stored_rollups(&url);
    assert_same_rollups(&stored, &rollups, "merge");
    // i-2's and c-2's two techniques each.
    assert_eq!(stats.rollups_deleted, 4, "{stats:?}");
    assert!(stored.keys().all(|k| !k.contains("|i-2|") && !k.contains("|c-2|")), "{:?}", stored.keys());
    let row = |key: &str| stored.get(key).unwrap_or_else(|| panic!("no row {key}: {:?}", stored.keys()));
    let campaign = row("campaign|c-1|T1082||TA0007");
    assert_eq!(
        (&campaign["tag_count"], &campaign["attacker_count"], &campaign["identity_count"]),
        (&json!(3), &json!(2), &json!(1))
    );
    assert_eq!(campaign["first_seen"], "2026-01-01T10:00:00.000000Z");
    assert_eq!(campaign["last_seen"], "2026-01-01T12:00:00.000000Z");
    assert_eq!(row("identity|i-1|T1003|T1003.008|TA0006")["tag_count"], 2);
    assert_eq!(row("attacker|a-2|T1003|T1003.008|TA0006")["tag_count"], 1);
    assert_eq!(row("session|s-3|T1082||TA0007")["tag_count"], 1);
    assert_eq!(row("fleet||T1071|T1071.001|TA0011")["confidence_max"], 0.6);
}

/// Runs `ttpflow export navigator --scope scope` against `url`.
fn export(url: &str, scope: &str, out: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ttpflow"))
        .args(["export", "navigator", "--scope", scope, "--out"])
        .arg(out)
        .env("TTPFLOW_POSTGRES", url)
        .env("TTPFLOW_LOG", "warn")
        .stdin(Stdio::null())
        .output()
        .expect("ttpflow runs")
}

/// (techniqueID, tactic, score) of a layer's techniques, in the layer's order.
fn layer_techniques(layer: &Value) -> Vec<(String, String, i64)> {
    layer["techniques"]
        .as_array()
        .expect("techniques array")
        .iter()
        .map(|t| {
            (
                t["techniqueID"].as_str().unwrap().into(),
                t["tactic"].as_str().unwrap().into(),
                t["score"].as_i64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn navigator_layers_of_a_campaign_an_identity_an_attacker_and_the_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let (rules_dir, input) = (merge_pack(dir.path()), merge_input(dir.path()));
    let url = database("navigator");
    run_pg(&rules_dir, &[input], 1, &url);
    let out = dir.path().join("layer.json");
    let layer = |scope: &str| {
        let output = export(&url, scope, &out);
        assert!(output.status.success(), "{scope}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_str::<Value>(&std::fs::read_to_string(&out).unwrap()).expect("the layer is JSON")
    };
    let t = |id: &str, tactic: &str, score: i64| (id.to_string(), tactic.to_string(), score);
    let all = vec![
        t("T1003.008", "credential-access", 2),
        t("T1071.001", "command-and-control", 1),
        t("T1082", "discovery", 3),
    ];

    let campaign = layer("campaign:c-1");
    assert_eq!(campaign["versions"], json!({"layer": "4.5", "navigator": "5.1.0", "attack": "15"}));
    assert_eq!(campaign["domain"], "enterprise-attack");
    assert!(campaign["name"].as_str().unwrap().contains("campaign:c-1"), "{}", campaign["name"]);
    assert!(campaign["description"].as_str().unwrap().contains("campaign \"c-1\""), "{}", campaign["description"]);
    assert_eq!(layer_techniques(&campaign), all);
    let discovery = &campaign["techniques"][2];
    assert_eq!(
        discovery["comment"],
        "3 tags, 2 attackers, 1 identity; first seen 2026-01-01T10:00:00.000000Z, \
         last seen 2026-01-01T12:00:00.000000Z; confidence max 0.50"
    );
    assert_eq!(campaign["gradient"]["maxValue"], 3);
    assert_eq!(layer_techniques(&layer("identity:i-1")), all);
    assert_eq!(layer_techniques(&layer("fleet")), all);
    assert_eq!(
        layer_techniques(&layer("attacker:a-2")),
        vec![t("T1003.008", "credential-access", 1), t("T1082", "discovery", 1)]
    );

    // A scope that is not one, and one with no rows (c-2 went away in the merge).
    for (scope, message) in [
        ("campaign", "malformed scope \"campaign\""),
        ("team:x", "malformed scope \"team:x\""),
        ("campaign:c-2", "no rollup rows for scope \"campaign:c-2\""),
        ("identity:nobody", "no rollup rows for scope \"identity:nobody\""),
    ] {
        let output = export(&url, scope, &dir.path().join("refused.json"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{scope}: exit status {}", output.status);
        assert!(stderr.contains(message), "{scope}: {stderr}");
        assert!(!dir.path().join("refused.json").exists(), "{scope}: no layer is written");
    }
}

#[test]
fn the_views_agree_with_ttp_rollup_and_ttp_tag() {
    let dir = tempfile::tempdir().unwrap();
    let (rules_dir, input) = (merge_pack(dir.path()), merge_input(dir.path()));
    let mut cases = vec![("views_merge", rules_dir, vec![input])];
    let (name, rules_dir, inputs) = corpora(dir.path()).pop().unwrap();
    cases.push(if name == "dev" { ("views_dev", rules_dir, inputs) } else { ("views_fleet", rules_dir, inputs) });
    for (db, rules_dir, inputs) in cases {
        let url = database(db);
        run_pg(&rules_dir, &inputs, 200, &url);
        let mut c = client(&url);
        let mut text = |sql: &str| -> Vec<String> {
            let mut rows: Vec<String> =
                c.query(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}")).iter().map(|r| r.get(0)).collect();
            rows.sort();
            rows
        };
        // Each view is its scope's rows of ttp_rollup, sub-technique '' as null.
        for (view, kind, id) in [
            ("ttp_techniques_by_identity", "identity", "identity_uuid"),
            ("ttp_techniques_by_attacker", "attacker", "attacker_uuid"),
            ("ttp_techniques_by_session", "session", "session_id"),
            ("ttp_techniques_by_campaign", "campaign", "campaign_id"),
            ("ttp_techniques_fleet", "fleet", "''"),
        ] {
            let from_view = text(&format!(
                "SELECT concat_ws('|', {id}, technique_id, coalesce(sub_technique_id, '<none>'), tactic, count, \
                 first_seen, last_seen, confidence_max, mitre_url) FROM {view}"
            ));
            let from_table = text(&format!(
                "SELECT concat_ws('|', scope_id, technique_id, coalesce(nullif(sub_technique_id, ''), '<none>'), \
                 tactic, tag_count, first_seen, last_seen, confidence_max, 'https://attack.mitre.org/techniques/' \
                 || replace(coalesce(nullif(sub_technique_id, ''), technique_id), '.', '/') || '/') \
                 FROM ttp_rollup WHERE scope_kind = '{kind}'"
            ));
            // The bundled example names no identities or campaigns.
            let expected = !(db.ends_with("fleet") && matches!(kind, "identity" | "campaign"));
            assert!(!expected || !from_table.is_empty(), "{db}: no {kind} rows");
            assert_eq!(from_view, from_table, "{db}: {view}");
        }
        // The tag inspector's rows add up to the rollups of the scopes a tag names itself.
        for (view, id) in [
            ("ttp_techniques_by_attacker", "attacker_uuid"),
            ("ttp_techniques_by_session", "session_id"),
            ("ttp_techniques_fleet", "''"),
        ] {
            let rollup = text(&format!(
                "SELECT concat_ws('|', {id}, technique_id, sub_technique_id, tactic, count, first_seen, last_seen) \
                 FROM {view}"
            ));
            let group = if id == "''" { String::new() } else { format!("{id}, ") };
            let tags = text(&format!(
                "SELECT concat_ws('|', {id}, technique_id, sub_technique_id, tactic, count(*), min(observed_at), \
                 max(observed_at)) FROM ttp_tag_details WHERE {id} IS NOT NULL \
                 GROUP BY {group}technique_id, sub_technique_id, tactic"
            ));
            assert_eq!(rollup, tags, "{db}: {view} against ttp_tag_details");
        }
        let urls = text("SELECT mitre_url FROM ttp_tag_details WHERE sub_technique_id = 'T1003.008' LIMIT 1");
        if db == "views_merge" {
            assert_eq!(urls, vec!["https://attack.mitre.org/techniques/T1003/008/".to_string()]);
        }
    }
}
