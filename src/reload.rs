//! The rule watcher: reloads a changed rules directory, or changed rule states, into a new
//! pack while the job runs (DESIGN §1.3: rules apply to records processed after they load; a
//! running job keeps its last good pack).
//!
//! The runtime calls [`RuleWatcher::poll`] at epoch boundaries and installs a swapped pack in
//! its [`PackSchedule`](ttpflow_dataflows::PackSchedule) from the next epoch on. A poll is
//! cheap when nothing changed: at most once per minimum interval it lists the rule files
//! (names, sizes, modification and change times, inodes) and compares the listing with the
//! last one; only when the listing differs are the contents hashed, and only when the
//! contents differ from those of the pack in use, and from those last rejected, is the
//! directory loaded. So touching a file swaps nothing, and a broken directory is reported
//! once, however many polls see it, until it changes again. A rewrite that keeps a file's
//! size and lands within the file system's timestamp granularity of the previous write is
//! not seen until the next change of the listing.
//!
//! A pack that loads without problems and holds at least one rule is swapped in
//! ([`Reload::Swapped`]). One with problems, an unreadable directory, or a directory without
//! rules is rejected ([`Reload::Rejected`]): each problem is logged with its file and
//! reason, and the last good pack stays in use.
//!
//! Rule states (from `ttp_rule_state` through
//! [`read_rule_states`](crate::postgres::read_rule_states), or a state file) are handed over
//! with [`RuleWatcher::set_states`]; a change applies at the next poll by rebuilding the last
//! good pack with the new states, without reading the directory, and counts as a swap. A
//! state for a rule id the pack lacks is a warning, not an error. When the directory changes
//! too, its new pack is loaded with the new states.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};
use ttpflow_dataflows::rules::{RulePack, RuleState};

use crate::rules::{self, is_rule_file_name, LoadError, LoadOptions, Problem};

/// The least time between two looks at the directory, unless set otherwise.
pub const DEFAULT_MIN_INTERVAL: Duration = Duration::from_secs(1);

/// What a poll found.
#[derive(Debug, Clone)]
pub enum Reload {
    /// Nothing to swap: no change, a change that leaves the contents as loaded, or the
    /// broken state already reported.
    Unchanged,
    /// A new pack, to install from the next epoch.
    Swapped { pack: Arc<RulePack>, rules: usize },
    /// The changed directory does not load; the last good pack stays.
    Rejected { problems: Vec<Problem> },
}

/// One rule file as listed: name, size, modification time and identity.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Listed {
    name: String,
    len: u64,
    modified: Option<SystemTime>,
    /// Inode, change time in seconds and nanoseconds (zero off Unix): a file replaced by a
    /// rename, as editors save, is another inode.
    identity: (u64, i64, i64),
}

/// Watches one rules directory and the rule states, and holds the last good pack.
#[derive(Debug)]
pub struct RuleWatcher {
    dir: PathBuf,
    options: LoadOptions,
    pack: Arc<RulePack>,
    min_interval_micros: i64,
    /// When the directory was last looked at.
    looked_at: Option<i64>,
    /// The rule files at the last look; `None` when the directory could not be listed.
    listing: Option<Vec<Listed>>,
    /// The digest of the contents the pack in use was loaded from.
    loaded: u64,
    /// The digest of the contents last rejected.
    rejected: Option<u64>,
    /// Whether states changed since the pack in use was built.
    states_changed: bool,
}

impl RuleWatcher {
    /// Loads the pack of `dir` with `options` (attack release, intel tables, states). There
    /// is no last good pack yet, so a pack that does not load is an error.
    pub fn new(dir: impl Into<PathBuf>, options: LoadOptions) -> Result<RuleWatcher, LoadError> {
        let dir = dir.into();
        let listing = list(&dir).map_err(|source| LoadError::ReadDir { dir: dir.clone(), source })?;
        let loaded = digest(&dir, &listing);
        let pack = rules::load(&dir, &options)?.pack;
        warn_unknown_states(&pack, &options.states);
        Ok(RuleWatcher {
            dir,
            options,
            pack: Arc::new(pack),
            min_interval_micros: micros(DEFAULT_MIN_INTERVAL),
            looked_at: None,
            listing: Some(listing),
            loaded,
            rejected: None,
            states_changed: false,
        })
    }

    /// Looks at the directory at most once per `interval` of the polls' `now`.
    pub fn with_min_interval(mut self, interval: Duration) -> RuleWatcher {
        self.min_interval_micros = micros(interval);
        self
    }

