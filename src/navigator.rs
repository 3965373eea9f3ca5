//! ATT&CK Navigator layers of one scope's techniques, from the stored rollup rows
//! (`ttpflow export navigator`, DESIGN §1.6).
//!
//! A layer (format 4.5) holds one technique entry per (technique, tactic) of the scope's
//! rows in `ttp_rollup`: a row with a sub-technique is an entry of the sub-technique
//! (`T1071.003`), one without an entry of the technique. The score is the tag count; the
//! comment and the metadata carry the counts, the event-time bounds and the greatest
//! confidence. Navigator names tactics by their shortnames, so the ATT&CK tactic ids the
//! rules emit are mapped to them ([`TACTICS`]); an entry whose tactic is not in the table
//! goes without one, which Navigator applies to every tactic of the technique.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use postgres::Client;
use serde_json::{json, Value};
use ttpflow_dataflows::record::Confidence;
use ttpflow_dataflows::rollup::{RollupRow, ScopeKind};
use ttpflow_dataflows::time::format_rfc3339;

use crate::postgres::PostgresError;

/// The layer format this module writes, and the Navigator release that reads it.
const LAYER_VERSION: &str = "4.5";
const NAVIGATOR_VERSION: &str = "5.1.0";

/// Enterprise ATT&CK tactic ids and their Navigator shortnames.
pub const TACTICS: &[(&str, &str)] = &[
    ("TA0043", "reconnaissance"),
    ("TA0042", "resource-development"),
    ("TA0001", "initial-access"),
    ("TA0002", "execution"),
    ("TA0003", "persistence"),
    ("TA0004", "privilege-escalation"),
    ("TA0005", "defense-evasion"),
    ("TA0006", "credential-access"),
    ("TA0007", "discovery"),
    ("TA0008", "lateral-movement"),
    ("TA0009", "collection"),
    ("TA0011", "command-and-control"),
    ("TA0010", "exfiltration"),
    ("TA0040", "impact"),
];

/// The Navigator shortname of a tactic given by id (`TA0011`) or by shortname.
pub fn tactic_shortname(tactic: &str) -> Option<&'static str> {
    TACTICS.iter().find(|(id, name)| id.eq_ignore_ascii_case(tactic) || *name == tactic).map(|(_, name)| *name)
}

/// The scope of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Attacker(String),
    Identity(String),
    Campaign(String),
    Session(String),
    Fleet,
}

/// A `--scope` that is not `kind:<id>` or `fleet`.
#[derive(Debug, thiserror::Error)]
#[error("malformed scope \"{0}\": expected campaign:<id>, identity:<id>, attacker:<id>, session:<id> or fleet")]
pub struct ScopeError(String);

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(text: &str) -> Result<Scope, ScopeError> {
        if text == "fleet" {
            return Ok(Scope::Fleet);
        }
        let malformed = || ScopeError(text.to_string());
        let (kind, id) = text.split_once(':').ok_or_else(malformed)?;
        if id.is_empty() {
            return Err(malformed());
        }
        let id = id.to_string();
        match kind {
            "attacker" => Ok(Scope::Attacker(id)),
            "identity" => Ok(Scope::Identity(id)),
            "campaign" => Ok(Scope::Campaign(id)),
            "session" => Ok(Scope::Session(id)),
            _ => Err(malformed()),
        }
    }
}

impl Scope {
    /// `scope_kind` in `ttp_rollup`.
    pub fn kind(&self) -> ScopeKind {
        match self {
            Scope::Attacker(_) => ScopeKind::Attacker,
            Scope::Identity(_) => ScopeKind::Identity,
            Scope::Campaign(_) => ScopeKind::Campaign,
            Scope::Session(_) => ScopeKind::Session,
            Scope::Fleet => ScopeKind::Fleet,
        }
    }

    /// `scope_id` in `ttp_rollup` (`""` for the fleet).
    pub fn id(&self) -> &str {
        match self {
            Scope::Attacker(id) | Scope::Identity(id) | Scope::Campaign(id) | Scope::Session(id) => id,
            Scope::Fleet => "",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Fleet => f.write_str("fleet"),
            _ => write!(f, "{}:{}", self.kind().as_str(), self.id()),
        }
    }
}

