//! Windows: cross-event detections over event time (DESIGN §2.6), computed in the stream.
//!
//! Input: the subjects after fan-out, the table upserts (for the identity of an attacker)
//! and the pack. Output: the tags of the pack's windowed rules, to be concatenated with
//! detect's before the store. Sends nothing to dead letters.
//!
//! Rules take part by their match kind, whatever their id, each with its YAML parameters
//! (DECNET's defaults where absent). `auth_attempt` subjects feed the credential family,
//! `email` subjects the mass-phishing one:
//! * `credential_auth_brute_generic` (R0001): an attempt fires when its attacker (the
//!   subject's attacker_uuid, else its identity_uuid) failed — a string `result` other
//!   than `success` — at least `fail_threshold` times in the trailing window
//!   `(t − window_minutes, t]`, the attempt itself included. Evidence: the rule's fields,
//!   `fail_count`, `window_minutes`.
//! * `credential_password_guessing` (R0002): at least `pw_threshold` distinct passwords for
//!   one (attacker, username) in the trailing window. Evidence: `password_count`.
//! * `identity_password_spraying` (R0003, window 60 min unless given): one password tried
//!   against at least `account_threshold` distinct usernames by one identity in the trailing
//!   window. The identity is the payload's identity_uuid, else the `identity_id` of the
//!   attacker's latest row in `decnet.attackers` (latest by input position), else the
//!   attacker. Tag: source_kind `identity`, source_id the identity; evidence
//!   `shared_password_hash`, `account_count`.
//! * `credential_reuse` (R0004, window 60 min): one secret (username and password) used by
//!   at least two distinct attackers within `window_minutes` of each other, the window
//!   `(t − w, t + w)` around each use. Each such attacker is tagged once, on its earliest
//!   qualifying use: source_kind `credential`, source_id `<attacker>#cred:<first 16 hex
//!   digits of the credential hash>`; evidence `credential_hash`, `reuse_count`.
//! * `credential_valid_account_use` (R0005): a `success` after at least the brute-force
//!   threshold of failures strictly before it, in `(t − w, t)`; threshold and window are
//!   those of the pack's `credential_auth_brute_generic` rule, else 5 in 5 minutes.
//!   Evidence: `prior_fail_count`.
//! * `email_mass_phish` (R0042): messages sharing a body simhash (the payload's
//!   `body_simhash`, else [`simhash`] of `body_text`; no body, no part) within
//!   `body_simhash_window_h` of each other, the window `(t − w, t + w)`: when there are at
//!   least two and their `rcpt_count`s sum to at least `rcpt_threshold`, each fires.
//!   Evidence: [`crate::email::evidence`] plus `simhash_messages`, `simhash_rcpt_total`.
//!
//! Window edges: an entry exactly `window` before a subject is outside its window; one at
//! the same instant is inside (except R0005's, which counts strictly earlier failures). A
//! window around its subject is measured as of the first instant it qualifies (see
//! `sweep`), so later inputs do not rewrite the evidence of earlier subjects.
//!
//! Parity with DECNET: a payload that carries DECNET's pre-computed fields is judged by
//! the rule's stateless predicate in detect; the stream emits for a subject only when that
//! predicate does not fire on it (the subject still counts in the windows). In-stream tags
//! order after the stateless tags of the same record ([`crate::rules::WINDOWED_EMIT`]), so
//! when both yield one uuid the stateless row is stored. Confidence, rule state and the
//! floor are the pack's ([`crate::rules::TagRule::emit_windowed`]). Subjects without an
//! event time take no part.
//!
//! Swaps ([`crate::schedule`]): a subject is made into window inputs by the pack in effect
//! at its epoch, compiled once per pack into a plan. Each input carries the definition of
//! its rule under that pack (parameters, emits, state; [`RuleDef`]), so it is judged, tagged
//! and retired by that definition for as long as it stays, whatever is loaded since. A
//! window is one rule (by rule id) and one group: inputs made before and after a swap meet
//! in it, so a swap does not restart a running window; each candidate is judged by its own
//! definition, over every entry of the window. A rule the new pack drops or disables gets no
//! new inputs; its inputs already made run out as they would have, and the tags they made
//! stay stored. An input's horizon is that of its own definition's window.
//!
//! Determinism: detections are differential reduces over keyed collections, so the output
//! is a function of the set of inputs, whatever their order or epoch cuts. Thresholds are
//! monotone: more inputs only add qualifications, and expiry only removes them, so every
//! tag the stage emits (a transient one included) has a uuid the detection over all input
//! would also tag — except that an R0003 tag made before the attacker's row names its
//! identity stays keyed by the attacker.
//!
//! Expiry, through a feedback loop: the watermark is the greatest event time retained,
//! rounded down to the minute. A subject retires as a candidate once it is `window +
//! LATENESS_US` behind the watermark — its tags retract from this stage's output (the store
//! ignores retractions; stored rows stay) and it remains an entry of later windows — before
//! its window could lose an entry; an input leaves once it is `2 × window + LATENESS_US`
//! behind, when no candidate's window can hold it. Both take effect one epoch after the
//! watermark passes, so the inputs of one epoch always meet in the windows: cutting a
//! replay into large epochs hides no input of an epoch from another. An input that arrives
//! in a later epoch already past the horizon takes part for that one epoch only.
//!
//! Arrangements (named) and state, all shrinking as event time advances: `retained window
//! inputs by due minute` (each input keyed by the minute it retires, so it is examined once
//! then, not whenever the watermark moves), `passed due minutes` and the reduce `watermark
//! and passed due minutes` (the distinct minutes and due minutes retained), `retiring
//! window inputs` (inputs between falling due and leaving), `window detections` (inputs by
//! [`WindowKey`], and the fires), `spraying attempts by attacker`. Besides, `attacker
//! identities` / `identity by attacker` hold every version of each `decnet.attackers` row
//! received, bounded by the table. State holds hashes, never a password: a candidate keeps
//! only the evidence fields its rule shows (never `password`); an email candidate only its
//! hashes, counts and domains. A window's detection is recomputed whenever one of its
//! inputs changes, so an epoch costs in proportion to the inputs of the windows it touches.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use differential_dataflow::operators::iterate::VecVariable;
use differential_dataflow::trace::implementations::{KeyBatcher, KeySpine};
use differential_dataflow::AsCollection;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use timely::dataflow::operators::vec::{Filter, Map};

use crate::email;
use crate::json::Json;
use crate::record::Extra;
use crate::record::{Subject, Table, TableRow, TableUpdate, Tag};
use crate::rules::{Matcher, RulePack, TagRule};
use crate::schedule::PackSchedule;
use crate::types::{Coll, Diff, Time};

/// How far behind the watermark an input may arrive and still find its window whole.
pub const LATENESS_US: i64 = 10 * MINUTE_US;
/// The watermark's granularity: inputs fall due in whole minutes of event time.
const WATERMARK_QUANTUM_US: i64 = MINUTE_US;
/// Windows longer than this are clipped to it (a year keeps the arithmetic far from overflow).
const MAX_WINDOW_US: i64 = 366 * 24 * 60 * MINUTE_US;
const MINUTE_US: i64 = 60_000_000;
/// R0004: distinct attackers that make a secret reused.
const REUSE_MIN_ATTACKERS: f64 = 2.0;

pub use crate::secret::Digest;
use crate::secret::SecretKey;

/// The stage: the windowed rules' tags.
pub fn stage<'s>(subjects: Coll<'s, Subject>, tables: Coll<'s, TableUpdate>, packs: PackSchedule) -> Coll<'s, Tag> {
    graph(subjects, tables, packs).tags
}

/// The stage's collections: its tags, and the window inputs it retains (for tests).
struct Parts<'s> {
    tags: Coll<'s, Tag>,
    #[cfg_attr(not(test), allow(dead_code))]
    retained: Coll<'s, Input>,
}

fn graph<'s>(subjects: Coll<'s, Subject>, tables: Coll<'s, TableUpdate>, packs: PackSchedule) -> Parts<'s> {
    let mut plans = packs.lookup(|pack| Plan::compile(Arc::clone(pack)));
    let inputs = subjects
        .inner
        .flat_map(move |(subject, time, diff): (Subject, Time, Diff)| {
            plans.at(time).inputs(&subject).into_iter().map(move |input| (input, time, diff))
        })
        .as_collection();
    let retained = retain(inputs);
    let spraying = retained.clone().filter(Input::needs_identity);
    let entries = retained.clone().filter(|i| !i.needs_identity()).concat(resolve_identities(spraying, tables));
    let fires =
        entries.map(|i| (i.key, i.entry)).reduce_named("window detections", |_, entries, out| detect(entries, out));
    let tags = fires.flat_map(|(key, fire)| tags(&key, &fire));
    Parts { tags, retained }
}

/// What the watermark does to a retained input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Retirement {
    /// The subject's window may lose entries from now on: it stops being a candidate (its
    /// tags retract) and stays only as an entry of later subjects' windows.
    Demote,
    /// Past every window that could still hold it: the input leaves.
    Expire,
}

