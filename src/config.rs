//! The pipeline's configuration: a TOML file for what the job connects to and reads
//! (brokers, topics, database, rules), overridden by flags and environment variables.
//!
//! `ttpflow run --print-config` prints the effective configuration, with secrets masked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors of reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("failed to read config file \"{}\"", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file \"{}\": {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobConfig {
    /// The job's name: its progress in `ttp_progress` and its outbox rows are kept under it.
    pub job: String,
    /// Rules directory (DECNET's YAML format); watched while the job runs.
    pub rules: PathBuf,
    /// Rule state file (rule id → state); the `ttp_rule_state` table applies on top.
    pub rule_state: Option<PathBuf>,
    /// Directory of intel provider mapping tables; default: the project's, built in.
    pub intel_dir: Option<PathBuf>,
    /// ATT&CK release stamped on tags.
    pub attack_release: String,
    /// PostgreSQL connection string (URL or key=value pairs); `TTPFLOW_POSTGRES` overrides.
    pub postgres: Option<String>,
    /// Records per epoch and worker at most; an epoch also ends after `epoch_interval_ms`.
    pub epoch_records: u64,
    /// Longest time an epoch stays open, in milliseconds: the bound on commit latency when
    /// records trickle in.
    pub epoch_interval_ms: u64,
    /// Seconds between checks of the rules directory and of `ttp_rule_state`.
    pub reload_interval_s: u64,
    /// The file of the deployment's key of the hashes computed from secrets, created when
    /// absent (`TTPFLOW_HASH_KEY` gives the key itself); default
    /// `$XDG_STATE_HOME/ttpflow/hash.key`, else `~/.local/state/ttpflow/hash.key`.
    pub hash_key_file: Option<PathBuf>,
    /// Seconds a PostgreSQL outage is waited out before the job gives up; absent: for as
    /// long as it takes.
    pub sink_timeout_s: Option<u64>,
    /// Address of the Prometheus endpoint (`/metrics`, `/healthz`), e.g. `127.0.0.1:9464`.
    pub metrics_addr: Option<String>,
    /// The Kafka cluster; without it `run` is the embedded job over `--input` files.
    pub kafka: Option<KafkaConfig>,
}

impl Default for JobConfig {
    fn default() -> JobConfig {
        JobConfig {
            job: String::from("kafka"),
            rules: PathBuf::from("rules"),
            rule_state: None,
            intel_dir: None,
            attack_release: ttpflow_dataflows::rules::DEFAULT_ATTACK_RELEASE.to_string(),
            postgres: None,
            epoch_records: 16384,
            epoch_interval_ms: 200,
            reload_interval_s: 2,
            sink_timeout_s: None,
            hash_key_file: None,
            metrics_addr: None,
            kafka: None,
        }
    }
}

/// The `[kafka]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// Consumer group under which positions are committed for lag monitors (informational:
    /// the job resumes from the positions stored with its output).
    pub group: String,
    /// Whether to commit those informational group offsets.
    pub commit_group_offsets: bool,
    /// Bus topics: exact names or globs with `*`.
    pub topics: Vec<String>,
    /// Compacted reference-table topics, read from offset zero at every start.
    pub tables: Vec<String>,
    /// librdkafka properties passed through as given: `security.protocol`, `sasl.*`,
    /// `ssl.*`, timeouts, ….
    pub properties: BTreeMap<String, String>,
    /// Where `run` publishes (nothing is published by `replay`).
    pub publish: PublishConfig,
}

impl Default for KafkaConfig {
    fn default() -> KafkaConfig {
        // The topics the decoder takes, and the canary family by pattern.
        let topics = ttpflow_dataflows::decode::BUS_TOPICS.iter().copied().chain(["canary.*"]);
        let tables = ["decnet.attackers", "decnet.attacker_identities", "decnet.campaigns", "decnet.attacker_intel"];
        KafkaConfig {
            brokers: String::from("localhost:9092"),
            group: String::from("ttpflow"),
            commit_group_offsets: true,
            topics: topics.map(str::to_string).collect(),
            tables: tables.iter().map(|t| t.to_string()).collect(),
            properties: BTreeMap::new(),
            publish: PublishConfig::default(),
        }
    }
}

/// The `[kafka.publish]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Publish at all (tags, rule firings, rollup changes, dead letters).
    pub enabled: bool,
    /// DECNET's `ttp.tagged`: one message per source event with new tags.
    pub tagged: String,
    /// Prefix of `ttp.rule.fired.<technique_id>`.
    pub rule_fired_prefix: String,
    /// Prefix of the compacted rollup topics, `<prefix><scope_kind>`.
    pub rollup_prefix: String,
    /// Dead letters, with topic, partition, offset and reason.
    pub dead_letter: String,
}

