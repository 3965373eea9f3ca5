//! PostgreSQL sink: tables equal the JSONL outputs, idempotent migrations and reruns, and kill -9 recovery.
//!
//! A throw-away server is started once per test binary from the installed PostgreSQL
//! binaries (`TTPFLOW_PG_BIN`, default `/usr/lib/postgresql/15/bin`), with its unix socket in
//! its own directory and no TCP listener; each test creates its own database. A watcher
//! process stops the server when the test binary exits, however it exits, and servers left
//! by an earlier binary that was killed are stopped at the next start.

use std::collections::BTreeMap;
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

struct Server {
    socket_dir: PathBuf,
    port: u16,
    /// Outlives this process on purpose, to stop the server after it.
    _watcher: std::process::Child,
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
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
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

fn start_server() -> Server {
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
    let dir = PathBuf::from(BASE).join(std::process::id().to_string());
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
        "-k {} -p {port} -c listen_addresses='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
        dir.display()
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
    Server { socket_dir: dir, port, _watcher: watcher }
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(start_server)
}

fn url(db: &str) -> String {
    let server = server();
    format!("host={} port={} user=postgres dbname={db}", server.socket_dir.display(), server.port)
}

/// A fresh database named `name`.
fn database(name: &str) -> String {
    let mut admin = ttpflow::postgres::connect(&url("postgres")).expect("connect to the test server");
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).expect("drop database");
    admin.batch_execute(&format!("CREATE DATABASE {name}")).expect("create database");
    url(name)
}

fn client(url: &str) -> postgres::Client {
    ttpflow::postgres::connect(url).expect("connect")
}

/// Runs the job in-process with `--postgres url`; returns the summary and tags.jsonl.
fn run_pg(rules_dir: &Path, inputs: &[PathBuf], epoch_records: u64, url: &str) -> (Summary, Vec<Value>) {
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
    })
    .expect("run succeeds");
    (summary, read_jsonl(&dir.path().join("tags.jsonl")).1)
}

/// `ttp_tag` as tags.jsonl objects by uuid (without `created_at`).
fn stored_tags(url: &str) -> BTreeMap<String, Value> {
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

/// Every row of `ttp_tag` and `ttp_progress` as text, with its `created_at` and its
/// transaction id (which an update would change).
fn raw_rows(url: &str) -> Vec<String> {
    let mut rows: Vec<String> = client(url)
        .query(
            "SELECT 'tag ' || xmin::text || ' ' || t::text FROM ttp_tag t \
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
            (p.display().to_string(), text.lines().count() as i64)
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
fn stored_tags_and_progress_equal_the_jsonl_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for (name, rules_dir, inputs) in corpora(dir.path()) {
        let url = database(&format!("equal_{name}"));
        let started = Instant::now();
        let (summary, tags) = run_pg(&rules_dir, &inputs, 256, &url);
        let stats = summary.postgres.expect("sink stats");
        println!(
            "{name}: {} tags in {} epochs, sink {:.0} rows/s, run {:?}",
            stats.rows_inserted,
            stats.epochs_committed,
            stats.rows_sent as f64 / stats.elapsed.as_secs_f64().max(1e-9),
            started.elapsed()
        );
        assert!(!tags.is_empty(), "{name}: the corpus yields tags");
        assert_eq!(stats.rows_inserted, tags.len() as u64, "{name}");
        assert_eq!(stats.epochs_skipped, 0, "{name}: a fresh database skips nothing");
        assert_same_tags(&stored_tags(&url), &tags, name);
        assert_eq!(progress(&url), line_counts(&inputs), "{name}: progress is the line count of every input");
    }
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
    let (_, tags) = run_pg(&root().join("rules"), &[root().join("examples/fleet.jsonl")], 4, &url);
    assert!(!tags.is_empty());
    let count: i64 = c.query_one("SELECT count(*) FROM ttpflow_migrations", &[]).unwrap().get(0);
    assert_eq!(count, all.len() as i64);
}

#[test]
fn a_second_run_commits_nothing_and_changes_no_row() {
    let dir = tempfile::tempdir().unwrap();
    let (name, rules_dir, inputs) = corpora(dir.path()).pop().unwrap();
    let url = database("rerun");
    let (first, _) = run_pg(&rules_dir, &inputs, 500, &url);
    let before = raw_rows(&url);
    let (second, tags) = run_pg(&rules_dir, &inputs, 500, &url);
    let (first, second) = (first.postgres.unwrap(), second.postgres.unwrap());
    assert!(first.epochs_committed > 0);
    assert_eq!(second.epochs_committed, 0, "{name}: every epoch is covered by the stored progress");
    assert_eq!(second.epochs_skipped, first.epochs_committed + first.epochs_skipped);
    assert_eq!(second.rows_inserted, 0);
    assert!(before == raw_rows(&url), "{name}: the rerun changed rows");
    assert_same_tags(&stored_tags(&url), &tags, name);
    // Progress that no epoch of 7 records ends at (as if left by a run with another epoch
    // size) is refused.
    let first_input = inputs[0].display().to_string();
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
    });
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(message.contains("not on an epoch boundary") && message.contains(&format!(": {at},")), "{message}");
    assert!(before == raw_rows(&url), "{name}: a refused run changes nothing");
}

/// A small pseudo-random number from the clock (the moments of the kills).
fn jitter(bound: u64) -> u64 {
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
}
