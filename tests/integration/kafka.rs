//! Kafka job on librdkafka's mock cluster: assignment, resume, kill -9, publication, replay, dead letters, clusters.
//!
//! Each test starts its own in-process mock cluster (`rdkafka::mocking`), produces a corpus
//! to it the way DECNET's bus would (bus envelopes as values, table rows keyed by their
//! primary key), and runs the `ttpflow` binary against it and a throw-away PostgreSQL
//! database. The dev corpus is used when the conformance data is there, else copies of the
//! bundled example. The mock cluster keeps at most 5 MiB per partition, so the big session
//! topic is spread over four partitions. With `TTPFLOW_TEST_KAFKA_BROKER` naming a broker
//! program, every test starts one of those instead (see `start_broker`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::common::{self, root};
use crate::postgres::{client, database, jitter, stored_rollups, stored_tags};

/// One record to produce.
#[derive(Clone, Debug)]
struct Record {
    topic: String,
    partition: i32,
    key: Option<String>,
    value: Option<String>,
}

/// Partitions per topic: the session topic is the big one.
fn partitions_of(topic: &str) -> i32 {
    match topic {
        "attacker.session.ended" => 4,
        "attacker.fingerprinted" | "email.received" => 2,
        _ => 1,
    }
}

/// A JSONL corpus line as a Kafka record: tables keyed by primary key, bus envelopes as
/// they are, spread over partitions by attacker IP as a keyed producer would.
fn record_of(line: &str) -> Record {
    let value: Value = serde_json::from_str(line).expect("corpus line is JSON");
    let topic = value["topic"].as_str().expect("topic").to_string();
    if topic.starts_with("decnet.") {
        let key = match &value["key"] {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let row = (!value["value"].is_null()).then(|| value["value"].to_string());
        return Record { topic, partition: 0, key: Some(key), value: row };
    }
    let ip = value["payload"]["attacker_ip"].as_str().unwrap_or("").to_string();
    let hash = ip.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32));
    let partition = (hash % partitions_of(&topic) as u32) as i32;
    Record { topic, partition, key: (!ip.is_empty()).then_some(ip), value: Some(line.to_string()) }
}

/// The corpus (dev when present) and the rules to run it with.
fn corpus(dir: &Path) -> (String, PathBuf, Vec<Record>) {
    match common::conformance("the dev corpus of the kafka tests") {
        Some(conf) => {
            let events =
                crate::regression::gunzip_to(&conf.join("corpus/dev_events.jsonl.gz"), &dir.join("dev_events.jsonl"));
            let tables = conf.join("corpus/dev_tables.jsonl");
            let mut records: Vec<Record> = std::fs::read_to_string(tables).unwrap().lines().map(record_of).collect();
            records.extend(std::fs::read_to_string(events).unwrap().lines().map(record_of));
            ("dev".into(), conf.join("decnet/rules"), records)
        }
        None => ("fleet".into(), root().join("rules"), small_corpus(300)),
    }
}

/// Where the records of one test go: an in-process mock cluster, or a broker process of
/// its own when `TTPFLOW_TEST_KAFKA_BROKER` names one (see [`start_broker`]).
struct Cluster {
    _mock: Option<MockCluster<'static, DefaultProducerContext>>,
    broker: Option<Child>,
    brokers: String,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(mut broker) = self.broker.take() {
            drop(broker.stdin.take());
            let _ = broker.kill();
            let _ = broker.wait();
        }
    }
}

fn cluster(records: &[Record]) -> Cluster {
    let topics: BTreeSet<&str> = records.iter().map(|r| r.topic.as_str()).collect();
    if let Some(program) = std::env::var_os("TTPFLOW_TEST_KAFKA_BROKER").filter(|p| !p.is_empty()) {
        let (broker, brokers) = start_broker(Path::new(&program), &topics);
        return Cluster { _mock: None, broker: Some(broker), brokers };
    }
    let mock = MockCluster::new(1).expect("mock cluster starts");
    for topic in topics {
        mock.create_topic(topic, partitions_of(topic), 1).expect("create topic");
    }
    let brokers = mock.bootstrap_servers();
    Cluster { _mock: Some(mock), broker: None, brokers }
}

