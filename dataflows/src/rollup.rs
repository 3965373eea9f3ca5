//! Rollup: stored tags summed up per attacker, identity, campaign, session and fleet
//! (DESIGN §1.5, §2.5, §2.7, §3).
//!
//! Input: the stored tags (insertions only, each uuid once), the reference collections of
//! the identity stage (attacker → canonical identity, identity → canonical identity,
//! canonical identity → canonical campaign) and R0058's bump state per attacker. Output:
//! one [`RollupRow`] per (scope kind, scope id, technique, sub-technique, tactic) that
//! has a tag, changing (retraction and insertion) whenever its numbers change.
//!
//! Scopes of a tag:
//! * attacker — its `attacker_uuid`;
//! * identity — the canonical identity of its attacker; a tag with no attacker but an
//!   `identity_uuid` counts for that identity's canonical identity (an identity the
//!   closure does not know yet stands for itself). A tag with an attacker is resolved
//!   through the attacker alone: its own `identity_uuid` is what its event carried
//!   (DESIGN §2.1), not live membership;
//! * campaign — the canonical campaign of that canonical identity;
//! * session — its `session_id`;
//! * fleet — every tag, scope id `""`.
//!
//! Numbers: `tag_count`; `attacker_count` and `identity_count`, the distinct attackers and
//! canonical identities among the key's tags (an identity-anchored tag has no attacker,
//! an attacker not attached to an identity has no identity); `first_seen` / `last_seen`,
//! the least and greatest `observed_at` (a tag without event time counts but moves
//! neither; both stay `None` while no tag of the key has one); `confidence_max`, the
//! greatest tag confidence, where an intel tag (`source_kind` `intel`) of an attacker with
//! a bump counts raised by the bump amount, capped at 1.0, for as long as the bump lasts.
//!
//! Accumulators. Tags only arrive, so a tag is folded once into semigroup accumulators
//! and never re-read: its anchor's source aggregate (anchor × technique, and anchor ×
//! session × technique: count, least and greatest event time, greatest confidence of
//! intel and of other tags) and the running numbers of the rollup keys it counts for.
//! A rollup key keeps its members (the anchors counting for it), the multiset of their
//! canonical identities and running totals. What references change — an anchor's
//! canonical identity, campaign or bump — moves that anchor's source aggregates between
//! keys: counts are subtracted and added exactly; a least or greatest value is recomputed
//! from the key's members only when the member that leaves (or whose bump drops) held
//! it. So the work per tag is constant, a merge costs the moved anchors' sources, and
//! only a departure of an extreme re-reads a key.
//!
//! Operator and sharding: one operator per worker. Tags are exchanged by technique, so
//! every key of a technique (its fleet, campaign and identity rows included) lives on one
//! worker and nothing needs combining across workers; the reference changes, one record
//! per anchor and small beside the tags, are broadcast to every worker. Epochs are
//! processed whole and in order once both inputs' frontiers have passed them: reference
//! changes first, then the epoch's tags, then each changed key emits its old row's
//! retraction and its new row. Ids are interned per worker; outputs are built from the
//! names, and changed keys are visited in key order, so the output is deterministic.
//!
//! Closing sessions. Attackers, identities, campaigns and the fleet are bounded by the
//! tables; sessions are not, so a session's keys close once event time has moved on: the
//! clock is, over every input (a file or a Kafka partition) that has carried session tags,
//! the least of its latest session tag's event time (broadcast with the references, so all
//! workers agree), and a session key closes once the clock is [`SESSION_HORIZON_US`] past
//! its activity: the latest, over its tags, of the tag's event time and of the clock when
//! it came (so a late tag, of an event that waited for its attacker, say, keeps its key
//! open for a horizon from its arrival). Closing is checked in buckets of an hour after
//! each epoch. A closed key's row stays as last emitted (nothing is
//! retracted) and its state goes: the key, its members' session sources, the session's
//! name once none of its keys is open. Taking the least over inputs keeps one partition
//! that runs ahead (a replay reads partitions at different speeds) from closing what
//! another is still feeding. An input that stops carrying sessions holds the clock
//! where it stopped (closing waits, nothing is lost).
//!
//! A tag for a session key that closed lately (one to two horizons of the clock ago: closed
//! keys are remembered as hashes, in two generations) goes to the dead letters (reason
//! `session_closed`) and still counts in its other scopes. A session that resumes later
//! than that starts a new row for its key: PostgreSQL's row for the key is replaced by the
//! new numbers, the file output holds both.
//!
//! Emission ([`Emission`]). Sinks that keep the rows current (PostgreSQL, Kafka) take every
//! epoch's changes. A sink that writes the rows once the input ends takes each key's row
//! once instead: when its session closes, or, for every key still open, when both inputs'
//! frontiers are empty (at the latest epoch, through a capability the stage keeps). Then a
//! changed key is only marked, and none of its intermediate rows is built, exchanged or
//! folded into the sink.
//!
//! State per worker: the interned names, the reference maps, per anchor its placement and
//! source aggregates, per rollup key its members, identity multiset, running and last
//! emitted numbers; the open session keys by due hour, the closed ones' hashes. Dead
//! letters: only tags of closed sessions; every tag has a fleet row.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::BuildHasherDefault;
use std::rc::Rc;

use differential_dataflow::AsCollection;
use serde::{Deserialize, Serialize};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::core::{Concat, OkErr};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map};
use timely::dataflow::operators::Capability;

use crate::fasthash::{IdHasher, IdMap};
use crate::identity::References;
use crate::providers::Bump;
use crate::record::{Confidence, DeadLetter, Pos, Reason, Tag};
use crate::time::earliest;
use crate::types::{Coll, Diff, Time};

/// The `source_kind` of intel-derived tags, which the R0058 bump raises.
const INTEL_SOURCE: &str = "intel";

/// How long a session's rollup rows stay open without a new tag, in event time behind the
/// clock (see the module documentation): a day.
pub const SESSION_HORIZON_US: i64 = 24 * HOUR_US;
const HOUR_US: i64 = 3_600_000_000;
/// Closing sessions is checked in buckets of this much event time.
const CLOSE_BUCKET_US: i64 = HOUR_US;

/// Which scope a rollup row sums up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ScopeKind {
    Attacker,
    Identity,
    Campaign,
    Session,
    Fleet,
}

impl ScopeKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            ScopeKind::Attacker => "attacker",
            ScopeKind::Identity => "identity",
            ScopeKind::Campaign => "campaign",
            ScopeKind::Session => "session",
            ScopeKind::Fleet => "fleet",
        }
    }
}

/// One rollup row: a scope's numbers for one technique.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RollupRow {
    pub scope_kind: ScopeKind,
    /// The attacker, canonical identity, canonical campaign or session; `""` for the fleet.
    pub scope_id: String,
    pub technique_id: String,
    /// `""` for none.
    pub sub_technique_id: String,
    pub tactic: String,
    pub tag_count: i64,
    pub attacker_count: i64,
    pub identity_count: i64,
    /// Least event time (microseconds) of the key's tags that have one.
    pub first_seen: Option<i64>,
    /// Greatest event time (microseconds) of the key's tags that have one.
    pub last_seen: Option<i64>,
    pub confidence_max: Confidence,
}

/// The technique part of every key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Technique {
    technique_id: String,
    sub_technique_id: String,
    tactic: String,
}

impl Technique {
    /// The worker that holds the technique's keys: an FNV-1a hash of its fields, the same
    /// on every worker and process.
    fn shard(&self) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for field in [&self.technique_id, &self.sub_technique_id, &self.tactic] {
            for byte in field.bytes().chain([0xff]) {
                hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        hash
    }
}

/// What a tag is anchored on, for the scopes that follow identities.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
enum Anchor {
    Attacker(String),
    /// An identity (as the tag carried it) and no attacker.
    Identity(String),
    /// Neither: the tag counts for its session and the fleet only.
    Unanchored,
}

/// What the rollups need of a stored tag, sent to the worker of its technique.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
struct Counted {
    pos: Pos,
    anchor: Anchor,
    session: Option<String>,
    technique: Technique,
    observed_at: Option<i64>,
    confidence: Confidence,
    intel: bool,
}

impl Counted {
    /// What the rollups need of `tag`, its strings moved out.
    fn of(tag: Tag) -> Counted {
        let anchor = match (tag.attacker_uuid, tag.identity_uuid) {
            (Some(attacker), _) => Anchor::Attacker(attacker),
            (None, Some(identity)) => Anchor::Identity(identity),
            (None, None) => Anchor::Unanchored,
        };
        Counted {
            pos: tag.pos,
            anchor,
            session: tag.session_id,
            technique: Technique {
                technique_id: tag.technique_id,
                sub_technique_id: tag.sub_technique_id.unwrap_or_default(),
                tactic: tag.tactic,
            },
            observed_at: tag.observed_at,
            confidence: tag.confidence,
            intel: tag.source_kind == INTEL_SOURCE,
        }
    }
}

/// One update of a reference map, as the identity and intel stages emit them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
enum Reference {
    /// Attacker → canonical identity.
    AttackerIdentity(String, String),
    /// Identity → canonical identity.
    IdentityCanonical(String, String),
    /// Canonical identity → canonical campaign.
    IdentityCampaign(String, String),
    /// Attacker → bump amount in millionths.
    Bump(String, i64),
    /// The greatest event time of a batch's stored tags of sessions that came from one
    /// input (a file or a Kafka partition, on any worker): what moves the clock that
    /// closes sessions.
    Clock(u32, i64),
}

/// The accumulated tags of one source (an anchor's tags of one technique, of all
/// sessions or of one): a semigroup, since tags only arrive.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Agg {
    tags: i64,
    first_seen: Option<i64>,
    last_seen: Option<i64>,
    /// Greatest confidence of tags not derived from intel.
    confidence: Option<Confidence>,
    /// Greatest confidence of intel-derived tags (which a bump raises).
    intel_confidence: Option<Confidence>,
}

