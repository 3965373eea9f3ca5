//! The pack schedule: which rule pack applies at which epoch, so that a pack can be swapped
//! while the graph runs (DESIGN §1.3: rules apply to records processed after they load).
//!
//! A [`PackSchedule`] holds packs by the epoch from which each applies. Every update at
//! time `t` is evaluated with [`PackSchedule::at`]`(t)`, the pack installed for the latest
//! epoch at or before `t`, so a swap takes effect at an epoch boundary and the output is a
//! function of the inputs, their epochs and the schedule, whatever the number of workers.
//! A schedule with one pack ([`PackSchedule::fixed`]) gives the output of a graph built
//! over that pack alone.
//!
//! Installing is the runtime's side; looking up the graph's. The handle is cloned into every
//! operator that evaluates rules, within one process (workers are threads). An install from
//! epoch `e` must happen before any worker evaluates an update of an epoch at or after `e`,
//! for else that update would have met the old pack: the schedule remembers the greatest
//! epoch looked up so far and refuses such an install ([`ScheduleError::Evaluated`]), so that
//! `at(t)` never changes once it has answered. An install earlier than the latest installed
//! epoch is refused too ([`ScheduleError::Earlier`]); one at the latest installed epoch
//! replaces that pack, which no update can have met yet. The runtime installs at an epoch
//! boundary, from the first epoch whose records it has not fed to the graph yet.
//!
//! What each stage makes of a swap is in its own contract: detect evaluates each subject
//! with the pack of its epoch; intel judges a row with the pack of the epoch in which the
//! row arrives (a row already judged is not re-evaluated); windows make each input with the
//! pack of its subject's epoch, and the input carries its rule's definition for as long as
//! it stays in a window.
//!
//! Operators look up once per time they see, through a [`Lookup`], not per record: the
//! lock is taken when the time of the updates at hand changes. Packs that no epoch can use
//! any more go with [`PackSchedule::retire_before`], called by the runtime with a frontier
//! the whole graph has passed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::rules::RulePack;
use crate::types::Time;

/// Why an install was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("cannot install a rule pack from epoch {from}: a pack is installed from the later epoch {latest}")]
    Earlier { from: Time, latest: Time },
    #[error("cannot install a rule pack from epoch {from}: updates of epoch {evaluated} have been evaluated already")]
    Evaluated { from: Time, evaluated: Time },
}

/// The packs by the epoch from which each applies; cloning shares the schedule.
#[derive(Clone, Debug)]
pub struct PackSchedule {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    /// Never empty.
    packs: BTreeMap<Time, Arc<RulePack>>,
    /// The greatest epoch looked up so far.
    evaluated: Option<Time>,
}

impl PackSchedule {
    /// One pack at every epoch.
    pub fn fixed(pack: Arc<RulePack>) -> PackSchedule {
        let inner = Inner { packs: BTreeMap::from([(0, pack)]), evaluated: None };
        PackSchedule { inner: Arc::new(Mutex::new(inner)) }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere while holding the lock leaves the map whole: no update spans it.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes `pack` apply from epoch `from` on. Refused when `from` is earlier than the latest
    /// epoch installed, or when an update at `from` or later has been evaluated already.
    pub fn install(&self, from: Time, pack: Arc<RulePack>) -> Result<(), ScheduleError> {
        let mut inner = self.lock();
        let latest = inner.latest_epoch();
        if from < latest {
            return Err(ScheduleError::Earlier { from, latest });
        }
        if let Some(evaluated) = inner.evaluated.filter(|e| *e >= from) {
            return Err(ScheduleError::Evaluated { from, evaluated });
        }
        inner.packs.insert(from, pack);
        Ok(())
    }

    /// The pack for updates at `time`: the one installed for the latest epoch at or before it
    /// (the earliest kept, for a time before every pack kept).
    pub fn at(&self, time: Time) -> Arc<RulePack> {
        let mut inner = self.lock();
        inner.evaluated = Some(inner.evaluated.map_or(time, |e| e.max(time)));
        Arc::clone(inner.pack_at(time))
    }

    /// The latest pack installed, and the epoch from which it applies.
    pub fn latest(&self) -> (Time, Arc<RulePack>) {
        let inner = self.lock();
        let (from, pack) = inner.packs.last_key_value().expect("a schedule holds a pack");
        (*from, Arc::clone(pack))
    }

    /// The epochs from which the kept packs apply, in order.
    pub fn epochs(&self) -> Vec<Time> {
        self.lock().packs.keys().copied().collect()
    }

    /// Drops the packs that no update at `time` or later can use: every pack superseded at
    /// or before `time`. Call it with a frontier the whole graph has passed, since an update
    /// before `time` would then meet the earliest pack kept.
    pub fn retire_before(&self, time: Time) {
        let mut inner = self.lock();
        let in_effect = inner.packs.range(..=time).next_back().map(|(from, _)| *from);
        if let Some(in_effect) = in_effect {
            inner.packs = inner.packs.split_off(&in_effect);
        }
    }

    /// A per-operator view that looks up once per time and keeps what `derive` makes of
    /// each pack (a compiled plan, say), computed once per pack.
    pub fn lookup<T>(&self, derive: impl Fn(&Arc<RulePack>) -> T + 'static) -> Lookup<T> {
        Lookup { schedule: self.clone(), derive: Box::new(derive), current: None, derived: Vec::new() }
    }

    /// A per-operator view of the packs alone ([`Lookup::pack`]).
    pub fn packs(&self) -> Lookup<()> {
        self.lookup(|_| ())
    }
}

impl Inner {
    fn latest_epoch(&self) -> Time {
        self.packs.last_key_value().map_or(0, |(from, _)| *from)
    }