/// The window inputs, less the retirements the watermark made due, one epoch later.
fn retain<'s>(inputs: Coll<'s, Input>) -> Coll<'s, Input> {
    let (edit, edits) = VecVariable::new(inputs.scope(), 1);
    let retained = inputs.concat(edits);
    let by_due = retained.clone().map(|i| (i.due(), i));
    // Keyed by the minute they fall due, inputs are looked at once, when that minute passes,
    // not every time the watermark moves.
    let passed = by_due
        .clone()
        .map(|(due, i)| ((), (quantize(i.entry.t), due)))
        .reduce_named("watermark and passed due minutes", |_, values, out| {
            let watermark = values.iter().map(|((minute, _), _)| *minute).max().unwrap_or(i64::MIN);
            let mut passed: Vec<i64> = values.iter().map(|((_, due), _)| *due).filter(|d| *d <= watermark).collect();
            passed.sort_unstable();
            passed.dedup();
            out.extend(passed.into_iter().map(|due| ((due, watermark), 1)));
        })
        .map(|((), passed)| passed)
        .arrange_by_key_named("passed due minutes");
    let due =
        by_due.arrange_by_key_named("retained window inputs by due minute").join_core(passed, |_, input, watermark| {
            input.retirement(*watermark).map(|retirement| (input.clone(), retirement))
        });
    // An input is due from the epoch its minute passes until its edit lands, when it
    // retracts. The join may split one time's output into pieces of both signs (the
    // watermark moves as an edit lands): consolidate per time, then keep what became due.
    let edits = due
        .consolidate_named::<_, KeySpine<_, _, _>, _>("retiring window inputs", KeyBatcher::new, |d, &()| d.clone())
        .inner
        .filter(|(_, _, diff)| *diff > 0)
        .flat_map(|((input, retirement), time, diff)| {
            let demoted = (retirement == Retirement::Demote).then(|| (input.demoted(), time, diff));
            std::iter::once((input, time, -diff)).chain(demoted)
        })
        .as_collection();
    edit.set(edits);
    retained
}

/// Spraying inputs without an identity in their payload take their attacker's.
fn resolve_identities<'s>(spraying: Coll<'s, Input>, tables: Coll<'s, TableUpdate>) -> Coll<'s, Input> {
    let identities = tables
        .flat_map(|update| {
            let identity = match update.row {
                Some(TableRow::Attacker(row)) => row.identity_id.filter(|i| !i.is_empty()),
                _ => None,
            };
            (update.table == Table::Attackers).then_some((update.key, (update.pos, identity)))
        })
        .reduce_named("attacker identities", |_, versions, out| {
            // Versions sort by position: the last is the attacker's latest row.
            if let Some(identity) = &versions[versions.len() - 1].0 .1 {
                out.push((identity.clone(), 1));
            }
        })
        .arrange_by_key_named("identity by attacker");
    let joined = spraying
        .clone()
        .map(|i| (i.attacker().to_string(), i))
        .arrange_by_key_named("spraying attempts by attacker")
        .join_core(identities, |_, input, identity| Some((input.clone(), identity.clone())));
    let unknown = spraying.concat(joined.clone().map(|(input, _)| input).negate());
    joined.map(|(input, identity)| input.with_identity(Some(&identity))).concat(unknown.map(|i| i.with_identity(None)))
}

/// One input of a windowed rule: an entry in the window of its group.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Input {
    pub key: WindowKey,
    pub entry: Entry,
    /// The window of the rule as the input's pack defines it, which decides when it retires.
    pub window: i64,
}

/// A window: one rule (by its id, the same across packs) and one group of its inputs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WindowKey {
    pub rule: Arc<str>,
    pub group: Group,
}

/// What the inputs of a window share.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Group {
    /// R0001, R0005: an attacker.
    Attacker(String),
    /// R0002: an attacker and a username.
    Account { attacker: String, username: String },
    /// R0003 before its identity is known: the attacker and the password's hash.
    SprayingAttacker { attacker: String, password: Digest },
    /// R0003: an identity and the password's hash.
    Spraying { identity: String, password: Digest },
    /// R0004: the hash of a username and password.
    Secret(Digest),
    /// R0042: a body simhash.
    Body(String),
}

/// One input in a window, ordered by event time first.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// Event time, microseconds since the Unix epoch.
    pub t: i64,
    /// What distinct counts count: a password hash (R0002), a username (R0003), an attacker (R0004).
    pub item: Item,
    /// What sums add: recipients (R0042); 1 otherwise.
    pub weight: i64,
    /// Whether the entry counts at all (R0001, R0005: failures only).
    pub counted: bool,
    /// The subject, reduced to what its tag may show, when the entry may fire.
    pub candidate: Option<Arc<Candidate>>,
}

/// A subject that may fire, with the definition of the rule it is judged by.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Candidate {
    pub subject: Subject,
    pub rule: RuleDef,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Item {
    Nothing,
    Hash(Digest),
    Name(String),
}

/// A subject that fired, with the measure of its window.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fire {
    pub candidate: Arc<Candidate>,
    /// Counted entries, or distinct items, as the detection measures.
    pub count: i64,
    /// The sum of the counted entries' weights.
    pub total: i64,
}

impl Input {
    fn needs_identity(&self) -> bool {
        matches!(self.key.group, Group::SprayingAttacker { .. })
    }

    fn attacker(&self) -> &str {
        match &self.key.group {
            Group::SprayingAttacker { attacker, .. } => attacker,
            _ => "",
        }
    }

    /// A spraying input keyed by `identity`, else by its attacker.
    fn with_identity(self, identity: Option<&str>) -> Input {
        let Input { key, entry, window } = self;
        let group = match key.group {
            Group::SprayingAttacker { attacker, password } => {
                Group::Spraying { identity: identity.map_or(attacker, str::to_string), password }
            }
            other => other,
        };
        Input { key: WindowKey { rule: key.rule, group }, entry, window }
    }

    /// The input without its candidate: an entry of other subjects' windows only.
    fn demoted(&self) -> Input {
        Input { entry: Entry { candidate: None, ..self.entry.clone() }, ..self.clone() }
    }

    /// How far behind the watermark the input retires: a candidate once its window may lose
    /// entries (`window + LATENESS_US`), an input once no candidate's window can hold it
    /// (`2 × window + LATENESS_US`).
    fn lag(&self) -> (i64, i64) {
        (self.window + LATENESS_US, 2 * self.window + LATENESS_US)
    }

    /// The first watermark (a whole minute) at which the input retires.
    fn due(&self) -> i64 {
        let (demote, expire) = self.lag();
        let lag = if self.entry.candidate.is_some() { demote } else { expire };
        let at = self.entry.t.saturating_add(lag);
        at + (WATERMARK_QUANTUM_US - at.rem_euclid(WATERMARK_QUANTUM_US)) % WATERMARK_QUANTUM_US
    }

    /// What `watermark` makes due for the input.
    fn retirement(&self, watermark: i64) -> Option<Retirement> {
        let (demote, expire) = self.lag();
        let entry = &self.entry;
        if entry.t <= watermark.saturating_sub(expire) {
            return Some(Retirement::Expire);
        }
        if entry.candidate.is_some() && entry.t <= watermark.saturating_sub(demote) {
            return Some(if entry.counted { Retirement::Demote } else { Retirement::Expire });
        }
        None
    }
}

/// The watermark of an event time: rounded down to the minute.
fn quantize(t: i64) -> i64 {
    t - t.rem_euclid(WATERMARK_QUANTUM_US)
}

/// The cross-event detections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Detection {
    AuthBurst,
    PasswordGuessing,
    PasswordSpraying,
    CredentialReuse,
    ValidAfterBrute,
    MassPhish,
}

/// Which entries around a subject at `t` its window holds (all exclude `t − window`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Span {
    /// `(t − w, t]`.
    Trailing,
    /// `(t − w, t)`.
    Before,
    /// `(t − w, t + w)`.
    Around,
}

impl Detection {
    fn of_kind(kind: &str) -> Option<Detection> {
        Some(match kind {
            "lifter:credential_auth_brute_generic" => Detection::AuthBurst,
            "lifter:credential_password_guessing" => Detection::PasswordGuessing,
            "lifter:identity_password_spraying" => Detection::PasswordSpraying,
            "lifter:credential_reuse" => Detection::CredentialReuse,
            "lifter:credential_valid_account_use" => Detection::ValidAfterBrute,
            "lifter:email_mass_phish" => Detection::MassPhish,
            _ => return None,
        })
    }

    fn span(self) -> Span {
        match self {
            Detection::ValidAfterBrute => Span::Before,
            Detection::CredentialReuse | Detection::MassPhish => Span::Around,
            _ => Span::Trailing,
        }
    }
}

/// A windowed rule of a pack, with its parameters resolved.
#[derive(Debug, Serialize, Deserialize)]
pub struct WindowRule {
    /// The rule's index in its pack.
    idx: usize,
    rule_id: Arc<str>,
    detection: Detection,
    /// Window length in microseconds.
    window: i64,
    /// The window in minutes, for evidence (`window_minutes`).
    window_minutes: Json,
    threshold: f64,
    /// The payload fields a candidate keeps: the rule's evidence fields, never `password`.
    keep: Vec<String>,
    /// What its tags need of the rule.
    tags: TagRule,
}