/// Starts the Kafka-protocol broker that `TTPFLOW_TEST_KAFKA_BROKER` names, one per test:
/// an executable run with `--topic NAME:PARTITIONS` for each topic to create, that prints
/// its bootstrap servers as the first line of its standard output once the topics exist,
/// keeps its data where it likes (a fresh temporary directory, say), creates other topics
/// on first use, and stops when its standard input closes. `examples/mock_cluster` is one;
/// for another broker, a wrapper script that starts it and creates the topics.
fn start_broker(program: &Path, topics: &BTreeSet<&str>) -> (Child, String) {
    use std::io::BufRead;
    let mut command = Command::new(program);
    for topic in topics {
        command.arg("--topic").arg(format!("{topic}:{}", partitions_of(topic)));
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("TTPFLOW_TEST_KAFKA_BROKER {}: {e}", program.display()));
    let stdout = child.stdout.take().expect("piped stdout");
    let mut first = String::new();
    std::io::BufReader::new(stdout).read_line(&mut first).expect("the broker prints its bootstrap servers");
    let brokers = first.trim().to_string();
    assert!(!brokers.is_empty(), "{} printed no bootstrap servers", program.display());
    (child, brokers)
}

fn produce(brokers: &str, records: &[Record]) {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    for r in records {
        let mut record = BaseRecord::<str, str>::to(&r.topic).partition(r.partition);
        if let Some(key) = &r.key {
            record = record.key(key.as_str());
        }
        if let Some(value) = &r.value {
            record = record.payload(value.as_str());
        }
        let mut record = record;
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
}

/// Every message of a topic (all partitions), as (key, value) in partition then offset order.
fn consume_all(brokers: &str, topic: &str) -> Vec<(String, Option<Value>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "ttpflow-tests")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let Some(meta) = metadata.topics().iter().find(|t| t.name() == topic && t.error().is_none()) else {
        return Vec::new();
    };
    let mut list = TopicPartitionList::new();
    let mut remaining = 0i64;
    for p in meta.partitions() {
        let (low, high) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).expect("watermarks");
        remaining += high - low;
        list.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
    }
    consumer.assign(&list).expect("assign");
    let mut out: Vec<(i32, i64, String, Option<Value>)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while remaining > 0 && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            let key = m.key().map(|k| String::from_utf8_lossy(k).to_string()).unwrap_or_default();
            let value = m.payload().map(|v| serde_json::from_slice(v).expect("published JSON"));
            out.push((m.partition(), m.offset(), key, value));
            remaining -= 1;
        }
    }
    assert_eq!(remaining, 0, "{topic}: not every message was read back");
    out.sort_by_key(|(p, o, _, _)| (*p, *o));
    out.into_iter().map(|(_, _, k, v)| (k, v)).collect()
}

/// The total of the job's stored next offsets.
fn stored_offsets(url: &str, job: &str) -> i64 {
    client(url)
        .query_one("SELECT coalesce(sum(next_offset), 0)::bigint FROM ttp_progress WHERE job = $1", &[&job])
        .map(|row| row.get(0))
        .unwrap_or(0)
}

