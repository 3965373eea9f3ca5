//! The job's metrics in the Prometheus text exposition format 0.0.4 at `GET /metrics`, and a
//! `GET /healthz` probe that reports why the job is unhealthy.
//!
//! The families are fixed here so that every name, help text and label set is reviewed in one
//! place, and labels stay bounded: topics, partitions, dead-letter reasons and a few kinds, never
//! per-event values. The job updates them per batch or per epoch, not per event, so one mutex
//! over the registry costs nothing and gives every scrape a consistent snapshot. The server is a
//! single std thread answering one connection at a time: a scraper and a probe are its clients.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use ttpflow_dataflows::record::{DeadLetter, Reason};

/// Upper bounds, in seconds, of the commit-latency buckets: 1 ms to 10 s.
pub const COMMIT_BUCKETS: [f64; 13] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Upper bounds, in seconds, of the record-latency buckets: 10 ms to 60 s.
pub const LATENCY_BUCKETS: [f64; 12] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// How long one client may take to send its request head, and to take the response.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
const HEAD_LIMIT: usize = 8192;
const ACCEPT_POLL: Duration = Duration::from_millis(50);

/// What a published message was: the `kind` label of `ttpflow_published_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Published {
    Tagged,
    RuleFired,
    Rollup,
    DeadLetter,
}

impl Published {
    pub const ALL: [Published; 4] = [Published::Tagged, Published::RuleFired, Published::Rollup, Published::DeadLetter];

    pub fn as_str(self) -> &'static str {
        match self {
            Published::Tagged => "tagged",
            Published::RuleFired => "rule_fired",
            Published::Rollup => "rollup",
            Published::DeadLetter => "dead_letter",
        }
    }
}

/// Where a transient failure was retried: the `sink` label of `ttpflow_sink_retries_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sink {
    Postgres,
    Kafka,
}

impl Sink {
    pub const ALL: [Sink; 2] = [Sink::Postgres, Sink::Kafka];

    pub fn as_str(self) -> &'static str {
        match self {
            Sink::Postgres => "postgres",
            Sink::Kafka => "kafka",
        }
    }
}

/// A label value. Partitions are numbers so that they sort as numbers (2 before 10).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Value {
    Num(i64),
    Text(String),
}

/// The label value as it goes between the quotes: backslash, double quote and newline escaped.
impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Value::Num(n) => return write!(f, "{n}"),
            Value::Text(text) => text,
        };
        for c in text.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '"' => f.write_str("\\\"")?,
                '\n' => f.write_str("\\n")?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

impl Value {
    fn text(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    fn is(&self, s: &str) -> bool {
        match self {
            Value::Num(n) => s.parse() == Ok(*n),
            Value::Text(t) => t == s,
        }
    }
}

/// A counter or gauge family: one sample per label-value tuple, kept sorted for the output.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    labels: &'static [&'static str],
    samples: BTreeMap<Vec<Value>, f64>,
}

impl Family {
    fn new(name: &'static str, help: &'static str, kind: &'static str, labels: &'static [&'static str]) -> Family {
        let mut samples = BTreeMap::new();
        // An unlabelled series exists from the start, so a scrape before the first update reads 0
        // rather than nothing (rate() and absent() treat those differently).
        if labels.is_empty() {
            samples.insert(Vec::new(), 0.0);
        }
        Family { name, help, kind, labels, samples }
    }

    fn add(&mut self, key: Vec<Value>, n: u64) {
        *self.samples.entry(key).or_insert(0.0) += n as f64;
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, self.kind);
        for (key, &value) in &self.samples {
            out.push_str(self.name);
            for (i, (label, v)) in self.labels.iter().zip(key).enumerate() {
                let _ = write!(out, "{}{label}=\"{v}\"", if i == 0 { '{' } else { ',' });
            }
            // Every value here is finite (counts, offsets, durations), and `Display` for f64 never
            // uses an exponent, so it writes Prometheus's float syntax as it is.
            let _ = writeln!(out, "{} {value}", if key.is_empty() { "" } else { "}" });
        }
    }