    /// The last good pack: the one in use.
    pub fn pack(&self) -> &Arc<RulePack> {
        &self.pack
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The rule states the pack in use was, or the next one will be, built with.
    pub fn states(&self) -> &BTreeMap<String, RuleState> {
        &self.options.states
    }

    /// Takes the current rule states; a change rebuilds the pack at the next poll.
    pub fn set_states(&mut self, states: BTreeMap<String, RuleState>) {
        if states != self.options.states {
            self.options.states = states;
            self.states_changed = true;
        }
    }

    /// Reloads what changed since the last poll; `now_micros` paces the looks at the directory.
    pub fn poll(&mut self, now_micros: i64) -> Reload {
        let due = self.looked_at.is_none_or(|at| now_micros.saturating_sub(at) >= self.min_interval_micros);
        if due {
            self.looked_at = Some(now_micros);
            if let Some(reload) = self.look() {
                return reload;
            }
        }
        if self.states_changed {
            return self.apply_states();
        }
        Reload::Unchanged
    }

    /// A swap or a rejection when the directory's contents changed to something new.
    fn look(&mut self) -> Option<Reload> {
        let listing = match list(&self.dir) {
            Ok(listing) => listing,
            Err(e) => {
                self.listing = None;
                let problem = Problem {
                    file: self.dir.display().to_string(),
                    rule: None,
                    field: None,
                    message: format!("failed to read the rules directory: {e}"),
                };
                return self.reject(hash_of(&("unreadable", e.kind().to_string())), vec![problem]);
            }
        };
        if self.listing.as_ref() == Some(&listing) {
            return None;
        }
        let contents = digest(&self.dir, &listing);
        self.listing = Some(listing);
        if contents == self.loaded {
            self.rejected = None;
            return None;
        }
        if self.rejected == Some(contents) {
            return None;
        }
        match rules::load(&self.dir, &self.options) {
            Ok(loaded) if loaded.pack.rules().is_empty() => {
                let problem = Problem {
                    file: self.dir.display().to_string(),
                    rule: None,
                    field: None,
                    message: "holds no rule files".to_string(),
                };
                self.reject(contents, vec![problem])
            }
            Ok(loaded) => {
                self.loaded = contents;
                Some(self.swap(loaded.pack))
            }
            Err(LoadError::Invalid { problems, .. }) => self.reject(contents, problems),
            Err(other) => {
                let problem = Problem {
                    file: self.dir.display().to_string(),
                    rule: None,
                    field: None,
                    message: other.to_string(),
                };
                self.reject(contents, vec![problem])
            }
        }
    }

    /// The last good pack's rules with the current states.
    fn apply_states(&mut self) -> Reload {
        let rules = self
            .pack
            .rules()
            .iter()
            .cloned()
            .map(|mut rule| {
                rule.state = self.options.states.get(&rule.rule_id).cloned().unwrap_or_default();
                rule
            })
            .collect();
        let pack = RulePack::new(rules, self.options.attack_release.clone())
            .with_intel_tables(Arc::clone(&self.options.intel))
            .with_secret_key(Arc::clone(&self.options.secret_key));
        self.swap(pack)
    }

    fn swap(&mut self, pack: RulePack) -> Reload {
        self.rejected = None;
        self.states_changed = false;
        warn_unknown_states(&pack, &self.options.states);
        let rules = pack.rules().len();
        self.pack = Arc::new(pack);
        info!(rules, dir = %self.dir.display(), "reloaded rule pack");
        Reload::Swapped { pack: Arc::clone(&self.pack), rules }
    }

    fn reject(&mut self, contents: u64, problems: Vec<Problem>) -> Option<Reload> {
        if self.rejected == Some(contents) {
            return None;
        }
        self.rejected = Some(contents);
        for p in &problems {
            warn!(file = %p.file, rule = p.rule.as_deref(), field = p.field.as_deref(), reason = %p.message, "rule file not loaded");
        }
        warn!(
            problems = problems.len(),
            rules = self.pack.rules().len(),
            dir = %self.dir.display(),
            "rule pack rejected; keeping the last good pack"
        );
        Some(Reload::Rejected { problems })
    }
}

fn warn_unknown_states(pack: &RulePack, states: &BTreeMap<String, RuleState>) {
    for rule_id in states.keys().filter(|id| !pack.rules().iter().any(|r| &r.rule_id == *id)) {
        warn!(rule = %rule_id, "rule state names no rule of the pack");
    }
}

fn micros(interval: Duration) -> i64 {
    i64::try_from(interval.as_micros()).unwrap_or(i64::MAX)
}

fn hash_of(value: &impl Hash) -> u64 {
    let mut hasher = DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// The rule files of `dir` (the names the loader takes), in name order.
fn list(dir: &Path) -> std::io::Result<Vec<Listed>> {
    let mut listing = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().filter(|n| is_rule_file_name(n)).map(str::to_string) else {
            continue;
        };
        // Following links, as the loader does.
        let Ok(meta) = std::fs::metadata(entry.path()) else { continue };
        if meta.is_file() {
            listing.push(Listed { name, len: meta.len(), modified: meta.modified().ok(), identity: identity(&meta) });
        }
    }
    listing.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(listing)
}

#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> (u64, i64, i64) {
    use std::os::unix::fs::MetadataExt;
    (meta.ino(), meta.ctime(), meta.ctime_nsec())
}

