//! Intel providers: what an intel row's provider signals say, as data (DESIGN §2.4).
//!
//! The provider rules (`lifter:intel_abuseipdb|greynoise|feodo|threatfox`) decide which
//! of their `emits` fire from the provider mapping tables ([`IntelTables`], read as data
//! when the pack loads), each with a confidence multiplier (AbuseIPDB: score / 100;
//! GreyNoise: 0.5 for a bare `malicious` classification) and evidence of what matched.
//! Pure: no dataflow; the stage that feeds rows to the pack is [`crate::intel`].

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::json::Json;
use crate::record::{Extra, Pos};

/// GreyNoise's bare `malicious` classification is real but unspecific signal.
const GREYNOISE_BARE_MALICIOUS: f64 = 0.5;

/// The intel providers with a mapping table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Provider {
    AbuseIpdb,
    GreyNoise,
    Feodo,
    ThreatFox,
}

impl Provider {
    pub const ALL: [Provider; 4] = [Provider::AbuseIpdb, Provider::GreyNoise, Provider::Feodo, Provider::ThreatFox];

    /// The provider's name, which is also its mapping table's file stem.
    pub fn name(self) -> &'static str {
        match self {
            Provider::AbuseIpdb => "abuseipdb",
            Provider::GreyNoise => "greynoise",
            Provider::Feodo => "feodo",
            Provider::ThreatFox => "threatfox",
        }
    }

    /// The provider of a `lifter:intel_<provider>` kind.
    pub fn from_kind(kind: &str) -> Option<Provider> {
        let name = kind.strip_prefix("lifter:intel_")?;
        Provider::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// One technique a provider signal maps to.
#[derive(Clone, Debug, PartialEq)]
pub struct Emission {
    pub technique_id: String,
    /// The technique is mapped only when the provider's score reaches this.
    pub high_score_threshold: Option<f64>,
    /// The signal's confidence multiplier (1 unless its table says otherwise).
    pub multiplier: f64,
}

/// A provider's mapping table: signal id → techniques.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProviderMapping {
    pub mapping_version: String,
    pub signals: BTreeMap<String, Vec<Emission>>,
}

impl ProviderMapping {
    /// The techniques of `signal`, without those gated above `score` (an unknown score
    /// passes no gate).
    fn techniques<'a>(&'a self, signal: &str, score: Option<f64>) -> impl Iterator<Item = (&'a str, f64)> + 'a {
        self.signals.get(signal).into_iter().flatten().filter_map(move |e| match e.high_score_threshold {
            Some(gate) if score.is_none_or(|s| s < gate) => None,
            _ => Some((e.technique_id.as_str(), e.multiplier)),
        })
    }
}

/// Every provider's mapping table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IntelTables {
    pub providers: BTreeMap<Provider, ProviderMapping>,
}

impl IntelTables {
    fn mapping(&self, provider: Provider) -> &ProviderMapping {
        static EMPTY: std::sync::OnceLock<ProviderMapping> = std::sync::OnceLock::new();
        self.providers.get(&provider).unwrap_or_else(|| EMPTY.get_or_init(ProviderMapping::default))
    }
}

/// One technique a provider rule fires, with its confidence multiplier and evidence.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub technique_id: String,
    pub multiplier: f64,
    pub extra: Extra,
}

/// The decisions of `provider`'s rule on an intel row.
pub fn decide(provider: Provider, tables: &IntelTables, row: &Json) -> Vec<Decision> {
    let mapping = tables.mapping(provider);
    match provider {
        Provider::AbuseIpdb => abuseipdb(mapping, row),
        Provider::GreyNoise => greynoise(mapping, row),
        Provider::Feodo => feodo(mapping, row),
        Provider::ThreatFox => threatfox(mapping, row),
    }
}

/// A Python `int` (booleans included) or `float`, as a number.
fn python_number(value: &Json) -> Option<f64> {
    match value {
        Json::Num(n) => n.parse().ok(),
        Json::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// The first truthy of `fields` (Python's `a or b`).
fn first_truthy<'a>(row: &'a Json, fields: &[&str]) -> Option<&'a Json> {
    fields.iter().filter_map(|f| row.get(f)).find(|v| v.is_truthy())
}

