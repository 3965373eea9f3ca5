//! The records that flow between stages.
//!
//! Every record carries its [`Pos`] (input and offset) because offsets, not envelope
//! ids, identify a record (DECNET's broker re-stamps ids), and because "the earliest
//! record wins" decides which row is stored for a tag uuid.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::json::Json;

/// Evidence fields a predicate or detection adds to a tag, merged over the rule's evidence
/// fields.
pub type Extra = Vec<(String, Json)>;

/// Where a record came from: its record time, the input (file or topic partition) and the
/// offset in it. The derived order is the order of the records: for files, the order in
/// which they were read (their time is 0); on Kafka, the record timestamps, then topic,
/// partition and offset (inputs are numbered in topic and partition order). It is a
/// property of the record, not of when it arrived, so everything decided by it ("the
/// latest row wins", "the earliest record's row is stored") comes out the same however
/// the records of several partitions interleave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Pos {
    /// Milliseconds since the Unix epoch of the Kafka record (its timestamp); 0 in files.
    pub ts: i64,
    pub input: u32,
    pub offset: u64,
}

/// One raw input record (a JSONL line or a Kafka value), before decoding.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Line {
    pub pos: Pos,
    /// The Kafka topic the record was read from; `None` for files, where the record names it.
    pub topic: Option<String>,
    /// `Err` when the record's bytes could not be taken as text.
    pub text: Result<String, LineError>,
}

/// Why a record's bytes are not text for the decoder.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LineError {
    /// Not valid UTF-8; the detail says where.
    InvalidUtf8(String),
    /// Longer than the record limit: the source skipped it, keeping none of it, and
    /// `bytes` is how much it read (the whole record, or what came before the input ended).
    Oversize { bytes: u64 },
}

/// A decoded bus event.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Event {
    pub pos: Pos,
    pub topic: String,
    /// The envelope `type` (the fingerprint kind on `attacker.fingerprinted`).
    pub event_type: String,
    /// DECNET's `source_kind` for the topic; `None` where DECNET tags nothing.
    pub source_kind: Option<String>,
    /// Event time in microseconds since the Unix epoch, when the record has one.
    pub event_time: Option<i64>,
    /// The payload object, shared: events are copied between operators, payloads are not.
    pub payload: Arc<Json>,
}

impl Event {
    /// The payload's string field `key`, when present and a non-empty string.
    pub fn str_field(&self, key: &str) -> Option<&str> {
        self.payload.get(key).and_then(Json::as_str).filter(|s| !s.is_empty())
    }

    /// Whether DECNET would consider the event anchored without an IP lookup.
    pub fn has_anchor(&self) -> bool {
        ["attacker_uuid", "identity_uuid"].iter().any(|k| self.payload.get(k).is_some_and(Json::is_truthy))
    }
}

/// The reference tables of DESIGN §1.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Table {
    Attackers,
    Identities,
    Campaigns,
    Intel,
}

impl Table {
    pub fn from_topic(topic: &str) -> Option<Table> {
        match topic {
            "decnet.attackers" => Some(Table::Attackers),
            "decnet.attacker_identities" => Some(Table::Identities),
            "decnet.campaigns" => Some(Table::Campaigns),
            "decnet.attacker_intel" => Some(Table::Intel),
            _ => None,
        }
    }
}

/// A row of `decnet.attackers`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttackerRow {
    pub uuid: String,
    pub ip: Option<String>,
    pub identity_id: Option<String>,
}

/// An upsert of one table: `row: None` is a tombstone.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TableUpdate {
    pub pos: Pos,
    pub table: Table,
    pub key: String,
    pub row: Option<TableRow>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TableRow {
    Attacker(AttackerRow),
    /// Rows of the other tables are kept as validated objects until a stage reads them.
    Other(Json),
}

/// Why a record could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Reason {
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    MissingField,
    WrongType,
    UnknownTopic,
    Oversize,
    /// No attacker_uuid / identity_uuid and no IP to resolve one from.
    NoAnchor,
    /// The IP never resolved to an attacker before the end of input (or the TTL).
    Unanchored,
    /// `merged_into` pointers of identities or campaigns that form a cycle.
    MergeCycle,
    /// A stored tag came for a session whose rollup row of its technique had closed lately:
    /// counted in its other scopes only.
    SessionClosed,
    /// A rule whose pattern needs the backtracking engine could not judge a subject within
    /// its budget: the record is used, but that rule did not judge it. The detail starts
    /// with the rule id.
    RuleBudgetExceeded,
    /// PostgreSQL refused to store a tag of the record for a reason of its data (the
    /// detail gives the rule, the tag and the server's message); the job went on.
    SinkRejected,
}

impl Reason {
    pub fn as_str(&self) -> &'static str {
        match self {
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::InvalidJson => "invalid_json",
            Reason::NotAnObject => "not_an_object",
            Reason::MissingField => "missing_field",
            Reason::WrongType => "wrong_type",
            Reason::UnknownTopic => "unknown_topic",
            Reason::Oversize => "oversize",
            Reason::NoAnchor => "no_anchor",
            Reason::Unanchored => "unanchored",
            Reason::MergeCycle => "merge_cycle",
            Reason::SessionClosed => "session_closed",
            Reason::RuleBudgetExceeded => "rule_budget_exceeded",
            Reason::SinkRejected => "sink_rejected",
        }
    }
}

/// A record that could not be used, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DeadLetter {
    pub pos: Pos,
    pub topic: Option<String>,
    pub reason: Reason,
    pub detail: String,
}

impl DeadLetter {
    /// The rule of a `rule_budget_exceeded` letter (its detail's first word).
    pub fn budget_rule(&self) -> Option<&str> {
        (self.reason == Reason::RuleBudgetExceeded).then(|| self.detail.split(':').next().unwrap_or_default())
    }
}

/// What rules look at: an event, or one command of a session (DECNET's TaggerEvent).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Subject {
    pub pos: Pos,
    /// 0 for the event itself, `i + 1` for its command `i`.
    pub part: u32,
    pub source_kind: String,
    pub source_id: String,
    pub attacker_uuid: Option<String>,
    pub identity_uuid: Option<String>,
    pub session_id: Option<String>,
    pub decky_id: Option<String>,
    pub event_time: Option<i64>,
    pub payload: Arc<Json>,
}

/// A confidence in [0, 1], ordered so tags can live in collections.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Confidence(pub f64);

impl PartialEq for Confidence {
    fn eq(&self, other: &Self) -> bool {
        self.0.total_cmp(&other.0).is_eq()
    }
}
impl Eq for Confidence {}
impl PartialOrd for Confidence {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Confidence {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}
impl std::hash::Hash for Confidence {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.0.to_bits().hash(state)
    }
}

/// A technique tag, with DECNET's tag fields plus where it came from.
/// Field order matters: tags order by (pos, part, emit) so the earliest record sorts first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Tag {
    pub pos: Pos,
    pub part: u32,
    /// Index of the emit within its rule and of the rule within the pack.
    pub emit: u32,
    pub uuid: [u8; 16],
    pub source_kind: String,
    pub source_id: String,
    pub attacker_uuid: Option<String>,
    pub identity_uuid: Option<String>,
    pub session_id: Option<String>,
    pub decky_id: Option<String>,
    pub tactic: String,
    pub technique_id: String,
    pub sub_technique_id: Option<String>,
    pub confidence: Confidence,
    pub rule_id: String,
    pub rule_version: i64,
    pub evidence: Json,
    pub attack_release: String,
    pub observed_at: Option<i64>,
}