    /// The sample whose labels are exactly `labels`, in any order.
    fn get(&self, labels: &[(&str, &str)]) -> Option<f64> {
        if labels.len() != self.labels.len() {
            return None;
        }
        let matches = |key: &Vec<Value>| {
            self.labels.iter().zip(key).all(|(name, v)| labels.iter().any(|&(l, s)| l == *name && v.is(s)))
        };
        self.samples.iter().find(|(key, _)| matches(key)).map(|(_, &v)| v)
    }
}

/// An unlabelled histogram; `counts` are per bucket, made cumulative when rendered.
struct Histogram {
    name: &'static str,
    help: &'static str,
    bounds: &'static [f64],
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }

    fn render(&self, out: &mut String) {
        header(out, self.name, self.help, "histogram");
        let mut cumulative = 0;
        for (&bound, &n) in self.bounds.iter().zip(&self.counts) {
            cumulative += n;
            let _ = writeln!(out, "{}_bucket{{le=\"{bound}\"}} {cumulative}", self.name);
        }
        let _ = writeln!(out, "{}_bucket{{le=\"+Inf\"}} {}", self.name, self.count);
        let _ = writeln!(out, "{}_sum {}\n{}_count {}", self.name, self.sum, self.name, self.count);
    }
}

struct Families {
    records_in: Family,
    tags_stored: Family,
    published: Family,
    dead_letters: Family,
    pending: Family,
    epochs: Family,
    lag: Family,
    sink_retries: Family,
    rule_budget: Family,
    commit: Histogram,
    latency: Histogram,
}

impl Families {
    fn plain(&self) -> [&Family; 9] {
        let Families {
            records_in,
            tags_stored,
            published,
            dead_letters,
            pending,
            epochs,
            lag,
            sink_retries,
            rule_budget,
            ..
        } = self;
        [records_in, tags_stored, published, dead_letters, pending, epochs, lag, sink_retries, rule_budget]
    }
}

/// Logs, once per rule, that a rule could not judge a subject within its pattern budget
/// (the subjects themselves are `rule_budget_exceeded` dead letters).
#[derive(Debug, Default)]
pub struct BudgetWarnings(std::collections::BTreeSet<String>);

impl BudgetWarnings {
    pub fn note(&mut self, dead: &DeadLetter) {
        if let Some(rule) = dead.budget_rule() {
            if self.0.insert(rule.to_string()) {
                tracing::warn!(
                    rule,
                    "a rule could not judge a subject within its pattern budget; each such subject is a \
                     rule_budget_exceeded dead letter (logged once per rule)"
                );
            }
        }
    }
}

