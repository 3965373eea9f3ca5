//! The current rows of a rollup stream, held compactly by a sink.
//!
//! The rollup stage emits, per epoch and changed key, the retraction of the key's old row
//! and its new row, or with final emission each key's row once. A sink that writes the rows once the input ends only needs each key's
//! current numbers: scope ids and techniques are interned once, and a row costs its key
//! (its strings as small ids) and its numbers, not four strings. Rows come out in [`RollupRow`]
//! order, as a sorted set of rows would give them.

use std::collections::HashMap;
use std::sync::Arc;

use ttpflow_dataflows::record::Confidence;
use ttpflow_dataflows::rollup::{RollupRow, ScopeKind};
use ttpflow_dataflows::types::Diff;

/// A row's numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Numbers {
    tag_count: i64,
    attacker_count: i64,
    identity_count: i64,
    first_seen: Option<i64>,
    last_seen: Option<i64>,
    confidence_max: Confidence,
}

/// Strings interned as small ids.
#[derive(Default)]
struct Interner {
    ids: HashMap<Arc<str>, u32>,
    names: Vec<Arc<str>>,
}

impl Interner {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let id = self.names.len() as u32;
        let name: Arc<str> = Arc::from(name);
        self.names.push(Arc::clone(&name));
        self.ids.insert(name, id);
        id
    }

    fn name(&self, id: u32) -> &str {
        &self.names[id as usize]
    }
}

/// (scope kind, scope id, technique_id, sub_technique_id, tactic), the strings interned.
type Key = (ScopeKind, u32, u32, u32, u32);

/// The rows of a rollup stream, with their multiplicities.
#[derive(Default)]
pub struct RollupTable {
    names: Interner,
    /// Per key its rows: one, except between a retraction and an insertion of an epoch.
    rows: HashMap<Key, Vec<(Numbers, Diff)>>,
}

impl RollupTable {
    /// Applies one change of the stream.
    pub fn update(&mut self, row: &RollupRow, diff: Diff) {
        let names = &mut self.names;
        let key = (
            row.scope_kind,
            names.id(&row.scope_id),
            names.id(&row.technique_id),
            names.id(&row.sub_technique_id),
            names.id(&row.tactic),
        );
        let numbers = Numbers {
            tag_count: row.tag_count,
            attacker_count: row.attacker_count,
            identity_count: row.identity_count,
            first_seen: row.first_seen,
            last_seen: row.last_seen,
            confidence_max: row.confidence_max,
        };
        let rows = self.rows.entry(key).or_default();
        match rows.iter_mut().find(|(n, _)| *n == numbers) {
            Some((_, count)) => *count += diff,
            None => rows.push((numbers, diff)),
        }
        rows.retain(|(_, count)| *count != 0);
        if rows.is_empty() {
            self.rows.remove(&key);
        } else {
            rows.shrink_to_fit();
        }
    }

    /// Calls `each` with every row present (multiplicity above zero), in row order.
    pub fn for_each_row<E>(&self, mut each: impl FnMut(&RollupRow) -> Result<(), E>) -> Result<(), E> {
        let mut keys: Vec<&Key> = self.rows.keys().collect();
        let names = &self.names;
        let name = |key: &Key| (key.0, names.name(key.1), names.name(key.2), names.name(key.3), names.name(key.4));
        keys.sort_unstable_by(|a, b| name(a).cmp(&name(b)));
        for key in keys {
            let (scope_kind, scope_id, technique_id, sub_technique_id, tactic) = name(key);
            let mut numbers: Vec<Numbers> =
                self.rows[key].iter().filter(|(_, count)| *count > 0).map(|(n, _)| *n).collect();
            numbers.sort_by_key(|n| {
                (n.tag_count, n.attacker_count, n.identity_count, n.first_seen, n.last_seen, n.confidence_max)
            });
            for n in numbers {
                let row = RollupRow {
                    scope_kind,
                    scope_id: scope_id.to_string(),
                    technique_id: technique_id.to_string(),
                    sub_technique_id: sub_technique_id.to_string(),
                    tactic: tactic.to_string(),
                    tag_count: n.tag_count,
                    attacker_count: n.attacker_count,
                    identity_count: n.identity_count,
                    first_seen: n.first_seen,
                    last_seen: n.last_seen,
                    confidence_max: n.confidence_max,
                };
                each(&row)?;
            }
        }
        Ok(())
    }

    /// Rows present.
    pub fn len(&self) -> usize {
        self.rows.values().map(|rows| rows.iter().filter(|(_, count)| *count > 0).count()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn row(kind: ScopeKind, scope: &str, technique: &str, tags: i64) -> RollupRow {
        RollupRow {
            scope_kind: kind,
            scope_id: scope.to_string(),
            technique_id: technique.to_string(),
            sub_technique_id: String::new(),
            tactic: "TA0007".to_string(),
            tag_count: tags,
            attacker_count: 1,
            identity_count: 0,
            first_seen: Some(tags),
            last_seen: None,
            confidence_max: Confidence(0.5),
        }
    }

    fn rows(table: &RollupTable) -> Vec<RollupRow> {
        let mut out = Vec::new();
        table
            .for_each_row(|r| {
                out.push(r.clone());
                Ok::<_, ()>(())
            })
            .unwrap();
        out
    }

    /// Epochs of retractions and insertions in either order end as a sorted set of rows would.
    #[test]
    fn holds_the_rows_a_sorted_multiset_would() {
        use ScopeKind::*;
        let epochs = vec![
            vec![
                (row(Session, "s2", "T1082", 1), 1),
                (row(Attacker, "a", "T1082", 1), 1),
                (row(Fleet, "", "T1082", 1), 1),
            ],
            vec![
                (row(Fleet, "", "T1082", 2), 1),
                (row(Fleet, "", "T1082", 1), -1),
                (row(Attacker, "a", "T1016", 1), 1),
            ],
            vec![
                (row(Attacker, "a", "T1082", 1), -1),
                (row(Attacker, "a", "T1082", 3), 1),
                (row(Session, "s1", "T1082", 1), 1),
            ],
            vec![(row(Attacker, "a", "T1016", 1), -1)],
        ];
        let mut table = RollupTable::default();
        let mut multiset: BTreeMap<RollupRow, Diff> = BTreeMap::new();
        for epoch in epochs {
            for (row, diff) in epoch {
                table.update(&row, diff);
                *multiset.entry(row).or_default() += diff;
            }
        }
        let want: Vec<RollupRow> = multiset.into_iter().filter(|(_, n)| *n > 0).map(|(r, _)| r).collect();
        assert_eq!(rows(&table), want);
        assert_eq!(table.len(), 4);
        assert_eq!(want.iter().map(|r| r.scope_id.as_str()).collect::<Vec<_>>(), ["a", "s1", "s2", ""]);
    }
}