/// A windowed rule as one pack defines it, shared by the inputs made under that pack and
/// compared by a digest of the definition, so that the same definition in two packs is one.
/// The digest is of the definition's `Debug` text: it is compared only within one build.
#[derive(Clone, Serialize, Deserialize)]
pub struct RuleDef {
    digest: u64,
    rule: Arc<WindowRule>,
}

impl RuleDef {
    fn new(rule: WindowRule) -> RuleDef {
        let digest = Sha256::digest(format!("{rule:?}").as_bytes());
        let digest = u64::from_be_bytes(digest[..8].try_into().unwrap_or_default());
        RuleDef { digest, rule: Arc::new(rule) }
    }
}

impl std::ops::Deref for RuleDef {
    type Target = WindowRule;

    fn deref(&self) -> &WindowRule {
        &self.rule
    }
}

impl std::fmt::Debug for RuleDef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{:016x}", self.rule.rule_id, self.digest)
    }
}

impl PartialEq for RuleDef {
    fn eq(&self, other: &RuleDef) -> bool {
        self.digest == other.digest
    }
}

impl Eq for RuleDef {}

impl PartialOrd for RuleDef {
    fn partial_cmp(&self, other: &RuleDef) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for RuleDef {
    fn cmp(&self, other: &RuleDef) -> std::cmp::Ordering {
        self.digest.cmp(&other.digest)
    }
}

impl std::hash::Hash for RuleDef {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.digest.hash(state);
    }
}

/// A pack's windowed rules, compiled once per pack.
struct Plan {
    pack: Arc<RulePack>,
    rules: Vec<RuleDef>,
}

/// A numeric parameter, when present, finite and positive.
fn param(params: &Json, key: &str) -> Option<f64> {
    match params.get(key)? {
        Json::Num(n) => n.parse::<f64>().ok().filter(|x| x.is_finite() && *x > 0.0),
        _ => None,
    }
}

fn minutes_us(minutes: f64) -> i64 {
    ((minutes * MINUTE_US as f64).round() as i64).clamp(1, MAX_WINDOW_US)
}