impl Agg {
    fn of(tag: &Counted, count: i64) -> Agg {
        Agg {
            tags: count,
            first_seen: tag.observed_at,
            last_seen: tag.observed_at,
            confidence: (!tag.intel).then_some(tag.confidence),
            intel_confidence: tag.intel.then_some(tag.confidence),
        }
    }

    /// The aggregate's numbers with the intel confidence raised by `bump` micros.
    fn summary(&self, bump: Option<i64>) -> Summary {
        let intel = self.intel_confidence.map(|c| match bump {
            Some(micros) => raised(c, micros),
            None => c,
        });
        Summary {
            tags: self.tags,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            confidence: self.confidence.max(intel).unwrap_or(Confidence(0.0)),
        }
    }
}

impl Agg {
    /// Folds in the aggregate of more tags of the same source.
    fn plus_equals(&mut self, rhs: &Self) {
        self.tags += rhs.tags;
        self.first_seen = earliest(self.first_seen, rhs.first_seen);
        self.last_seen = self.last_seen.max(rhs.last_seen);
        self.confidence = self.confidence.max(rhs.confidence);
        self.intel_confidence = self.intel_confidence.max(rhs.intel_confidence);
    }
}

/// `confidence` raised by `micros` millionths, capped at 1.0.
fn raised(confidence: Confidence, micros: i64) -> Confidence {
    Confidence((confidence.0 + micros as f64 / 1e6).min(1.0))
}

/// A source aggregate's numbers, bump applied: what one member brings to a key.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Summary {
    tags: i64,
    first_seen: Option<i64>,
    last_seen: Option<i64>,
    confidence: Confidence,
}

/// An update bound for one of an operator's two outputs.
type Split<A, B = Reference> = Result<(A, Time, Diff), (B, Time, Diff)>;

/// When the stage emits a key's row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emission {
    /// After every epoch that changed the key: the old row's retraction and the new row.
    /// For sinks that keep the rows current as they go (PostgreSQL, Kafka).
    EveryEpoch,
    /// Once: when the key's session closes, or when the input ends. For a sink that writes
    /// the rows when the input ends: the stage sends a key's row once instead of every
    /// change of it on the way, and emits no retraction.
    Final,
}

/// The stage's outputs: the rollup rows, and a dead letter per tag that came for a session
/// already closed.
pub struct Rolled<'s> {
    pub rows: Coll<'s, RollupRow>,
    pub dead_letters: Coll<'s, DeadLetter>,
}

/// The stage, over the identity stage's outputs.
pub fn stage<'s>(
    tags: Coll<'s, Tag>,
    refs: &References<'s>,
    bumps: Coll<'s, (String, Bump)>,
    emission: Emission,
) -> Rolled<'s> {
    let (a, i, c) = (refs.attacker_identity.clone(), refs.identity_canonical.clone(), refs.identity_campaign.clone());
    rollup(tags, a, i, c, bumps, SESSION_HORIZON_US, emission)
}

/// The stage over plain collections: `attacker_identity` (attacker, canonical identity),
/// `identity_canonical` (identity, canonical identity), `identity_campaign` (canonical
/// identity, canonical campaign) and `bumps` (attacker, bump); each of the first three a
/// function of its key. Sessions close `horizon` microseconds of event time after their
/// latest tag; rows come out as `emission` says.
pub fn rollup<'s>(
    tags: Coll<'s, Tag>,
    attacker_identity: Coll<'s, (String, String)>,
    identity_canonical: Coll<'s, (String, String)>,
    identity_campaign: Coll<'s, (String, String)>,
    bumps: Coll<'s, (String, Bump)>,
    horizon: i64,
    emission: Emission,
) -> Rolled<'s> {
    // The store emits insertions only; a tag is counted once per insertion. Each batch
    // also yields its greatest event time, for the clock of every worker.
    let (counted, clocks) = tags
        .inner
        .unary::<CapacityContainerBuilder<Vec<Split<Counted>>>, _, _, _>(Pipeline, "counted tags and clock", |_, _| {
            move |input, output| {
                input.for_each(|cap, data| {
                    let mut session = output.session(&cap);
                    // The greatest event time of session tags per time and input of the
                    // batch (almost always one or a few).
                    let mut clocks: Vec<(Time, u32, i64)> = Vec::new();
                    for (tag, time, diff) in data.drain(..) {
                        if diff <= 0 {
                            continue;
                        }
                        if let (Some(at), Some(_)) = (tag.observed_at, &tag.session_id) {
                            let input = tag.pos.input;
                            match clocks.iter_mut().find(|(t, i, _)| *t == time && *i == input) {
                                Some((_, _, clock)) => *clock = (*clock).max(at),
                                None => clocks.push((time, input, at)),
                            }
                        }
                        session.give(Ok((Counted::of(tag), time, diff)));
                    }
                    for (time, input, clock) in clocks {
                        session.give(Err((Reference::Clock(input, clock), time, 1)));
                    }
                });
            }
        })
        .ok_err(|result: Split<Counted>| result);
    let references = attacker_identity
        .inner
        .map(|((a, i), t, r)| (Reference::AttackerIdentity(a, i), t, r))
        .concat(identity_canonical.inner.map(|((i, c), t, r)| (Reference::IdentityCanonical(i, c), t, r)))
        .concat(identity_campaign.inner.map(|((i, c), t, r)| (Reference::IdentityCampaign(i, c), t, r)))
        .concat(bumps.inner.map(|((a, bump), t, r)| (Reference::Bump(a, bump.amount_micros), t, r)))
        .concat(clocks)
        .broadcast();
    let by_technique = Exchange::new(|(counted, _, _): &(Counted, Time, Diff)| counted.technique.shard());
    let (rows, dead_letters) = counted
        .binary_frontier::<_, CapacityContainerBuilder<Vec<Split<RollupRow, DeadLetter>>>, _, _, _, _>(
            references,
            by_technique,
            Pipeline,
            "rollup",
            move |initial, _| {
                let mut rollups = Rollups::new(horizon, emission);
                let mut stash: BTreeMap<Time, Epoch> = BTreeMap::new();
                // With final emission: a capability kept at the latest epoch or the inputs'
                // frontier, for the rows still to come when the input ends.
                let mut last = (emission == Emission::Final).then_some(initial);
                move |(tags, tags_frontier), (refs, refs_frontier), output| {
                    tags.for_each(|cap, data| {
                        for (counted, time, diff) in data.drain(..) {
                            stash
                                .entry(time)
                                .or_insert_with(|| Epoch::new(cap.delayed(&time, 0)))
                                .tags
                                .push((counted, diff));
                        }
                    });
                    refs.for_each(|cap, data| {
                        for (reference, time, diff) in data.drain(..) {
                            let epoch = stash.entry(time).or_insert_with(|| Epoch::new(cap.delayed(&time, 0)));
                            epoch.references.push((reference, diff));
                        }
                    });
                    while let Some(entry) = stash.first_entry() {
                        let time = *entry.key();
                        if tags_frontier.frontier().less_equal(&time) || refs_frontier.frontier().less_equal(&time) {
                            break;
                        }
                        let Epoch { cap, tags, references } = entry.remove();
                        if let Some(last) = &mut last {
                            last.downgrade(&time);
                        }
                        let mut session = output.session(&cap);
                        let (changes, letters) = rollups.epoch(references, tags);
                        for (row, diff) in changes {
                            session.give(Ok((row, time, diff)));
                        }
                        for letter in letters {
                            session.give(Err((letter, time, 1)));
                        }
                    }
                    if let Some(cap) = &mut last {
                        let frontier =
                            tags_frontier.frontier().iter().chain(refs_frontier.frontier().iter()).min().copied();
                        match frontier {
                            Some(time) => cap.downgrade(&time),
                            None => {
                                let mut session = output.session(&*cap);
                                let time = *cap.time();
                                for (row, diff) in rollups.finish() {
                                    session.give(Ok((row, time, diff)));
                                }
                                drop(session);
                                last = None;
                            }
                        }
                    }
                }
            },
        )
        .ok_err(|result: Split<RollupRow, DeadLetter>| result);
    Rolled { rows: rows.as_collection(), dead_letters: dead_letters.as_collection() }
}

/// The updates of one epoch not yet complete, with the capability to emit at its time.
struct Epoch {
    cap: Capability<Time>,
    tags: Vec<(Counted, Diff)>,
    references: Vec<(Reference, Diff)>,
}

impl Epoch {
    fn new(cap: Capability<Time>) -> Epoch {
        Epoch { cap, tags: Vec::new(), references: Vec::new() }
    }
}

/// An interned name (attacker, identity, campaign or session uuid) or technique.
type Id = u32;

/// Names interned as ids, per worker.
struct Names<N> {
    ids: HashMap<N, Id>,
    names: Vec<N>,
}

impl<N> Default for Names<N> {
    fn default() -> Self {
        Names { ids: HashMap::new(), names: Vec::new() }
    }
}

impl<N: Clone + Eq + std::hash::Hash> Names<N> {
    fn id(&mut self, name: &N) -> Id {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len() as Id;
        self.names.push(name.clone());
        self.ids.insert(name.clone(), id);
        id
    }

    fn name(&self, id: Id) -> &N {
        &self.names[id as usize]
    }
}

/// Session ids interned as ids, each held by the session's open keys: when the last of them
/// closes, the name is forgotten and its id used again.
#[derive(Default)]
struct Sessions {
    ids: HashMap<Rc<str>, Id>,
    /// Per id its name and number of open keys; `None` for a free id.
    names: Vec<Option<(Rc<str>, u32)>>,
    free: Vec<Id>,
}

impl Sessions {
    fn get(&self, name: &str) -> Option<Id> {
        self.ids.get(name).copied()
    }

    fn id(&mut self, name: &str) -> Id {
        if let Some(id) = self.get(name) {
            return id;
        }
        let name: Rc<str> = Rc::from(name);
        let slot = Some((Rc::clone(&name), 0));
        let id = match self.free.pop() {
            Some(id) => {
                self.names[id as usize] = slot;
                id
            }
            None => {
                self.names.push(slot);
                (self.names.len() - 1) as Id
            }
        };
        self.ids.insert(name, id);
        id
    }