/// Errors of the export.
#[derive(Debug, thiserror::Error)]
pub enum NavigatorError {
    #[error(transparent)]
    Connect(#[from] PostgresError),
    #[error("table \"ttp_rollup\" does not exist: the database has not been written by `ttpflow run --postgres`")]
    NoRollupTable,
    #[error("failed to read the rollup rows of scope \"{scope}\"")]
    Read {
        scope: String,
        #[source]
        source: postgres::Error,
    },
    #[error("no rollup rows for scope \"{0}\": unknown scope, or no stored tags in it")]
    UnknownScope(String),
}

fn system_time_micros(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

/// Reads the rollup rows of `scope`; a scope without rows is an error.
pub fn read_scope(client: &mut Client, scope: &Scope) -> Result<Vec<RollupRow>, NavigatorError> {
    let rows = client
        .query(
            "SELECT technique_id, sub_technique_id, tactic, tag_count, attacker_count, identity_count, first_seen, \
             last_seen, confidence_max FROM ttp_rollup WHERE scope_kind = $1 AND scope_id = $2",
            &[&scope.kind().as_str(), &scope.id()],
        )
        .map_err(|source| {
            if source.code() == Some(&postgres::error::SqlState::UNDEFINED_TABLE) {
                NavigatorError::NoRollupTable
            } else {
                NavigatorError::Read { scope: scope.to_string(), source }
            }
        })?;
    if rows.is_empty() {
        return Err(NavigatorError::UnknownScope(scope.to_string()));
    }
    Ok(rows
        .iter()
        .map(|r| RollupRow {
            scope_kind: scope.kind(),
            scope_id: scope.id().to_string(),
            technique_id: r.get(0),
            sub_technique_id: r.get(1),
            tactic: r.get(2),
            tag_count: r.get(3),
            attacker_count: r.get(4),
            identity_count: r.get(5),
            first_seen: r.get::<_, Option<SystemTime>>(6).map(system_time_micros),
            last_seen: r.get::<_, Option<SystemTime>>(7).map(system_time_micros),
            confidence_max: Confidence(r.get(8)),
        })
        .collect())
}

/// Connects to `url` and builds the layer of `scope`.
pub fn export(url: &str, scope: &Scope, attack_release: &str) -> Result<Value, NavigatorError> {
    let mut client = crate::postgres::connect(url)?;
    let rows = read_scope(&mut client, scope)?;
    Ok(layer(scope, attack_release, &rows))
}

/// The major version of an ATT&CK release (`v15.1` → `15`), as Navigator's `versions.attack`
/// names it.
fn attack_major(release: &str) -> &str {
    let release = release.strip_prefix(['v', 'V']).unwrap_or(release);
    release.split('.').next().unwrap_or(release)
}

/// A layer entry being built: the rows of one (technique, tactic).
struct Entry {
    tag_count: i64,
    attacker_count: i64,
    identity_count: i64,
    first_seen: Option<i64>,
    last_seen: Option<i64>,
    confidence_max: f64,
}

impl Entry {
    /// Folds in another row of the same entry, which only rows with disagreeing ids or
    /// with tactics [`TACTICS`] does not know give; the distinct counts are then lower bounds.
    fn add(&mut self, row: &RollupRow) {
        self.tag_count += row.tag_count;
        self.attacker_count = self.attacker_count.max(row.attacker_count);
        self.identity_count = self.identity_count.max(row.identity_count);
        self.first_seen = [self.first_seen, row.first_seen].into_iter().flatten().min();
        self.last_seen = [self.last_seen, row.last_seen].into_iter().flatten().max();
        self.confidence_max = self.confidence_max.max(row.confidence_max.0);
    }

    fn comment(&self) -> String {
        let plural = |n: i64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let seen = match (self.first_seen, self.last_seen) {
            (Some(first), Some(last)) => {
                format!("first seen {}, last seen {}", format_rfc3339(first), format_rfc3339(last))
            }
            _ => "no event time".to_string(),
        };
        format!(
            "{}, {}, {}; {seen}; confidence max {:.2}",
            plural(self.tag_count, "tag", "tags"),
            plural(self.attacker_count, "attacker", "attackers"),
            plural(self.identity_count, "identity", "identities"),
            self.confidence_max
        )
    }

    fn metadata(&self) -> Value {
        let time = |t: Option<i64>| t.map(format_rfc3339).unwrap_or_default();
        json!([
            {"name": "tag_count", "value": self.tag_count.to_string()},
            {"name": "attacker_count", "value": self.attacker_count.to_string()},
            {"name": "identity_count", "value": self.identity_count.to_string()},
            {"name": "first_seen", "value": time(self.first_seen)},
            {"name": "last_seen", "value": time(self.last_seen)},
            {"name": "confidence_max", "value": format!("{:.2}", self.confidence_max)},
        ])
    }
}

/// The Navigator layer of a scope's rows.
pub fn layer(scope: &Scope, attack_release: &str, rows: &[RollupRow]) -> Value {
    // By (techniqueID, tactic shortname), so the entries come out in a stable order.
    let mut entries: BTreeMap<(String, Option<&'static str>), Entry> = BTreeMap::new();
    for row in rows {
        let technique =
            if row.sub_technique_id.is_empty() { row.technique_id.clone() } else { row.sub_technique_id.clone() };
        let key = (technique, tactic_shortname(&row.tactic));
        match entries.get_mut(&key) {
            Some(entry) => entry.add(row),
            None => {
                entries.insert(
                    key,
                    Entry {
                        tag_count: row.tag_count,
                        attacker_count: row.attacker_count,
                        identity_count: row.identity_count,
                        first_seen: row.first_seen,
                        last_seen: row.last_seen,
                        confidence_max: row.confidence_max.0,
                    },
                );
            }
        }
    }
    let max_score = entries.values().map(|e| e.tag_count).max().unwrap_or(0).max(1);
    // Parents shown expanded when the layer has one of their sub-techniques.
    let parents_of_subs: Vec<&str> =
        entries.keys().filter_map(|(id, _)| id.split_once('.').map(|(parent, _)| parent)).collect();
    let techniques: Vec<Value> = entries
        .iter()
        .map(|((id, tactic), entry)| {
            let mut t = json!({
                "techniqueID": id,
                "score": entry.tag_count,
                "comment": entry.comment(),
                "enabled": true,
                "metadata": entry.metadata(),
                "showSubtechniques": parents_of_subs.contains(&id.as_str()),
            });
            if let Some(tactic) = tactic {
                t["tactic"] = json!(tactic);
            }
            t
        })
        .collect();
    let what = match scope {
        Scope::Fleet => "the fleet".to_string(),
        _ => format!("{} \"{}\"", scope.kind().as_str(), scope.id()),
    };
    json!({
        "name": format!("ttpflow: {scope}"),
        "versions": {"layer": LAYER_VERSION, "navigator": NAVIGATOR_VERSION, "attack": attack_major(attack_release)},
        "domain": "enterprise-attack",
        "description": format!(
            "ATT&CK techniques of {what} from ttpflow's rollups ({} techniques); score: stored tags",
            techniques.len()
        ),
        "sorting": 3,
        "layout": {"layout": "side", "showID": true, "showName": true},
        "hideDisabled": false,
        "selectTechniquesAcrossTactics": false,
        "selectSubtechniquesWithParent": false,
        "gradient": {"colors": ["#ffe766ff", "#ff6666ff"], "minValue": 0, "maxValue": max_score},
        "techniques": techniques,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(technique_id: &str, sub: &str, tactic: &str, tag_count: i64) -> RollupRow {
        RollupRow {
            scope_kind: ScopeKind::Campaign,
            scope_id: "c-1".into(),
            technique_id: technique_id.into(),
            sub_technique_id: sub.into(),
            tactic: tactic.into(),
            tag_count,
            attacker_count: 1,
            identity_count: 1,
            first_seen: Some(1_700_000_000_000_000),
            last_seen: Some(1_700_000_060_000_000),
            confidence_max: Confidence(0.8),
        }
    }

    #[test]
    fn scopes_parse_and_print() {
        for text in ["campaign:c-1", "identity:i:2", "attacker:a-1", "session:s-1", "fleet"] {
            assert_eq!(text.parse::<Scope>().unwrap().to_string(), text);
        }
        assert_eq!("identity:i:2".parse::<Scope>().unwrap().id(), "i:2");
        for bad in ["campaign", "campaign:", "fleet:x", "team:x", "", ":x", "Campaign:c-1"] {
            let err = bad.parse::<Scope>().unwrap_err().to_string();
            assert!(err.starts_with(&format!("malformed scope \"{bad}\"")), "{err}");
        }
    }

    #[test]
    fn tactics_map_to_shortnames() {
        assert_eq!(tactic_shortname("TA0011"), Some("command-and-control"));
        assert_eq!(tactic_shortname("ta0043"), Some("reconnaissance"));
        assert_eq!(tactic_shortname("credential-access"), Some("credential-access"));
        assert_eq!(tactic_shortname("TA0108"), None);
        assert_eq!(TACTICS.len(), 14);
    }

    #[test]
    fn a_layer_has_one_entry_per_technique_and_tactic() {
        let rows = [
            row("T1071", "T1071.003", "TA0011", 3),
            row("T1071", "", "TA0011", 2),
            row("T1595", "", "TA0043", 1),
            row("T1078", "", "TA0001", 4),
            row("T1078", "", "TA0005", 5),
            row("T0886", "", "TA0108", 6),
        ];
        let layer = layer(&Scope::Campaign("c-1".into()), "v15.1", &rows);
        assert_eq!(layer["versions"], json!({"layer": "4.5", "navigator": NAVIGATOR_VERSION, "attack": "15"}));
        assert_eq!(layer["domain"], "enterprise-attack");
        assert!(layer["name"].as_str().unwrap().contains("campaign:c-1"));
        let got: Vec<(String, Value, i64, bool)> = layer["techniques"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| {
                (
                    t["techniqueID"].as_str().unwrap().to_string(),
                    t.get("tactic").cloned().unwrap_or(Value::Null),
                    t["score"].as_i64().unwrap(),
                    t["showSubtechniques"].as_bool().unwrap(),
                )
            })
            .collect();
        let want = vec![
            ("T0886".to_string(), Value::Null, 6, false),
            ("T1071".to_string(), json!("command-and-control"), 2, true),
            ("T1071.003".to_string(), json!("command-and-control"), 3, false),
            ("T1078".to_string(), json!("defense-evasion"), 5, false),
            ("T1078".to_string(), json!("initial-access"), 4, false),
            ("T1595".to_string(), json!("reconnaissance"), 1, false),
        ];
        assert_eq!(got, want);
        assert_eq!(layer["gradient"]["maxValue"], 6);
        let comment = layer["techniques"][2]["comment"].as_str().unwrap();
        assert_eq!(
            comment,
            "3 tags, 1 attacker, 1 identity; first seen 2023-11-14T22:13:20.000000Z, \
             last seen 2023-11-14T22:14:20.000000Z; confidence max 0.80"
        );
    }
}