/// The job's metrics registry, shared as `Arc<Metrics>` between the workers and the server.
pub struct Metrics {
    families: Mutex<Families>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut published =
            Family::new("ttpflow_published_total", "Messages published, by kind.", "counter", &["kind"]);
        let mut sink_retries = Family::new(
            "ttpflow_sink_retries_total",
            "Transient sink failures retried, by sink.",
            "counter",
            &["sink"],
        );
        // The kinds and sinks are known up front; their zeros make a first increment visible to rate().
        for kind in Published::ALL {
            published.add(vec![Value::text(kind.as_str())], 0);
        }
        for sink in Sink::ALL {
            sink_retries.add(vec![Value::text(sink.as_str())], 0);
        }
        let families = Families {
            records_in: Family::new("ttpflow_records_in_total", "Records read, by topic.", "counter", &["topic"]),
            tags_stored: Family::new("ttpflow_tags_stored_total", "Tags newly stored.", "counter", &[]),
            published,
            dead_letters: Family::new("ttpflow_dead_letters_total", "Dead letters, by reason.", "counter", &["reason"]),
            pending: Family::new("ttpflow_pending_unanchored", "Events waiting for their attacker.", "gauge", &[]),
            epochs: Family::new("ttpflow_epochs_committed_total", "Epochs committed.", "counter", &[]),
            lag: Family::new(
                "ttpflow_consumer_lag_records",
                "High watermark minus next offset, by topic and partition.",
                "gauge",
                &["topic", "partition"],
            ),
            sink_retries,
            rule_budget: Family::new(
                "ttpflow_rule_budget_exceeded_total",
                "Subjects a rule could not judge within its pattern budget, by rule.",
                "counter",
                &["rule"],
            ),
            commit: Histogram {
                name: "ttpflow_epoch_commit_seconds",
                help: "Time of one epoch's commit.",
                bounds: &COMMIT_BUCKETS,
                counts: vec![0; COMMIT_BUCKETS.len()],
                sum: 0.0,
                count: 0,
            },
            latency: Histogram {
                name: "ttpflow_record_commit_latency_seconds",
                help: "Time from the oldest record of a committed live epoch (its Kafka timestamp) to the end of the commit.",
                bounds: &LATENCY_BUCKETS,
                counts: vec![0; LATENCY_BUCKETS.len()],
                sum: 0.0,
                count: 0,
            },
        };
        Metrics { families: Mutex::new(families) }
    }

    fn lock(&self) -> MutexGuard<'_, Families> {
        lock(&self.families)
    }

    pub fn records_in(&self, topic: &str, n: u64) {
        self.lock().records_in.add(vec![Value::text(topic)], n);
    }

    pub fn tags_stored(&self, n: u64) {
        self.lock().tags_stored.add(Vec::new(), n);
    }

    pub fn published(&self, kind: Published, n: u64) {
        self.lock().published.add(vec![Value::text(kind.as_str())], n);
    }

    pub fn dead_letter(&self, reason: Reason, n: u64) {
        self.lock().dead_letters.add(vec![Value::text(reason.as_str())], n);
    }

    /// Counts a dead letter: by reason, and by rule when a rule ran out of its budget.
    pub fn dead_letter_of(&self, dead: &DeadLetter) {
        self.dead_letter(dead.reason, 1);
        if let Some(rule) = dead.budget_rule() {
            self.lock().rule_budget.add(vec![Value::text(rule)], 1);
        }
    }

    pub fn set_pending(&self, n: u64) {
        self.lock().pending.samples.insert(Vec::new(), n as f64);
    }

    /// One committed epoch and how long its commit took: the epoch counter and the histogram's
    /// count move together because they are updated by this one call.
    pub fn observe_commit(&self, took: Duration) {
        let mut families = self.lock();
        families.epochs.add(Vec::new(), 1);
        families.commit.observe(took.as_secs_f64());
    }

    /// The latency of one committed epoch's oldest record, in seconds.
    pub fn observe_latency(&self, seconds: f64) {
        self.lock().latency.observe(seconds);
    }

    pub fn set_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.lock().lag.samples.insert(vec![Value::text(topic), Value::Num(partition.into())], lag as f64);
    }

    /// Drops a partition's lag when it is revoked, so that another consumer's partition does not
    /// keep a stale value here.
    pub fn remove_lag(&self, topic: &str, partition: i32) {
        self.lock().lag.samples.remove(&vec![Value::text(topic), Value::Num(partition.into())]);
    }

    pub fn sink_retry(&self, sink: Sink, n: u64) {
        self.lock().sink_retries.add(vec![Value::text(sink.as_str())], n);
    }

    /// A sample's current value, by family name and labels (in any order); the histogram answers
    /// to its `_sum` and `_count` names.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let families = self.lock();
        let commit = &families.commit;
        match name.strip_prefix(commit.name) {
            Some("_count") if labels.is_empty() => return Some(commit.count as f64),
            Some("_sum") if labels.is_empty() => return Some(commit.sum),
            _ => {}
        }
        let family = families.plain().into_iter().find(|f| f.name == name)?;
        family.get(labels)
    }

    /// The text exposition: every family with `# HELP` and `# TYPE`, samples in label order.
    pub fn render(&self) -> String {
        let families = self.lock();
        let mut out = String::with_capacity(4096);
        families.plain().iter().for_each(|f| f.render(&mut out));
        families.commit.render(&mut out);
        families.latency.render(&mut out);
        out
    }
}