    fn pack_at(&self, time: Time) -> &Arc<RulePack> {
        let in_effect = self.packs.range(..=time).next_back().or_else(|| self.packs.first_key_value());
        in_effect.map(|(_, pack)| pack).expect("a schedule holds a pack")
    }
}

/// How many packs a [`Lookup`] keeps what it derived of: an operator meets updates of more
/// than one epoch at a time only around a swap.
const DERIVED_KEPT: usize = 4;

/// What an operator makes of a pack.
type Derive<T> = Box<dyn Fn(&Arc<RulePack>) -> T>;

/// One operator's view of a [`PackSchedule`]: the pack of the time at hand, or what
/// the operator derives of it, looked up only when the time changes.
pub struct Lookup<T> {
    schedule: PackSchedule,
    derive: Derive<T>,
    /// The last time looked up, its pack and what was derived of it.
    current: Option<(Time, Arc<RulePack>, Arc<T>)>,
    /// What was derived of each pack met lately, the latest last.
    derived: Vec<(Arc<RulePack>, Arc<T>)>,
}

impl<T> Lookup<T> {
    /// What the operator derives of the pack for updates at `time`.
    pub fn at(&mut self, time: Time) -> &T {
        &self.current(time).2
    }

    /// The pack for updates at `time`.
    pub fn pack(&mut self, time: Time) -> &RulePack {
        &self.current(time).1
    }

    fn current(&mut self, time: Time) -> &(Time, Arc<RulePack>, Arc<T>) {
        if self.current.as_ref().is_none_or(|(t, _, _)| *t != time) {
            let pack = self.schedule.at(time);
            let value = self.derived_of(&pack);
            self.current = Some((time, pack, value));
        }
        self.current.as_ref().expect("looked up above")
    }

    fn derived_of(&mut self, pack: &Arc<RulePack>) -> Arc<T> {
        if let Some((_, value)) = self.derived.iter().find(|(p, _)| Arc::ptr_eq(p, pack)) {
            return Arc::clone(value);
        }
        let value = Arc::new((self.derive)(pack));
        if self.derived.len() == DERIVED_KEPT {
            self.derived.remove(0);
        }
        // Holding the pack keeps its address from being reused for another.
        self.derived.push((Arc::clone(pack), Arc::clone(&value)));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::DEFAULT_ATTACK_RELEASE;

    fn pack(release: &str) -> Arc<RulePack> {
        Arc::new(RulePack::new(Vec::new(), release))
    }

    fn release_at(schedule: &PackSchedule, time: Time) -> String {
        schedule.at(time).attack_release().to_string()
    }

    #[test]
    fn each_time_gets_the_pack_of_the_latest_epoch_at_or_before_it() {
        let schedule = PackSchedule::fixed(pack("a"));
        schedule.install(3, pack("b")).unwrap();
        schedule.install(3, pack("c")).unwrap();
        schedule.install(7, pack("d")).unwrap();
        let releases: Vec<String> = (0..9).map(|t| release_at(&schedule, t)).collect();
        assert_eq!(releases, ["a", "a", "a", "c", "c", "c", "c", "d", "d"], "an install at the latest epoch replaces");
        assert_eq!(schedule.latest().0, 7);
    }

    #[test]
    fn installs_before_the_latest_epoch_or_an_evaluated_one_are_refused() {
        let schedule = PackSchedule::fixed(pack(DEFAULT_ATTACK_RELEASE));
        schedule.install(5, pack("b")).unwrap();
        assert_eq!(schedule.install(4, pack("c")), Err(ScheduleError::Earlier { from: 4, latest: 5 }));
        let _ = schedule.at(6);
        assert_eq!(schedule.install(6, pack("c")), Err(ScheduleError::Evaluated { from: 6, evaluated: 6 }));
        schedule.install(7, pack("c")).unwrap();
        assert_eq!(release_at(&schedule, 6), "b", "an answer never changes");
        assert_eq!(
            ScheduleError::Evaluated { from: 6, evaluated: 6 }.to_string(),
            "cannot install a rule pack from epoch 6: updates of epoch 6 have been evaluated already"
        );
    }

    #[test]
    fn retiring_keeps_the_pack_in_effect_and_later_ones() {
        let schedule = PackSchedule::fixed(pack("a"));
        schedule.install(2, pack("b")).unwrap();
        schedule.install(4, pack("c")).unwrap();
        schedule.retire_before(1);
        assert_eq!(schedule.epochs(), [0, 2, 4]);
        schedule.retire_before(3);
        assert_eq!(schedule.epochs(), [2, 4]);
        schedule.retire_before(9);
        assert_eq!(schedule.epochs(), [4]);
        assert_eq!(release_at(&schedule, 0), "c", "before every pack kept: the earliest");
    }

    #[test]
    fn a_lookup_derives_once_per_pack() {
        let a = pack("a");
        let schedule = PackSchedule::fixed(Arc::clone(&a));
        schedule.install(2, pack("b")).unwrap();
        let derived = Arc::new(Mutex::new(0));
        let count = Arc::clone(&derived);
        let mut lookup = schedule.lookup(move |p| {
            *count.lock().unwrap() += 1;
            p.attack_release().to_uppercase()
        });
        let seen: Vec<String> = [0, 1, 2, 1, 3, 0].iter().map(|t| lookup.at(*t).clone()).collect();
        assert_eq!(seen, ["A", "A", "B", "A", "B", "A"]);
        assert_eq!(*derived.lock().unwrap(), 2);
        assert_eq!(lookup.pack(1).attack_release(), "a");
        assert!(Arc::ptr_eq(&schedule.at(1), &a));
    }
}