fn ttpflow(brokers: &str, url: &str, rules: &Path, command: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ttpflow"));
    cmd.arg(command)
        .arg("--brokers")
        .arg(brokers)
        .arg("--rules")
        .arg(rules)
        .args(["--epoch-interval-ms", "50", "--epoch-records", "512"])
        .args(extra)
        .env("TTPFLOW_POSTGRES", url)
        .env("TTPFLOW_LOG", "warn,ttpflow::stream=info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A started job whose standard error is collected.
struct Job {
    child: Child,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Job {
    /// Starts the command and waits until the job says it is starting its workers (its
    /// signal handlers are in place by then).
    fn start(mut cmd: Command) -> Job {
        let mut child = cmd.spawn().expect("ttpflow starts");
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("stderr is piped");
        let collected = std::sync::Arc::clone(&stderr);
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut text = collected.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        let mut job = Job { child, stderr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !job.stderr().contains("starting kafka job") {
            if let Ok(Some(status)) = job.child.try_wait() {
                panic!("ttpflow exited with {status} before starting: {}", job.stderr());
            }
            assert!(Instant::now() < deadline, "ttpflow did not start: {}", job.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        job
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// SIGTERM, then the exit, which must be 0; returns standard output.
    fn stop(mut self) -> String {
        sigterm(&self.child);
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            use std::io::Read;
            out.read_to_string(&mut stdout).expect("read stdout");
        }
        let status = self.child.wait().expect("ttpflow exits");
        assert!(status.success(), "ttpflow exited with {status}: {}", self.stderr());
        stdout
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().expect("kill runs");
    assert!(status.success());
}

/// Runs `ttpflow run` until it has stored positions covering `total` records, then stops it
/// with SIGTERM and checks that it exits 0.
fn run_until_caught_up(brokers: &str, url: &str, rules: &Path, total: i64, extra: &[&str]) -> String {
    let mut job = Job::start(ttpflow(brokers, url, rules, "run", extra));
    wait_for_offsets(url, "kafka", total, &mut job.child);
    job.stop()
}

fn wait_for_offsets(url: &str, job: &str, total: i64, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        if stored_offsets(url, job) >= total {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("ttpflow exited early with {status}");
        }
        assert!(Instant::now() < deadline, "the job did not catch up with {total} records");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Both runs stored the same tags. Where several records yield one uuid, the stored row
/// is the earliest record's *within the epoch* that first yields it; epochs on Kafka follow
/// the clock, so such a row may come from another record in another run: those rows may
/// differ in the fields that come from the record, never in the tag's identity.
fn assert_same_tags(a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>, what: &str) {
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>(), "{what}: different tag uuids");
    let identity =
        ["source_kind", "source_id", "rule_id", "rule_version", "technique_id", "sub_technique_id", "tactic"];
    let mut differing = 0;
    for (uuid, row) in a {
        let other = &b[uuid];
        for field in identity {
            assert_eq!(row[field], other[field], "{what}: tag {uuid} differs in {field}");
        }
        if row != other {
            differing += 1;
            if differing <= 3 {
                println!("{what}: tag {uuid} stored from different records:\n  {row}\n  {other}");
            }
        }
    }
    println!("{what}: {} tags, {differing} stored from another record of the same uuid", a.len());
}

/// Both runs stored the same rollup rows; on failure the first differences are shown.
fn assert_same_rollups(a: &BTreeMap<String, Value>, b: &BTreeMap<String, Value>, what: &str) {
    let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let differing: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| format!("{k}:\n  {:?}\n  {:?}", a.get(k), b.get(k)))
        .collect();
    assert!(
        differing.is_empty(),
        "{what}: {} of {} rollup rows differ, e.g.\n{}",
        differing.len(),
        a.len(),
        differing.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
    );
}

fn consumed(records: &[Record]) -> Vec<Record> {
    let config = ttpflow::config::KafkaConfig::default();
    records
        .iter()
        .filter(|r| config.topics.iter().chain(&config.tables).any(|p| ttpflow::kafka::topic_matches(p, &r.topic)))
        .cloned()
        .collect()
}

/// Every uuid listed by `ttp.tagged`, with how often.
fn published_uuids(brokers: &str) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for (_, value) in consume_all(brokers, "ttp.tagged") {
        let value = value.expect("ttp.tagged has values");
        assert_eq!(value["topic"], "ttp.tagged");
        for uuid in value["payload"]["tag_uuids"].as_array().expect("tag_uuids") {
            *seen.entry(uuid.as_str().unwrap().to_string()).or_insert(0) += 1;
        }
    }
    seen
}

#[test]
fn run_stores_publishes_only_new_tags_and_resumes_from_stored_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let (name, rules, records) = corpus(dir.path());
    // The last tenth arrives after a restart.
    let split = records.len() * 9 / 10;
    let cluster = cluster(&records);
    produce(&cluster.brokers, &records[..split]);
    let url = database("kafka_run");
    let first = consumed(&records[..split]).len() as i64;
    run_until_caught_up(&cluster.brokers, &url, &rules, first, &["-w", "2"]);
    let after_first = stored_tags(&url);
    assert!(!after_first.is_empty(), "{name}: no tags stored");
    let published = published_uuids(&cluster.brokers);
    assert!(published.values().all(|n| *n == 1), "{name}: a tag was published twice");
    let stored: BTreeSet<&String> = after_first.keys().collect();
    assert_eq!(published.keys().collect::<BTreeSet<_>>(), stored, "{name}: published tags are not the stored ones");

    // A restart with nothing new stores and publishes nothing.
    run_until_caught_up(&cluster.brokers, &url, &rules, first, &[]);
    assert_eq!(stored_tags(&url), after_first, "{name}: a restart without new records changed ttp_tag");
    assert_eq!(published_uuids(&cluster.brokers), published, "{name}: a restart without new records published");

    // The rest: only its new tags are published.
    produce(&cluster.brokers, &records[split..]);
    let total = consumed(&records).len() as i64;
    run_until_caught_up(&cluster.brokers, &url, &rules, total, &["-w", "2"]);
    let after_second = stored_tags(&url);
    let published = published_uuids(&cluster.brokers);
    assert!(published.values().all(|n| *n == 1), "{name}: a tag was published twice after the restart");
    assert_eq!(
        published.keys().collect::<BTreeSet<_>>(),
        after_second.keys().collect::<BTreeSet<_>>(),
        "{name}: after the restart, published tags are not the stored ones"
    );
    assert!(after_second.len() > after_first.len(), "{name}: the second part added no tag");

    // The same tables as one uninterrupted run over everything, with one worker.
    let whole = database("kafka_run_whole");
    run_until_caught_up(&cluster.brokers, &whole, &rules, total, &["--job", "kafka"]);
    assert_same_tags(&stored_tags(&whole), &after_second, &format!("{name}: an uninterrupted run and the split one"));
    assert_eq!(stored_rollups(&whole), stored_rollups(&url), "{name}: ttp_rollup differs from an uninterrupted run");

    // The compacted rollup topics hold, per key, the stored row.
    let mut latest: BTreeMap<String, Option<Value>> = BTreeMap::new();
    for kind in ["fleet", "attacker", "identity", "campaign", "session"] {
        for (key, value) in consume_all(&cluster.brokers, &format!("ttp.rollup.{kind}")) {
            latest.insert(format!("{kind}|{key}"), value);
        }
    }
    let rows: BTreeMap<String, Value> = latest.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
    let stored = stored_rollups(&url);
    assert_eq!(rows.len(), stored.len(), "{name}: the rollup topics do not hold one live row per stored row");
    for row in rows.values() {
        let key = ["scope_kind", "scope_id", "technique_id", "sub_technique_id", "tactic"]
            .iter()
            .map(|f| row[f].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
            .join("|");
        let want = stored.get(&key).unwrap_or_else(|| panic!("{name}: published rollup {key} is not stored"));
        assert_eq!(row["tag_count"], want["tag_count"], "{name}: {key}");
    }
    drop(cluster);
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A plain HTTP GET: status code and body.
fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The value of one sample line of a scrape (`name{labels} value`).
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Copies of the bundled example (each copy's sessions renamed), a few malformed records,
/// and the pack of the project.
fn small_corpus(copies: usize) -> Vec<Record> {
    (0..copies).flat_map(example_copy).collect()
}

/// Copy `i` of the bundled example, its sessions renamed `c<i>-…`.
fn example_copy(i: usize) -> Vec<Record> {
    let text = std::fs::read_to_string(root().join("examples/fleet.jsonl")).unwrap();
    let copy = text.replace("\"session_id\":\"", &format!("\"session_id\":\"c{i}-"));
    // The example's one line that is not JSON has no topic to go to.
    copy.lines().filter(|l| l.starts_with('{')).map(record_of).collect()
}

#[test]
fn metrics_count_what_the_job_did_and_malformed_records_become_dead_letters() {
    let mut records = small_corpus(20);
    let garbage = [Some("{not json"), Some("[1, 2]"), Some(r#"{"payload":{"attacker_uuid":42}}"#), None];
    for value in garbage {
        records.push(Record {
            topic: "attacker.observed".into(),
            partition: 0,
            key: None,
            value: value.map(str::to_string),
        });
    }
    let cluster = cluster(&records);
    let produced = Instant::now();
    produce(&cluster.brokers, &records);
    let url = database("kafka_metrics");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let total = consumed(&records).len() as i64;
    let rules = root().join("rules");
    let mut job = Job::start(ttpflow(&cluster.brokers, &url, &rules, "run", &["--metrics-addr", &addr]));
    wait_for_offsets(&url, "kafka", total, &mut job.child);
    let (status, health) = http_get(port, "/healthz");
    assert_eq!((status, health.trim()), (200, "ok"));
    // The consumers report lag with librdkafka's statistics, once a second.
    let lag = "ttpflow_consumer_lag_records{topic=\"attacker.observed\",partition=\"0\"}";
    let deadline = Instant::now() + Duration::from_secs(10);
    let scrape = loop {
        let (status, scrape) = http_get(port, "/metrics");
        assert_eq!(status, 200);
        if scrape.contains(lag) || Instant::now() > deadline {
            break scrape;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    job.stop();

    let observed = consumed(&records).iter().filter(|r| r.topic == "attacker.observed").count() as f64;
    assert_eq!(sample(&scrape, r#"ttpflow_records_in_total{topic="attacker.observed"}"#), Some(observed), "{scrape}");
    let stored = stored_tags(&url).len() as f64;
    assert!(stored > 0.0);
    assert_eq!(sample(&scrape, "ttpflow_tags_stored_total"), Some(stored), "{scrape}");
    assert!(sample(&scrape, "ttpflow_epoch_commit_seconds_count").unwrap_or(0.0) >= 1.0, "{scrape}");
    // The records were produced before the job started: each committed epoch's oldest record
    // waited at least the start-up, and no longer than the test has run.
    let latencies = sample(&scrape, "ttpflow_record_commit_latency_seconds_count").unwrap_or(0.0);
    let waited = sample(&scrape, "ttpflow_record_commit_latency_seconds_sum").unwrap_or(0.0);
    assert!(latencies >= 1.0 && waited > 0.0, "{scrape}");
    assert!(waited / latencies <= produced.elapsed().as_secs_f64() + 1.0, "{scrape}");
    assert!(sample(&scrape, r#"ttpflow_published_total{kind="tagged"}"#).unwrap_or(0.0) >= 1.0, "{scrape}");
    assert_eq!(sample(&scrape, lag), Some(0.0), "{scrape}");

    // Every malformed record is on the dead-letter topic with where it was and why.
    let letters: Vec<Value> =
        consume_all(&cluster.brokers, "ttpflow.dead-letter").into_iter().filter_map(|(_, v)| v).collect();
    let first_garbage = consumed(&records).iter().filter(|r| r.topic == "attacker.observed").count() - garbage.len();
    let mut reasons: Vec<(u64, String)> = letters
        .iter()
        .filter(|l| l["topic"] == "attacker.observed")
        .map(|l| (l["offset"].as_u64().unwrap(), l["reason"].as_str().unwrap().to_string()))
        .collect();
    reasons.sort();
    let want: Vec<(u64, String)> = ["invalid_json", "not_an_object", "wrong_type", "invalid_json"]
        .iter()
        .enumerate()
        .map(|(i, r)| ((first_garbage + i) as u64, r.to_string()))
        .collect();
    assert_eq!(reasons, want, "dead letters of the malformed records: {letters:?}");
    assert!(letters.iter().all(|l| l["partition"] == 0 && !l["detail"].as_str().unwrap().is_empty()));
    // The metrics count every letter published, by reason.
    let counted: f64 = scrape
        .lines()
        .filter(|l| l.starts_with("ttpflow_dead_letters_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(counted, letters.len() as f64, "{scrape}");
}

#[test]
fn kill_9_mid_epoch_and_restart_give_the_tables_of_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (name, rules, records) = corpus(dir.path());
    // The example's copies must be many for the job to commit more than once.
    let records = if name == "fleet" { small_corpus(1200) } else { records };
    let cluster = cluster(&records);
    produce(&cluster.brokers, &records);
    let total = consumed(&records).len() as i64;
    let whole = database("kafka_kill_whole");
    let started = Instant::now();
    run_until_caught_up(&cluster.brokers, &whole, &rules, total, &[]);
    let duration = started.elapsed();
    let published_once = published_uuids(&cluster.brokers);

    let killed = database("kafka_kill_killed");
    let mut partial = Vec::new();
    for round in 0..3 {
        // The kill comes right after a commit of this round (or a while into the round when
        // it commits nothing), so that it lands mid-run even on a small corpus.
        let before = stored_offsets(&killed, "kafka");
        let mut job = Job::start(ttpflow(&cluster.brokers, &killed, &rules, "run", &["-w", "2"]));
        let deadline = Instant::now() + duration + Duration::from_secs(5);
        while stored_offsets(&killed, "kafka") == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(jitter(50)));
        job.child.kill().expect("SIGKILL");
        let _ = job.child.wait();
        partial.push((round, stored_offsets(&killed, "kafka")));
    }
    println!("{name}: uninterrupted {duration:?}; stored offsets after each kill -9: {partial:?} of {total}");
    assert!(partial.iter().any(|(_, n)| *n > 0 && *n < total), "{name}: no kill landed mid-run: {partial:?}");
    run_until_caught_up(&cluster.brokers, &killed, &rules, total, &[]);
    assert_same_tags(&stored_tags(&whole), &stored_tags(&killed), &format!("{name} after kill -9"));
    assert_same_rollups(&stored_rollups(&whole), &stored_rollups(&killed), &format!("{name} after kill -9"));
    // Every tag the killed runs stored was published by them: after the commit, from the
    // outbox at the next start, or as a tag of the rebuilt state that no commit held.
    let published = published_uuids(&cluster.brokers);
    let stored = stored_tags(&killed);
    let again = stored
        .keys()
        .filter(|u| published.get(*u).copied().unwrap_or(0) > published_once.get(*u).copied().unwrap_or(0))
        .count();
    assert_eq!(again, stored.len(), "{name}: the killed runs did not publish every tag they stored");
    println!("{name}: the killed runs published {again} of {} stored tags", stored.len());
}

#[test]
fn replay_rebuilds_the_tables_of_run_and_publishes_nothing() {
    let records = small_corpus(40);
    let cluster = cluster(&records);
    produce(&cluster.brokers, &records);
    let total = consumed(&records).len() as i64;
    let rules = root().join("rules");
    let ran = database("kafka_replay_run");
    run_until_caught_up(&cluster.brokers, &ran, &rules, total, &[]);
    let published = published_uuids(&cluster.brokers);
    assert!(!published.is_empty());

    let replayed = database("kafka_replay_replayed");
    let output = ttpflow(&cluster.brokers, &replayed, &rules, "replay", &["-w", "2"]).output().expect("replay runs");
    assert!(output.status.success(), "replay failed: {}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("records={total} ")), "{stdout}");
    assert_eq!(stored_tags(&replayed), stored_tags(&ran), "replay and run store different tags");
    assert_eq!(stored_rollups(&replayed), stored_rollups(&ran), "replay and run store different rollups");
    assert_eq!(stored_offsets(&replayed, "kafka"), total);
    assert_eq!(published_uuids(&cluster.brokers), published, "replay published");

    // A replay over the database of the run rebuilds the same rollups.
    let output = ttpflow(&cluster.brokers, &ran, &rules, "replay", &[]).output().expect("replay runs");
    assert!(output.status.success());
    assert_eq!(stored_rollups(&replayed), stored_rollups(&ran), "a replay over stored rollups changed them");

    // From an offset past every record: tags only, nothing read from the bus.
    let late = database("kafka_replay_late");
    let output = ttpflow(&cluster.brokers, &late, &rules, "replay", &["--from-offset", "1000000"])
        .output()
        .expect("replay runs");
    assert!(output.status.success());
    assert!(stored_tags(&late).is_empty() && stored_rollups(&late).is_empty());
    assert_eq!(stored_offsets(&late, "kafka"), 0, "a partial replay stored progress");
}

/// Two free ports for the processes of a timely cluster, below the ephemeral range: a port
/// that the system handed out for binding to port 0 could be handed out again to another
/// test's server before the cluster binds it.
fn cluster_ports() -> [u16; 2] {
    let mut ports = Vec::new();
    let mut candidate = 20_000 + jitter(10_000) as u16;
    while ports.len() < 2 {
        candidate = if candidate >= 30_000 { 20_000 } else { candidate + 1 };
        if std::net::TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            ports.push(candidate);
        }
    }
    [ports[0], ports[1]]
}

#[test]
fn two_processes_store_the_tables_of_one() {
    let records = small_corpus(40);
    let cluster = cluster(&records);
    produce(&cluster.brokers, &records);
    let total = consumed(&records).len() as i64;
    let rules = root().join("rules");
    let one = database("kafka_cluster_one");
    run_until_caught_up(&cluster.brokers, &one, &rules, total, &[]);

    let two = database("kafka_cluster_two");
    let dir = tempfile::tempdir().unwrap();
    let hostfile = dir.path().join("hosts");
    let ports = cluster_ports();
    std::fs::write(&hostfile, format!("127.0.0.1:{}\n127.0.0.1:{}\n", ports[0], ports[1])).unwrap();
    let hosts = hostfile.to_str().unwrap();
    let mut jobs: Vec<Child> = (0..2)
        .map(|p| {
            let index = p.to_string();
            let extra = ["-w", "2", "-n", "2", "-p", index.as_str(), "--hostfile", hosts];
            let mut cmd = ttpflow(&cluster.brokers, &two, &rules, "run", &extra);
            cmd.stderr(std::fs::File::create(dir.path().join(format!("stderr{p}"))).unwrap());
            cmd.spawn().expect("ttpflow starts")
        })
        .collect();
    let caught_up = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let deadline = Instant::now() + Duration::from_secs(240);
        while stored_offsets(&two, "kafka") < total {
            for job in &mut jobs {
                if let Ok(Some(status)) = job.try_wait() {
                    panic!("a cluster process exited early with {status}");
                }
            }
            assert!(Instant::now() < deadline, "the cluster did not catch up with {total} records");
            std::thread::sleep(Duration::from_millis(100));
        }
    }));
    if caught_up.is_err() {
        for p in 0..2 {
            let log = std::fs::read_to_string(dir.path().join(format!("stderr{p}"))).unwrap_or_default();
            println!("process {p}:\n{log}");
        }
        panic!("the cluster did not catch up");
    }
    for job in &jobs {
        sigterm(job);
    }
    for job in &mut jobs {
        let status = job.wait().unwrap();
        assert!(status.success(), "a cluster process exited with {status}");
    }
    assert_eq!(stored_tags(&two), stored_tags(&one), "two processes store other tags than one");
    assert_eq!(stored_rollups(&two), stored_rollups(&one), "two processes store other rollups than one");
}

/// The tags of the sessions of copy `copy` of the example (source ids `c<copy>-…`; the
/// example's other events are the same in every copy, so their tags are stored once), by
/// rule id.
fn rules_fired(url: &str, copy: usize) -> BTreeMap<String, usize> {
    let prefix = format!("c{copy}-");
    let mut fired = BTreeMap::new();
    for tag in stored_tags(url).values() {
        if tag["source_id"].as_str().is_some_and(|s| s.starts_with(&prefix)) {
            *fired.entry(tag["rule_id"].as_str().unwrap().to_string()).or_insert(0) += 1;
        }
    }
    fired
}

impl Job {
    /// Waits until standard error has said `what` `times` times.
    fn wait_for_log(&mut self, what: &str, times: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.stderr().matches(what).count() < times {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("ttpflow exited with {status}: {}", self.stderr());
            }
            assert!(Instant::now() < deadline, "ttpflow did not log \"{what}\": {}", self.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_changed_pack_applies_from_the_next_epoch_a_broken_one_keeps_the_last_good_pack() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir(&rules).unwrap();
    for entry in std::fs::read_dir(root().join("rules")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            std::fs::copy(&path, rules.join(path.file_name().unwrap())).unwrap();
        }
    }
    let config = dir.path().join("ttpflow.toml");
    std::fs::write(&config, "reload_interval_s = 1\n").unwrap();
    let copies: Vec<Vec<Record>> = (0..4).map(example_copy).collect();
    let all: Vec<Record> = copies.concat();
    let cluster = cluster(&all);
    let url = database("kafka_reload");
    let config_arg = config.to_str().unwrap();
    let mut job = Job::start(ttpflow(&cluster.brokers, &url, &rules, "run", &["--config", config_arg]));
    let mut sent = Vec::new();
    let mut feed = |job: &mut Job, copy: &[Record]| {
        produce(&cluster.brokers, copy);
        sent.extend_from_slice(copy);
        wait_for_offsets(&url, "kafka", consumed(&sent).len() as i64, &mut job.child);
    };

    feed(&mut job, &copies[0]);
    let before = rules_fired(&url, 0);
    assert!(before.len() >= 2, "the example fires too few rules: {before:?}");

    // A broken file: reported, and the last good pack goes on.
    std::fs::write(rules.join("TF9999.yaml"), "rule_id: TF9999\nmatch: [unclosed\n").unwrap();
    job.wait_for_log("does not load", 1);
    assert!(job.stderr().contains("TF9999"), "the broken file is not named: {}", job.stderr());
    feed(&mut job, &copies[1]);
    assert_eq!(rules_fired(&url, 1), before, "a broken pack changed what fires");

    // Fixed, and the rule that fired most removed: from the next epoch it fires no more.
    std::fs::remove_file(rules.join("TF9999.yaml")).unwrap();
    let (removed, _) = before.iter().max_by_key(|(_, n)| **n).map(|(r, n)| (r.clone(), *n)).unwrap();
    std::fs::remove_file(rules.join(format!("{removed}.yaml"))).unwrap();
    job.wait_for_log("reloaded rule pack", 1);
    // The swap is installed two clock ticks ahead: let them pass.
    std::thread::sleep(Duration::from_millis(600));
    feed(&mut job, &copies[2]);
    let mut want = before.clone();
    want.remove(&removed);
    assert_eq!(rules_fired(&url, 2), want, "the reloaded pack without {removed}");

    // A rule disabled in ttp_rule_state: from the next epoch it fires no more either.
    let (disabled, _) = want.iter().next().map(|(r, n)| (r.clone(), *n)).unwrap();
    client(&url)
        .execute(
            "INSERT INTO ttp_rule_state (rule_id, state, reason, set_by) VALUES ($1, 'disabled', 'test', 'test')",
            &[&disabled],
        )
        .expect("insert a rule state");
    job.wait_for_log("reloaded rule pack", 2);
    std::thread::sleep(Duration::from_millis(600));
    feed(&mut job, &copies[3]);
    want.remove(&disabled);
    assert_eq!(rules_fired(&url, 3), want, "the pack with {disabled} disabled");
    job.stop();
    // Tags stored before a change stay.
    assert_eq!(rules_fired(&url, 0), before);
}

/// With `commit_group_offsets` (the default), the consumer group's committed offsets are
/// the positions the job stored, for lag monitors.
#[test]
fn the_group_offsets_follow_the_stored_positions() {
    let records = small_corpus(3);
    let cluster = cluster(&records);
    produce(&cluster.brokers, &records);
    let url = database("kafka_group_offsets");
    let total = consumed(&records).len() as i64;
    run_until_caught_up(&cluster.brokers, &url, &root().join("rules"), total, &[]);
    let stored: Vec<(String, i32, i64)> = client(&url)
        .query("SELECT input, partition, next_offset FROM ttp_progress WHERE job = 'kafka' ORDER BY 1, 2", &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    assert!(!stored.is_empty());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &cluster.brokers)
        .set("group.id", "ttpflow")
        .create()
        .expect("consumer");
    let mut list = TopicPartitionList::new();
    for (topic, partition, _) in &stored {
        list.add_partition(topic, *partition);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).expect("committed offsets");
    let committed: Vec<(String, i32, i64)> = stored
        .iter()
        .map(|(topic, partition, _)| {
            let offset = committed.find_partition(topic, *partition).map(|e| e.offset());
            let offset = match offset {
                Some(Offset::Offset(n)) => n,
                other => panic!("{topic}/{partition}: no committed offset ({other:?})"),
            };
            (topic.clone(), *partition, offset)
        })
        .collect();
    assert_eq!(committed, stored);
}

/// A PostgreSQL outage in a Kafka job: `/healthz` answers 503 with the reason and
/// `ttpflow_sink_retries_total{sink="postgres"}` counts the retries; once the server is
/// back the job catches up and is healthy again.
#[test]
fn a_postgresql_outage_is_counted_and_reported_until_it_ends() {
    let records = small_corpus(3);
    let cluster = cluster(&records);
    let private = crate::postgres::start_server("kafka-outage", true);
    let url = {
        let mut admin = ttpflow::postgres::connect(&private.url("postgres")).expect("connect to the private server");
        admin.batch_execute("CREATE DATABASE outage").expect("create database");
        private.url("outage")
    };
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut command = ttpflow(&cluster.brokers, &url, &root().join("rules"), "run", &["--metrics-addr", &addr]);
    command.env("TTPFLOW_LOG", "warn,ttpflow::stream=info,ttpflow::postgres=info");
    let mut job = Job::start(command);
    private.stop();
    produce(&cluster.brokers, &records);
    let retries = "ttpflow_sink_retries_total{sink=\"postgres\"}";
    let deadline = Instant::now() + Duration::from_secs(60);
    let (health, scrape) = loop {
        let (status, health) = http_get(port, "/healthz");
        let (_, scrape) = http_get(port, "/metrics");
        if (status == 503 && sample(&scrape, retries).is_some_and(|n| n >= 2.0)) || Instant::now() > deadline {
            break ((status, health), scrape);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(health.0, 503, "unhealthy while the database is down: {}", health.1);
    assert!(health.1.contains("postgres"), "{}", health.1);
    assert!(sample(&scrape, retries).is_some_and(|n| n >= 2.0), "{scrape}");
    private.start();
    wait_for_offsets(&url, "kafka", consumed(&records).len() as i64, &mut job.child);
    let deadline = Instant::now() + Duration::from_secs(30);
    while http_get(port, "/healthz").0 != 200 {
        assert!(Instant::now() < deadline, "healthy again once the database is back");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::sync::Arc::clone(&job.stderr);
    job.stop();
    let stderr = log.lock().unwrap().clone();
    assert!(stderr.contains("postgres is back"), "{stderr}");
    assert!(stderr.contains("stop requested (SIGINT or SIGTERM)"), "the signal is logged: {stderr}");
}
