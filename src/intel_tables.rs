//! The intel providers' mapping tables: one YAML file per provider, read as data.
//!
//! A table (`<provider>.yaml`: `provider`, `mapping_version`, `attack_release`, `signals`
//! with `id`, `label`, `external_reference`, `techniques: [{technique_id,
//! high_score_threshold?}]`, `confidence_multiplier?`) says which ATT&CK techniques each
//! provider signal points at. The project ships its own tables in `rules/intel/`, built
//! into the binary; `--intel-dir` reads another directory of tables in the same format
//! (for example DECNET's), which must hold all four providers.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use ttpflow_dataflows::intel::{Emission, IntelTables, Provider, ProviderMapping};

/// The project's tables, built into the binary.
const BUNDLED: [(Provider, &str); 4] = [
    (Provider::AbuseIpdb, include_str!("../rules/intel/abuseipdb.yaml")),
    (Provider::GreyNoise, include_str!("../rules/intel/greynoise.yaml")),
    (Provider::Feodo, include_str!("../rules/intel/feodo.yaml")),
    (Provider::ThreatFox, include_str!("../rules/intel/threatfox.yaml")),
];

/// Why the tables did not load.
#[derive(Debug, thiserror::Error)]
pub enum IntelTableError {
    #[error("failed to read intel table \"{}\"", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("intel table \"{file}\" is invalid: {message}")]
    Invalid { file: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableFile {
    provider: String,
    mapping_version: String,
    #[allow(dead_code)]
    attack_release: String,
    signals: Vec<SignalEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalEntry {
    id: String,
    #[allow(dead_code)]
    label: String,
    #[allow(dead_code)]
    external_reference: ExternalReference,
    techniques: Vec<TechniqueEntry>,
    #[serde(default = "one")]
    confidence_multiplier: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ExternalReference {
    source_name: String,
    url: String,
    external_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TechniqueEntry {
    technique_id: String,
    high_score_threshold: Option<f64>,
}

fn one() -> f64 {
    1.0
}

/// Parses one provider's table; `file` names it in errors.
fn parse(provider: Provider, file: &str, text: &str) -> Result<ProviderMapping, IntelTableError> {
    let invalid = |message: String| IntelTableError::Invalid { file: file.to_string(), message };
    let table: TableFile = serde_yaml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if table.provider != provider.name() {
        return Err(invalid(format!("provider is \"{}\", expected \"{}\"", table.provider, provider.name())));
    }
    let mut signals = BTreeMap::new();
    for signal in table.signals {
        if !(0.0..=1.0).contains(&signal.confidence_multiplier) {
            return Err(invalid(format!("signal \"{}\": confidence_multiplier must be between 0 and 1", signal.id)));
        }
        if let Some(bad) = signal.techniques.iter().find(|t| !is_technique_id(&t.technique_id)) {
            return Err(invalid(format!("signal \"{}\": \"{}\" is not a technique id", signal.id, bad.technique_id)));
        }
        let emissions = signal
            .techniques
            .into_iter()
            .map(|t| Emission {
                technique_id: t.technique_id,
                high_score_threshold: t.high_score_threshold,
                multiplier: signal.confidence_multiplier,
            })
            .collect();
        if signals.insert(signal.id.clone(), emissions).is_some() {
            return Err(invalid(format!("signal \"{}\" is defined twice", signal.id)));
        }
    }
    Ok(ProviderMapping { mapping_version: table.mapping_version, signals })
}

/// `T` and four digits, optionally `.` and three digits.
fn is_technique_id(id: &str) -> bool {
    let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
    match id.strip_prefix('T').map(|rest| rest.split_once('.').unwrap_or((rest, "000"))) {
        Some((main, sub)) => digits(main, 4) && digits(sub, 3),
        None => false,
    }
}

/// The project's bundled tables.
pub fn bundled() -> IntelTables {
    let providers = BUNDLED
        .iter()
        .map(|(provider, text)| {
            let mapping = parse(*provider, &format!("rules/intel/{}.yaml", provider.name()), text)
                .expect("the bundled intel tables are valid (checked by the tests)");
            (*provider, mapping)
        })
        .collect();
    IntelTables { providers }
}

/// The tables of `dir`: `<provider>.yaml` for each of the four providers.
pub fn load(dir: &Path) -> Result<IntelTables, IntelTableError> {
    let mut providers = BTreeMap::new();
    for provider in Provider::ALL {
        let path = dir.join(format!("{}.yaml", provider.name()));
        let text =
            std::fs::read_to_string(&path).map_err(|source| IntelTableError::Read { path: path.clone(), source })?;
        providers.insert(provider, parse(provider, &path.display().to_string(), &text)?);
    }
    Ok(IntelTables { providers })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundled_tables_load() {
        let tables = bundled();
        assert_eq!(tables.providers.len(), 4);
        let abuse = &tables.providers[&Provider::AbuseIpdb];
        let gated: Vec<_> =
            abuse.signals["cat_11"].iter().map(|e| (e.technique_id.as_str(), e.high_score_threshold)).collect();
        assert_eq!(gated, [("T1496", None), ("T1566", Some(80.0))]);
    }

    #[test]
    fn bad_tables_are_reported_with_the_file() {
        let err = parse(
            Provider::Feodo,
            "f.yaml",
            "provider: threatfox\nmapping_version: '1'\nattack_release: x\nsignals: []\n",
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "intel table \"f.yaml\" is invalid: provider is \"threatfox\", expected \"feodo\"");
        let text = "provider: feodo\nmapping_version: '1'\nattack_release: x\nsignals:\n  - {id: a, label: a, external_reference: {source_name: s, url: u}, techniques: [{technique_id: X1}]}\n";
        assert!(parse(Provider::Feodo, "f.yaml", text)
            .unwrap_err()
            .to_string()
            .contains("\"X1\" is not a technique id"));
        let text = "provider: feodo\nmapping_version: '1'\nattack_release: x\nsignals: []\nextra: 1\n";
        assert!(parse(Provider::Feodo, "f.yaml", text).unwrap_err().to_string().contains("unknown field"));
    }
}