impl Default for PublishConfig {
    fn default() -> PublishConfig {
        PublishConfig {
            enabled: true,
            tagged: String::from("ttp.tagged"),
            rule_fired_prefix: String::from("ttp.rule.fired."),
            rollup_prefix: String::from("ttp.rollup."),
            dead_letter: String::from("ttpflow.dead-letter"),
        }
    }
}

impl JobConfig {
    /// Reads a config file; fields it leaves out keep their defaults.
    pub fn load(path: &Path) -> Result<JobConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        JobConfig::parse(&text).map_err(|message| ConfigError::Parse { path: path.into(), message })
    }

    pub fn parse(text: &str) -> Result<JobConfig, String> {
        toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
    }

    /// Refuses settings the job cannot run with.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.epoch_records == 0 {
            return Err(ConfigError::Invalid("epoch_records must be at least 1".into()));
        }
        if self.epoch_interval_ms == 0 {
            return Err(ConfigError::Invalid("epoch_interval_ms must be at least 1".into()));
        }
        if self.job.is_empty() {
            return Err(ConfigError::Invalid("job must not be empty".into()));
        }
        attack_release(&self.attack_release).map_err(|e| ConfigError::Invalid(format!("attack_release: {e}")))?;
        if let Some(kafka) = &self.kafka {
            if kafka.brokers.trim().is_empty() {
                return Err(ConfigError::Invalid("kafka.brokers must not be empty".into()));
            }
            if kafka.topics.is_empty() && kafka.tables.is_empty() {
                return Err(ConfigError::Invalid("kafka.topics and kafka.tables are both empty".into()));
            }
        }
        Ok(())
    }

    /// How long the PostgreSQL sink waits out an outage; none: for as long as it takes.
    pub fn sink_timeout(&self) -> Option<std::time::Duration> {
        self.sink_timeout_s.map(std::time::Duration::from_secs)
    }

    /// The configuration as TOML, with passwords masked.
    pub fn to_toml_masked(&self) -> String {
        let mut shown = self.clone();
        shown.postgres = shown.postgres.as_deref().map(mask_connection_string);
        if let Some(kafka) = &mut shown.kafka {
            for (key, value) in kafka.properties.iter_mut() {
                if is_secret_property(key) {
                    *value = String::from("********");
                }
            }
        }
        toml::to_string(&shown).unwrap_or_else(|e| format!("# the configuration cannot be shown as TOML: {e}\n"))
    }
}

/// An ATT&CK release as tags and layers name it: `v<major>` or `v<major>.<minor>`.
pub fn attack_release(text: &str) -> Result<String, String> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let valid = text.strip_prefix('v').is_some_and(|v| match v.split_once('.') {
        Some((major, minor)) => digits(major) && digits(minor),
        None => digits(v),
    });
    if valid {
        Ok(text.to_string())
    } else {
        Err(format!("an ATT&CK release is v<major>.<minor>, such as v15.1 or v18.1, not \"{text}\""))
    }
}

/// librdkafka properties that hold secrets.
fn is_secret_property(key: &str) -> bool {
    key.contains("password") || key.contains("secret") || key.ends_with(".key.pem") || key == "sasl.oauthbearer.config"
}

const MASK: &str = "********";

/// Whether a connection parameter holds a secret (`password`, `sslpassword`, …).
fn is_secret_parameter(key: &str) -> bool {
    key.to_ascii_lowercase().contains("password")
}

/// A connection string with every secret replaced, in each form libpq accepts: a URL's
/// userinfo password (`postgres://u:pw@h/db`) and `password=` query parameters, and the
/// key/value form with optional spaces around `=` and single-quoted values
/// (`password = 'a b\'c'`), which is rewritten as `key=value` pairs.
pub fn mask_connection_string(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => mask_url(scheme, rest),
        None => mask_key_values(url),
    }
}