/// Whether the job is healthy, and if not why; it starts healthy.
#[derive(Default)]
pub struct Health {
    problem: Mutex<Option<String>>,
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    pub fn set_ok(&self) {
        *lock(&self.problem) = None;
    }

    pub fn set_unhealthy(&self, reason: impl Into<String>) {
        *lock(&self.problem) = Some(reason.into());
    }

    /// `Err` holds the reason given to [`Health::set_unhealthy`].
    pub fn status(&self) -> Result<(), String> {
        lock(&self.problem).clone().map_or(Ok(()), Err)
    }
}

/// The running HTTP server; dropping it stops the thread.
#[must_use = "dropping the Server stops it"]
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and waits for the thread, at most the time one slow client may take.
    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // The thread does not panic; were it to, the server is gone either way.
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// Binds `addr` (port 0 picks one, see [`Server::local_addr`]) and serves `/metrics` and
/// `/healthz` from one background thread.
pub fn serve(addr: SocketAddr, metrics: Arc<Metrics>, health: Arc<Health>) -> io::Result<Server> {
    let listener = TcpListener::bind(addr)?;
    // Accept is polled rather than woken by a connection to ourselves at shutdown: that
    // connection can fail (wildcard address, firewall) and would leave drop waiting forever.
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let thread = thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || accept_loop(&listener, &flag, &metrics, &health))?;
    Ok(Server { addr, stop, thread: Some(thread) })
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, metrics: &Metrics, health: &Health) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            // A failed exchange concerns that client only: the next scrape opens a new connection.
            Ok((stream, _)) => {
                let _ = handle(stream, metrics, health);
            }
            // Nothing to accept, or out of descriptors: wait rather than spin.
            Err(_) => thread::sleep(ACCEPT_POLL),
        }
    }
}

fn handle(mut stream: TcpStream, metrics: &Metrics, health: &Health) -> io::Result<()> {
    // Some platforms hand out accepted sockets with the listener's non-blocking mode.
    stream.set_nonblocking(false)?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let answer = match read_head(&mut stream).as_deref().and_then(request_line) {
        Some((method, path)) => route(method, path, metrics, health),
        None => response("400 Bad Request", TEXT, "", "bad request\n"),
    };
    stream.write_all(answer.as_bytes())?;
    stream.flush()
}

/// The request head up to its blank line, or `None` if the client closes, errs, exceeds the
/// size limit or the deadline first. The deadline covers the whole head: a timeout per read
/// alone would let a client trickling one byte at a time hold the thread indefinitely.
fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let ended = |h: &[u8]| h.windows(4).any(|w| w == b"\r\n\r\n") || h.windows(2).any(|w| w == b"\n\n");
    while !ended(&head) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || head.len() > HEAD_LIMIT {
            return None;
        }
        stream.set_read_timeout(Some(left)).ok()?;
        let n = stream.read(&mut buf).ok().filter(|&n| n > 0)?;
        head.extend_from_slice(&buf[..n]);
    }
    Some(head)
}

/// Method and path (without query) of a request line `METHOD /path HTTP/1.x`.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line.strip_suffix(b"\r").unwrap_or(line)).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let token = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if parts.next().is_some() || !token || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return None;
    }
    Some((method, target.split_once('?').map_or(target, |(path, _)| path)))
}

fn route(method: &str, path: &str, metrics: &Metrics, health: &Health) -> String {
    if path != "/metrics" && path != "/healthz" {
        return response("404 Not Found", TEXT, "", "not found\n");
    }
    if method != "GET" {
        return response("405 Method Not Allowed", TEXT, "Allow: GET\r\n", "method not allowed\n");
    }
    if path == "/metrics" {
        return response("200 OK", CONTENT_TYPE, "", &metrics.render());
    }
    match health.status() {
        Ok(()) => response("200 OK", TEXT, "", "ok\n"),
        Err(reason) => response("503 Service Unavailable", TEXT, "", &format!("{reason}\n")),
    }
}