#[cfg(not(unix))]
fn identity(_: &std::fs::Metadata) -> (u64, i64, i64) {
    (0, 0, 0)
}

/// A digest of the listed files' names and contents (a file that cannot be read counts by
/// its error), to tell a change of contents from a touch.
fn digest(dir: &Path, listing: &[Listed]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for file in listing {
        file.name.hash(&mut hasher);
        match std::fs::read(dir.join(&file.name)) {
            Ok(bytes) => bytes.hash(&mut hasher),
            Err(e) => e.kind().to_string().hash(&mut hasher),
        }
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ttpflow_dataflows::json::Json;
    use ttpflow_dataflows::record::Subject;
    use ttpflow_dataflows::rules::StateMode;

    use super::*;

    /// A rules directory with two of the project's rules.
    fn pack_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("rules");
        for name in ["TF0001.yaml", "TF0002.yaml"] {
            std::fs::copy(rules.join(name), dir.path().join(name)).expect("copy a rule");
        }
        dir
    }

    fn watcher(dir: &Path) -> RuleWatcher {
        RuleWatcher::new(dir, LoadOptions::default()).expect("the pack loads").with_min_interval(Duration::ZERO)
    }

    /// The tags' (rule, confidence) of an HTTP request from sqlmap.
    fn scanner_tags(pack: &RulePack) -> Vec<(String, f64)> {
        let payload = Json::parse(r#"{"user_agent":"sqlmap/1.7.2#stable","raw_url":"/?id=1"}"#).unwrap();
        let subject = Subject {
            pos: Default::default(),
            part: 0,
            source_kind: "http_request".into(),
            source_id: "r1".into(),
            attacker_uuid: Some("a1".into()),
            identity_uuid: None,
            session_id: None,
            decky_id: None,
            event_time: None,
            payload: Arc::new(payload),
        };
        let mut tags = Vec::new();
        pack.evaluate(&subject, &mut tags);
        tags.into_iter().map(|t| (t.rule_id, t.confidence.0)).collect()
    }

    fn rewrite(path: &Path, from: &str, to: &str) {
        let text = std::fs::read_to_string(path).unwrap();
        assert!(text.contains(from), "{from}");
        std::fs::write(path, text.replacen(from, to, 1)).unwrap();
    }

    #[test]
    fn an_unchanged_directory_swaps_nothing_and_a_valid_edit_swaps() {
        let dir = pack_dir();
        let mut watcher = watcher(dir.path());
        assert_eq!(scanner_tags(watcher.pack()), [("TF0001".to_string(), 0.9), ("TF0001".to_string(), 0.5)]);
        assert!(matches!(watcher.poll(0), Reload::Unchanged));
        // A touch: the listing changes, the contents do not.
        let file = dir.path().join("TF0001.yaml");
        std::fs::write(&file, std::fs::read(&file).unwrap()).unwrap();
        assert!(matches!(watcher.poll(1), Reload::Unchanged));
        rewrite(&file, "confidence: 0.9", "confidence: 0.75");
        let Reload::Swapped { pack, rules } = watcher.poll(2) else { panic!("a valid edit swaps") };
        assert_eq!(rules, 2);
        assert_eq!(scanner_tags(&pack), [("TF0001".to_string(), 0.75), ("TF0001".to_string(), 0.5)]);
        assert!(Arc::ptr_eq(&pack, watcher.pack()));
        assert!(matches!(watcher.poll(3), Reload::Unchanged));
    }

    #[test]
    fn a_broken_file_is_rejected_once_and_fixing_it_swaps() {
        let dir = pack_dir();
        let mut watcher = watcher(dir.path());
        let good = Arc::clone(watcher.pack());
        let file = dir.path().join("TF0002.yaml");
        rewrite(&file, "confidence: 0.95", "confidence: \"high\"");
        let Reload::Rejected { problems } = watcher.poll(0) else { panic!("a broken file is rejected") };
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].file, "TF0002.yaml");
        assert_eq!(problems[0].field.as_deref(), Some("emits[0].confidence"));
        assert!(matches!(watcher.poll(1), Reload::Unchanged), "reported once");
        assert!(Arc::ptr_eq(watcher.pack(), &good), "the last good pack stays");
        rewrite(&file, "confidence: \"high\"", "confidence: 0.85");
        let Reload::Swapped { pack, .. } = watcher.poll(2) else { panic!("fixing the file swaps") };
        assert_eq!(pack.rules()[1].emits[0].confidence, 0.85);
    }

    #[test]
    fn an_empty_or_missing_directory_is_rejected_once() {
        let dir = pack_dir();
        let mut watcher = watcher(dir.path());
        let saved = tempfile::tempdir().unwrap();
        for name in ["TF0001.yaml", "TF0002.yaml"] {
            std::fs::rename(dir.path().join(name), saved.path().join(name)).unwrap();
        }
        let Reload::Rejected { problems } = watcher.poll(0) else { panic!("no rules") };
        assert_eq!(problems[0].message, "holds no rule files");
        assert!(matches!(watcher.poll(1), Reload::Unchanged));
        assert_eq!(watcher.pack().rules().len(), 2);
        let gone = dir.path().to_path_buf();
        std::fs::remove_dir(&gone).unwrap();
        let Reload::Rejected { problems } = watcher.poll(2) else { panic!("a missing directory") };
        assert!(problems[0].message.starts_with("failed to read the rules directory"), "{}", problems[0].message);
        assert!(matches!(watcher.poll(3), Reload::Unchanged));
        // Back as it was: the pack in use is that one already.
        std::fs::create_dir(&gone).unwrap();
        for name in ["TF0001.yaml", "TF0002.yaml"] {
            std::fs::rename(saved.path().join(name), gone.join(name)).unwrap();
        }
        assert!(matches!(watcher.poll(4), Reload::Unchanged));
    }

    #[test]
    fn a_change_of_states_alone_swaps_with_the_states_applied() {
        let dir = pack_dir();
        let mut watcher = watcher(dir.path());
        let disabled = RuleState { mode: StateMode::Disabled, ..Default::default() };
        let unknown = RuleState { mode: StateMode::Clipped, confidence_max: Some(0.4), expired: false };
        let states = BTreeMap::from([("TF0001".to_string(), disabled), ("TF9999".to_string(), unknown)]);
        watcher.set_states(states.clone());
        let Reload::Swapped { pack, rules } = watcher.poll(0) else { panic!("a state change swaps") };
        assert_eq!(rules, 2, "a state for an unknown rule is only a warning");
        assert!(scanner_tags(&pack).is_empty(), "a disabled rule emits nothing");
        watcher.set_states(states);
        assert!(matches!(watcher.poll(1), Reload::Unchanged), "the same states again");
        let clipped = RuleState { mode: StateMode::Clipped, confidence_max: Some(0.6), expired: false };
        watcher.set_states(BTreeMap::from([("TF0001".to_string(), clipped)]));
        // With an edit of the directory in the same poll, the new pack gets the new states.
        rewrite(&dir.path().join("TF0001.yaml"), "confidence: 0.5", "confidence: 0.55");
        let Reload::Swapped { pack, .. } = watcher.poll(2) else { panic!("swaps") };
        assert_eq!(scanner_tags(&pack), [("TF0001".to_string(), 0.6), ("TF0001".to_string(), 0.55)]);
        assert!(matches!(watcher.poll(3), Reload::Unchanged));
    }

    #[test]
    fn the_directory_is_looked_at_once_per_interval() {
        let dir = pack_dir();
        let mut watcher = watcher(dir.path()).with_min_interval(Duration::from_secs(1));
        assert!(matches!(watcher.poll(0), Reload::Unchanged));
        rewrite(&dir.path().join("TF0001.yaml"), "confidence: 0.9", "confidence: 0.85");
        assert!(matches!(watcher.poll(999_999), Reload::Unchanged), "within the interval");
        assert!(matches!(watcher.poll(1_000_000), Reload::Swapped { .. }));
    }
}