/// Where a detection finds its parameters, with DECNET's defaults.
struct Spec {
    /// The threshold's parameter (`None`: fixed) and default.
    threshold: (Option<&'static str>, f64),
    /// The window's parameter, default, and minutes per unit of it.
    window: (&'static str, f64, f64),
}

impl Detection {
    fn spec(self) -> Spec {
        let minutes = |default: f64| ("window_minutes", default, 1.0);
        match self {
            Detection::AuthBurst | Detection::ValidAfterBrute => {
                Spec { threshold: (Some("fail_threshold"), 5.0), window: minutes(5.0) }
            }
            Detection::PasswordGuessing => Spec { threshold: (Some("pw_threshold"), 5.0), window: minutes(5.0) },
            Detection::PasswordSpraying => Spec { threshold: (Some("account_threshold"), 3.0), window: minutes(60.0) },
            Detection::CredentialReuse => Spec { threshold: (None, REUSE_MIN_ATTACKERS), window: minutes(60.0) },
            Detection::MassPhish => {
                Spec { threshold: (Some("rcpt_threshold"), 25.0), window: ("body_simhash_window_h", 24.0, 60.0) }
            }
        }
    }
}

impl Plan {
    fn compile(pack: Arc<RulePack>) -> Plan {
        let structured = |rule: &crate::rules::Rule| match &rule.matcher {
            Matcher::Structured { kind, params, .. } => Detection::of_kind(kind).map(|d| (d, params.clone())),
            Matcher::Regex { .. } | Matcher::Shell { .. } => None,
        };
        // R0005 reads its brute force as the pack's brute-force rule defines one.
        let brute = pack.rules().iter().filter_map(structured).find(|(d, _)| *d == Detection::AuthBurst);
        let brute_params = brute.map(|(_, params)| params).unwrap_or(Json::Null);
        let mut rules = Vec::new();
        for (idx, rule) in pack.rules().iter().enumerate() {
            let Some((detection, own_params)) = structured(rule) else { continue };
            if !rule.state.is_active() {
                continue;
            }
            let params = if detection == Detection::ValidAfterBrute { &brute_params } else { &own_params };
            let Spec { threshold: (threshold_key, threshold), window: (window_key, window, unit) } = detection.spec();
            let minutes = param(params, window_key).unwrap_or(window) * unit;
            rules.push(RuleDef::new(WindowRule {
                idx,
                rule_id: rule.rule_id.as_str().into(),
                detection,
                window: minutes_us(minutes),
                window_minutes: Json::Num(format!("{minutes}")),
                threshold: threshold_key.and_then(|k| param(params, k)).unwrap_or(threshold),
                keep: rule.evidence_fields.iter().filter(|f| f.as_str() != "password").cloned().collect(),
                tags: pack.tag_rule(idx),
            }));
        }
        Plan { pack, rules }
    }

    /// Whether the rule's stateless predicate fires on the subject (then detect has judged it).
    fn stateless_fires(&self, rule: &WindowRule, subject: &Subject) -> bool {
        match &self.pack.rules()[rule.idx].matcher {
            Matcher::Structured { predicate, .. } => predicate.fires(&subject.payload).is_some(),
            Matcher::Regex { .. } | Matcher::Shell { .. } => false,
        }
    }

    /// The subject as a candidate of `rule`, unless the rule's stateless predicate fires on it.
    fn candidate(&self, rule: &RuleDef, subject: &Subject, payload: impl FnOnce() -> Json) -> Option<Arc<Candidate>> {
        if self.stateless_fires(rule, subject) {
            return None;
        }
        let subject = Subject { payload: Arc::new(payload()), ..subject.clone() };
        Some(Arc::new(Candidate { subject, rule: rule.clone() }))
    }

    /// The window inputs of one subject.
    fn inputs(&self, subject: &Subject) -> Vec<Input> {
        let Some(t) = subject.event_time else { return Vec::new() };
        match subject.source_kind.as_str() {
            "auth_attempt" => match Attempt::read(subject) {
                Some(attempt) => {
                    self.rules.iter().filter_map(|rule| self.auth_input(rule, subject, t, &attempt)).collect()
                }
                None => Vec::new(),
            },
            "email" => self.rules.iter().filter_map(|rule| self.email_input(rule, subject, t)).collect(),
            _ => Vec::new(),
        }
    }

    fn auth_input(&self, rule: &RuleDef, subject: &Subject, t: i64, attempt: &Attempt) -> Option<Input> {
        let attacker = attempt.attacker.to_string();
        let credential = attempt.username.zip(attempt.password);
        let (group, item, counted, may_fire) = match rule.detection {
            Detection::AuthBurst => (Group::Attacker(attacker), Item::Nothing, attempt.failed, true),
            Detection::ValidAfterBrute => (Group::Attacker(attacker), Item::Nothing, attempt.failed, attempt.succeeded),
            Detection::PasswordGuessing => {
                let (username, password) = credential?;
                let group = Group::Account { attacker, username: username.to_string() };
                (group, Item::Hash(password_hash(self.pack.secret_key(), password)), true, true)
            }
            Detection::PasswordSpraying => {
                let (username, password) = credential?;
                let password = password_hash(self.pack.secret_key(), password);
                let group = match &subject.identity_uuid {
                    Some(identity) => Group::Spraying { identity: identity.clone(), password },
                    None => Group::SprayingAttacker { attacker, password },
                };
                (group, Item::Name(username.to_string()), true, true)
            }
            Detection::CredentialReuse => {
                let (username, password) = credential?;
                (
                    Group::Secret(secret_hash(self.pack.secret_key(), username, password)),
                    Item::Name(attacker),
                    true,
                    true,
                )
            }
            Detection::MassPhish => return None,
        };
        let candidate =
            if may_fire { self.candidate(rule, subject, || kept_fields(&subject.payload, &rule.keep)) } else { None };
        if !counted && candidate.is_none() {
            return None;
        }
        Some(Input {
            key: WindowKey { rule: Arc::clone(&rule.rule_id), group },
            entry: Entry { t, item, weight: 1, counted, candidate },
            window: rule.window,
        })
    }

    fn email_input(&self, rule: &RuleDef, subject: &Subject, t: i64) -> Option<Input> {
        if rule.detection != Detection::MassPhish {
            return None;
        }
        let payload = &subject.payload;
        let body = match payload.get("body_simhash") {
            Some(Json::Str(given)) if !given.is_empty() => given.to_ascii_lowercase(),
            _ => simhash(payload.get("body_text").and_then(Json::as_str)?)?,
        };
        let recipients = match payload.get("rcpt_count") {
            Some(Json::Num(n)) => n.parse::<i64>().unwrap_or(0).max(0),
            _ => 0,
        };
        let candidate = self.candidate(rule, subject, || Json::Obj(email::evidence(payload, &[], Vec::new())));
        Some(Input {
            key: WindowKey { rule: Arc::clone(&rule.rule_id), group: Group::Body(body) },
            entry: Entry { t, item: Item::Nothing, weight: recipients, counted: true, candidate },
            window: rule.window,
        })
    }
}

/// The detection of one window: the candidates whose window qualifies, each judged by the
/// definition it was made under (one, unless a swap changed the rule while the window ran).
fn detect(entries: &[(&Entry, Diff)], out: &mut Vec<(Fire, Diff)>) {
    let mut rules: Vec<&RuleDef> = entries.iter().filter_map(|(e, _)| e.candidate.as_ref()).map(|c| &c.rule).collect();
    rules.sort();
    rules.dedup();
    for rule in rules {
        detect_under(rule, entries, out);
    }
}

/// The candidates made under `rule` whose window qualifies, over every entry of the window.
fn detect_under(rule: &RuleDef, entries: &[(&Entry, Diff)], out: &mut Vec<(Fire, Diff)>) {
    let measure = |tally: &Tally| match rule.detection {
        Detection::AuthBurst | Detection::ValidAfterBrute | Detection::MassPhish => tally.count,
        _ => tally.distinct.len() as i64,
    };
    let qualifies = |tally: &Tally| {
        let enough = measure(tally) as f64 >= rule.threshold;
        match rule.detection {
            Detection::MassPhish => tally.count >= 2 && tally.total as f64 >= rule.threshold,
            _ => enough,
        }
    };
    let mut fired_attackers: BTreeSet<&Item> = BTreeSet::new();
    let mine = |candidate: &Candidate| candidate.rule == *rule;
    sweep(rule.detection.span(), rule.window, entries, mine, qualifies, |entry, candidate, tally| {
        // R0004 tags each attacker once, on its earliest qualifying use.
        if rule.detection == Detection::CredentialReuse && !fired_attackers.insert(&entry.item) {
            return;
        }
        out.push((Fire { candidate: Arc::clone(candidate), count: measure(tally), total: tally.total }, 1));
    });
}

/// The tags of a fire, as the definition of its candidate's rule makes them.
fn tags(key: &WindowKey, fire: &Fire) -> Vec<Tag> {
    let rule = &fire.candidate.rule;
    let number = |n: i64| Json::Num(n.to_string());
    let mut subject = fire.candidate.subject.clone();
    let extra: Extra = match (rule.detection, &key.group) {
        (Detection::AuthBurst, _) => vec![
            ("fail_count".to_string(), number(fire.count)),
            ("window_minutes".to_string(), rule.window_minutes.clone()),
        ],
        (Detection::ValidAfterBrute, _) => vec![("prior_fail_count".to_string(), number(fire.count))],
        (Detection::PasswordGuessing, _) => vec![("password_count".to_string(), number(fire.count))],
        (Detection::PasswordSpraying, Group::Spraying { identity, password }) => {
            subject.source_kind = "identity".to_string();
            subject.source_id = identity.clone();
            vec![
                ("shared_password_hash".to_string(), Json::Str(hex(password))),
                ("account_count".to_string(), number(fire.count)),
            ]
        }
        (Detection::CredentialReuse, Group::Secret(secret)) => {
            let secret = hex(secret);
            subject.source_kind = "credential".to_string();
            subject.source_id = format!("{}#cred:{}", attacker_of(&subject).unwrap_or_default(), &secret[..16]);
            vec![("credential_hash".to_string(), Json::Str(secret)), ("reuse_count".to_string(), number(fire.count))]
        }
        (Detection::MassPhish, _) => {
            let mut evidence = match &*subject.payload {
                Json::Obj(fields) => fields.clone(),
                _ => Vec::new(),
            };
            evidence.push(("simhash_messages".to_string(), number(fire.count)));
            evidence.push(("simhash_rcpt_total".to_string(), number(fire.total)));
            evidence
        }
        _ => return Vec::new(),
    };
    let mut out = Vec::new();
    rule.tags.emit_windowed(&subject, extra, &mut out);
    out
}

/// What the credential detections read from an `auth_attempt` subject. The password is
/// only read here, to be hashed: window state holds its hashes, never the password.
struct Attempt<'a> {
    attacker: &'a str,
    username: Option<&'a str>,
    password: Option<&'a str>,
    failed: bool,
    succeeded: bool,
}

impl<'a> Attempt<'a> {
    fn read(subject: &'a Subject) -> Option<Attempt<'a>> {
        let payload = &*subject.payload;
        let text = |field: &str| payload.get(field).and_then(Json::as_str);
        let result = text("result");
        Some(Attempt {
            attacker: attacker_of(subject)?,
            username: text("username"),
            password: text("password"),
            failed: result.is_some_and(|r| r != "success"),
            succeeded: result == Some("success"),
        })
    }
}

/// The attacker of a subject: its attacker_uuid, else its identity_uuid.
fn attacker_of(subject: &Subject) -> Option<&str> {
    subject.attacker_uuid.as_deref().or(subject.identity_uuid.as_deref()).filter(|a| !a.is_empty())
}

/// The secret of a credential: the deployment's keyed hash ([`SecretKey::hash`]) over the
/// username's length (8 bytes, big-endian), the username and the password, so that no two
/// pairs share an encoding.
pub fn secret_hash(key: &SecretKey, username: &str, password: &str) -> Digest {
    key.hash(&[&(username.len() as u64).to_be_bytes(), username.as_bytes(), password.as_bytes()])
}

/// The keyed hash of a password.
fn password_hash(key: &SecretKey, password: &str) -> Digest {
    key.hash(&[password.as_bytes()])
}

fn hex(digest: &Digest) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The fields of `payload` named in `keep`, in that order.
fn kept_fields(payload: &Json, keep: &[String]) -> Json {
    Json::Obj(keep.iter().filter_map(|k| payload.get(k).map(|v| (k.clone(), v.clone()))).collect())
}

/// A 64-bit simhash of `text` over its word 3-shingles, as 16 lowercase hex digits.
///
/// Words are the maximal runs of alphanumeric characters, lower-cased; a text of one or two
/// words is a single shingle. Each shingle votes on every bit with the first 8 bytes of its
/// SHA-256; a bit is set when more shingles set it than clear it. `None` without words.
pub fn simhash(text: &str) -> Option<String> {
    let words: Vec<String> =
        text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect();
    if words.is_empty() {
        return None;
    }
    let shingles: Vec<String> =
        if words.len() < 3 { vec![words.join(" ")] } else { words.windows(3).map(|w| w.join(" ")).collect() };
    let mut votes = [0i64; 64];
    for shingle in &shingles {
        let digest = Sha256::digest(shingle.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        let bits = u64::from_be_bytes(first);
        for (bit, vote) in votes.iter_mut().enumerate() {
            *vote += if bits >> bit & 1 == 1 { 1 } else { -1 };
        }
    }
    let hash = votes.iter().enumerate().filter(|(_, v)| **v > 0).fold(0u64, |acc, (bit, _)| acc | 1 << bit);
    Some(format!("{hash:016x}"))
}

/// The counted entries of a window.
#[derive(Default)]
struct Tally<'a> {
    count: i64,
    total: i64,
    distinct: BTreeMap<&'a Item, Diff>,
}

impl<'a> Tally<'a> {
    fn add(&mut self, entry: &'a Entry, diff: Diff) {
        if !entry.counted {
            return;
        }
        self.count += diff as i64;
        self.total += entry.weight * diff as i64;
        if entry.item != Item::Nothing {
            *self.distinct.entry(&entry.item).or_default() += diff;
        }
    }