    fn name(&self, id: Id) -> &str {
        &self.names[id as usize].as_ref().expect("an interned session").0
    }

    /// One more open key of session `id`.
    fn hold(&mut self, id: Id) {
        if let Some((_, keys)) = &mut self.names[id as usize] {
            *keys += 1;
        }
    }

    /// One key of session `id` closed.
    fn release(&mut self, id: Id) {
        let slot = &mut self.names[id as usize];
        if let Some((_, keys)) = slot {
            *keys -= 1;
            if *keys == 0 {
                let (name, _) = slot.take().expect("checked above");
                self.ids.remove(&name);
                self.free.push(id);
            }
        }
    }
}

/// The bucket of [`Rollups::due`] a session key with latest activity `active` waits in.
fn due_bucket(active: i64) -> i64 {
    active.div_euclid(CLOSE_BUCKET_US)
}

/// An anchor by id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum AnchorId {
    Attacker(Id),
    Identity(Id),
    Unanchored,
}

/// A reference map accumulated from its updates: per key, its values with their counts.
/// The identity stage's maps are functions of their keys; should a key ever hold two
/// values, the greatest counts.
struct RefMap<V> {
    values: IdMap<Id, Vec<(V, Diff)>>,
}

impl<V> Default for RefMap<V> {
    fn default() -> Self {
        RefMap { values: IdMap::default() }
    }
}

impl<V: Copy + Ord> RefMap<V> {
    fn update(&mut self, key: Id, value: V, diff: Diff) {
        let values = self.values.entry(key).or_default();
        match values.iter_mut().find(|(v, _)| *v == value) {
            Some(entry) => entry.1 += diff,
            None => values.push((value, diff)),
        }
        values.retain(|(_, n)| *n != 0);
        if values.is_empty() {
            self.values.remove(&key);
        }
    }

    fn get(&self, key: Id) -> Option<V> {
        self.values.get(&key)?.iter().filter(|(_, n)| *n > 0).map(|(v, _)| *v).max()
    }
}

/// Where an anchor's tags count besides its own scopes: its canonical identity and
/// campaign, and the attacker's bump.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Placement {
    identity: Option<Id>,
    campaign: Option<Id>,
    bump: Option<i64>,
}

/// A source of an anchor: its tags of one technique, of all sessions (`None`) or of one.
type SourceKey = (Option<Id>, Id);

/// An anchor that has tags on this worker.
struct AnchorState {
    placement: Placement,
    sources: BTreeMap<SourceKey, Agg>,
}

/// A rollup key by ids: the scope (`None` for the fleet) and the technique.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key {
    kind: ScopeKind,
    scope: Option<Id>,
    technique: Id,
}

/// A key's numbers but its identity count, which its identity multiset holds.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Totals {
    tags: i64,
    attackers: i64,
    first_seen: Option<i64>,
    last_seen: Option<i64>,
    confidence: Confidence,
}

impl Totals {
    const ZERO: Totals =
        Totals { tags: 0, attackers: 0, first_seen: None, last_seen: None, confidence: Confidence(0.0) };

    /// Folds in the extremes of `summary`.
    fn extend(&mut self, summary: &Summary) {
        self.first_seen = earliest(self.first_seen, summary.first_seen);
        self.last_seen = self.last_seen.max(summary.last_seen);
        self.confidence = self.confidence.max(summary.confidence);
    }

    /// Whether `summary` holds one of the extremes, so that taking it away needs a
    /// recomputation.
    fn held_by(&self, summary: &Summary) -> bool {
        (summary.first_seen.is_some() && summary.first_seen == self.first_seen)
            || (summary.last_seen.is_some() && summary.last_seen == self.last_seen)
            || summary.confidence == self.confidence
    }
}

/// One rollup key's state.
struct KeyState {
    /// Sorted; small vectors, as most keys (sessions, attackers) have one member.
    members: Vec<AnchorId>,
    /// Canonical identities of the members, with the number of members of each; sorted.
    identities: Vec<(Id, u32)>,
    totals: Totals,
    /// The extremes must be recomputed from the members.
    stale: bool,
    /// With final emission: changed since created, its row not emitted yet.
    pending: bool,
    /// The numbers last emitted (with the identity count), if any.
    emitted: Option<(Totals, i64)>,
    /// Session keys: the latest of their tags' event times and the clock at their arrival
    /// (a tag without event time: the clock), which decides when the key closes.
    active: i64,
}

impl KeyState {
    fn new() -> KeyState {
        KeyState {
            members: Vec::new(),
            identities: Vec::new(),
            totals: Totals::ZERO,
            stale: false,
            pending: false,
            emitted: None,
            active: i64::MIN,
        }
    }

    fn add(&mut self, member: AnchorId, summary: &Summary, identity: Option<Id>) {
        if let Err(at) = self.members.binary_search(&member) {
            self.members.insert(at, member);
        }
        self.totals.tags += summary.tags;
        self.totals.attackers += i64::from(matches!(member, AnchorId::Attacker(_)));
        if let Some(identity) = identity {
            self.count_identity(identity);
        }
        self.totals.extend(summary);
    }

    fn remove(&mut self, member: AnchorId, summary: &Summary, identity: Option<Id>) {
        if let Ok(at) = self.members.binary_search(&member) {
            self.members.remove(at);
        }
        self.totals.tags -= summary.tags;
        self.totals.attackers -= i64::from(matches!(member, AnchorId::Attacker(_)));
        if let Some(identity) = identity {
            self.forget_identity(identity);
        }
        self.stale |= self.totals.held_by(summary);
    }

    /// A member that stays with a new identity or bump.
    fn replace(&mut self, old: (&Summary, Option<Id>), new: (&Summary, Option<Id>)) {
        if old.1 != new.1 {
            if let Some(identity) = old.1 {
                self.forget_identity(identity);
            }
            if let Some(identity) = new.1 {
                self.count_identity(identity);
            }
        }
        if new.0.confidence < old.0.confidence && old.0.confidence == self.totals.confidence {
            self.stale = true;
        }
        self.totals.extend(new.0);
    }

    fn count_identity(&mut self, identity: Id) {
        match self.identities.binary_search_by_key(&identity, |(id, _)| *id) {
            Ok(at) => self.identities[at].1 += 1,
            Err(at) => self.identities.insert(at, (identity, 1)),
        }
    }

    fn forget_identity(&mut self, identity: Id) {
        if let Ok(at) = self.identities.binary_search_by_key(&identity, |(id, _)| *id) {
            self.identities[at].1 -= 1;
            if self.identities[at].1 == 0 {
                self.identities.remove(at);
            }
        }
    }
}

/// A worker's rollup state.
struct Rollups {
    /// Attackers, identities and campaigns.
    names: Names<String>,
    sessions: Sessions,
    techniques: Names<Technique>,
    attacker_identity: RefMap<Id>,
    identity_canonical: RefMap<Id>,
    identity_campaign: RefMap<Id>,
    bumps: RefMap<i64>,
    anchors: IdMap<AnchorId, AnchorState>,
    /// The anchors placed at each canonical identity, for campaign changes.
    placed_at: IdMap<Id, BTreeSet<AnchorId>>,
    keys: IdMap<Key, KeyState>,
    /// Per input, the greatest event time of its stored session tags so far (on every
    /// worker).
    inputs: BTreeMap<u32, i64>,
    /// The least of `inputs`: how far event time has advanced on every input that
    /// carries sessions.
    clock: i64,
    /// How far a session key's activity may fall behind the clock before it closes.
    horizon: i64,
    /// Open session keys by [`due_bucket`] of their activity when last looked at.
    due: BTreeMap<i64, Vec<Key>>,
    /// The session keys closed lately, by technique, the sessions by name (their ids are
    /// released when they close): those closed since the limit last passed `rotate_at`, and
    /// those closed in the horizon before. A tag of one of them is a dead letter rather
    /// than the start of a new row that would stand for the whole session. Names, not
    /// hashes of them: a collision would turn a live session's tags into dead letters.
    closed: [ClosedSessions; 2],
    rotate_at: i64,
    emission: Emission,
}

/// Closed session keys: technique → session names.
type ClosedSessions = HashMap<Id, HashSet<Box<str>>, BuildHasherDefault<IdHasher>>;

impl Rollups {
    fn new(horizon: i64, emission: Emission) -> Rollups {
        Rollups {
            names: Names::default(),
            sessions: Sessions::default(),
            techniques: Names::default(),
            attacker_identity: RefMap::default(),
            identity_canonical: RefMap::default(),
            identity_campaign: RefMap::default(),
            bumps: RefMap::default(),
            anchors: IdMap::default(),
            placed_at: IdMap::default(),
            keys: IdMap::default(),
            inputs: BTreeMap::new(),
            clock: i64::MIN,
            horizon,
            due: BTreeMap::new(),
            closed: Default::default(),
            rotate_at: i64::MIN,
            emission,
        }
    }

    /// Session keys active before this event time close.
    fn limit(&self) -> i64 {
        self.clock.saturating_sub(self.horizon)
    }

    /// One complete epoch: its reference changes (and clock), then its tags, then the
    /// sessions that fell behind the clock close; the changed rows, and a dead letter per
    /// tag that came for a closed session.
    fn epoch(
        &mut self,
        references: Vec<(Reference, Diff)>,
        tags: Vec<(Counted, Diff)>,
    ) -> (Vec<(RollupRow, Diff)>, Vec<DeadLetter>) {
        let mut letters = Vec::new();
        let mut dirty = Vec::new();
        let mut moved = BTreeSet::new();
        for (reference, diff) in references {
            self.reference(reference, diff, &mut moved);
        }
        self.clock = self.inputs.values().copied().min().unwrap_or(i64::MIN);
        for anchor in moved {
            self.place(anchor, &mut dirty);
        }
        for (counted, diff) in tags {
            self.count(&counted, diff as i64, &mut dirty, &mut letters);
        }
        let mut changes = Vec::new();
        dirty.sort_unstable();
        dirty.dedup();
        for key in dirty {
            match self.emission {
                Emission::EveryEpoch => self.emit(key, &mut changes),
                Emission::Final => self.defer(key),
            }
        }
        self.close_sessions(&mut changes);
        (changes, letters)
    }