/// A whole response; `extra` is more header lines, each ending in CRLF.
fn response(status: &str, content_type: &str, extra: &str, body: &str) -> String {
    let length = body.len();
    let head = format!("HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {length}\r\n");
    head + "Connection: close\r\n\r\n" + body
}

/// Locks, recovering from poisoning: a panic elsewhere while holding the lock leaves numbers
/// that are still worth serving, and the scrape thread must not die of someone else's panic.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let help = help.replace('\\', "\\\\").replace('\n', "\\n");
    let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_exactly() {
        let metrics = Metrics::new();
        metrics.records_in("sessions", 2);
        metrics.records_in("events", 1);
        metrics.records_in("sessions", 3);
        metrics.records_in("a\\b\"c\nd", 1);
        metrics.tags_stored(7);
        metrics.tags_stored(1);
        metrics.published(Published::RuleFired, 5);
        metrics.set_pending(4);
        metrics.set_pending(2);
        for took in [Duration::from_micros(500), Duration::from_millis(3), Duration::from_millis(3)] {
            metrics.observe_commit(took);
        }
        metrics.observe_commit(Duration::from_secs(20));
        metrics.set_lag("events", 10, 5);
        metrics.set_lag("events", 2, 7);
        metrics.set_lag("events", 2, -3);
        metrics.set_lag("attackers", 0, 1);
        metrics.set_lag("events", 1, 9);
        metrics.remove_lag("events", 1);
        metrics.sink_retry(Sink::Postgres, 1);
        let unjudged = |rule: &str| DeadLetter {
            pos: Default::default(),
            topic: None,
            reason: Reason::RuleBudgetExceeded,
            detail: format!("{rule}: a pattern … could not judge its command 0 within its budget"),
        };
        for rule in ["R0016", "X1", "R0016"] {
            metrics.dead_letter_of(&unjudged(rule));
        }
        metrics.observe_latency(0.04);
        metrics.observe_latency(0.3);
        metrics.observe_latency(75.0);
        let text = metrics.render();
        let expected = r#"# HELP ttpflow_records_in_total Records read, by topic.
# TYPE ttpflow_records_in_total counter
ttpflow_records_in_total{topic="a\\b\"c\nd"} 1
ttpflow_records_in_total{topic="events"} 1
ttpflow_records_in_total{topic="sessions"} 5
# HELP ttpflow_tags_stored_total Tags newly stored.
# TYPE ttpflow_tags_stored_total counter
ttpflow_tags_stored_total 8
# HELP ttpflow_published_total Messages published, by kind.
# TYPE ttpflow_published_total counter
ttpflow_published_total{kind="dead_letter"} 0
ttpflow_published_total{kind="rollup"} 0
ttpflow_published_total{kind="rule_fired"} 5
ttpflow_published_total{kind="tagged"} 0
# HELP ttpflow_dead_letters_total Dead letters, by reason.
# TYPE ttpflow_dead_letters_total counter
ttpflow_dead_letters_total{reason="rule_budget_exceeded"} 3
# HELP ttpflow_pending_unanchored Events waiting for their attacker.
# TYPE ttpflow_pending_unanchored gauge
ttpflow_pending_unanchored 2
# HELP ttpflow_epochs_committed_total Epochs committed.
# TYPE ttpflow_epochs_committed_total counter
ttpflow_epochs_committed_total 4
# HELP ttpflow_consumer_lag_records High watermark minus next offset, by topic and partition.
# TYPE ttpflow_consumer_lag_records gauge
ttpflow_consumer_lag_records{topic="attackers",partition="0"} 1
ttpflow_consumer_lag_records{topic="events",partition="2"} -3
ttpflow_consumer_lag_records{topic="events",partition="10"} 5
# HELP ttpflow_sink_retries_total Transient sink failures retried, by sink.
# TYPE ttpflow_sink_retries_total counter
ttpflow_sink_retries_total{sink="kafka"} 0
ttpflow_sink_retries_total{sink="postgres"} 1
# HELP ttpflow_rule_budget_exceeded_total Subjects a rule could not judge within its pattern budget, by rule.
# TYPE ttpflow_rule_budget_exceeded_total counter
ttpflow_rule_budget_exceeded_total{rule="R0016"} 2
ttpflow_rule_budget_exceeded_total{rule="X1"} 1
# HELP ttpflow_epoch_commit_seconds Time of one epoch's commit.
# TYPE ttpflow_epoch_commit_seconds histogram
ttpflow_epoch_commit_seconds_bucket{le="0.001"} 1
ttpflow_epoch_commit_seconds_bucket{le="0.0025"} 1
ttpflow_epoch_commit_seconds_bucket{le="0.005"} 3
ttpflow_epoch_commit_seconds_bucket{le="0.01"} 3
ttpflow_epoch_commit_seconds_bucket{le="0.025"} 3
ttpflow_epoch_commit_seconds_bucket{le="0.05"} 3
ttpflow_epoch_commit_seconds_bucket{le="0.1"} 3
ttpflow_epoch_commit_seconds_bucket{le="0.25"} 3
ttpflow_epoch_commit_seconds_bucket{le="0.5"} 3
ttpflow_epoch_commit_seconds_bucket{le="1"} 3
ttpflow_epoch_commit_seconds_bucket{le="2.5"} 3
ttpflow_epoch_commit_seconds_bucket{le="5"} 3
ttpflow_epoch_commit_seconds_bucket{le="10"} 3
ttpflow_epoch_commit_seconds_bucket{le="+Inf"} 4
ttpflow_epoch_commit_seconds_sum 20.0065
ttpflow_epoch_commit_seconds_count 4
# HELP ttpflow_record_commit_latency_seconds Time from the oldest record of a committed live epoch (its Kafka timestamp) to the end of the commit.
# TYPE ttpflow_record_commit_latency_seconds histogram
ttpflow_record_commit_latency_seconds_bucket{le="0.01"} 0
ttpflow_record_commit_latency_seconds_bucket{le="0.025"} 0
ttpflow_record_commit_latency_seconds_bucket{le="0.05"} 1
ttpflow_record_commit_latency_seconds_bucket{le="0.1"} 1
ttpflow_record_commit_latency_seconds_bucket{le="0.25"} 1
ttpflow_record_commit_latency_seconds_bucket{le="0.5"} 2
ttpflow_record_commit_latency_seconds_bucket{le="1"} 2
ttpflow_record_commit_latency_seconds_bucket{le="2.5"} 2
ttpflow_record_commit_latency_seconds_bucket{le="5"} 2
ttpflow_record_commit_latency_seconds_bucket{le="10"} 2
ttpflow_record_commit_latency_seconds_bucket{le="30"} 2
ttpflow_record_commit_latency_seconds_bucket{le="60"} 2
ttpflow_record_commit_latency_seconds_bucket{le="+Inf"} 3
ttpflow_record_commit_latency_seconds_sum 75.34
ttpflow_record_commit_latency_seconds_count 3
"#;
        assert_eq!(text, expected);
        assert_eq!(text, metrics.render());
    }

    #[test]
    fn values_read_back_by_labels_in_any_order() {
        let metrics = Metrics::new();
        metrics.set_lag("events", 3, 11);
        metrics.records_in("events", 2);
        metrics.dead_letter(Reason::NoAnchor, 3);
        assert_eq!(metrics.value("ttpflow_dead_letters_total", &[("reason", "no_anchor")]), Some(3.0));
        assert_eq!(
            metrics.value("ttpflow_consumer_lag_records", &[("partition", "3"), ("topic", "events")]),
            Some(11.0)
        );
        assert_eq!(metrics.value("ttpflow_consumer_lag_records", &[("topic", "events"), ("partition", "4")]), None);
        assert_eq!(metrics.value("ttpflow_consumer_lag_records", &[("topic", "events")]), None);
        assert_eq!(metrics.value("ttpflow_records_in_total", &[("topic", "events")]), Some(2.0));
        assert_eq!(metrics.value("ttpflow_records_in_total", &[("topic", "sessions")]), None);
        assert_eq!(metrics.value("ttpflow_tags_stored_total", &[]), Some(0.0));
        assert_eq!(metrics.value("ttpflow_no_such_total", &[]), None);
    }

    #[test]
    fn request_lines_are_checked() {
        assert_eq!(request_line(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"), Some(("GET", "/metrics")));
        assert_eq!(request_line(b"POST /healthz HTTP/1.0\n\n"), Some(("POST", "/healthz")));
        for bad in [
            &b"GET /metrics\r\n\r\n"[..],
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"get / HTTP/1.1\r\n\r\n",
            b"\xff\r\n\r\n",
            b"",
        ] {
            assert_eq!(request_line(bad), None, "{bad:?}");
        }
    }

    /// Sends `request` and returns the status line, the head and the body of the answer.
    fn exchange(addr: SocketAddr, request: &[u8]) -> (String, String, String) {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        stream.write_all(request).expect("write");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read");
        let (head, body) = response.split_once("\r\n\r\n").expect("a response head");
        let status = head.lines().next().unwrap_or_default().to_owned();
        let length = head.lines().find_map(|l| l.strip_prefix("Content-Length: ")).and_then(|n| n.parse().ok());
        assert_eq!(length, Some(body.len()), "{head}");
        assert!(head.contains("\r\nConnection: close"), "{head}");
        (status, head.to_owned(), body.to_owned())
    }

    fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").into_bytes()
    }

    #[test]
    fn serves_metrics_health_and_errors_over_http() {
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new());
        let server =
            serve("127.0.0.1:0".parse().expect("addr"), Arc::clone(&metrics), Arc::clone(&health)).expect("serve");
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);
        metrics.records_in("events", 3);

        let (status, head, body) = exchange(addr, &get("/metrics"));
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(head.contains("\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8"), "{head}");
        assert!(body.contains("\nttpflow_records_in_total{topic=\"events\"} 3\n"), "{body}");
        assert_eq!(body, metrics.render());

        let (status, _, body) = exchange(addr, &get("/healthz"));
        assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ok\n"));
        health.set_unhealthy("postgres unreachable, retrying");
        let (status, _, body) = exchange(addr, &get("/healthz?probe=1"));
        assert_eq!(
            (status.as_str(), body.as_str()),
            ("HTTP/1.1 503 Service Unavailable", "postgres unreachable, retrying\n")
        );
        health.set_ok();
        assert_eq!(exchange(addr, &get("/healthz")).0, "HTTP/1.1 200 OK");

        assert_eq!(exchange(addr, &get("/nope")).0, "HTTP/1.1 404 Not Found");
        let (status, head, _) = exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
        assert!(head.contains("\r\nAllow: GET"), "{head}");
        assert_eq!(exchange(addr, b"\x16\x03\x01 hello\r\n\r\n").0, "HTTP/1.1 400 Bad Request");

        // A client that closes mid-head is answered 400; so is one that trickles its head a byte
        // at a time, within the deadline, while the next client waits for its turn.
        let mut partial = TcpStream::connect(addr).expect("connect");
        partial.write_all(b"GET /metr").expect("write");
        partial.shutdown(std::net::Shutdown::Write).expect("shutdown");
        let mut answer = String::new();
        partial.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
        let started = Instant::now();
        let mut slow = TcpStream::connect(addr).expect("connect");
        slow.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut writer = slow.try_clone().expect("clone");
        let trickle = thread::spawn(move || {
            let _ = writer.write_all(b"GET /metrics HTTP/1.1\r\nX: ");
            for _ in 0..40 {
                thread::sleep(Duration::from_millis(150));
                if writer.write_all(b"a").is_err() {
                    break;
                }
            }
        });
        assert_eq!(exchange(addr, &get("/healthz")).0, "HTTP/1.1 200 OK");
        assert!(started.elapsed() < CLIENT_TIMEOUT * 2, "{:?}", started.elapsed());
        let mut answer = String::new();
        slow.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
        trickle.join().expect("trickle");

        server.shutdown();
        assert!(TcpStream::connect(addr).is_err());
    }
}