/// The strings of a list, or the one string, of the first truthy of `fields`.
fn string_list(row: &Json, fields: &[&str]) -> Vec<String> {
    match first_truthy(row, fields) {
        Some(Json::Arr(items)) => items.iter().filter_map(Json::as_str).map(str::to_string).collect(),
        Some(Json::Str(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn strings(items: &[String]) -> Json {
    Json::Arr(items.iter().cloned().map(Json::Str).collect())
}

/// Techniques in first-triggered order, each with what triggered it.
struct Triggered<S> {
    order: Vec<String>,
    by_technique: BTreeMap<String, (f64, Vec<S>)>,
}

impl<S> Triggered<S> {
    fn new() -> Self {
        Triggered { order: Vec::new(), by_technique: BTreeMap::new() }
    }

    /// Records `signal` for `technique`; the highest multiplier of a technique wins.
    fn add(&mut self, technique: &str, multiplier: f64, signal: S) {
        match self.by_technique.get_mut(technique) {
            Some((m, signals)) => {
                signals.push(signal);
                *m = m.max(multiplier);
            }
            None => {
                self.order.push(technique.to_string());
                self.by_technique.insert(technique.to_string(), (multiplier, vec![signal]));
            }
        }
    }

    fn into_decisions(mut self, extra: impl Fn(Vec<S>) -> Extra) -> Vec<Decision> {
        self.order
            .into_iter()
            .filter_map(|technique| {
                let (multiplier, signals) = self.by_technique.remove(&technique)?;
                Some(Decision { technique_id: technique, multiplier, extra: extra(signals) })
            })
            .collect()
    }
}

/// AbuseIPDB: the report categories (`cat_<n>` signals, gated by score), scaled by the
/// abuse confidence score.
fn abuseipdb(mapping: &ProviderMapping, row: &Json) -> Vec<Decision> {
    let Some(score) = row.get("abuseipdb_score").and_then(python_number) else { return Vec::new() };
    let Some(Json::Arr(raw)) = first_truthy(row, &["abuseipdb_categories", "categories"]) else { return Vec::new() };
    let mut triggered = Triggered::new();
    for category in raw {
        let number = match category {
            Json::Num(n) if !n.contains(['.', 'e', 'E']) => n,
            _ => continue,
        };
        for (technique, multiplier) in mapping.techniques(&format!("cat_{number}"), Some(score)) {
            triggered.add(technique, score / 100.0 * multiplier, category.clone());
        }
    }
    let score_int = Json::Num(format!("{}", score.trunc() as i64));
    triggered.into_decisions(|categories| {
        vec![
            ("abuseipdb_categories".to_string(), Json::Arr(categories)),
            ("abuse_confidence_score".to_string(), score_int.clone()),
        ]
    })
}

/// GreyNoise: a `scanner` classification, the recognised tags, and a bare `malicious`
/// classification (at half confidence) when no tag already gave T1071.
fn greynoise(mapping: &ProviderMapping, row: &Json) -> Vec<Decision> {
    let classification = row.get("greynoise_classification").cloned().unwrap_or(Json::Null);
    let mut triggered = Triggered::new();
    if classification.as_str() == Some("scanner") {
        triggered.add("T1595", 1.0, "scanner".to_string());
    }
    if let Some(Json::Arr(tags)) = first_truthy(row, &["greynoise_tags"]) {
        for tag in tags.iter().filter_map(Json::as_str) {
            for (technique, multiplier) in mapping.techniques(tag, None) {
                triggered.add(technique, multiplier, tag.to_string());
            }
        }
    }
    if classification.as_str() == Some("malicious") && !triggered.by_technique.contains_key("T1071") {
        triggered.add("T1071", GREYNOISE_BARE_MALICIOUS, "malicious".to_string());
    }
    triggered.into_decisions(|signals| {
        vec![
            ("greynoise_classification".to_string(), classification.clone()),
            ("greynoise_tags".to_string(), strings(&signals)),
        ]
    })
}

/// Feodo Tracker: a listed IP, with its malware family.
fn feodo(mapping: &ProviderMapping, row: &Json) -> Vec<Decision> {
    if row.get("feodo_listed") != Some(&Json::Bool(true)) {
        return Vec::new();
    }
    let mut extra = vec![("feodo_listed".to_string(), Json::Bool(true))];
    if let Some(Json::Str(family)) = first_truthy(row, &["feodo_malware_family", "malware_family"]) {
        extra.push(("malware_family".to_string(), Json::Str(family.clone())));
    }
    mapping
        .techniques("feodo_listed", None)
        .map(|(technique, multiplier)| Decision {
            technique_id: technique.to_string(),
            multiplier,
            extra: extra.clone(),
        })
        .collect()
}

/// ThreatFox: the threat types of the IOCs listing the IP (not their IOC types, which
/// name indicator formats), with the families and IOC types as context.
fn threatfox(mapping: &ProviderMapping, row: &Json) -> Vec<Decision> {
    let mut triggered = Triggered::new();
    for threat_type in string_list(row, &["threatfox_threat_types", "threat_type"]) {
        for (technique, multiplier) in mapping.techniques(&threat_type, None) {
            triggered.add(technique, multiplier, threat_type.clone());
        }
    }
    let families = string_list(row, &["threatfox_malware_families", "malware_family"]);
    let ioc_types = match row.get("threatfox_ioc_types") {
        Some(Json::Arr(items)) => items.iter().filter_map(Json::as_str).map(str::to_string).collect(),
        _ => Vec::new(),
    };
    triggered.into_decisions(|threat_types| {
        let mut extra = vec![("threat_types".to_string(), strings(&threat_types))];
        if !families.is_empty() {
            extra.push(("malware_families".to_string(), strings(&families)));
        }
        if !ioc_types.is_empty() {
            extra.push(("ioc_types".to_string(), strings(&ioc_types)));
        }
        extra
    })
}

/// An attacker's intel row: where it was read, its event time, its fields.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct IntelRow {
    pub pos: Pos,
    pub event_time: Option<i64>,
    pub payload: Arc<Json>,
}

/// R0058's state for one attacker: while its latest row's aggregate verdict is
/// `malicious`, the rollups raise its intel-derived techniques' confidence_max by `amount`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct Bump {
    pub rule_id: String,
    /// The bump in millionths (collections need `Ord`).
    pub amount_micros: i64,
}