    /// With final emission: a changed key's row waits for its session to close or the
    /// input to end; a key left without members (never emitted, as final emission emits a
    /// key only as it goes) goes now.
    fn defer(&mut self, key: Key) {
        let Some(state) = self.keys.get_mut(&key) else { return };
        if state.members.is_empty() {
            self.forget(key);
        } else {
            state.pending = true;
        }
    }

    /// The input ended: with final emission, the row of every key not emitted yet, in key
    /// order; the state goes with it.
    fn finish(&mut self) -> Vec<(RollupRow, Diff)> {
        let mut pending: Vec<Key> = self.keys.iter().filter(|(_, state)| state.pending).map(|(key, _)| *key).collect();
        pending.sort_unstable();
        let mut changes = Vec::with_capacity(pending.len());
        for key in pending {
            self.emit(key, &mut changes);
        }
        *self = Rollups::new(self.horizon, self.emission);
        changes
    }

    /// Drops a key's state; a session key releases its session's name.
    fn forget(&mut self, key: Key) {
        self.keys.remove(&key);
        if let (ScopeKind::Session, Some(session)) = (key.kind, key.scope) {
            self.sessions.release(session);
        }
    }

    /// Closes the session keys whose activity is behind [`Rollups::limit`]: their rows stay
    /// as last emitted (with final emission, a row not emitted yet is emitted now), their
    /// state (and their sessions' sources in the anchors) goes.
    fn close_sessions(&mut self, changes: &mut Vec<(RollupRow, Diff)>) {
        let limit = self.limit();
        if limit >= self.rotate_at {
            self.closed[1] = std::mem::take(&mut self.closed[0]);
            self.rotate_at = limit.saturating_add(self.horizon);
        }
        while let Some(entry) = self.due.first_entry() {
            let end = entry.key().saturating_add(1).saturating_mul(CLOSE_BUCKET_US);
            if end > limit {
                break;
            }
            for key in entry.remove() {
                let Some(state) = self.keys.get_mut(&key) else { continue };
                if state.active == i64::MIN {
                    // Only tags without event time, counted before the clock started: they
                    // are as recent as the clock's first time.
                    state.active = self.clock;
                }
                if state.active >= limit {
                    self.due.entry(due_bucket(state.active)).or_default().push(key);
                    continue;
                }
                if state.pending {
                    self.emit(key, changes);
                }
                // (Gone already if emitting found it without members.)
                let Some(state) = self.keys.remove(&key) else { continue };
                let session = key.scope.expect("a session key has its session");
                let name: Box<str> = self.sessions.name(session).into();
                self.closed[0].entry(key.technique).or_default().insert(name);
                for member in &state.members {
                    if let Some(anchor) = self.anchors.get_mut(member) {
                        anchor.sources.remove(&(Some(session), key.technique));
                    }
                }
                self.sessions.release(session);
            }
        }
    }

    /// The open session `name` a tag of `technique` counts for, opened if need be; `None`,
    /// with a dead letter, when its key closed lately (its numbers are gone: a new row
    /// would stand for the whole session).
    fn session_of(
        &mut self,
        counted: &Counted,
        name: &str,
        technique: Id,
        letters: &mut Vec<DeadLetter>,
    ) -> Option<Id> {
        let open = self.sessions.get(name);
        if open.is_some_and(|id| self.keys.contains_key(&Key { kind: ScopeKind::Session, scope: Some(id), technique }))
        {
            return open;
        }
        if !self.closed.iter().any(|closed| closed.get(&technique).is_some_and(|names| names.contains(name))) {
            return Some(self.sessions.id(name));
        }
        let at = counted.observed_at.map_or_else(|| "no event time".to_string(), crate::time::format_rfc3339);
        letters.push(DeadLetter {
            pos: counted.pos,
            topic: None,
            reason: Reason::SessionClosed,
            detail: format!(
                "a {technique_id} tag of session {name} at {at}: its {technique_id} row closed when the clock \
                 passed {hours} h of event time after its latest tag (the clock is now {clock}); the tag is \
                 stored and counted in its other scopes",
                technique_id = counted.technique.technique_id,
                hours = self.horizon / HOUR_US,
                clock = crate::time::format_rfc3339(self.clock),
            ),
        });
        None
    }

    /// Applies one reference update, noting the anchors it may move.
    fn reference(&mut self, reference: Reference, diff: Diff, moved: &mut BTreeSet<AnchorId>) {
        match reference {
            Reference::AttackerIdentity(attacker, identity) => {
                let (attacker, identity) = (self.names.id(&attacker), self.names.id(&identity));
                self.attacker_identity.update(attacker, identity, diff);
                moved.insert(AnchorId::Attacker(attacker));
            }
            Reference::IdentityCanonical(identity, canonical) => {
                let (identity, canonical) = (self.names.id(&identity), self.names.id(&canonical));
                self.identity_canonical.update(identity, canonical, diff);
                moved.insert(AnchorId::Identity(identity));
            }
            Reference::IdentityCampaign(identity, campaign) => {
                let (identity, campaign) = (self.names.id(&identity), self.names.id(&campaign));
                self.identity_campaign.update(identity, campaign, diff);
                moved.extend(self.placed_at.get(&identity).into_iter().flatten());
            }
            Reference::Bump(attacker, micros) => {
                let attacker = self.names.id(&attacker);
                self.bumps.update(attacker, micros, diff);
                moved.insert(AnchorId::Attacker(attacker));
            }
            Reference::Clock(input, at) => {
                let clock = self.inputs.entry(input).or_insert(at);
                *clock = (*clock).max(at);
            }
        }
    }

    /// An anchor's placement under the current references.
    fn placement(&self, anchor: AnchorId) -> Placement {
        let identity = match anchor {
            AnchorId::Attacker(attacker) => self.attacker_identity.get(attacker),
            AnchorId::Identity(identity) => Some(self.identity_canonical.get(identity).unwrap_or(identity)),
            AnchorId::Unanchored => None,
        };
        let bump = match anchor {
            AnchorId::Attacker(attacker) => self.bumps.get(attacker),
            _ => None,
        };
        Placement { identity, campaign: identity.and_then(|i| self.identity_campaign.get(i)), bump }
    }

    /// Moves an anchor's sources to the keys of its current placement.
    fn place(&mut self, anchor: AnchorId, dirty: &mut Vec<Key>) {
        let new = self.placement(anchor);
        let Some(state) = self.anchors.get_mut(&anchor) else { return };
        let old = std::mem::replace(&mut state.placement, new);
        if old == new {
            return;
        }
        if old.identity != new.identity {
            if let Some(identity) = old.identity {
                let emptied = self.placed_at.get_mut(&identity).is_some_and(|set| {
                    set.remove(&anchor);
                    set.is_empty()
                });
                if emptied {
                    self.placed_at.remove(&identity);
                }
            }
            if let Some(identity) = new.identity {
                self.placed_at.entry(identity).or_default().insert(anchor);
            }
        }
        for (&(session, technique), agg) in &state.sources {
            let (before, after) = (agg.summary(old.bump), agg.summary(new.bump));
            let old_keys = keys_of(anchor, &old, session, technique);
            let new_keys = keys_of(anchor, &new, session, technique);
            for key in &old_keys {
                let key_state = self.keys.get_mut(key).expect("a member's key exists");
                if new_keys.contains(key) {
                    key_state.replace((&before, old.identity), (&after, new.identity));
                } else {
                    key_state.remove(anchor, &before, old.identity);
                }
                dirty.push(*key);
            }
            for key in new_keys.iter().filter(|key| !old_keys.contains(key)) {
                self.keys.entry(*key).or_insert_with(KeyState::new).add(anchor, &after, new.identity);
                dirty.push(*key);
            }
        }
    }

    /// Folds one stored tag (`count` insertions of it) into its sources and keys.
    fn count(&mut self, counted: &Counted, count: i64, dirty: &mut Vec<Key>, letters: &mut Vec<DeadLetter>) {
        let anchor = match &counted.anchor {
            Anchor::Attacker(attacker) => AnchorId::Attacker(self.names.id(attacker)),
            Anchor::Identity(identity) => AnchorId::Identity(self.names.id(identity)),
            Anchor::Unanchored => AnchorId::Unanchored,
        };
        if !self.anchors.contains_key(&anchor) {
            let placement = self.placement(anchor);
            if let Some(identity) = placement.identity {
                self.placed_at.entry(identity).or_default().insert(anchor);
            }
            self.anchors.insert(anchor, AnchorState { placement, sources: BTreeMap::new() });
        }
        let technique = self.techniques.id(&counted.technique);
        let session = counted.session.as_deref().and_then(|name| self.session_of(counted, name, technique, letters));
        // A late tag (an event that waited for its attacker, a partition behind the others)
        // keeps its key open for a horizon from its arrival.
        let active = counted.observed_at.map_or(self.clock, |at| at.max(self.clock));
        let state = self.anchors.get_mut(&anchor).expect("inserted above");
        let placement = state.placement;
        let agg = Agg::of(counted, count);
        let summary = agg.summary(placement.bump);
        for session in std::iter::once(None).chain(session.map(Some)) {
            let source = (session, technique);
            let new = match state.sources.get_mut(&source) {
                Some(existing) => {
                    existing.plus_equals(&agg);
                    false
                }
                None => {
                    state.sources.insert(source, agg.clone());
                    true
                }
            };
            for key in keys_of(anchor, &placement, session, technique) {
                // Only a session key's arrival needs noting: the others skip the extra lookup.
                let fresh = key.kind == ScopeKind::Session && !self.keys.contains_key(&key);
                let key_state = self.keys.entry(key).or_insert_with(KeyState::new);
                if let (ScopeKind::Session, Some(session)) = (key.kind, key.scope) {
                    if fresh {
                        self.sessions.hold(session);
                        self.due.entry(due_bucket(active)).or_default().push(key);
                    }
                    key_state.active = key_state.active.max(active);
                }
                if new {
                    key_state.add(anchor, &summary, placement.identity);
                } else {
                    key_state.totals.tags += summary.tags;
                    key_state.totals.extend(&summary);
                }
                dirty.push(key);
            }
        }
    }