fn mask_url(scheme: &str, rest: &str) -> String {
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let mut out = format!("{scheme}://");
    match before_query.rfind('@') {
        Some(at) => {
            let (userinfo, host) = (&before_query[..at], &before_query[at..]);
            match userinfo.split_once(':') {
                Some((user, _)) => out.push_str(&format!("{user}:{MASK}")),
                None => out.push_str(userinfo),
            }
            out.push_str(host);
        }
        None => out.push_str(before_query),
    }
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if is_secret_parameter(key) => format!("{key}={MASK}"),
                _ => pair.to_string(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

/// The key/value form read as libpq reads it: `key = value` pairs separated by spaces, a
/// value single-quoted with `\'` and `\\` escapes or bare up to the next space.
fn mask_key_values(text: &str) -> String {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        if key.is_empty() && chars.peek().is_none() {
            break;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next_if_eq(&'=').is_none() {
            // Not a pair: keep the word as it was, but never let a secret through.
            pairs.push(if is_secret_parameter(&key) { MASK.to_string() } else { key });
            continue;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\'' => break,
                    '\\' => value.extend(chars.next()),
                    _ => value.push(c),
                }
            }
            value = format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"));
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        pairs.push(if is_secret_parameter(&key) { format!("{key}={MASK}") } else { format!("{key}={value}") });
    }
    pairs.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_only_what_it_names() {
        let config = JobConfig::parse(
            r#"
            job = "edge"
            epoch_records = 64
            [kafka]
            brokers = "k1:9092,k2:9092"
            topics = ["attacker.observed", "canary.*"]
            [kafka.properties]
            "security.protocol" = "SASL_SSL"
            "sasl.password" = "hunter2"
            [kafka.publish]
            enabled = false
            "#,
        )
        .unwrap();
        assert_eq!(config.job, "edge");
        assert_eq!(config.epoch_records, 64);
        assert_eq!(config.epoch_interval_ms, 200);
        let kafka = config.kafka.as_ref().unwrap();
        assert_eq!(kafka.brokers, "k1:9092,k2:9092");
        assert_eq!(kafka.topics, ["attacker.observed", "canary.*"]);
        assert_eq!(kafka.tables.len(), 4);
        assert!(!kafka.publish.enabled);
        assert_eq!(kafka.publish.tagged, "ttp.tagged");
        let shown = config.to_toml_masked();
        assert!(shown.contains("SASL_SSL"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(JobConfig::parse(&config.to_toml()).unwrap(), config);
    }

    impl JobConfig {
        fn to_toml(&self) -> String {
            toml::to_string(self).unwrap()
        }
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let err = JobConfig::parse("epoch_record = 5").unwrap_err();
        assert!(err.contains("epoch_record"), "{err}");
        let err = JobConfig::parse("[kafka]\nbroker = \"x\"").unwrap_err();
        assert!(err.contains("broker"), "{err}");
    }

    #[test]
    fn passwords_are_masked() {
        assert_eq!(mask_connection_string("postgres://u:pw@h:5432/db"), "postgres://u:********@h:5432/db");
        assert_eq!(mask_connection_string("host=/tmp user=u password=pw"), "host=/tmp user=u password=********");
        assert_eq!(mask_connection_string("postgres://h/db"), "postgres://h/db");
        assert_eq!(
            mask_connection_string("postgresql://u@h/a?sslmode=disable&password=S3cretQ"),
            "postgresql://u@h/a?sslmode=disable&password=********"
        );
        assert_eq!(
            mask_connection_string("host=h  password = 'S3cret words\\' more'  user='a b'"),
            "host=h password=******** user='a b'"
        );
    }

    /// Every credential form the connecting parser (the `postgres` crate's, as libpq's)
    /// accepts: the parser finds the password in the original and none in the masked string.
    #[test]
    fn masking_hides_every_password_the_connecting_parser_reads() {
        let forms = [
            "postgres://u:S3cretA@h:5432/db",
            "postgresql://u:S3cretB@h/db?sslmode=disable",
            "postgres://u@h/db?password=S3cretQ",
            "postgres://u@h/db?application_name=x&password=S3cretQ&connect_timeout=5",
            "host=h user=u password=S3cretKV",
            "host=h user=u password = S3cretSp",
            "host=h password='S3cret words' user=u",
            "host=h password = 'S3cret \\'quoted\\' \\\\ words' dbname=d",
            "password=S3cretFirst host=h",
        ];
        for form in forms {
            let parsed: postgres::Config = form.parse().unwrap_or_else(|e| panic!("{form}: {e}"));
            let secret = String::from_utf8(parsed.get_password().expect("a password").to_vec()).unwrap();
            assert!(secret.starts_with("S3cret"), "{form}: {secret}");
            let masked = mask_connection_string(form);
            assert!(!masked.contains("S3cret"), "{form} -> {masked}");
            let reparsed: postgres::Config = masked.parse().unwrap_or_else(|e| panic!("{masked}: {e}"));
            assert_eq!(reparsed.get_password(), Some(MASK.as_bytes()), "{masked}");
            assert_eq!(reparsed.get_hosts(), parsed.get_hosts(), "{masked}");
            assert_eq!(reparsed.get_user(), parsed.get_user(), "{masked}");
        }
    }
}