    fn remove(&mut self, entry: &'a Entry, diff: Diff) {
        if !entry.counted {
            return;
        }
        self.count -= diff as i64;
        self.total -= entry.weight * diff as i64;
        if let Some(n) = self.distinct.get_mut(&entry.item) {
            *n -= diff;
            if *n <= 0 {
                self.distinct.remove(&entry.item);
            }
        }
    }
}

/// Calls `visit` for every candidate of `entries` (sorted by event time) that is `mine` and
/// whose window `qualifies`, with the tally that qualified it, sliding the window edges
/// forward once. Every counted entry counts, the candidates of other definitions included.
///
/// A window reaching past its subject (`Span::Around`) is measured as of the first instant
/// it qualifies: the subject's own time when what precedes suffices, else the time of the
/// later input that completed it. So a tally never changes once the inputs up to that
/// instant are in, and later inputs do not rewrite earlier subjects' evidence.
fn sweep<'a>(
    span: Span,
    window: i64,
    entries: &[(&'a Entry, Diff)],
    mine: impl Fn(&Candidate) -> bool,
    qualifies: impl Fn(&Tally<'a>) -> bool,
    mut visit: impl FnMut(&'a Entry, &'a Arc<Candidate>, &Tally<'a>),
) {
    let mut tally = Tally::default();
    let (mut lo, mut hi) = (0, 0);
    for &(entry, _) in entries {
        let Some(candidate) = entry.candidate.as_ref().filter(|c| mine(c)) else { continue };
        let t = entry.t;
        let upto = |e: i64| if span == Span::Before { e < t } else { e <= t };
        while hi < entries.len() && upto(entries[hi].0.t) {
            tally.add(entries[hi].0, entries[hi].1);
            hi += 1;
        }
        while lo < hi && entries[lo].0.t <= t.saturating_sub(window) {
            tally.remove(entries[lo].0, entries[lo].1);
            lo += 1;
        }
        // Later subjects qualify no earlier than earlier ones (their windows start later),
        // so the upper edge never has to move back.
        if span == Span::Around {
            while !qualifies(&tally) && hi < entries.len() && entries[hi].0.t < t.saturating_add(window) {
                let instant = entries[hi].0.t;
                while hi < entries.len() && entries[hi].0.t == instant {
                    tally.add(entries[hi].0, entries[hi].1);
                    hi += 1;
                }
            }
        }
        if qualifies(&tally) {
            visit(entry, candidate, &tally);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use differential_dataflow::input::Input as _;

    use super::*;
    use crate::predicates;
    use crate::record::{AttackerRow, Confidence, Pos};
    use crate::rules::{Emit, Rule, RuleState, StateMode, DEFAULT_ATTACK_RELEASE, WINDOWED_EMIT};
    use crate::types::Time;

    /// 2026-01-01T00:00:00Z.
    const T0: i64 = 1_767_225_600_000_000;
    const S: i64 = 1_000_000;
    const M: i64 = 60 * S;
    const H: i64 = 60 * M;

    fn rule(
        id: &str,
        kind: &str,
        params: &str,
        applies_to: &str,
        emit: (&str, &str, Option<&str>, f64),
        evidence: &[&str],
    ) -> Rule {
        let params = Json::parse(params).unwrap();
        Rule {
            rule_id: id.into(),
            rule_version: 1,
            name: id.to_lowercase(),
            description: String::new(),
            applies_to: vec![applies_to.into()],
            matcher: Matcher::Structured {
                kind: kind.into(),
                predicate: predicates::compile(kind, &params).unwrap(),
                params,
            },
            emits: vec![Emit {
                tactic: emit.0.into(),
                technique_id: emit.1.into(),
                sub_technique_id: emit.2.map(str::to_string),
                confidence: emit.3,
            }],
            evidence_fields: evidence.iter().map(|f| f.to_string()).collect(),
            state: RuleState::default(),
        }
    }

    fn brute(params: &str) -> Rule {
        let kind = "lifter:credential_auth_brute_generic";
        rule("R0001", kind, params, "auth_attempt", ("TA0006", "T1110", None, 0.85), &["fail_count", "service"])
    }

    fn guessing() -> Rule {
        let kind = "lifter:credential_password_guessing";
        let emit = ("TA0006", "T1110", Some("T1110.001"), 0.85);
        rule(
            "R0002",
            kind,
            r#"{"pw_threshold":5,"window_minutes":5}"#,
            "auth_attempt",
            emit,
            &["username", "password_count"],
        )
    }

    fn spraying() -> Rule {
        let kind = "lifter:identity_password_spraying";
        let emit = ("TA0006", "T1110", Some("T1110.003"), 0.9);
        rule("R0003", kind, r#"{"account_threshold":3}"#, "identity", emit, &["shared_password_hash", "account_count"])
    }

    fn reuse() -> Rule {
        let emit = ("TA0006", "T1110", Some("T1110.004"), 0.9);
        rule("R0004", "lifter:credential_reuse", "{}", "credential", emit, &["credential_hash", "reuse_count"])
    }

    fn valid_use() -> Rule {
        let kind = "lifter:credential_valid_account_use";
        let emit = ("TA0001", "T1078", None, 0.7);
        rule("R0005", kind, r#"{"require_prior_brute":true}"#, "auth_attempt", emit, &["username", "service"])
    }

    fn default_credentials() -> Rule {
        let kind = "lifter:credential_default_credentials";
        let emit = ("TA0001", "T1078", Some("T1078.001"), 0.9);
        rule("R0006", kind, r#"{"pairs":[["root","root"]]}"#, "auth_attempt", emit, &["username", "service"])
    }

    fn mass_phish() -> Rule {
        let params = r#"{"rcpt_threshold":25,"body_simhash_window_h":24}"#;
        let emit = ("TA0001", "T1566", None, 0.85);
        rule("R0042", "lifter:email_mass_phish", params, "email", emit, &["rcpt_count", "body_simhash"])
    }

    fn auth(offset: u64, at: i64, attacker: &str, fields: &str) -> Subject {
        let payload = format!(r#"{{"attacker_uuid":"{attacker}","service":"ssh",{fields}}}"#);
        Subject {
            pos: Pos { ts: 0, input: 0, offset },
            part: 0,
            source_kind: "auth_attempt".into(),
            source_id: attacker.into(),
            attacker_uuid: Some(attacker.into()),
            identity_uuid: None,
            session_id: None,
            decky_id: None,
            event_time: Some(T0 + at),
            payload: Arc::new(Json::parse(&payload).unwrap()),
        }
    }

    fn tried(offset: u64, at: i64, attacker: &str, username: &str, password: &str, result: &str) -> Subject {
        auth(offset, at, attacker, &format!(r#""username":"{username}","password":"{password}","result":"{result}""#))
    }

    fn fail(offset: u64, at: i64, attacker: &str) -> Subject {
        tried(offset, at, attacker, "root", "123456", "fail")
    }

    fn email(offset: u64, at: i64, id: &str, fields: &str) -> Subject {
        let payload = format!(
            r#"{{"attacker_uuid":"a-mail","from_domain":"ceo@victim.example","rcpt_domains":["Victim.example"],{fields}}}"#
        );
        Subject {
            pos: Pos { ts: 0, input: 0, offset },
            part: 0,
            source_kind: "email".into(),
            source_id: id.into(),
            attacker_uuid: Some("a-mail".into()),
            identity_uuid: None,
            session_id: None,
            decky_id: None,
            event_time: Some(T0 + at),
            payload: Arc::new(Json::parse(&payload).unwrap()),
        }
    }

    fn attacker_row(offset: u64, uuid: &str, identity: Option<&str>) -> TableUpdate {
        TableUpdate {
            pos: Pos { ts: 0, input: 1, offset },
            table: Table::Attackers,
            key: uuid.into(),
            row: Some(TableRow::Attacker(AttackerRow {
                uuid: uuid.into(),
                ip: None,
                identity_id: identity.map(str::to_string),
            })),
        }
    }

    /// One epoch of input.
    #[derive(Default, Clone)]
    struct Epoch {
        subjects: Vec<Subject>,
        tables: Vec<TableUpdate>,
    }

    fn epoch(subjects: Vec<Subject>) -> Epoch {
        Epoch { subjects, tables: Vec::new() }
    }

    type Captured<D> = Arc<Mutex<Vec<(D, Time, Diff)>>>;

    struct Run {
        tags: Vec<(Tag, Time, Diff)>,
        retained: Vec<(Input, Time, Diff)>,
    }

    /// Feeds epoch `i` at time `i` and runs the graph to completion.
    fn run(rules: Vec<Rule>, epochs: Vec<Epoch>) -> Run {
        run_scheduled(PackSchedule::fixed(Arc::new(RulePack::new(rules, DEFAULT_ATTACK_RELEASE))), epochs)
    }

    /// [`run`] with the packs of `packs`.
    fn run_scheduled(packs: PackSchedule, epochs: Vec<Epoch>) -> Run {
        let (tags, retained): (Captured<Tag>, Captured<Input>) = Default::default();
        let (t, r) = (Arc::clone(&tags), Arc::clone(&retained));
        timely::execute_directly(move |worker| {
            let (mut subjects, mut tables) = worker.dataflow::<Time, _, _>(|scope| {
                let (subjects_in, subjects) = scope.new_collection::<Subject, Diff>();
                let (tables_in, tables) = scope.new_collection::<TableUpdate, Diff>();
                let parts = graph(subjects, tables, packs);
                parts.tags.inspect(move |x| t.lock().unwrap().push(x.clone()));
                parts.retained.inspect(move |x| r.lock().unwrap().push(x.clone()));
                (subjects_in, tables_in)
            });
            for (time, epoch) in epochs.into_iter().enumerate() {
                subjects.advance_to(time as Time);
                tables.advance_to(time as Time);
                epoch.subjects.into_iter().for_each(|s| subjects.insert(s));
                epoch.tables.into_iter().for_each(|u| tables.insert(u));
            }
        });
        let mut run = Run { tags: tags.lock().unwrap().clone(), retained: retained.lock().unwrap().clone() };
        differential_dataflow::consolidation::consolidate_updates(&mut run.tags);
        differential_dataflow::consolidation::consolidate_updates(&mut run.retained);
        run
    }

    /// The collection once every update has arrived, whatever the times.
    fn accumulated<D: Ord + Clone>(updates: &[(D, Time, Diff)]) -> Vec<(D, Diff)> {
        let mut all: Vec<(D, Diff)> = updates.iter().map(|(d, _, r)| (d.clone(), *r)).collect();
        differential_dataflow::consolidation::consolidate(&mut all);
        all
    }

    /// A tag as one readable line: rule, source, record, confidence, evidence.
    fn show(tag: &Tag) -> String {
        format!(
            "{} {}/{} @{} {} {}",
            tag.rule_id,
            tag.source_kind,
            tag.source_id,
            tag.pos.offset,
            tag.confidence.0,
            tag.evidence.to_json_string()
        )
    }

    /// The final tags, each present once.
    fn final_tags(run: &Run) -> Vec<String> {
        accumulated(&run.tags)
            .iter()
            .map(|(tag, diff)| {
                assert_eq!(*diff, 1, "{}", show(tag));
                assert_eq!(tag.emit & WINDOWED_EMIT, WINDOWED_EMIT, "in-stream tags order after stateless ones");
                show(tag)
            })
            .collect()
    }

    fn sha256_hex(bytes: &[u8]) -> String {
        hex(&Sha256::digest(bytes).into())
    }

    #[test]
    fn auth_burst_fires_from_the_threshold_on_and_only_inside_the_window() {
        let run = run(
            vec![brute(r#"{"fail_threshold":5,"window_minutes":5}"#)],
            vec![epoch(vec![
                fail(0, 0, "a"),
                fail(1, 60 * S, "a"),
                fail(2, 120 * S, "a"),
                fail(3, 180 * S, "a"),
                // (0 s, 300 s]: the failure exactly a window before is out.
                fail(4, 300 * S, "a"),
                fail(5, 301 * S, "a"),
                fail(10, 0, "b"),
                fail(11, 60 * S, "b"),
                fail(12, 120 * S, "b"),
                fail(13, 180 * S, "b"),
                // (−1 µs, 300 s − 1 µs]: all five are in.
                fail(14, 300 * S - 1, "b"),
                // A success inside a burst fires too: its window holds five failures.
                tried(15, 300 * S - 1, "b", "root", "x", "success"),
                // Four failures of another attacker are no burst.
                fail(20, 0, "c"),
                fail(21, S, "c"),
                fail(22, 2 * S, "c"),
                fail(23, 3 * S, "c"),
            ])],
        );
        assert_eq!(
            final_tags(&run),
            [
                r#"R0001 auth_attempt/a @5 0.85 {"service":"ssh","fail_count":5,"window_minutes":5}"#,
                r#"R0001 auth_attempt/b @14 0.85 {"service":"ssh","fail_count":5,"window_minutes":5}"#,
                r#"R0001 auth_attempt/b @15 0.85 {"service":"ssh","fail_count":5,"window_minutes":5}"#,
            ]
        );
    }

    #[test]
    fn where_the_stateless_predicate_fires_the_stream_stays_silent_but_counts() {
        let precomputed = r#""username":"root","password":"x","result":"fail","fail_count":9"#;
        let subjects = vec![
            fail(0, 0, "a"),
            fail(1, S, "a"),
            fail(2, 2 * S, "a"),
            fail(3, 3 * S, "a"),
            // Detect tags this one from its fail_count; the stream must not.
            auth(4, 4 * S, "a", precomputed),
            fail(5, 5 * S, "a"),
        ];
        let pack = RulePack::new(vec![brute("{}")], DEFAULT_ATTACK_RELEASE);
        let mut stateless = Vec::new();
        pack.evaluate(&subjects[4], &mut stateless);
        assert_eq!(stateless.len(), 1, "detect judges the pre-computed payload");
        let run = run(vec![brute("{}")], vec![epoch(subjects)]);
        assert_eq!(
            final_tags(&run),
            [r#"R0001 auth_attempt/a @5 0.85 {"service":"ssh","fail_count":6,"window_minutes":5}"#],
            "defaults 5 in 5 minutes; the silent subject counts"
        );
    }

    #[test]
    fn password_guessing_counts_distinct_passwords_per_account_and_keeps_only_hashes() {
        let mut subjects: Vec<Subject> =
            (0..5).map(|i| tried(i, i as i64 * S, "a", "root", &format!("s3cret-{i}"), "fail")).collect();
        // One password five times, and five passwords over five accounts, are no guessing.
        subjects.extend((10..15).map(|i| tried(i, i as i64 * S, "a", "admin", "s3cret-0", "fail")));
        subjects
            .extend((20..25).map(|i| tried(i, i as i64 * S, "a", &format!("user{i}"), &format!("s3cret-{i}"), "fail")));
        let run = run(vec![guessing()], vec![epoch(subjects)]);
        assert_eq!(final_tags(&run), [r#"R0002 auth_attempt/a @4 0.85 {"username":"root","password_count":5}"#]);
        let state = format!("{:?}", run.retained);
        assert!(!state.contains("s3cret"), "no password in window state");
        assert!(!run.tags.iter().any(|(t, _, _)| format!("{t:?}").contains("s3cret")), "nor in tags");
    }

    #[test]
    fn password_spraying_is_judged_per_identity() {
        let spray = |offset: u64, at: i64, attacker: &str, username: &str| {
            tried(offset, at, attacker, username, "Winter2026!", "fail")
        };
        let mut from_payload = spray(30, 0, "a4", "x");
        from_payload.identity_uuid = Some("i-9".into());
        let mut from_payload = vec![from_payload.clone(), from_payload.clone(), from_payload];
        for (i, (s, user)) in from_payload.iter_mut().zip(["x", "y", "z"]).enumerate() {
            *s = Subject { identity_uuid: Some("i-9".into()), ..spray(30 + i as u64, i as i64 * S, "a4", user) };
        }
        let epochs = vec![
            epoch(vec![spray(0, 0, "a1", "alice"), spray(1, S, "a1", "bob"), spray(2, 2 * S, "a2", "carol")]),
            // The attackers' rows arrive after their attempts.
            Epoch {
                subjects: vec![spray(10, 0, "a3", "x"), spray(11, S, "a3", "y"), spray(12, 2 * S, "a3", "z")],
                tables: vec![attacker_row(0, "a1", Some("i-1")), attacker_row(1, "a2", Some("i-1"))],
            },
            epoch(from_payload),
            // Two accounts in the window, a third 61 minutes later: no spraying.
            epoch(vec![spray(40, 0, "a5", "u1"), spray(41, S, "a5", "u2"), spray(42, 61 * M, "a5", "u3")]),
        ];
        let hash = hex(&password_hash(&SecretKey::default(), "Winter2026!"));
        let evidence = format!(r#"{{"shared_password_hash":"{hash}","account_count":3}}"#);
        assert_eq!(
            final_tags(&run(vec![spraying()], epochs)),
            [
                format!("R0003 identity/i-1 @2 0.9 {evidence}"),
                format!("R0003 identity/a3 @12 0.9 {evidence}"),
                format!("R0003 identity/i-9 @32 0.9 {evidence}"),
            ]
        );
    }

    #[test]
    fn a_later_row_of_the_attacker_moves_spraying_to_its_new_identity() {
        let spray = |offset: u64, username: &str| tried(offset, offset as i64 * S, "a1", username, "pw", "fail");
        let epochs = vec![
            Epoch {
                subjects: vec![spray(0, "u1"), spray(1, "u2"), spray(2, "u3")],
                tables: vec![attacker_row(0, "a1", Some("i-1"))],
            },
            Epoch { subjects: vec![], tables: vec![attacker_row(5, "a1", Some("i-2"))] },
        ];
        let run = run(vec![spraying()], epochs);
        let ids: Vec<_> = accumulated(&run.tags).iter().map(|(t, _)| t.source_id.clone()).collect();
        assert_eq!(ids, ["i-2"], "the latest row by position names the identity");
    }

    #[test]
    fn credential_reuse_tags_each_attacker_once() {
        let run = run(
            vec![reuse()],
            vec![epoch(vec![
                tried(0, 0, "a1", "root", "toor", "fail"),
                tried(1, 10 * S, "a1", "root", "toor", "fail"),
                tried(2, 30 * M, "a2", "root", "toor", "success"),
                // 100 minutes before a1's first use: outside the hour around any other.
                tried(3, -100 * M, "a3", "root", "toor", "fail"),
                // A third attacker counts for itself; a1's and a2's evidence stays as of
                // the moment they qualified.
                tried(6, 40 * M, "a6", "root", "toor", "fail"),
                tried(4, 0, "a4", "root", "other", "fail"),
                // The same password for another username is another secret.
                tried(5, 0, "a5", "admin", "toor", "fail"),
            ])],
        );
        let secret = hex(&secret_hash(&SecretKey::default(), "root", "toor"));
        let evidence = |n: u32| format!(r#"{{"credential_hash":"{secret}","reuse_count":{n}}}"#);
        assert_eq!(
            final_tags(&run),
            [
                format!("R0004 credential/a1#cred:{} @0 0.9 {}", &secret[..16], evidence(2)),
                format!("R0004 credential/a2#cred:{} @2 0.9 {}", &secret[..16], evidence(2)),
                format!("R0004 credential/a6#cred:{} @6 0.9 {}", &secret[..16], evidence(3)),
            ]
        );
        assert_eq!(
            run.tags.len(),
            3,
            "no tag was rewritten: {:?}",
            run.tags.iter().map(|t| show(&t.0)).collect::<Vec<_>>()
        );
        let key = SecretKey::default();
        assert_ne!(secret_hash(&key, "ab", "c"), secret_hash(&key, "a", "bc"));
    }

    #[test]
    fn valid_account_use_needs_the_brute_force_thresholds_before_it() {
        let rules = || vec![brute(r#"{"fail_threshold":3,"window_minutes":2}"#), valid_use()];
        let success = |offset: u64, at: i64, attacker: &str| tried(offset, at, attacker, "root", "pw", "success");
        let run = run(
            rules(),
            vec![epoch(vec![
                fail(0, 0, "a"),
                fail(1, 10 * S, "a"),
                fail(2, 20 * S, "a"),
                success(3, 30 * S, "a"),
                // The window before b's success is (20 s, 140 s): empty.
                fail(10, 0, "b"),
                fail(11, 10 * S, "b"),
                fail(12, 20 * S, "b"),
                success(13, 140 * S, "b"),
                // A failure at the same instant is not before it.
                fail(20, 0, "c"),
                fail(21, 10 * S, "c"),
                fail(22, 20 * S, "c"),
                success(23, 20 * S, "c"),
            ])],
        );
        let valid: Vec<_> = final_tags(&run).into_iter().filter(|t| t.starts_with("R0005")).collect();
        assert_eq!(valid, [r#"R0005 auth_attempt/a @3 0.7 {"username":"root","service":"ssh","prior_fail_count":3}"#]);

        // Without a brute-force rule in the pack: 5 failures in 5 minutes.
        let mut subjects: Vec<Subject> = (0..4).map(|i| fail(i, i as i64 * M, "d")).collect();
        subjects.push(success(4, 4 * M + S, "d"));
        subjects.extend((10..15).map(|i| fail(i, (i as i64 - 10) * M, "e")));
        subjects.push(success(15, 4 * M + S, "e"));
        let run = super::tests::run(vec![valid_use()], vec![epoch(subjects)]);
        assert_eq!(
            final_tags(&run),
            [r#"R0005 auth_attempt/e @15 0.7 {"username":"root","service":"ssh","prior_fail_count":5}"#]
        );
    }

    #[test]
    fn mass_phishing_by_shared_body_simhash() {
        let body = "Your mailbox is suspended. Verify your account at the link below within 24 hours";
        let other = "Invoice 4471 attached, please remit payment today";
        let run = run(
            vec![mass_phish()],
            vec![epoch(vec![
                email(0, 0, "m1", &format!(r#""rcpt_count":10,"body_text":"{body}""#)),
                email(1, H, "m2", &format!(r#""rcpt_count":20,"body_text":"{}""#, body.to_uppercase())),
                // m1's and m2's evidence stays as of the moment they qualified.
                email(8, 2 * H, "m9", &format!(r#""rcpt_count":5,"body_text":"{body}""#)),
                // Detect tags m3 on its own recipients; the stream tags only m4.
                email(2, 2 * H, "m3", &format!(r#""rcpt_count":30,"body_text":"{other}""#)),
                email(3, 3 * H, "m4", &format!(r#""rcpt_count":1,"body_text":"{other}!""#)),
                // The producer's simhash groups, case aside; 25 hours apart is outside the window.
                email(4, -25 * H, "m5", r#""rcpt_count":20,"body_simhash":"ABCD1234","body_sha256":"ff""#),
                email(5, 0, "m6", r#""rcpt_count":20,"body_simhash":"abcd1234","body_sha256":"ee""#),
                email(9, S, "m10", r#""rcpt_count":5,"body_simhash":"ABCD1234","body_sha256":"dd""#),
                // No body: no part.
                email(6, 0, "m7", r#""rcpt_count":20"#),
                email(7, S, "m8", r#""rcpt_count":20"#),
            ])],
        );
        let evidence = |body: &str, rcpt: u32, messages: u32, total: u32| {
            format!(
                r#"{{"attachment_sha256s":[],"body_sha256":"{body}","rcpt_count":{rcpt},"rcpt_domain_set":["victim.example"],"matched_headers":[],"simhash_messages":{messages},"simhash_rcpt_total":{total}}}"#
            )
        };
        let sha = |text: &str| sha256_hex(text.as_bytes());
        assert_eq!(
            final_tags(&run),
            [
                format!("R0042 email/m1 @0 0.85 {}", evidence(&sha(body), 10, 2, 30)),
                format!("R0042 email/m2 @1 0.85 {}", evidence(&sha(&body.to_uppercase()), 20, 2, 30)),
                format!("R0042 email/m4 @3 0.85 {}", evidence(&sha(&format!("{other}!")), 1, 2, 31)),
                format!("R0042 email/m6 @5 0.85 {}", evidence("ee", 20, 2, 25)),
                format!("R0042 email/m9 @8 0.85 {}", evidence(&sha(body), 5, 3, 35)),
                format!("R0042 email/m10 @9 0.85 {}", evidence("dd", 5, 2, 25)),
            ]
        );
        assert_eq!(run.tags.len(), 6, "no tag was rewritten");
        assert!(!format!("{:?}", run.retained).contains("ceo@"), "no address in window state");
    }

    #[test]
    fn rule_state_applies_to_windowed_tags() {
        let burst = || (0..5).map(|i| fail(i, i as i64 * S, "a")).collect::<Vec<_>>();
        let with_state = |state: RuleState| {
            let mut rule = brute("{}");
            rule.state = state;
            final_tags(&run(vec![rule], vec![epoch(burst())]))
        };
        assert!(with_state(RuleState { mode: StateMode::Disabled, ..Default::default() }).is_empty());
        assert!(with_state(RuleState { expired: true, ..Default::default() }).is_empty());
        let clipped = RuleState { mode: StateMode::Clipped, confidence_max: Some(0.5), expired: false };
        assert_eq!(
            with_state(clipped),
            [r#"R0001 auth_attempt/a @4 0.5 {"service":"ssh","fail_count":5,"window_minutes":5}"#]
        );
        let floored = RuleState { mode: StateMode::Clipped, confidence_max: Some(0.2), expired: false };
        assert!(with_state(floored).is_empty(), "under the floor");
    }

    /// Pack A (5 failures) from epoch 0; pack B from epoch 1, with the brute-force rule at 3
    /// failures and another confidence, after another rule (its index moves).
    #[test]
    fn a_swap_keeps_running_windows_and_judges_each_candidate_by_its_own_pack() {
        let packs = PackSchedule::fixed(Arc::new(RulePack::new(vec![brute("{}")], DEFAULT_ATTACK_RELEASE)));
        let mut lowered = brute(r#"{"fail_threshold":3}"#);
        lowered.emits[0].confidence = 0.6;
        packs.install(1, Arc::new(RulePack::new(vec![valid_use(), lowered], DEFAULT_ATTACK_RELEASE))).unwrap();
        let epochs = vec![
            // Four failures: no burst under A.
            epoch((0..4).map(|i| fail(i, (10 + i as i64) * S, "a")).collect()),
            // A late failure completes A's @3, judged by A; @5 is B's, over the entries of both.
            epoch(vec![fail(4, 5 * S, "a"), fail(5, 14 * S, "a")]),
        ];
        let run = run_scheduled(packs, epochs);
        assert_eq!(
            final_tags(&run),
            [
                r#"R0001 auth_attempt/a @3 0.85 {"service":"ssh","fail_count":5,"window_minutes":5}"#,
                r#"R0001 auth_attempt/a @5 0.6 {"service":"ssh","fail_count":6,"window_minutes":5}"#,
            ]
        );
        let emits: Vec<u32> = accumulated(&run.tags).iter().map(|(t, _)| t.emit & !WINDOWED_EMIT).collect();
        assert_eq!(emits, [0, 1 << 8], "each tag is ordered by its own pack's rule index");
    }

    #[test]
    fn a_windowed_rule_the_new_pack_drops_makes_no_new_tags_and_takes_back_none() {
        let packs = PackSchedule::fixed(Arc::new(RulePack::new(vec![brute("{}")], DEFAULT_ATTACK_RELEASE)));
        packs.install(1, Arc::new(RulePack::new(vec![guessing()], DEFAULT_ATTACK_RELEASE))).unwrap();
        let burst = |from: u64| (from..from + 5).map(|i| fail(i, i as i64 * S, "a")).collect::<Vec<_>>();
        let run = run_scheduled(packs, vec![epoch(burst(0)), epoch(burst(5))]);
        assert_eq!(
            final_tags(&run),
            [r#"R0001 auth_attempt/a @4 0.85 {"service":"ssh","fail_count":5,"window_minutes":5}"#]
        );
        assert!(run.tags.iter().all(|(_, time, _)| *time == 0), "nothing changes at the swap");
    }

    #[test]
    fn subjects_without_event_time_take_no_part() {
        let subjects: Vec<Subject> = (0..6).map(|i| Subject { event_time: None, ..fail(i, 0, "a") }).collect();
        let run = run(vec![brute("{}")], vec![epoch(subjects)]);
        assert!(run.tags.is_empty());
        assert!(run.retained.is_empty());
    }

    #[test]
    fn windowed_tags_sort_after_the_stateless_tags_of_their_record() {
        let mut subjects: Vec<Subject> = (0..4).map(|i| fail(i, i as i64 * S, "a")).collect();
        subjects.push(tried(4, 4 * S, "a", "root", "root", "fail"));
        let rules = vec![default_credentials(), brute("{}")];
        let mut stateless = Vec::new();
        RulePack::new(rules.clone(), DEFAULT_ATTACK_RELEASE).evaluate(&subjects[4], &mut stateless);
        let run = run(rules, vec![epoch(subjects)]);
        let windowed = accumulated(&run.tags);
        assert_eq!((stateless.len(), windowed.len()), (1, 1));
        let (stateless, windowed) = (&stateless[0], &windowed[0].0);
        assert_eq!((stateless.pos, stateless.part), (windowed.pos, windowed.part));
        assert!(stateless < windowed, "the store keeps the first tag of a uuid");
        assert_eq!(windowed.emit, WINDOWED_EMIT | 1 << 8, "rule 1, emit 0");
    }

    /// Events of every detection, an identity row, and one event that is already past the
    /// horizon of the others.
    fn mixed() -> Vec<(Option<Subject>, Option<TableUpdate>)> {
        let mut all: Vec<(Option<Subject>, Option<TableUpdate>)> = Vec::new();
        let mut add = |s: Subject| all.push((Some(s), None));
        for i in 0..6 {
            add(tried(i, i as i64 * 20 * S, "a1", "root", &format!("pw{}", i % 5), "fail"));
        }
        add(tried(6, 130 * S, "a1", "root", "pw0", "success"));
        add(tried(7, 140 * S, "a2", "root", "pw0", "fail"));
        add(tried(8, 150 * S, "a2", "oracle", "pw0", "fail"));
        add(tried(9, 160 * S, "a3", "admin", "pw0", "fail"));
        let body = "Reset your password now using the secure portal link";
        add(email(10, 0, "m1", &format!(r#""rcpt_count":12,"body_text":"{body}""#)));
        add(email(11, 2 * M, "m2", &format!(r#""rcpt_count":13,"body_text":"{body}""#)));
        add(fail(12, -10 * H, "old"));
        add(fail(13, -10 * H + S, "old"));
        all.push((None, Some(attacker_row(0, "a2", Some("i-1")))));
        all.push((None, Some(attacker_row(1, "a3", Some("i-1")))));
        all.push((None, Some(attacker_row(2, "a1", Some("i-1")))));
        all
    }

    fn in_epochs(records: Vec<(Option<Subject>, Option<TableUpdate>)>, per_epoch: usize) -> Vec<Epoch> {
        records
            .chunks(per_epoch)
            .map(|chunk| Epoch {
                subjects: chunk.iter().filter_map(|(s, _)| s.clone()).collect(),
                tables: chunk.iter().filter_map(|(_, t)| t.clone()).collect(),
            })
            .collect()
    }

    fn every_rule() -> Vec<Rule> {
        vec![brute("{}"), guessing(), spraying(), reuse(), valid_use(), mass_phish()]
    }

    #[test]
    fn the_output_is_a_function_of_the_set_of_inputs() {
        let in_order = run(every_rule(), in_epochs(mixed(), 1));
        let expected = final_tags(&in_order);
        let heads: Vec<String> = expected.iter().map(|t| t.split(' ').take(3).collect::<Vec<_>>().join(" ")).collect();
        assert_eq!(
            heads,
            [
                "R0004 credential/a1#cred:7b68bedc456cc832 @0",
                "R0001 auth_attempt/a1 @4",
                "R0002 auth_attempt/a1 @4",
                "R0001 auth_attempt/a1 @5",
                "R0002 auth_attempt/a1 @5",
                "R0001 auth_attempt/a1 @6",
                "R0002 auth_attempt/a1 @6",
                "R0005 auth_attempt/a1 @6",
                "R0004 credential/a2#cred:7b68bedc456cc832 @7",
                "R0003 identity/i-1 @9",
                "R0042 email/m1 @10",
                "R0042 email/m2 @11",
            ],
            "the events at −10 h are past the horizon: no tags of theirs remain"
        );
        let mut reversed = mixed();
        reversed.reverse();
        let mut shuffled = mixed();
        // A fixed permutation: every seventh record, wrapping around.
        let n = shuffled.len();
        shuffled = (0..n).map(|i| shuffled[(i * 7) % n].clone()).collect();
        for (records, per_epoch) in
            [(reversed.clone(), 1), (reversed, 4), (shuffled.clone(), 3), (shuffled, 100), (mixed(), 100)]
        {
            assert_eq!(final_tags(&run(every_rule(), in_epochs(records, per_epoch))), expected);
        }
    }

    #[test]
    fn window_state_shrinks_as_the_watermark_advances() {
        let burst: Vec<Subject> = (0..5).map(|i| fail(i, i as i64 * S, "a")).collect();
        let run = run(vec![brute("{}")], vec![epoch(burst), epoch(vec![fail(5, H, "b")])]);
        let retained_at =
            |time: Time| -> Diff { run.retained.iter().filter(|(_, t, _)| *t <= time).map(|(_, _, d)| d).sum() };
        assert_eq!(retained_at(0), 5);
        assert_eq!(retained_at(1), 6);
        // The horizon is 2 × 5 min + lateness 10 min = 20 min behind the watermark (1 h).
        assert_eq!(retained_at(2), 1, "the burst left the window state one epoch later");
        assert!(accumulated(&run.retained).iter().all(|(i, _)| i.entry.t == T0 + H));
        let burst_tag: Vec<_> = run.tags.iter().map(|(tag, t, d)| (tag.pos.offset, *t, *d)).collect();
        assert_eq!(burst_tag, [(4, 0, 1), (4, 2, -1)], "its tag retracts; the store keeps the row");
    }

    #[test]
    fn subjects_retire_before_their_windows_lose_entries() {
        let mut first: Vec<Subject> = (0..5).map(|i| fail(i, i as i64 * S, "a")).collect();
        first.push(fail(5, 290 * S, "a"));
        // The watermark moves to 16 min: candidates up to 1 min retire (16 − 5 − 10), inputs
        // up to −4 min leave (16 − 2 × 5 − 10).
        let run = run(vec![brute("{}")], vec![epoch(first), epoch(vec![fail(6, 16 * M, "b")])]);
        let updates: Vec<_> = run.tags.iter().map(|(tag, t, d)| (tag.pos.offset, *t, *d)).collect();
        assert_eq!(updates, [(4, 0, 1), (4, 2, -1), (5, 0, 1)], "@5 keeps its count: its window is whole");
        assert_eq!(run.tags[2].0.evidence.get("fail_count"), Some(&Json::Num("6".into())));
        let held = accumulated(&run.retained);
        let retired: Vec<_> =
            held.iter().filter(|(i, _)| i.entry.candidate.is_none()).map(|(i, _)| i.entry.t - T0).collect();
        assert_eq!(retired, [0, S, 2 * S, 3 * S, 4 * S], "retired subjects still count for later ones");
        assert_eq!(held.len(), 7);
    }

    #[test]
    fn inputs_retire_once_while_the_watermark_keeps_moving() {
        // Each epoch moves the watermark while the previous epoch's expired inputs retire.
        let epochs: Vec<Epoch> = (0..6)
            .map(|e| epoch((0..3).map(|i| fail(e * 10 + i, e as i64 * H + i as i64 * S, "a")).collect()))
            .collect();
        let run = run(vec![brute("{}")], epochs);
        let mut held: BTreeMap<Input, Diff> = BTreeMap::new();
        for time in 0..=7 {
            for (input, _, diff) in run.retained.iter().filter(|(_, t, _)| *t == time) {
                *held.entry(input.clone()).or_default() += diff;
            }
            assert!(held.values().all(|d| *d >= 0), "never retired twice (time {time})");
        }
        held.retain(|_, d| *d != 0);
        let times: Vec<i64> = held.keys().map(|i| (i.entry.t - T0) / S).collect();
        assert_eq!(times, [5 * 3600, 5 * 3600 + 1, 5 * 3600 + 2], "only the last hour's inputs remain");
    }

    #[test]
    fn simhash_groups_equal_wording() {
        let a = simhash("Verify your account: click the link below!").unwrap();
        assert_eq!(a.len(), 16);
        assert_eq!(simhash("verify YOUR account click the link\nbelow").as_deref(), Some(a.as_str()));
        let near = simhash("Verify your account: click the link above!").unwrap();
        assert_ne!(near, a);
        let distance = (u64::from_str_radix(&a, 16).unwrap() ^ u64::from_str_radix(&near, 16).unwrap()).count_ones();
        assert!(distance < 32, "near duplicates stay near: {distance} bits");
        assert!(simhash("hi there").is_some(), "short texts are one shingle");
        assert_eq!(simhash(" ... !!"), None);
    }

    #[test]
    fn window_parameters_come_from_the_rule() {
        let plan = Plan::compile(Arc::new(RulePack::new(
            vec![brute(r#"{"fail_threshold":7,"window_minutes":2.5}"#), valid_use(), mass_phish(), spraying()],
            DEFAULT_ATTACK_RELEASE,
        )));
        let summary: Vec<_> =
            plan.rules.iter().map(|r| (r.idx, r.window, r.threshold, r.window_minutes.to_json_string())).collect();
        assert_eq!(
            summary,
            [
                (0, 150 * S, 7.0, "2.5".to_string()),
                (1, 150 * S, 7.0, "2.5".to_string()),
                (2, 24 * H, 25.0, "1440".to_string()),
                (3, H, 3.0, "60".to_string()),
            ]
        );
        let _ = Confidence(0.0);
    }
}