    /// Emits a changed key's old row's retraction and its new row.
    fn emit(&mut self, key: Key, changes: &mut Vec<(RollupRow, Diff)>) {
        let Some(state) = self.keys.get_mut(&key) else { return };
        if state.stale {
            let mut totals = Totals { first_seen: None, last_seen: None, confidence: Confidence(0.0), ..state.totals };
            for member in &state.members {
                let anchor = &self.anchors[member];
                let session = (key.kind == ScopeKind::Session).then_some(key.scope).flatten();
                totals.extend(&anchor.sources[&(session, key.technique)].summary(anchor.placement.bump));
            }
            state.totals = totals;
            state.stale = false;
        }
        let now = (!state.members.is_empty()).then_some((state.totals, state.identities.len() as i64));
        if now == state.emitted {
            return;
        }
        let row = |(totals, identities): (Totals, i64)| {
            let technique = self.techniques.name(key.technique).clone();
            let scope_id = match (key.kind, key.scope) {
                (_, None) => String::new(),
                (ScopeKind::Session, Some(id)) => self.sessions.name(id).to_string(),
                (_, Some(id)) => self.names.name(id).clone(),
            };
            RollupRow {
                scope_kind: key.kind,
                scope_id,
                technique_id: technique.technique_id,
                sub_technique_id: technique.sub_technique_id,
                tactic: technique.tactic,
                tag_count: totals.tags,
                attacker_count: totals.attackers,
                identity_count: identities,
                first_seen: totals.first_seen,
                last_seen: totals.last_seen,
                confidence_max: totals.confidence,
            }
        };
        if let Some(old) = state.emitted {
            changes.push((row(old), -1));
        }
        if let Some(new) = now {
            changes.push((row(new), 1));
        }
        state.emitted = now;
        state.pending = false;
        if now.is_none() {
            self.forget(key);
        }
    }
}

/// The keys an anchor's source counts for: a session's source for its session alone, the
/// source of all sessions for the anchor's attacker, identity and campaign, and the fleet.
fn keys_of(anchor: AnchorId, placement: &Placement, session: Option<Id>, technique: Id) -> Vec<Key> {
    let key = |kind, scope| Key { kind, scope, technique };
    if session.is_some() {
        return vec![key(ScopeKind::Session, session)];
    }
    let mut keys = Vec::with_capacity(4);
    if let AnchorId::Attacker(attacker) = anchor {
        keys.push(key(ScopeKind::Attacker, Some(attacker)));
    }
    keys.extend(placement.identity.map(|identity| key(ScopeKind::Identity, Some(identity))));
    keys.extend(placement.campaign.map(|campaign| key(ScopeKind::Campaign, Some(campaign))));
    keys.push(key(ScopeKind::Fleet, None));
    keys
}

/// The reference maps as plain maps, for [`recompute`].
#[derive(Clone, Debug, Default)]
pub struct ReferenceState {
    /// Attacker → canonical identity.
    pub attacker_identity: BTreeMap<String, String>,
    /// Identity → canonical identity.
    pub identity_canonical: BTreeMap<String, String>,
    /// Canonical identity → canonical campaign.
    pub identity_campaign: BTreeMap<String, String>,
    /// Attacker → bump in millionths.
    pub bumps: BTreeMap<String, i64>,
}

/// The rollups recomputed from scratch, tag by tag, from stored tags and a reference
/// state: what the stage's output must equal after every epoch (its oracle, also used
/// by the tests over whole corpora).
pub fn recompute(tags: &[Tag], refs: &ReferenceState) -> BTreeSet<RollupRow> {
    #[derive(Default)]
    struct Acc {
        tags: i64,
        attackers: BTreeSet<String>,
        identities: BTreeSet<String>,
        first: Option<i64>,
        last: Option<i64>,
        confidence: Option<Confidence>,
    }
    let mut accs: BTreeMap<(ScopeKind, String, String, String, String), Acc> = BTreeMap::new();
    for tag in tags {
        let identity = match (&tag.attacker_uuid, &tag.identity_uuid) {
            (Some(a), _) => refs.attacker_identity.get(a).cloned(),
            (None, Some(i)) => Some(refs.identity_canonical.get(i).unwrap_or(i).clone()),
            (None, None) => None,
        };
        let campaign = identity.as_ref().and_then(|i| refs.identity_campaign.get(i)).cloned();
        let bump = tag.attacker_uuid.as_ref().and_then(|a| refs.bumps.get(a));
        let confidence = match bump {
            Some(micros) if tag.source_kind == INTEL_SOURCE => raised(tag.confidence, *micros),
            _ => tag.confidence,
        };
        let mut scopes = vec![(ScopeKind::Fleet, String::new())];
        scopes.extend(tag.attacker_uuid.clone().map(|a| (ScopeKind::Attacker, a)));
        scopes.extend(identity.clone().map(|i| (ScopeKind::Identity, i)));
        scopes.extend(campaign.map(|c| (ScopeKind::Campaign, c)));
        scopes.extend(tag.session_id.clone().map(|s| (ScopeKind::Session, s)));
        for (kind, id) in scopes {
            let sub = tag.sub_technique_id.clone().unwrap_or_default();
            let acc = accs.entry((kind, id, tag.technique_id.clone(), sub, tag.tactic.clone())).or_default();
            acc.tags += 1;
            acc.attackers.extend(tag.attacker_uuid.clone());
            acc.identities.extend(identity.clone());
            if let Some(t) = tag.observed_at {
                acc.first = Some(acc.first.map_or(t, |f| f.min(t)));
                acc.last = Some(acc.last.map_or(t, |l| l.max(t)));
            }
            acc.confidence = acc.confidence.max(Some(confidence));
        }
    }
    accs.into_iter()
        .map(|((scope_kind, scope_id, technique_id, sub_technique_id, tactic), acc)| RollupRow {
            scope_kind,
            scope_id,
            technique_id,
            sub_technique_id,
            tactic,
            tag_count: acc.tags,
            attacker_count: acc.attackers.len() as i64,
            identity_count: acc.identities.len() as i64,
            first_seen: acc.first,
            last_seen: acc.last,
            confidence_max: acc.confidence.unwrap_or(Confidence(0.0)),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::{Arc, Mutex};

    use differential_dataflow::input::Input as _;

    use super::*;
    use crate::json::Json;
    use crate::record::Pos;

    type Captured<D> = Arc<Mutex<Vec<(D, Time, Diff)>>>;

    /// One input change: a stored tag, or an upsert of a reference map (`None` deletes).
    #[derive(Clone, Debug)]
    enum Op {
        Tag(Box<Tag>),
        /// Attacker → canonical identity.
        Attacker(String, Option<String>),
        /// Identity → canonical identity.
        Canonical(String, Option<String>),
        /// Canonical identity → canonical campaign.
        Campaign(String, Option<String>),
        /// Attacker → bump amount in micros.
        Bump(String, Option<i64>),
    }

    fn s(x: &str) -> String {
        x.to_string()
    }

    fn attacker(a: &str, i: Option<&str>) -> Op {
        Op::Attacker(s(a), i.map(s))
    }

    fn canonical(i: &str, c: Option<&str>) -> Op {
        Op::Canonical(s(i), c.map(s))
    }

    fn campaign(i: &str, c: Option<&str>) -> Op {
        Op::Campaign(s(i), c.map(s))
    }

    fn bump(a: &str, micros: Option<i64>) -> Op {
        Op::Bump(s(a), micros)
    }

    /// A tag: uuid from `n`, technique `technique` (`T.sub` for a sub-technique).
    fn tag(n: u64, technique: &str, confidence: f64, observed_at: Option<i64>) -> Tag {
        let (technique_id, sub) = match technique.split_once('.') {
            Some((t, sub)) => (t.to_string(), Some(sub.to_string())),
            None => (technique.to_string(), None),
        };
        let mut uuid = [0; 16];
        uuid[..8].copy_from_slice(&n.to_le_bytes());
        Tag {
            pos: Pos { ts: 0, input: 0, offset: n },
            part: 0,
            emit: 0,
            uuid,
            source_kind: "command".into(),
            source_id: format!("src-{n}"),
            attacker_uuid: None,
            identity_uuid: None,
            session_id: None,
            decky_id: None,
            tactic: "TA0006".into(),
            technique_id,
            sub_technique_id: sub,
            confidence: Confidence(confidence),
            rule_id: "R".into(),
            rule_version: 1,
            evidence: Json::Obj(vec![]),
            attack_release: "v15.1".into(),
            observed_at,
        }
    }

    fn on(mut tag: Tag, attacker: Option<&str>, identity: Option<&str>, session: Option<&str>) -> Op {
        tag.attacker_uuid = attacker.map(s);
        tag.identity_uuid = identity.map(s);
        tag.session_id = session.map(s);
        Op::Tag(Box::new(tag))
    }

    fn intel(mut tag: Tag) -> Tag {
        tag.source_kind = INTEL_SOURCE.into();
        tag
    }

    /// Runs the stage over `batches`, batch `e` at epoch `e`; every update of the output.
    fn run(batches: Vec<Vec<Op>>) -> Captured<RollupRow> {
        run_on(1, batches)
    }

    /// Runs the stage on `workers` workers; worker 0 feeds every input.
    fn run_on(workers: usize, batches: Vec<Vec<Op>>) -> Captured<RollupRow> {
        run_with(workers, SESSION_HORIZON_US, Emission::EveryEpoch, batches).0
    }

    /// Runs the stage with sessions closing after `horizon`; its rows and dead letters.
    fn run_with(
        workers: usize,
        horizon: i64,
        emission: Emission,
        batches: Vec<Vec<Op>>,
    ) -> (Captured<RollupRow>, Captured<DeadLetter>) {
        let captured: Captured<RollupRow> = Arc::default();
        let letters: Captured<DeadLetter> = Arc::default();
        let sink = Arc::clone(&captured);
        let letter_sink = Arc::clone(&letters);
        let guards = timely::execute(timely::Config::process(workers), move |worker| {
            let feeds = worker.index() == 0;
            let (mut tags, mut attackers, mut canonicals, mut campaigns, mut bumps) =
                worker.dataflow::<Time, _, _>(|scope| {
                    let (tags_in, tags) = scope.new_collection::<Tag, Diff>();
                    let (attackers_in, attackers) = scope.new_collection::<(String, String), Diff>();
                    let (canonicals_in, canonicals) = scope.new_collection::<(String, String), Diff>();
                    let (campaigns_in, campaigns) = scope.new_collection::<(String, String), Diff>();
                    let (bumps_in, bumps) = scope.new_collection::<(String, Bump), Diff>();
                    let (sink, letter_sink) = (Arc::clone(&sink), Arc::clone(&letter_sink));
                    let rolled = rollup(tags, attackers, canonicals, campaigns, bumps, horizon, emission);
                    rolled.rows.inspect(move |x| sink.lock().unwrap().push(x.clone()));
                    rolled.dead_letters.inspect(move |x| letter_sink.lock().unwrap().push(x.clone()));
                    (tags_in, attackers_in, canonicals_in, campaigns_in, bumps_in)
                });
            let mut maps: [BTreeMap<String, String>; 3] = Default::default();
            let mut bump_of: BTreeMap<String, i64> = BTreeMap::new();
            let as_bump = |micros: i64| Bump { rule_id: "R0058".into(), amount_micros: micros };
            for (epoch, ops) in batches.iter().enumerate() {
                let epoch = epoch as Time;
                tags.advance_to(epoch);
                attackers.advance_to(epoch);
                canonicals.advance_to(epoch);
                campaigns.advance_to(epoch);
                bumps.advance_to(epoch);
                for op in ops.clone().into_iter().filter(|_| feeds) {
                    let (which, key, value) = match op {
                        Op::Tag(tag) => {
                            tags.insert(*tag);
                            continue;
                        }
                        Op::Bump(key, value) => {
                            if let Some(old) = bump_of.remove(&key) {
                                bumps.remove((key.clone(), as_bump(old)));
                            }
                            if let Some(new) = value {
                                bump_of.insert(key.clone(), new);
                                bumps.insert((key, as_bump(new)));
                            }
                            continue;
                        }
                        Op::Attacker(key, value) => (0, key, value),
                        Op::Canonical(key, value) => (1, key, value),
                        Op::Campaign(key, value) => (2, key, value),
                    };
                    let input = [&mut attackers, &mut canonicals, &mut campaigns];
                    let input = input.into_iter().nth(which).expect("three maps");
                    if let Some(old) = maps[which].remove(&key) {
                        input.remove((key.clone(), old));
                    }
                    if let Some(new) = value {
                        maps[which].insert(key.clone(), new.clone());
                        input.insert((key, new));
                    }
                }
            }
        })
        .expect("timely starts");
        for result in guards.join() {
            result.expect("a worker finishes");
        }
        (captured, letters)
    }

    fn consolidated(captured: &Captured<RollupRow>) -> Vec<(RollupRow, Time, Diff)> {
        let mut updates = captured.lock().unwrap().clone();
        differential_dataflow::consolidation::consolidate_updates(&mut updates);
        updates
    }

    /// The output at `epoch`; every row must be there once or not at all.
    fn at(captured: &Captured<RollupRow>, epoch: Time) -> BTreeSet<RollupRow> {
        let mut counts: BTreeMap<RollupRow, Diff> = BTreeMap::new();
        for (row, time, diff) in captured.lock().unwrap().iter() {
            if *time <= epoch {
                *counts.entry(row.clone()).or_default() += diff;
            }
        }
        counts.retain(|_, r| *r != 0);
        assert!(counts.values().all(|r| *r == 1), "multiplicities at {epoch}: {counts:#?}");
        counts.into_keys().collect()
    }

    /// The rows of one scope kind.
    fn of(rows: &BTreeSet<RollupRow>, kind: ScopeKind) -> Vec<RollupRow> {
        rows.iter().filter(|r| r.scope_kind == kind).cloned().collect()
    }

    /// A row: `numbers` are (tags, attackers, identities), `seen` (first, last).
    fn row(
        kind: ScopeKind,
        id: &str,
        technique: &str,
        numbers: (i64, i64, i64),
        seen: (Option<i64>, Option<i64>),
        confidence: f64,
    ) -> RollupRow {
        let (technique_id, sub) = technique.split_once('.').unwrap_or((technique, ""));
        RollupRow {
            scope_kind: kind,
            scope_id: id.into(),
            technique_id: technique_id.into(),
            sub_technique_id: sub.into(),
            tactic: "TA0006".into(),
            tag_count: numbers.0,
            attacker_count: numbers.1,
            identity_count: numbers.2,
            first_seen: seen.0,
            last_seen: seen.1,
            confidence_max: Confidence(confidence),
        }
    }

    #[test]
    fn every_scope_kind_sums_its_tags() {
        use ScopeKind::*;
        let refs = vec![
            attacker("a1", Some("i1")),
            attacker("a2", Some("i1")),
            canonical("i1", Some("i1")),
            canonical("i2", Some("i1")),
            campaign("i1", Some("c1")),
        ];
        let first = vec![
            on(tag(1, "T1110", 0.5, Some(10)), Some("a1"), None, Some("s1")),
            on(tag(3, "T1110", 0.6, None), Some("a1"), Some("i9"), Some("s1")),
            on(tag(4, "T1110", 0.4, Some(20)), Some("a2"), None, Some("s2")),
            on(tag(5, "T1110", 0.9, Some(5)), None, Some("i2"), None),
            on(tag(6, "T1110", 0.3, Some(40)), None, None, Some("s1")),
            on(tag(7, "T1059.004", 0.8, None), Some("a1"), None, None),
        ];
        let second = vec![on(tag(2, "T1110", 0.7, Some(30)), Some("a1"), None, Some("s1"))];
        let out = run(vec![refs.into_iter().chain(first).collect(), second]);
        let rows = at(&out, 1);
        let none = (None, None);
        assert_eq!(
            of(&rows, Attacker),
            [
                row(Attacker, "a1", "T1059.004", (1, 1, 1), none, 0.8),
                row(Attacker, "a1", "T1110", (3, 1, 1), (Some(10), Some(30)), 0.7),
                row(Attacker, "a2", "T1110", (1, 1, 1), (Some(20), Some(20)), 0.4),
            ]
        );
        // The identity-anchored tag counts for i2's canonical identity; a tag with an
        // attacker follows its attacker, not the identity its event carried (i9).
        assert_eq!(
            of(&rows, Identity),
            [
                row(Identity, "i1", "T1059.004", (1, 1, 1), none, 0.8),
                row(Identity, "i1", "T1110", (5, 2, 1), (Some(5), Some(30)), 0.9),
            ]
        );
        assert_eq!(
            of(&rows, Campaign),
            [
                row(Campaign, "c1", "T1059.004", (1, 1, 1), none, 0.8),
                row(Campaign, "c1", "T1110", (5, 2, 1), (Some(5), Some(30)), 0.9),
            ]
        );
        assert_eq!(
            of(&rows, Session),
            [
                row(Session, "s1", "T1110", (4, 1, 1), (Some(10), Some(40)), 0.7),
                row(Session, "s2", "T1110", (1, 1, 1), (Some(20), Some(20)), 0.4),
            ]
        );
        assert_eq!(
            of(&rows, Fleet),
            [
                row(Fleet, "", "T1059.004", (1, 1, 1), none, 0.8),
                row(Fleet, "", "T1110", (6, 2, 1), (Some(5), Some(40)), 0.9),
            ]
        );
        // The tag of epoch 1 replaces a1's row rather than adding one.
        let a1: Vec<_> = consolidated(&out)
            .into_iter()
            .filter(|(r, _, _)| r.scope_kind == Attacker && r.scope_id == "a1" && r.technique_id == "T1110")
            .collect();
        let before = row(Attacker, "a1", "T1110", (2, 1, 1), (Some(10), Some(10)), 0.6);
        let after = row(Attacker, "a1", "T1110", (3, 1, 1), (Some(10), Some(30)), 0.7);
        assert_eq!(a1, [(before.clone(), 0, 1), (before, 1, -1), (after, 1, 1)]);
    }

    /// Epoch 0: a1 in i1 (campaign c1), a2 in i2 (campaign c2), a tag anchored on i2.
    /// Epoch 1: i2 merges into i1. Epoch 2: i2 is unmerged.
    #[test]
    fn a_merge_and_an_unmerge_move_counts_between_identities_and_campaigns() {
        use ScopeKind::*;
        let merged = vec![attacker("a2", Some("i1")), canonical("i2", Some("i1")), campaign("i2", None)];
        let unmerged = vec![attacker("a2", Some("i2")), canonical("i2", Some("i2")), campaign("i2", Some("c2"))];
        let out = run(vec![
            vec![
                attacker("a1", Some("i1")),
                attacker("a2", Some("i2")),
                canonical("i1", Some("i1")),
                canonical("i2", Some("i2")),
                campaign("i1", Some("c1")),
                campaign("i2", Some("c2")),
                on(tag(1, "T1110", 0.5, Some(10)), Some("a1"), None, None),
                on(tag(2, "T1110", 0.6, Some(20)), Some("a2"), None, None),
                on(tag(3, "T1110", 0.7, Some(30)), Some("a2"), None, None),
                on(tag(4, "T1110", 0.8, Some(40)), None, Some("i2"), None),
            ],
            merged,
            unmerged,
        ]);
        let apart = |kind: ScopeKind, one: &str, two: &str| {
            vec![
                row(kind, one, "T1110", (1, 1, 1), (Some(10), Some(10)), 0.5),
                row(kind, two, "T1110", (3, 1, 1), (Some(20), Some(40)), 0.8),
            ]
        };
        let together = |kind: ScopeKind, id: &str| vec![row(kind, id, "T1110", (4, 2, 1), (Some(10), Some(40)), 0.8)];
        for (epoch, identities, campaigns) in [
            (0, apart(Identity, "i1", "i2"), apart(Campaign, "c1", "c2")),
            (1, together(Identity, "i1"), together(Campaign, "c1")),
            (2, apart(Identity, "i1", "i2"), apart(Campaign, "c1", "c2")),
        ] {
            let rows = at(&out, epoch);
            assert_eq!(of(&rows, Identity), identities, "identities at {epoch}");
            assert_eq!(of(&rows, Campaign), campaigns, "campaigns at {epoch}");
            let fleet_identities = if epoch == 1 { 1 } else { 2 };
            let fleet = row(Fleet, "", "T1110", (4, 2, fleet_identities), (Some(10), Some(40)), 0.8);
            assert_eq!(of(&rows, Fleet), [fleet], "fleet at {epoch}");
            assert_eq!(of(&rows, Attacker).len(), 2, "attacker rows never move");
        }
        let identity_updates: Vec<_> =
            consolidated(&out).into_iter().filter(|(r, _, _)| r.scope_kind == Identity).collect();
        let [one, two] = <[RollupRow; 2]>::try_from(apart(Identity, "i1", "i2")).unwrap();
        let [both] = <[RollupRow; 1]>::try_from(together(Identity, "i1")).unwrap();
        let mut want = vec![
            (one.clone(), 0, 1),
            (one.clone(), 1, -1),
            (one, 2, 1),
            (two.clone(), 0, 1),
            (two.clone(), 1, -1),
            (two, 2, 1),
            (both.clone(), 1, 1),
            (both, 2, -1),
        ];
        want.sort();
        assert_eq!(identity_updates, want);
    }

    /// Epoch 0: a1's intel and other tags, no bump. Epoch 1: a1 is bumped by 0.05.
    /// Epoch 2: the bump goes away.
    #[test]
    fn the_bump_raises_intel_techniques_only_while_it_lasts() {
        use ScopeKind::*;
        let out = run(vec![
            vec![
                on(intel(tag(1, "T1595", 0.6, None)), Some("a1"), None, None),
                on(intel(tag(2, "T1071", 0.98, None)), Some("a1"), None, None),
                on(tag(3, "T1110", 0.6, None), Some("a1"), None, None),
                on(tag(4, "T1595", 0.62, None), Some("a2"), None, None),
                on(intel(tag(5, "T1595", 0.5, None)), Some("a2"), None, None),
            ],
            vec![bump("a1", Some(50_000))],
            vec![bump("a1", None)],
        ]);
        let confidences = |epoch: Time, kind: ScopeKind| -> Vec<(String, String, f64)> {
            of(&at(&out, epoch), kind).into_iter().map(|r| (r.scope_id, r.technique_id, r.confidence_max.0)).collect()
        };
        let c = |id: &str, t: &str, x: f64| (s(id), s(t), x);
        let unbumped =
            vec![c("a1", "T1071", 0.98), c("a1", "T1110", 0.6), c("a1", "T1595", 0.6), c("a2", "T1595", 0.62)];
        assert_eq!(confidences(0, Attacker), unbumped);
        assert_eq!(confidences(0, Fleet), [c("", "T1071", 0.98), c("", "T1110", 0.6), c("", "T1595", 0.62)]);
        let raised_t1595 = raised(Confidence(0.6), 50_000).0;
        assert_eq!(
            confidences(1, Attacker),
            [c("a1", "T1071", 1.0), c("a1", "T1110", 0.6), c("a1", "T1595", raised_t1595), c("a2", "T1595", 0.62)],
            "intel techniques of a1 only, capped at 1.0"
        );
        assert_eq!(confidences(1, Fleet), [c("", "T1071", 1.0), c("", "T1110", 0.6), c("", "T1595", raised_t1595)]);
        assert_eq!(confidences(2, Attacker), unbumped);
        assert_eq!(at(&out, 2), at(&out, 0), "everything as before the bump");
    }

    /// The stage over the identity stage: rows in epoch 0, `identity.merged` (i2 into i1)
    /// in epoch 1, `identity.unmerged` (i2) in epoch 2.
    #[test]
    fn the_stage_follows_merge_and_unmerge_events_of_the_identity_stage() {
        use crate::record::{AttackerRow, Event, Table, TableRow, TableUpdate};
        let obj = |fields: &[(&str, Option<&str>)]| {
            Json::Obj(fields.iter().map(|(k, v)| (s(k), v.map_or(Json::Null, |v| Json::Str(s(v))))).collect())
        };
        let identity_row = move |offset: u64, uuid: &str, campaign: &str| TableUpdate {
            pos: Pos { ts: 0, input: 1, offset },
            table: Table::Identities,
            key: s(uuid),
            row: Some(TableRow::Other(obj(&[
                ("uuid", Some(uuid)),
                ("campaign_id", Some(campaign)),
                ("merged_into_uuid", None),
            ]))),
        };
        let attacker_row = |offset: u64, uuid: &str, identity: &str| TableUpdate {
            pos: Pos { ts: 0, input: 1, offset },
            table: Table::Attackers,
            key: s(uuid),
            row: Some(TableRow::Attacker(AttackerRow { uuid: s(uuid), ip: None, identity_id: Some(s(identity)) })),
        };
        let event = move |offset: u64, topic: &str, fields: &[(&str, Option<&str>)]| Event {
            pos: Pos { ts: 0, input: 2, offset },
            topic: s(topic),
            event_type: String::new(),
            source_kind: None,
            event_time: None,
            payload: Arc::new(obj(fields)),
        };
        let tagged = |n: u64, a: &str| {
            let mut t = tag(n, "T1110", 0.5, Some(n as i64));
            t.attacker_uuid = Some(s(a));
            t
        };
        let captured: Captured<RollupRow> = Arc::default();
        let sink = Arc::clone(&captured);
        timely::execute_directly(move |worker| {
            let (mut tables, mut events, mut tags) = worker.dataflow::<Time, _, _>(|scope| {
                let (tables_in, tables) = scope.new_collection::<TableUpdate, Diff>();
                let (events_in, events) = scope.new_collection::<Event, Diff>();
                let (tags_in, tags) = scope.new_collection::<Tag, Diff>();
                let (_, bumps) = scope.new_collection::<(String, Bump), Diff>();
                let refs = crate::identity::stage(tables, events);
                stage(tags, &refs, bumps, Emission::EveryEpoch)
                    .rows
                    .inspect(move |x| sink.lock().unwrap().push(x.clone()));
                (tables_in, events_in, tags_in)
            });
            tables.insert(identity_row(0, "i1", "c1"));
            tables.insert(identity_row(1, "i2", "c2"));
            tables.insert(attacker_row(2, "a1", "i1"));
            tables.insert(attacker_row(3, "a2", "i2"));
            tags.insert(tagged(1, "a1"));
            tags.insert(tagged(2, "a2"));
            tags.insert(tagged(3, "a2"));
            for (epoch, (topic, fields)) in [
                ("identity.merged", [("winner_uuid", Some("i1")), ("loser_uuid", Some("i2"))]),
                ("identity.unmerged", [("loser_uuid", Some("i2")), ("attacker_ip", None)]),
            ]
            .into_iter()
            .enumerate()
            {
                let epoch = epoch as Time + 1;
                tables.advance_to(epoch);
                events.advance_to(epoch);
                tags.advance_to(epoch);
                events.insert(event(epoch, topic, &fields));
            }
        });
        let scopes = |epoch: Time| -> Vec<(ScopeKind, String, i64, i64)> {
            at(&captured, epoch)
                .into_iter()
                .filter(|r| matches!(r.scope_kind, ScopeKind::Identity | ScopeKind::Campaign))
                .map(|r| (r.scope_kind, r.scope_id, r.tag_count, r.attacker_count))
                .collect()
        };
        let apart = vec![
            (ScopeKind::Identity, s("i1"), 1, 1),
            (ScopeKind::Identity, s("i2"), 2, 1),
            (ScopeKind::Campaign, s("c1"), 1, 1),
            (ScopeKind::Campaign, s("c2"), 2, 1),
        ];
        assert_eq!(scopes(0), apart);
        assert_eq!(scopes(1), [(ScopeKind::Identity, s("i1"), 3, 2), (ScopeKind::Campaign, s("c1"), 3, 2)]);
        assert_eq!(scopes(2), apart, "the unmerge moves i2's contribution back");
    }

    /// A session tag of attacker a1 at `hours` of event time, read from `input`.
    fn session_tag(n: u64, session: &str, hours: i64, input: u32) -> Op {
        let mut tag = tag(n, "T1110", 0.5, Some(hours * HOUR_US));
        tag.pos.input = input;
        on(tag, Some("a1"), None, Some(session))
    }

    /// The dead letters' offsets and reasons, per epoch.
    fn letters_of(letters: &Captured<DeadLetter>) -> Vec<(Time, u64, Reason)> {
        let mut out: Vec<_> =
            letters.lock().unwrap().iter().map(|(l, time, diff)| (*time, l.pos.offset, l.reason, *diff)).collect();
        out.sort();
        assert!(out.iter().all(|l| l.3 == 1), "{out:?}");
        out.into_iter().map(|(time, offset, reason, _)| (time, offset, reason)).collect()
    }

    /// Horizon 10 h. Epoch 0: s1 at 0 h, s2 at 5 h. Epoch 1: s2 at 30 h moves the clock
    /// to 30 h, and s1 closes. Epoch 2: s1 again at 25 h (closed lately), s3 at 1 h (late,
    /// but new), s2 at 2 h (late, but open). Epoch 3: s3 again at 2 h, when the clock
    /// reaches 39 h: its key stays open a horizon from then. Epoch 4: at 41 h s2 closes.
    /// Epoch 5: s3 counts, s2 is a dead letter.
    #[test]
    fn a_session_closes_a_horizon_after_its_latest_activity_and_later_tags_of_it_are_dead_letters() {
        use ScopeKind::*;
        let h = |hours: i64| Some(hours * HOUR_US);
        let batches = vec![
            vec![session_tag(1, "s1", 0, 0), session_tag(2, "s2", 5, 0)],
            vec![session_tag(3, "s2", 30, 0)],
            vec![session_tag(4, "s1", 25, 0), session_tag(5, "s3", 1, 0), session_tag(6, "s2", 2, 0)],
            vec![session_tag(7, "s4", 39, 0), session_tag(8, "s3", 2, 0)],
            vec![session_tag(9, "s4", 41, 0)],
            vec![session_tag(10, "s3", 3, 0), session_tag(11, "s2", 3, 0)],
        ];
        for workers in [1, 2] {
            let (out, letters) = run_with(workers, 10 * HOUR_US, Emission::EveryEpoch, batches.clone());
            let s1 = row(Session, "s1", "T1110", (1, 1, 0), (h(0), h(0)), 0.5);
            let s2 = row(Session, "s2", "T1110", (3, 1, 0), (h(2), h(30)), 0.5);
            let s3 = row(Session, "s3", "T1110", (1, 1, 0), (h(1), h(1)), 0.5);
            assert_eq!(of(&at(&out, 2), Session), [s1.clone(), s2.clone(), s3], "s1's row stays as it closed");
            let s3 = row(Session, "s3", "T1110", (3, 1, 0), (h(1), h(3)), 0.5);
            let s4 = row(Session, "s4", "T1110", (2, 1, 0), (h(39), h(41)), 0.5);
            assert_eq!(of(&at(&out, 5), Session), [s1, s2, s3, s4]);
            let all = row(Attacker, "a1", "T1110", (11, 1, 0), (h(0), h(41)), 0.5);
            assert_eq!(of(&at(&out, 5), Attacker), [all]);
            assert_eq!(of(&at(&out, 5), Fleet), [row(Fleet, "", "T1110", (11, 1, 0), (h(0), h(41)), 0.5)]);
            let closed = Reason::SessionClosed;
            let expected = [(2, 4, closed), (5, 11, closed)];
            assert_eq!(letters_of(&letters), expected, "on {workers} workers");
            let retracted =
                consolidated(&out).into_iter().any(|(r, _, d)| r.scope_kind == Session && r.scope_id == "s1" && d < 0);
            assert!(!retracted, "closing retracts nothing");

            // Final emission: each row once, a closed session's when it closes, the
            // others when the input ends; the same rows and dead letters in the end.
            let (last, last_letters) = run_with(workers, 10 * HOUR_US, Emission::Final, batches.clone());
            assert_eq!(once_each(&last), at(&out, 5), "on {workers} workers");
            assert_eq!(letters_of(&last_letters), expected);
            let s1_at: Vec<Time> =
                last.lock().unwrap().iter().filter(|(r, _, _)| r.scope_id == "s1").map(|(_, t, _)| *t).collect();
            assert_eq!(s1_at, [1], "s1's row comes out when it closes");
            let at_end: Vec<Time> =
                last.lock().unwrap().iter().filter(|(r, _, _)| r.scope_kind == Attacker).map(|(_, t, _)| *t).collect();
            assert_eq!(at_end, [5], "open keys come out when the input ends, at its last epoch");
        }
    }

    /// Output of final emission: every row must come once, with no retraction.
    fn once_each(captured: &Captured<RollupRow>) -> BTreeSet<RollupRow> {
        let updates = captured.lock().unwrap().clone();
        assert!(updates.iter().all(|(_, _, d)| *d == 1), "only insertions: {updates:#?}");
        let rows: BTreeSet<RollupRow> = updates.iter().map(|(r, _, _)| r.clone()).collect();
        assert_eq!(rows.len(), updates.len(), "each row once: {updates:#?}");
        rows
    }

    /// The clock is the least of the inputs' latest session tags: one input far ahead
    /// closes nothing that another input is still feeding.
    #[test]
    fn sessions_close_only_when_every_input_has_moved_past_them() {
        use ScopeKind::*;
        let batches = vec![
            vec![session_tag(1, "s1", 0, 0), session_tag(2, "s2", 0, 1)],
            vec![session_tag(3, "s3", 100, 0)],
            vec![session_tag(4, "s1", 1, 1)],
            vec![session_tag(5, "s4", 100, 1)],
            vec![session_tag(6, "s1", 95, 0)],
        ];
        let (out, letters) = run_with(2, 10 * HOUR_US, Emission::EveryEpoch, batches);
        let sessions =
            |epoch| of(&at(&out, epoch), Session).into_iter().map(|r| (r.scope_id, r.tag_count)).collect::<Vec<_>>();
        assert_eq!(sessions(2), [(s("s1"), 2), (s("s2"), 1), (s("s3"), 1)], "input 1 held the clock at 0 h");
        assert_eq!(sessions(4), [(s("s1"), 2), (s("s2"), 1), (s("s3"), 1), (s("s4"), 1)]);
        assert_eq!(letters_of(&letters), [(4, 6, Reason::SessionClosed)], "s1 closed once input 1 reached 100 h");
        assert_eq!(of(&at(&out, 4), Attacker)[0].tag_count, 6);
        let letter = letters.lock().unwrap()[0].0.clone();
        assert!(letter.detail.contains("session s1") && letter.detail.contains("10 h"), "{}", letter.detail);
    }

    use crate::testing::Rng;

    const ATTACKERS: &[&str] = &["a0", "a1", "a2", "a3"];
    const IDENTITIES: &[&str] = &["i0", "i1", "i2"];
    const CAMPAIGNS: &[&str] = &["c0", "c1"];
    const SESSIONS: &[&str] = &["s0", "s1", "s2"];
    const TECHNIQUES: &[&str] = &["T1110", "T1110.001", "T1595"];

    /// The latest reference state, as plain maps.
    #[derive(Default)]
    struct Model {
        tags: Vec<Tag>,
        attackers: BTreeMap<String, String>,
        canonical: BTreeMap<String, String>,
        campaigns: BTreeMap<String, String>,
        bumps: BTreeMap<String, i64>,
    }

    impl Model {
        fn apply(&mut self, op: &Op) {
            let upsert = |map: &mut BTreeMap<String, String>, key: &String, value: &Option<String>| match value {
                Some(value) => map.insert(key.clone(), value.clone()),
                None => map.remove(key),
            };
            match op {
                Op::Tag(tag) => self.tags.push((**tag).clone()),
                Op::Attacker(key, value) => _ = upsert(&mut self.attackers, key, value),
                Op::Canonical(key, value) => _ = upsert(&mut self.canonical, key, value),
                Op::Campaign(key, value) => _ = upsert(&mut self.campaigns, key, value),
                Op::Bump(key, Some(micros)) => _ = self.bumps.insert(key.clone(), *micros),
                Op::Bump(key, None) => _ = self.bumps.remove(key),
            }
        }

        fn expected(&self) -> BTreeSet<RollupRow> {
            let refs = ReferenceState {
                attacker_identity: self.attackers.clone(),
                identity_canonical: self.canonical.clone(),
                identity_campaign: self.campaigns.clone(),
                bumps: self.bumps.clone(),
            };
            recompute(&self.tags, &refs)
        }
    }

    fn random_op(rng: &mut Rng, n: u64) -> Op {
        match rng.below(10) {
            0..=4 => {
                let technique = rng.pick(TECHNIQUES);
                let confidence = [0.3, 0.5, 0.75, 0.97][rng.below(4)];
                let observed_at = (rng.below(4) > 0).then(|| rng.below(100) as i64);
                let mut t = tag(n, technique, confidence, observed_at);
                if rng.below(3) == 0 {
                    t = intel(t);
                }
                let (a, i) = match rng.below(4) {
                    0 | 1 => (Some(rng.pick(ATTACKERS)), rng.maybe(IDENTITIES)),
                    2 => (None, Some(rng.pick(IDENTITIES))),
                    _ => (None, None),
                };
                on(t, a, i, rng.maybe(SESSIONS))
            }
            // Merges and unmerges: attackers move between canonical identities, and
            // identities between canonical identities.
            5 => attacker(rng.pick(ATTACKERS), rng.maybe(IDENTITIES)),
            6 => canonical(rng.pick(IDENTITIES), rng.maybe(IDENTITIES)),
            7 => campaign(rng.pick(IDENTITIES), rng.maybe(CAMPAIGNS)),
            _ => bump(rng.pick(ATTACKERS), rng.maybe(&["x"]).map(|_| [30_000, 50_000][rng.below(2)])),
        }
    }

    /// Random tags, reference changes and bumps in random epochs: after every epoch the
    /// rollups equal a recomputation over the tags so far and the latest references.
    #[test]
    fn matches_a_recomputation_after_every_epoch() {
        const EPOCHS: usize = 5;
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        let (mut moves, mut bumped) = (0, 0);
        for case in 0..200 {
            let mut batches: Vec<Vec<Op>> = vec![Vec::new(); EPOCHS];
            for n in 0..(8 + rng.below(30) as u64) {
                let op = random_op(&mut rng, n);
                batches[rng.below(EPOCHS)].push(op);
            }
            // Odd cases on two workers: keys are sharded by technique, references broadcast.
            let out = run_on(1 + case % 2, batches.clone());
            let last = run_with(1 + case % 2, SESSION_HORIZON_US, Emission::Final, batches.clone()).0;
            let mut model = Model::default();
            for (epoch, ops) in batches.iter().enumerate() {
                for op in ops {
                    model.apply(op);
                }
                let want = model.expected();
                assert_eq!(at(&out, epoch as Time), want, "case {case}, epoch {epoch}, batches {batches:#?}");
                bumped += usize::from(!model.bumps.is_empty() && want.iter().any(|r| r.confidence_max.0 > 0.97));
            }
            assert_eq!(once_each(&last), model.expected(), "final emission, case {case}, batches {batches:#?}");
            let retracted: BTreeSet<_> = consolidated(&out)
                .into_iter()
                .filter(|(r, _, d)| *d < 0 && matches!(r.scope_kind, ScopeKind::Identity | ScopeKind::Campaign))
                .map(|(r, _, _)| (r.scope_kind, r.scope_id))
                .collect();
            moves += usize::from(!retracted.is_empty());
        }
        assert!(moves > 20 && bumped > 10, "the cases must move scopes and bump: {moves} {bumped}");
    }
}
