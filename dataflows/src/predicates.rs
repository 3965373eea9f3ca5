//! Structured predicates: the `lifter:*` match kinds of DECNET's pack, as data.
//!
//! A rule with `match: {kind: "lifter:<name>", …params}` is compiled into a
//! [`Predicate`] when the pack loads (parameters checked, patterns compiled, DECNET's
//! defaults where the YAML is silent). Evaluating it on a payload yields the extra
//! evidence of a fire, or `None`. Payload values of the wrong type never fire and never
//! fail: one predicate cannot cost an event its other tags.
//!
//! The behavioural family (R0031–R0040) reads the pre-shaped session aggregates that
//! DECNET's producers put in payloads, and `http_request` paths for R0036/R0037.
//!
//! The canary family (R0049–R0053) reads the browser fingerprint a canary trigger carries
//! (flags and counts the canary page computed). Its tags say which signal fired and nothing
//! else (`metric`, `matched_signature`): the rest of a fingerprint is the visitor's browser.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use crate::email;
use crate::json::Json;
use crate::providers::Provider;
use crate::pyregex::PyRegex;

/// A compiled structured predicate.
#[derive(Clone, Debug)]
pub enum Predicate {
    Beaconing {
        min_interval_s: f64,
        max_jitter_pct: f64,
    },
    DataDestruction {
        patterns: Vec<PyRegex>,
    },
    RansomNote {
        keywords: Vec<String>,
        require_btc_or_xmr: bool,
    },
    ExfilOverWeb {
        min_payload_bytes: f64,
        request_threshold: i64,
    },
    DbMassRead {
        min_rows: i64,
        min_bytes: i64,
    },
    /// Credentials in files (R0036) and Kubernetes service-account tokens (R0037).
    PathMatch {
        patterns: Vec<PyRegex>,
    },
    DockerEscape {
        signals: Vec<String>,
    },
    LlmnrPoisoning,
    TftpRouterConfig {
        patterns: Vec<PyRegex>,
    },
    /// R0030: a JARM or HASSH fingerprint of a known C2 framework, on a session (its
    /// `jarm` / `hassh` / `matched_framework` enrichment) or on an `attacker.fingerprinted`
    /// `jarm` / `hassh` result (its `hash`). DECNET left this rule without an owner.
    C2Fingerprint {
        jarm: bool,
        hassh: bool,
    },
    /// R0059: an IPv6 link-local address (fe80::/10) leaked by an attacker's host.
    Ipv6LinkLocalLeak,
    /// R0001: `fail_count` failed authentications (pre-computed by the producer).
    AuthBrute {
        fail_threshold: f64,
    },
    /// R0002: `password_count` distinct passwords against one account.
    PasswordGuessing {
        pw_threshold: f64,
    },
    /// R0003: one `shared_password_hash` across `account_count` accounts of an identity.
    PasswordSpraying {
        account_threshold: f64,
    },
    /// R0004: a secret reused (`reuse_count` with its `credential_hash`), or a
    /// correlator event naming several attackers that used one secret.
    CredentialReuse,
    /// R0005: a successful login, after a brute force when `require_prior_brute`.
    ValidAccountUse {
        require_prior_brute: bool,
    },
    /// R0006: a login with a well-known default username / password pair.
    DefaultCredentials {
        pairs: Vec<(String, String)>,
    },
    /// R0044: a URL whose host has a punycode label (an internationalised look-alike).
    EmailIdnUrl {
        punycode_prefix: String,
    },
    /// R0041: a message to many recipients from a domain other than its envelope sender's.
    EmailOpenRelay {
        rcpt_threshold: f64,
        require_foreign_from: bool,
    },
    /// R0042: a message to at least `rcpt_threshold` recipients.
    EmailMassPhish {
        rcpt_threshold: f64,
    },
    /// R0043: a phishing kit recognised from the X-Mailer header (by the producer).
    EmailXmailerKit,
    /// R0045: a sender that is not who it says it is: From differs from Return-Path or
    /// from the envelope sender, a DKIM signature is missing, SPF failed.
    EmailSenderMasquerade {
        signals: Vec<String>,
    },
    /// R0047: business email compromise: a pressing subject and an action in the body.
    EmailBec {
        subject_keywords: Vec<String>,
        body_keywords: Vec<String>,
    },
    /// R0046: an attachment that executes or hides: macros, shortcut or disk images,
    /// password-protected archives, HTML smuggling, a known-bad hash.
    EmailMaliciousAttachment {
        triggers: Vec<String>,
    },
    /// R0048: at least `min_bytes` of base64 in a message body: the producer's count, else
    /// the longest base64 run of `body_text`, decoded.
    EmailEncodedPayload {
        min_bytes: f64,
    },
    /// R0049: `navigator.webdriver` is set: the browser is driven by an automation
    /// framework (Selenium, Puppeteer, Playwright).
    CanaryWebdriver,
    /// R0050: the canvas / audio fingerprint hash is one of a known automation tool (the
    /// producer's `canvas_audio_hash_match`, else `matched_tool`), one of `catalogues`
    /// when any are named.
    CanaryAutomationHash {
        catalogues: Vec<String>,
    },
    /// R0051: the WebRTC-discovered address does not geolocate where the source IP does.
    CanaryWebrtcLeak,
    /// R0052: the browser's timezone is `TZ_MIN_ZONES` or more zones off the source IP's,
    /// else its language does not fit the source country.
    CanaryTzLangMismatch,
    /// R0053: `navigator.platform` contradicts the User-Agent, else the User-Agent
    /// contradicts the WebGL renderer.
    CanaryPlatformInconsistency,
    /// R0054–R0057: a provider's verdicts in an attacker's intel row, through the
    /// provider's mapping table. Evaluated on intel rows by the intel stage.
    Intel(Provider),
    /// R0058: while an attacker's aggregate intel verdict is malicious, its intel-derived
    /// techniques' confidence_max is raised by `bump_amount` in the rollups. Emits no tag.
    IntelBump {
        bump_amount: f64,
    },
    /// A lifter kind this build loads and keeps but does not evaluate.
    NotEvaluated,
}

/// How many timezones off the source IP's a browser must be for R0052 (DECNET's bound).
const TZ_MIN_ZONES: f64 = 3.0;

/// The sender-masquerade signals R0045 knows.
const MASQUERADE_SIGNALS: &[&str] = &["from_returnpath_mismatch", "from_mailfrom_mismatch", "dkim_fail", "spf_fail"];

/// The attachment triggers R0046 knows, most telling first.
const ATTACHMENT_TRIGGERS: &[&str] =
    &["office_macro", "protected_archive", "html_smuggling", "mal_hash_match", "lnk", "iso", "img"];

pub use crate::record::Extra;

/// Reads the parameters of one `match` mapping.
struct Params<'a>(&'a Json);

impl Params<'_> {
    fn number(&self, key: &str, default: f64) -> Result<f64, String> {
        match self.0.get(key) {
            None => Ok(default),
            Some(v) => number(v).ok_or_else(|| format!("parameter \"{key}\" must be a number, got {}", v.type_name())),
        }
    }

    fn bool(&self, key: &str) -> Result<bool, String> {
        match self.0.get(key) {
            None | Some(Json::Null) => Ok(false),
            Some(Json::Bool(b)) => Ok(*b),
            Some(v) => Err(format!("parameter \"{key}\" must be a boolean, got {}", v.type_name())),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, String> {
        match self.0.get(key) {
            None => Ok(Vec::new()),
            Some(Json::Arr(items)) => items
                .iter()
                .map(|i| {
                    i.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| format!("parameter \"{key}\" must list strings, got {}", i.type_name()))
                })
                .collect(),
            Some(v) => Err(format!("parameter \"{key}\" must be a list of strings, got {}", v.type_name())),
        }
    }

    fn pairs(&self, key: &str) -> Result<Vec<(String, String)>, String> {
        let bad = || format!("parameter \"{key}\" must be a list of [username, password] pairs");
        match self.0.get(key) {
            None => Ok(Vec::new()),
            Some(Json::Arr(items)) => items
                .iter()
                .map(|pair| match pair {
                    Json::Arr(two) if two.len() == 2 => match (two[0].as_str(), two[1].as_str()) {
                        (Some(u), Some(p)) => Ok((u.to_string(), p.to_string())),
                        _ => Err(bad()),
                    },
                    _ => Err(bad()),
                })
                .collect(),
            Some(_) => Err(bad()),
        }
    }

    fn patterns(&self, key: &str) -> Result<Vec<PyRegex>, String> {
        self.strings(key)?
            .iter()
            .map(|p| {
                PyRegex::new(p)
                    .map_err(|e| format!("parameter \"{key}\": pattern {p:?} does not compile: {}", e.message))
            })
            .collect()
    }
}

/// A JSON number (booleans count, as Python's `isinstance(True, int)` does).
fn number(value: &Json) -> Option<f64> {
    match value {
        Json::Num(n) => n.parse().ok(),
        Json::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// A JSON integer (Python `int`: written without fraction or exponent, or a boolean).
fn integer(value: &Json) -> Option<f64> {
    match value {
        Json::Num(n) if !n.contains(['.', 'e', 'E']) => n.parse().ok(),
        Json::Bool(b) => Some(f64::from(u8::from(*b))),
        _ => None,
    }
}

/// Python's `a or b or … or ""` over payload fields, which must then be a non-empty string.
fn first_truthy_str<'a>(payload: &'a Json, fields: &[&str]) -> Option<&'a str> {
    let value = fields.iter().filter_map(|f| payload.get(f)).find(|v| v.is_truthy())?;
    value.as_str()
}

fn extra(key: &str, value: Json) -> Extra {
    vec![(key.to_string(), value)]
}

/// The whole evidence of a canary tag: which signal, and what about it matched.
fn canary_evidence(metric: &str, signature: String) -> Extra {
    vec![("metric".to_string(), Json::Str(metric.to_string())), ("matched_signature".to_string(), Json::Str(signature))]
}

/// Whether a payload flag is JSON `true` (not merely truthy).
fn flag(payload: &Json, field: &str) -> bool {
    payload.get(field) == Some(&Json::Bool(true))
}

/// Compiles the predicate of a `lifter:*` kind from its parameters.
pub fn compile(kind: &str, params: &Json) -> Result<Predicate, String> {
    let p = Params(params);
    Ok(match kind {
        "lifter:behavioral_beaconing" => Predicate::Beaconing {
            min_interval_s: p.number("min_interval_s", 0.0)?,
            max_jitter_pct: p.number("max_jitter_pct", 1.0)?,
        },
        "lifter:behavioral_data_destruction" => Predicate::DataDestruction { patterns: p.patterns("patterns")? },
        "lifter:behavioral_ransom_note" => Predicate::RansomNote {
            keywords: p.strings("payment_keywords")?,
            require_btc_or_xmr: p.bool("require_btc_or_xmr")?,
        },
        "lifter:behavioral_exfil_over_web" => Predicate::ExfilOverWeb {
            min_payload_bytes: p.number("min_payload_bytes", 0.0)?,
            request_threshold: p.number("request_threshold", 0.0)?.trunc() as i64,
        },
        "lifter:behavioral_db_mass_read" => Predicate::DbMassRead {
            min_rows: p.number("min_rows", 0.0)?.trunc() as i64,
            min_bytes: p.number("min_bytes", 0.0)?.trunc() as i64,
        },
        "lifter:behavioral_credentials_in_files" | "lifter:behavioral_k8s_sa_token" => {
            Predicate::PathMatch { patterns: p.patterns("paths")? }
        }
        "lifter:behavioral_docker_escape" => Predicate::DockerEscape { signals: p.strings("signals")? },
        "lifter:behavioral_llmnr_poisoning" => Predicate::LlmnrPoisoning,
        "lifter:behavioral_tftp_router_config" => {
            Predicate::TftpRouterConfig { patterns: p.patterns("filename_patterns")? }
        }
        "lifter:c2_fingerprint" => {
            let catalogues = p.strings("catalogues")?;
            if let Some(unknown) = catalogues.iter().find(|c| !matches!(c.as_str(), "jarm" | "hassh")) {
                return Err(format!("parameter \"catalogues\": no catalogue named \"{unknown}\" (known: jarm, hassh)"));
            }
            let enabled = |name: &str| catalogues.is_empty() || catalogues.iter().any(|c| c == name);
            Predicate::C2Fingerprint { jarm: enabled("jarm"), hassh: enabled("hassh") }
        }
        "lifter:ipv6_link_local_leak" => Predicate::Ipv6LinkLocalLeak,
        "lifter:credential_auth_brute_generic" => {
            Predicate::AuthBrute { fail_threshold: p.number("fail_threshold", 5.0)? }
        }
        "lifter:credential_password_guessing" => {
            Predicate::PasswordGuessing { pw_threshold: p.number("pw_threshold", 5.0)? }
        }
        "lifter:identity_password_spraying" => {
            Predicate::PasswordSpraying { account_threshold: p.number("account_threshold", 3.0)? }
        }
        "lifter:credential_reuse" => Predicate::CredentialReuse,
        "lifter:email_open_relay" => Predicate::EmailOpenRelay {
            rcpt_threshold: p.number("rcpt_threshold", 10.0)?,
            require_foreign_from: p.bool("require_foreign_from")?,
        },
        "lifter:email_mass_phish" => Predicate::EmailMassPhish { rcpt_threshold: p.number("rcpt_threshold", 25.0)? },
        "lifter:email_xmailer_kit" => Predicate::EmailXmailerKit,
        "lifter:email_sender_masquerade" => {
            let signals = p.strings("signals")?;
            if let Some(unknown) = signals.iter().find(|s| !MASQUERADE_SIGNALS.contains(&s.as_str())) {
                return Err(format!("parameter \"signals\": unknown signal \"{unknown}\""));
            }
            Predicate::EmailSenderMasquerade { signals }
        }
        "lifter:email_malicious_attachment" => {
            let triggers = p.strings("triggers")?;
            if let Some(unknown) = triggers.iter().find(|t| !ATTACHMENT_TRIGGERS.contains(&t.as_str())) {
                return Err(format!("parameter \"triggers\": unknown trigger \"{unknown}\""));
            }
            Predicate::EmailMaliciousAttachment { triggers }
        }
        "lifter:email_encoded_payload" => {
            match params.get("encoding").and_then(Json::as_str) {
                None | Some("base64") => {}
                Some(other) => {
                    return Err(format!("parameter \"encoding\": only base64 is supported, got \"{other}\""))
                }
            }
            Predicate::EmailEncodedPayload { min_bytes: p.number("min_bytes", 4096.0)? }
        }
        "lifter:email_bec" => Predicate::EmailBec {
            subject_keywords: p.strings("subject_keywords")?.iter().map(|k| k.to_lowercase()).collect(),
            body_keywords: p.strings("body_action_keywords")?.iter().map(|k| k.to_lowercase()).collect(),
        },
        "lifter:email_idn_url" => Predicate::EmailIdnUrl {
            punycode_prefix: match params.get("punycode_prefix") {
                None => "xn--".to_string(),
                Some(Json::Str(prefix)) if !prefix.is_empty() => prefix.to_ascii_lowercase(),
                Some(other) => {
                    return Err(format!(
                        "parameter \"punycode_prefix\" must be a non-empty string, got {}",
                        other.type_name()
                    ))
                }
            },
        },
        "lifter:credential_valid_account_use" => {
            Predicate::ValidAccountUse { require_prior_brute: p.bool("require_prior_brute")? }
        }
        "lifter:credential_default_credentials" => Predicate::DefaultCredentials { pairs: p.pairs("pairs")? },
        "lifter:canary_webdriver" => Predicate::CanaryWebdriver,
        "lifter:canary_automation_hash" => Predicate::CanaryAutomationHash { catalogues: p.strings("catalogues")? },
        "lifter:canary_webrtc_leak" => Predicate::CanaryWebrtcLeak,
        "lifter:canary_tz_lang_mismatch" => Predicate::CanaryTzLangMismatch,
        "lifter:canary_platform_inconsistency" => Predicate::CanaryPlatformInconsistency,
        "lifter:intel_aggregate_bump" => {
            let bump_amount = p.number("bump_amount", 0.05)?;
            if !(0.0..=1.0).contains(&bump_amount) {
                return Err(format!("parameter \"bump_amount\" must be between 0 and 1, got {bump_amount}"));
            }
            Predicate::IntelBump { bump_amount }
        }
        _ => match Provider::from_kind(kind) {
            Some(provider) => {
                match params.get("provider").and_then(Json::as_str) {
                    Some(named) if named != provider.name() => {
                        return Err(format!(
                            "parameter \"provider\" is \"{named}\" but the kind reads {}",
                            provider.name()
                        ))
                    }
                    _ => {}
                }
                Predicate::Intel(provider)
            }
            None => Predicate::NotEvaluated,
        },
    })
}

fn btc() -> &'static PyRegex {
    static RE: OnceLock<PyRegex> = OnceLock::new();
    RE.get_or_init(|| {
        PyRegex::new(r"\b(?:[13][a-km-zA-HJ-NP-Z1-9]{25,34}|bc1[ac-hj-np-z02-9]{11,71})\b")
            .expect("the BTC address pattern compiles")
    })
}

fn xmr() -> &'static PyRegex {
    static RE: OnceLock<PyRegex> = OnceLock::new();
    RE.get_or_init(|| PyRegex::new(r"\b4[0-9AB][1-9A-HJ-NP-Za-km-z]{93}\b").expect("the XMR address pattern compiles"))
}

/// Known C2 fingerprints by catalogue (`jarm`, `hassh`): fingerprint → framework.
fn c2_catalogue(catalogue: &str) -> &'static BTreeMap<String, String> {
    static CATALOGUES: OnceLock<BTreeMap<String, BTreeMap<String, String>>> = OnceLock::new();
    static EMPTY: BTreeMap<String, String> = BTreeMap::new();
    let all = CATALOGUES.get_or_init(|| {
        let doc = Json::parse(include_str!("../data/c2_fingerprints.json")).expect("the bundled C2 catalogue is JSON");
        ["jarm", "hassh"]
            .into_iter()
            .map(|name| {
                let entries = match doc.get(name) {
                    Some(Json::Obj(fields)) => fields
                        .iter()
                        .filter_map(|(hash, framework)| {
                            Some((hash.to_ascii_lowercase(), framework.as_str()?.to_string()))
                        })
                        .collect(),
                    _ => BTreeMap::new(),
                };
                (name.to_string(), entries)
            })
            .collect()
    });
    all.get(catalogue).unwrap_or(&EMPTY)
}

/// How many entries a list field holds (lists may arrive JSON-encoded in a string).
fn named_count(payload: &Json, field: &str) -> usize {
    match payload.get(field) {
        Some(Json::Arr(items)) => items.len(),
        Some(Json::Str(text)) => match Json::parse(text) {
            Ok(Json::Arr(items)) => items.len(),
            _ => 0,
        },
        _ => 0,
    }
}

/// The length of the longest base64 run in `text`: at least 32 characters of the base64
/// alphabet, with up to two `=` of padding (shorter runs are ordinary words).
fn longest_base64_run(text: &str) -> usize {
    let bytes = text.as_bytes();
    let is_b64 = |b: u8| b.is_ascii_alphanumeric() || b == b'+' || b == b'/';
    let (mut longest, mut i) = (0, 0);
    while i < bytes.len() {
        if !is_b64(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_b64(bytes[i]) {
            i += 1;
        }
        let mut end = i;
        while end < bytes.len() && end - i < 2 && bytes[end] == b'=' {
            end += 1;
        }
        if i - start >= 32 {
            longest = longest.max(end - start);
        }
        i = end.max(i);
    }
    longest
}

fn is_link_local(addr: &str) -> bool {
    // A zone index (`fe80::1%eth0`) names the interface, not the address.
    let addr = addr.split('%').next().unwrap_or(addr);
    addr.parse::<std::net::Ipv6Addr>().is_ok_and(|a| a.segments()[0] & 0xffc0 == 0xfe80)
}

impl Predicate {
    /// Whether it is evaluated at all (see [`Predicate::NotEvaluated`]).
    pub fn is_evaluated(&self) -> bool {
        !matches!(self, Predicate::NotEvaluated)
    }

    /// Whether it is evaluated on intel rows by the intel stage rather than on subjects.
    pub fn reads_intel_rows(&self) -> bool {
        matches!(self, Predicate::Intel(_) | Predicate::IntelBump { .. })
    }

    /// Whether the extra evidence is the whole evidence: email tags carry a fixed shape
    /// (hashes, domains, counts) instead of payload fields, which may hold addresses, and
    /// canary tags name the signal instead of copying the visitor's fingerprint.
    pub fn owns_evidence(&self) -> bool {
        matches!(
            self,
            Predicate::EmailIdnUrl { .. }
                | Predicate::EmailOpenRelay { .. }
                | Predicate::EmailMassPhish { .. }
                | Predicate::EmailXmailerKit
                | Predicate::EmailSenderMasquerade { .. }
                | Predicate::EmailBec { .. }
                | Predicate::EmailMaliciousAttachment { .. }
                | Predicate::EmailEncodedPayload { .. }
                | Predicate::CanaryWebdriver
                | Predicate::CanaryAutomationHash { .. }
                | Predicate::CanaryWebrtcLeak
                | Predicate::CanaryTzLangMismatch
                | Predicate::CanaryPlatformInconsistency
        )
    }

    /// Source kinds the predicate reads besides its rule's `applies_to`.
    pub fn extra_kinds(&self) -> &'static [&'static str] {
        match self {
            Predicate::C2Fingerprint { .. } => &["jarm", "hassh"],
            _ => &[],
        }
    }

    /// The extra evidence when the predicate fires on `payload`.
    pub fn fires(&self, payload: &Json) -> Option<Extra> {
        match self {
            Predicate::Beaconing { min_interval_s, max_jitter_pct } => {
                let interval = number(payload.get("beacon_interval_s")?)?;
                let jitter = number(payload.get("beacon_jitter_pct")?)?;
                (interval >= *min_interval_s && jitter <= *max_jitter_pct).then(Extra::new)
            }
            Predicate::DataDestruction { patterns } => {
                let haystack = first_truthy_str(payload, &["op_text", "command_text"])?;
                let hit = patterns.iter().find(|p| p.is_match(haystack))?;
                Some(extra("matched_op", Json::Str(hit.as_str().to_string())))
            }
            Predicate::RansomNote { keywords, require_btc_or_xmr } => {
                let text = first_truthy_str(payload, &["body_text", "note_text"])?;
                let lower = text.to_lowercase();
                let matched: Vec<Json> = keywords
                    .iter()
                    .filter(|k| lower.contains(&k.to_lowercase()))
                    .map(|k| Json::Str(k.clone()))
                    .collect();
                if matched.is_empty() {
                    return None;
                }
                if !require_btc_or_xmr {
                    return Some(extra("matched_keywords", Json::Arr(matched)));
                }
                let address = btc().find(text).or_else(|| xmr().find(text))?;
                Some(vec![
                    ("btc_address".to_string(), Json::Str(address)),
                    ("matched_keywords".to_string(), Json::Arr(matched)),
                ])
            }
            Predicate::ExfilOverWeb { min_payload_bytes, request_threshold } => {
                let bytes_hit = payload.get("bytes_out").and_then(number).is_some_and(|b| b >= *min_payload_bytes);
                let requests_hit =
                    payload.get("request_count").and_then(integer).is_some_and(|r| r >= *request_threshold as f64);
                (bytes_hit || requests_hit).then(Extra::new)
            }
            Predicate::DbMassRead { min_rows, min_bytes } => {
                let rows_hit = payload.get("rows_read").and_then(integer).is_some_and(|r| r >= *min_rows as f64);
                let bytes_hit = payload.get("bytes_read").and_then(number).is_some_and(|b| b >= *min_bytes as f64);
                (rows_hit || bytes_hit).then(Extra::new)
            }
            Predicate::PathMatch { patterns } => {
                let path = first_truthy_str(payload, &["matched_path", "request_path", "path"])?;
                patterns.iter().any(|p| p.is_match(path)).then(|| extra("matched_path", Json::Str(path.to_string())))
            }
            Predicate::DockerEscape { signals } => {
                let Json::Arr(observed) = payload.get("signals")? else { return None };
                let hit = signals.iter().find(|s| observed.iter().any(|o| o.as_str() == Some(s.as_str())))?;
                Some(extra("matched_signal", Json::Str(hit.clone())))
            }
            Predicate::LlmnrPoisoning => {
                let poisoned = payload.get("llmnr_poisoned") == Some(&Json::Bool(true));
                let count = payload.get("llmnr_poison_count").and_then(integer).is_some_and(|c| c >= 1.0);
                (poisoned || count).then(Extra::new)
            }
            Predicate::TftpRouterConfig { patterns } => {
                let name = first_truthy_str(payload, &["tftp_filename"])?;
                patterns.iter().any(|p| p.is_match(name)).then(Extra::new)
            }
            Predicate::C2Fingerprint { jarm, hassh } => {
                let framework = |catalogue: &str, value: Option<&Json>| {
                    value.and_then(Json::as_str).and_then(|h| c2_catalogue(catalogue).get(&h.to_ascii_lowercase()))
                };
                // A fingerprint result: the kind names the catalogue, `hash` the value.
                if let Some(hash) = payload.get("hash") {
                    let hit = framework("jarm", Some(hash)).filter(|_| *jarm).map(|f| ("jarm", f));
                    let hit =
                        hit.or_else(|| framework("hassh", Some(hash)).filter(|_| *hassh).map(|f| ("hassh", f)))?;
                    return Some(vec![
                        (hit.0.to_string(), hash.clone()),
                        ("matched_framework".to_string(), Json::Str(hit.1.clone())),
                    ]);
                }
                if let Some(named) = payload.get("matched_framework").and_then(Json::as_str).filter(|f| !f.is_empty()) {
                    return Some(extra("matched_framework", Json::Str(named.to_string())));
                }
                let hit = framework("jarm", payload.get("jarm")).filter(|_| *jarm);
                let hit = hit.or_else(|| framework("hassh", payload.get("hassh")).filter(|_| *hassh))?;
                Some(extra("matched_framework", Json::Str(hit.clone())))
            }
            Predicate::Ipv6LinkLocalLeak => {
                let addr = payload.get("addr")?.as_str()?;
                if !is_link_local(addr) {
                    return None;
                }
                Some(payload.get("attacker_ip").map(|ip| extra("attacker_v4", ip.clone())).unwrap_or_default())
            }
            Predicate::AuthBrute { fail_threshold } => {
                (payload.get("fail_count").and_then(integer)? >= *fail_threshold).then(Extra::new)
            }
            Predicate::PasswordGuessing { pw_threshold } => {
                (payload.get("password_count").and_then(integer)? >= *pw_threshold).then(Extra::new)
            }
            Predicate::PasswordSpraying { account_threshold } => {
                let accounts = payload.get("account_count").and_then(integer)?;
                let hashed = payload.get("shared_password_hash").is_some_and(Json::is_truthy);
                (hashed && accounts >= *account_threshold).then(Extra::new)
            }
            Predicate::CredentialReuse => {
                if let Some(count) = payload.get("reuse_count").and_then(integer) {
                    let hashed = payload.get("credential_hash").is_some_and(Json::is_truthy);
                    return (hashed && count >= 1.0).then(Extra::new);
                }
                // The correlator's shape: the attackers that used one secret, by uuid or IP.
                let named =
                    ["attacker_uuids", "attacker_ips"].iter().map(|f| named_count(payload, f)).max().unwrap_or(0);
                (named >= 2).then(|| extra("reuse_count", Json::Num(named.to_string())))
            }
            Predicate::ValidAccountUse { require_prior_brute } => {
                let success = payload.get("result").and_then(Json::as_str) == Some("success");
                let after_brute = !require_prior_brute || payload.get("prior_brute") == Some(&Json::Bool(true));
                (success && after_brute).then(Extra::new)
            }
            Predicate::DefaultCredentials { pairs } => {
                let username = payload.get("username")?.as_str()?;
                let password = payload.get("password")?.as_str()?;
                pairs.iter().any(|(u, p)| u == username && p == password).then(Extra::new)
            }
            Predicate::EmailIdnUrl { punycode_prefix } => {
                let Json::Arr(urls) = payload.get("urls")? else { return None };
                let host = urls
                    .iter()
                    .filter_map(Json::as_str)
                    .filter_map(email::url_host)
                    .find(|h| h.split('.').any(|label| label.starts_with(punycode_prefix.as_str())))?;
                Some(email::evidence(payload, &["body"], vec![("matched_url_host".to_string(), Json::Str(host))]))
            }
            Predicate::EmailOpenRelay { rcpt_threshold, require_foreign_from } => {
                if payload.get("rcpt_count").and_then(integer)? < *rcpt_threshold {
                    return None;
                }
                if *require_foreign_from {
                    let domain = |f: &str| payload.get(f).and_then(Json::as_str).map(email::domain_of);
                    let mail_from = domain("mail_from_domain").filter(|d| !d.is_empty())?;
                    if domain("from_domain").as_deref() == Some(mail_from.as_str()) {
                        return None;
                    }
                }
                Some(email::evidence(payload, &["From", "Mail-From"], Vec::new()))
            }
            Predicate::EmailMassPhish { rcpt_threshold } => {
                // A message without a body is a relay probe (R0041), not a phishing run.
                let evidence = email::evidence(payload, &[], Vec::new());
                let has_body = evidence.iter().any(|(k, v)| k == "body_sha256" && v.is_truthy());
                (has_body && payload.get("rcpt_count").and_then(integer)? >= *rcpt_threshold).then_some(evidence)
            }
            Predicate::EmailXmailerKit => {
                let kit = payload.get("matched_kit").filter(|k| k.is_truthy());
                let flagged = payload.get("xmailer_kit_match") == Some(&Json::Bool(true));
                if kit.is_none() && !flagged {
                    return None;
                }
                let extra = kit.map(|k| vec![("matched_kit".to_string(), k.clone())]).unwrap_or_default();
                Some(email::evidence(payload, &["X-Mailer"], extra))
            }
            Predicate::EmailSenderMasquerade { signals } => {
                let domain =
                    |f: &str| payload.get(f).and_then(Json::as_str).filter(|d| !d.is_empty()).map(email::domain_of);
                let from = domain("from_domain").unwrap_or_default();
                let differs = |f: &str| domain(f).is_some_and(|d| d != from);
                let observed = [
                    ("from_returnpath_mismatch", differs("return_path_domain"), ["From", "Return-Path"].as_slice()),
                    // DECNET names the same headers for both sender mismatches; kept for parity.
                    ("from_mailfrom_mismatch", differs("mail_from_domain"), ["From", "Return-Path"].as_slice()),
                    (
                        "dkim_fail",
                        payload.get("dkim_signed") == Some(&Json::Bool(false)),
                        ["DKIM-Signature"].as_slice(),
                    ),
                    (
                        "spf_fail",
                        payload.get("spf_pass") == Some(&Json::Bool(false)),
                        ["Authentication-Results"].as_slice(),
                    ),
                ];
                let hits: Vec<_> =
                    observed.iter().filter(|(name, hit, _)| *hit && signals.iter().any(|s| s == name)).collect();
                if hits.is_empty() {
                    return None;
                }
                let mut headers: Vec<&str> = hits.iter().flat_map(|(_, _, h)| h.iter().copied()).collect();
                headers.sort_unstable();
                headers.dedup();
                let matched = hits.iter().map(|(name, _, _)| Json::Str(name.to_string())).collect();
                Some(email::evidence(payload, &headers, vec![("matched_signals".to_string(), Json::Arr(matched))]))
            }
            Predicate::EmailBec { subject_keywords, body_keywords } => {
                let subject = payload.get("subject").and_then(Json::as_str)?.to_lowercase();
                let body = payload.get("body_text").and_then(Json::as_str)?.to_lowercase();
                let subject_kw = subject_keywords.iter().find(|k| subject.contains(k.as_str()))?;
                let body_kw = body_keywords.iter().find(|k| body.contains(k.as_str()))?;
                let extra = vec![
                    ("matched_subject_kw".to_string(), Json::Str(subject_kw.clone())),
                    ("matched_body_kw".to_string(), Json::Str(body_kw.clone())),
                ];
                Some(email::evidence(payload, &["Subject"], extra))
            }
            Predicate::EmailMaliciousAttachment { triggers } => {
                let extensions: Vec<String> = match payload.get("attachment_extensions") {
                    Some(Json::Arr(items)) => items
                        .iter()
                        .filter_map(Json::as_str)
                        .map(|e| e.trim_start_matches('.').to_lowercase())
                        .collect(),
                    _ => Vec::new(),
                };
                let flag = |f: &str| payload.get(f) == Some(&Json::Bool(true));
                let present = |trigger: &str| match trigger {
                    "office_macro" => flag("attachment_macros"),
                    "protected_archive" => flag("attachment_password_protected"),
                    "html_smuggling" => flag("html_smuggling"),
                    "mal_hash_match" => flag("mal_hash_match"),
                    ext => extensions.iter().any(|e| e == ext),
                };
                // The most telling trigger names the tag, in this fixed order.
                let trigger = ATTACHMENT_TRIGGERS.iter().find(|t| triggers.iter().any(|e| e == *t) && present(t))?;
                let extra = vec![("matched_trigger".to_string(), Json::Str(trigger.to_string()))];
                Some(email::evidence(payload, &[], extra))
            }
            Predicate::EmailEncodedPayload { min_bytes } => {
                let body = payload.get("body_text").and_then(Json::as_str).filter(|b| !b.is_empty())?;
                let counted = payload.get("body_base64_bytes").and_then(integer).filter(|n| *n >= *min_bytes);
                let bytes = match counted {
                    Some(n) => n,
                    None => (longest_base64_run(body) * 3 / 4) as f64,
                };
                if bytes < *min_bytes {
                    return None;
                }
                let count = Json::Num(format!("{}", bytes as i64));
                Some(email::evidence(payload, &[], vec![("encoded_byte_count".to_string(), count)]))
            }
            Predicate::CanaryWebdriver => flag(payload, "navigator_webdriver")
                .then(|| canary_evidence("navigator_webdriver", "navigator.webdriver_true".to_string())),
            Predicate::CanaryAutomationHash { catalogues } => {
                let tool = first_truthy_str(payload, &["canvas_audio_hash_match", "matched_tool"])?;
                let known = catalogues.is_empty() || catalogues.iter().any(|c| c == tool);
                known.then(|| canary_evidence("canvas_audio_hash", tool.to_string()))
            }
            Predicate::CanaryWebrtcLeak => flag(payload, "webrtc_geo_mismatch")
                .then(|| canary_evidence("webrtc_geo_mismatch", "webrtc_private_vs_source_ip".to_string())),
            Predicate::CanaryTzLangMismatch => {
                // Only a Python int counts (booleans are ints there, but never reach the bound).
                if let Some(zones @ Json::Num(n)) = payload.get("tz_mismatch_zones") {
                    if integer(zones).is_some_and(|z| z >= TZ_MIN_ZONES) {
                        return Some(canary_evidence("timezone_geo_mismatch", format!("tz_zones>={n}")));
                    }
                }
                flag(payload, "lang_country_mismatch")
                    .then(|| canary_evidence("language_country_mismatch", "lang_vs_source_country".to_string()))
            }
            Predicate::CanaryPlatformInconsistency => {
                if flag(payload, "platform_ua_inconsistent") {
                    return Some(canary_evidence(
                        "platform_ua_mismatch",
                        "navigator.platform_vs_userAgent".to_string(),
                    ));
                }
                flag(payload, "ua_webgl_mismatch")
                    .then(|| canary_evidence("ua_webgl_mismatch", "userAgent_vs_webgl_renderer".to_string()))
            }
            // Intel rows are judged with the provider tables (see `RulePack::intel_tags`).
            Predicate::Intel(_) | Predicate::IntelBump { .. } | Predicate::NotEvaluated => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fires(kind: &str, params: &str, payload: &str) -> Option<String> {
        let predicate = compile(kind, &Json::parse(params).unwrap()).unwrap();
        predicate.fires(&Json::parse(payload).unwrap()).map(|e| Json::Obj(e).to_json_string())
    }

    #[test]
    fn beaconing_needs_both_numbers_within_bounds() {
        let params = r#"{"max_jitter_pct":0.15,"min_interval_s":10}"#;
        let k = "lifter:behavioral_beaconing";
        assert_eq!(fires(k, params, r#"{"beacon_interval_s":60,"beacon_jitter_pct":0.05}"#).as_deref(), Some("{}"));
        assert_eq!(
            fires(k, params, r#"{"beacon_interval_s":10,"beacon_jitter_pct":0.15}"#).as_deref(),
            Some("{}"),
            "bounds are inclusive"
        );
        assert_eq!(fires(k, params, r#"{"beacon_interval_s":0,"beacon_jitter_pct":0}"#), None);
        assert_eq!(fires(k, params, r#"{"beacon_interval_s":"60","beacon_jitter_pct":0.05}"#), None);
    }

    #[test]
    fn path_match_reports_the_path() {
        let k = "lifter:behavioral_credentials_in_files";
        let params = r#"{"paths":["\\.env","\\.git/config"]}"#;
        assert_eq!(
            fires(k, params, r#"{"request_path":"/var/www/.env"}"#).as_deref(),
            Some(r#"{"matched_path":"/var/www/.env"}"#)
        );
        assert_eq!(
            fires(k, params, r#"{"matched_path":"","request_path":"/.git/config"}"#).as_deref(),
            Some(r#"{"matched_path":"/.git/config"}"#)
        );
        assert_eq!(fires(k, params, r#"{"request_path":"/index.html"}"#), None);
        assert_eq!(fires(k, params, r#"{"request_path":7}"#), None);
    }

    #[test]
    fn data_destruction_names_the_pattern() {
        let k = "lifter:behavioral_data_destruction";
        let params = r#"{"patterns":["FLUSHALL","DROP\\s+DATABASE","DELETE\\s+/\\_all"]}"#;
        assert_eq!(
            fires(k, params, r#"{"op_text":"DROP  DATABASE x"}"#).as_deref(),
            Some(r#"{"matched_op":"DROP\\s+DATABASE"}"#)
        );
        assert_eq!(
            fires(k, params, r#"{"op_text":"","command_text":"DELETE /_all"}"#).as_deref(),
            Some(r#"{"matched_op":"DELETE\\s+/\\_all"}"#)
        );
        assert_eq!(fires(k, params, r#"{"op_text":"GET x"}"#), None);
    }

    #[test]
    fn ransom_note_needs_a_keyword_and_an_address() {
        let k = "lifter:behavioral_ransom_note";
        let params = r#"{"require_btc_or_xmr":true,"payment_keywords":["bitcoin","ransom"]}"#;
        let note = r#"{"note_text":"Pay the RANSOM in Bitcoin to 1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa"}"#;
        assert_eq!(
            fires(k, params, note).as_deref(),
            Some(r#"{"btc_address":"1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa","matched_keywords":["bitcoin","ransom"]}"#)
        );
        assert_eq!(fires(k, params, r#"{"note_text":"pay the ransom"}"#), None);
        assert_eq!(
            fires(k, r#"{"payment_keywords":["ransom"]}"#, r#"{"body_text":"ransom"}"#).as_deref(),
            Some(r#"{"matched_keywords":["ransom"]}"#)
        );
    }

    #[test]
    fn thresholds_respect_python_int_checks() {
        let k = "lifter:behavioral_exfil_over_web";
        let params = r#"{"min_payload_bytes":1048576,"request_threshold":50}"#;
        assert!(fires(k, params, r#"{"bytes_out":2000000}"#).is_some());
        assert!(fires(k, params, r#"{"request_count":50}"#).is_some());
        assert!(fires(k, params, r#"{"request_count":50.0}"#).is_none(), "a float is not an int");
        assert!(fires(k, params, r#"{"bytes_out":10,"request_count":3}"#).is_none());
        let k = "lifter:behavioral_db_mass_read";
        assert!(fires(k, r#"{"min_rows":10000,"min_bytes":5242880}"#, r#"{"rows_read":10000}"#).is_some());
        assert!(fires(k, r#"{"min_rows":10000,"min_bytes":5242880}"#, r#"{"rows_read":9999,"bytes_read":1}"#).is_none());
    }

    #[test]
    fn signals_llmnr_and_tftp() {
        let k = "lifter:behavioral_docker_escape";
        let params = r#"{"signals":["privileged:true","bind:/etc"]}"#;
        assert_eq!(
            fires(k, params, r#"{"signals":["x","bind:/etc"]}"#).as_deref(),
            Some(r#"{"matched_signal":"bind:/etc"}"#)
        );
        assert_eq!(fires(k, params, r#"{"signals":"bind:/etc"}"#), None);
        let k = "lifter:behavioral_llmnr_poisoning";
        assert!(fires(k, "{}", r#"{"llmnr_poisoned":true}"#).is_some());
        assert!(fires(k, "{}", r#"{"llmnr_poisoned":1}"#).is_none());
        assert!(fires(k, "{}", r#"{"llmnr_poison_count":2}"#).is_some());
        let k = "lifter:behavioral_tftp_router_config";
        let params = r#"{"filename_patterns":[".*-confg$","startup-config"]}"#;
        assert!(fires(k, params, r#"{"tftp_filename":"r1-confg"}"#).is_some());
        assert!(fires(k, params, r#"{"tftp_filename":"r1-confg.bak"}"#).is_none());
    }

    #[test]
    fn c2_fingerprints_from_sessions_and_fingerprint_results() {
        let k = "lifter:c2_fingerprint";
        let params = r#"{"catalogues":["jarm","hassh"]}"#;
        let cs = "07d14d16d21d21d07c42d41d00041d24a458a375eef0c576d23a7bab9a9fb1";
        assert_eq!(
            fires(k, params, &format!(r#"{{"hash":"{cs}","port":443}}"#)),
            Some(format!(r#"{{"jarm":"{cs}","matched_framework":"cobaltstrike"}}"#))
        );
        assert_eq!(fires(k, params, r#"{"hash":"00000000000000000000000000000000"}"#), None);
        assert_eq!(
            fires(k, params, r#"{"jarm":"x","hassh":"y","matched_framework":"sliver"}"#).as_deref(),
            Some(r#"{"matched_framework":"sliver"}"#)
        );
        assert_eq!(
            fires(k, params, &format!(r#"{{"jarm":"{}"}}"#, cs.to_uppercase())).as_deref(),
            Some(r#"{"matched_framework":"cobaltstrike"}"#)
        );
        assert_eq!(
            fires(k, r#"{"catalogues":["hassh"]}"#, &format!(r#"{{"jarm":"{cs}"}}"#)),
            None,
            "jarm catalogue not enabled"
        );
        assert_eq!(fires(k, params, r#"{"jarm":"","matched_framework":""}"#), None);
        assert!(compile(k, &Json::parse(r#"{"catalogues":["ja3"]}"#).unwrap()).is_err());
    }

    #[test]
    fn ipv6_leaks_fire_on_link_local_addresses() {
        let k = "lifter:ipv6_link_local_leak";
        assert_eq!(
            fires(k, "{}", r#"{"addr":"FE80::1","attacker_ip":"10.0.0.1"}"#).as_deref(),
            Some(r#"{"attacker_v4":"10.0.0.1"}"#)
        );
        assert_eq!(fires(k, "{}", r#"{"addr":"febf::1%eth0"}"#).as_deref(), Some("{}"));
        assert_eq!(fires(k, "{}", r#"{"addr":"fec0::1"}"#), None, "site-local is not link-local");
        assert_eq!(fires(k, "{}", r#"{"addr":"2001:db8::1"}"#), None);
        assert_eq!(fires(k, "{}", r#"{"addr":"not an address"}"#), None);
    }

    #[test]
    fn credential_predicates_honour_precomputed_fields() {
        let k = "lifter:credential_auth_brute_generic";
        assert!(fires(k, r#"{"fail_threshold":5}"#, r#"{"fail_count":5}"#).is_some());
        assert!(fires(k, r#"{"fail_threshold":5}"#, r#"{"fail_count":4}"#).is_none());
        assert!(fires(k, r#"{"fail_threshold":5}"#, r#"{"fail_count":"9"}"#).is_none());
        let k = "lifter:credential_password_guessing";
        assert!(fires(k, r#"{"pw_threshold":5}"#, r#"{"password_count":30}"#).is_some());
        assert!(fires(k, "{}", r#"{"password_count":4}"#).is_none(), "default threshold 5");
        let k = "lifter:identity_password_spraying";
        assert!(fires(k, r#"{"account_threshold":3}"#, r#"{"account_count":3,"shared_password_hash":"h"}"#).is_some());
        assert!(fires(k, r#"{"account_threshold":3}"#, r#"{"account_count":8}"#).is_none(), "needs the shared hash");
        assert!(fires(k, r#"{"account_threshold":3}"#, r#"{"account_count":2,"shared_password_hash":"h"}"#).is_none());
        let k = "lifter:credential_valid_account_use";
        let strict = r#"{"require_prior_brute":true}"#;
        assert!(fires(k, strict, r#"{"result":"success","prior_brute":true}"#).is_some());
        assert!(fires(k, strict, r#"{"result":"success","prior_brute":false}"#).is_none());
        assert!(fires(k, "{}", r#"{"result":"success"}"#).is_some());
        assert!(fires(k, "{}", r#"{"result":"fail","prior_brute":true}"#).is_none());
        let k = "lifter:credential_default_credentials";
        let pairs = r#"{"pairs":[["root","root"],["root",""]]}"#;
        assert!(fires(k, pairs, r#"{"username":"root","password":""}"#).is_some());
        assert!(fires(k, pairs, r#"{"username":"root","password":"toor"}"#).is_none());
        assert!(compile(k, &Json::parse(r#"{"pairs":[["root"]]}"#).unwrap()).is_err());
    }

    #[test]
    fn credential_reuse_from_counts_or_from_the_correlator() {
        let k = "lifter:credential_reuse";
        assert!(fires(k, "{}", r#"{"reuse_count":1,"credential_hash":"h"}"#).is_some());
        assert!(fires(k, "{}", r#"{"reuse_count":7,"credential_hash":""}"#).is_none(), "no secret, no reuse");
        assert!(fires(k, "{}", r#"{"reuse_count":0,"credential_hash":"h"}"#).is_none());
        assert_eq!(
            fires(k, "{}", r#"{"attacker_uuids":["a","b","c"],"attacker_ips":["1.1.1.1"]}"#).as_deref(),
            Some(r#"{"reuse_count":3}"#)
        );
        assert_eq!(fires(k, "{}", r#"{"attacker_uuids":"[\"a\",\"b\"]"}"#).as_deref(), Some(r#"{"reuse_count":2}"#));
        assert!(fires(k, "{}", r#"{"attacker_uuids":["a"]}"#).is_none());
    }

    #[test]
    fn idn_urls_in_email_carry_only_the_host_and_the_base_evidence() {
        let k = "lifter:email_idn_url";
        let params = r#"{"punycode_prefix":"xn--"}"#;
        let payload = r#"{"urls":["https://ok.example/","https://pay.xn--pypal-4ve.example/verify"],"from_domain":"ceo@victim.example"}"#;
        assert_eq!(
            fires(k, params, payload).as_deref(),
            Some(
                r#"{"attachment_sha256s":[],"body_sha256":"","rcpt_count":0,"rcpt_domain_set":[],"matched_headers":["body"],"matched_url_host":"pay.xn--pypal-4ve.example"}"#
            )
        );
        assert_eq!(fires(k, params, r#"{"urls":["https://paypal.example/"]}"#), None);
        assert_eq!(fires(k, params, r#"{"urls":"https://xn--a.example/"}"#), None);
        assert!(compile(k, &Json::parse("{}").unwrap()).unwrap().owns_evidence());
    }

    #[test]
    fn open_relay_mass_mailing_and_kits() {
        let k = "lifter:email_open_relay";
        let params = r#"{"rcpt_threshold":10,"require_foreign_from":true}"#;
        let relayed = r#"{"rcpt_count":24,"from_domain":"ceo@Victim.example","mail_from_domain":"bulk.example","rcpt_domains":["B.example","a.example"]}"#;
        assert_eq!(
            fires(k, params, relayed).as_deref(),
            Some(
                r#"{"attachment_sha256s":[],"body_sha256":"","rcpt_count":24,"rcpt_domain_set":["a.example","b.example"],"matched_headers":["From","Mail-From"]}"#
            )
        );
        assert!(fires(
            k,
            params,
            r#"{"rcpt_count":24,"from_domain":"x@bulk.example","mail_from_domain":"BULK.example"}"#
        )
        .is_none());
        assert!(
            fires(k, params, r#"{"rcpt_count":9,"from_domain":"a.example","mail_from_domain":"b.example"}"#).is_none()
        );
        assert!(fires(k, params, r#"{"rcpt_count":50,"from_domain":"a.example"}"#).is_none(), "no envelope sender");
        assert!(fires(k, r#"{"rcpt_threshold":10}"#, r#"{"rcpt_count":50}"#).is_some());
        let k = "lifter:email_mass_phish";
        assert!(fires(k, r#"{"rcpt_threshold":25}"#, r#"{"rcpt_count":25,"body_text":"Click here"}"#).is_some());
        assert!(fires(k, r#"{"rcpt_threshold":25}"#, r#"{"rcpt_count":25,"body_sha256":"ab"}"#).is_some());
        assert!(fires(k, r#"{"rcpt_threshold":25}"#, r#"{"rcpt_count":24,"body_text":"Click here"}"#).is_none());
        assert!(fires(k, r#"{"rcpt_threshold":25}"#, r#"{"rcpt_count":50}"#).is_none(), "no body");
        let k = "lifter:email_xmailer_kit";
        assert!(fires(k, "{}", r#"{"matched_kit":"kit-X"}"#).unwrap().contains(r#""matched_kit":"kit-X""#));
        assert!(!fires(k, "{}", r#"{"xmailer_kit_match":true,"x_mailer":"Gophish"}"#).unwrap().contains("matched_kit"));
        assert!(fires(k, "{}", r#"{"x_mailer":"Gophish"}"#).is_none());
    }

    #[test]
    fn sender_masquerade_signals_and_headers() {
        let k = "lifter:email_sender_masquerade";
        let all = r#"{"signals":["from_returnpath_mismatch","from_mailfrom_mismatch","dkim_fail","spf_fail"]}"#;
        let spoofed = r#"{"from_domain":"ceo@victim.example","return_path_domain":"evil.example","dkim_signed":false,"spf_pass":true}"#;
        let got = fires(k, all, spoofed).unwrap();
        assert!(got.contains(r#""matched_headers":["DKIM-Signature","From","Return-Path"]"#), "{got}");
        assert!(got.contains(r#""matched_signals":["from_returnpath_mismatch","dkim_fail"]"#), "{got}");
        assert!(fires(k, all, r#"{"from_domain":"a.example","return_path_domain":"A.example","dkim_signed":null}"#)
            .is_none());
        assert!(fires(k, r#"{"signals":["spf_fail"]}"#, spoofed).is_none(), "only enabled signals count");
        assert!(compile(k, &Json::parse(r#"{"signals":["bimi_fail"]}"#).unwrap()).is_err());
    }

    #[test]
    fn bec_needs_a_subject_and_a_body_keyword() {
        let k = "lifter:email_bec";
        let params = r#"{"subject_keywords":["urgent","wire"],"body_action_keywords":["send","transfer"]}"#;
        let bec = r#"{"subject":"URGENT wire transfer needed","body_text":"Please transfer and send today"}"#;
        let got = fires(k, params, bec).unwrap();
        assert!(got.contains(r#""matched_subject_kw":"urgent","matched_body_kw":"send""#), "{got}");
        assert!(fires(k, params, r#"{"subject":"urgent","body_text":"hello"}"#).is_none());
        assert!(fires(k, params, r#"{"subject":"hello","body_text":"send"}"#).is_none());
    }

    #[test]
    fn malicious_attachments_name_the_most_telling_trigger() {
        let k = "lifter:email_malicious_attachment";
        let all =
            r#"{"triggers":["office_macro","lnk","iso","img","protected_archive","html_smuggling","mal_hash_match"]}"#;
        let trigger = |payload: &str| {
            fires(k, all, payload).map(|e| Json::parse(&e).unwrap().get("matched_trigger").unwrap().to_json_string())
        };
        assert_eq!(trigger(r#"{"attachment_extensions":[".IMG","iso"]}"#).as_deref(), Some(r#""iso""#));
        assert_eq!(
            trigger(r#"{"attachment_extensions":["lnk"],"html_smuggling":true}"#).as_deref(),
            Some(r#""html_smuggling""#)
        );
        assert_eq!(
            trigger(r#"{"attachment_macros":true,"attachment_password_protected":true}"#).as_deref(),
            Some(r#""office_macro""#)
        );
        assert_eq!(
            trigger(r#"{"attachment_extensions":["iso"],"mal_hash_match":true}"#).as_deref(),
            Some(r#""mal_hash_match""#)
        );
        assert_eq!(trigger(r#"{"attachment_extensions":["pdf"],"html_smuggling":null}"#), None);
        assert!(fires(k, r#"{"triggers":["iso"]}"#, r#"{"attachment_extensions":["img"]}"#).is_none());
        assert!(compile(k, &Json::parse(r#"{"triggers":["exe"]}"#).unwrap()).is_err());
    }

    #[test]
    fn encoded_payloads_from_counts_or_from_the_body() {
        let k = "lifter:email_encoded_payload";
        let params = r#"{"min_bytes":4096,"encoding":"base64"}"#;
        let count = |payload: &str| {
            fires(k, params, payload)
                .map(|e| Json::parse(&e).unwrap().get("encoded_byte_count").unwrap().to_json_string())
        };
        assert_eq!(count(r#"{"body_text":"x","body_base64_bytes":20000}"#).as_deref(), Some("20000"));
        assert_eq!(count(r#"{"body_base64_bytes":20000}"#), None, "no body, nothing embedded");
        let blob = format!(r#"{{"body_text":"see {}== attached","body_base64_bytes":100}}"#, "QUJD".repeat(1400));
        assert_eq!(count(&blob).as_deref(), Some("4201"));
        assert_eq!(count(r#"{"body_text":"short 1A1zP1eP5QGefi2DMPTfTL5SLmv7DivfNa","body_base64_bytes":10}"#), None);
        assert!(compile(k, &Json::parse(r#"{"encoding":"hex"}"#).unwrap()).is_err());
        assert_eq!(longest_base64_run("ab ".repeat(40).as_str()), 0);
        assert_eq!(longest_base64_run(&format!("{}=== x", "A".repeat(32))), 34);
    }

    #[test]
    fn canary_webdriver_fires_on_a_true_flag_only() {
        let k = "lifter:canary_webdriver";
        let params = r#"{"signal":"navigator.webdriver_true"}"#;
        assert_eq!(
            fires(k, params, r#"{"navigator_webdriver":true,"ua_signature":"HeadlessChrome/119"}"#).as_deref(),
            Some(r#"{"metric":"navigator_webdriver","matched_signature":"navigator.webdriver_true"}"#)
        );
        assert_eq!(fires(k, params, r#"{"navigator_webdriver":false}"#), None);
        assert_eq!(fires(k, params, r#"{"navigator_webdriver":"true"}"#), None, "a string is not the flag");
        assert_eq!(fires(k, params, r#"{"navigator_webdriver":1}"#), None);
        assert_eq!(fires(k, params, r#"{"ua_signature":"HeadlessChrome/119"}"#), None);
        assert!(compile(k, &Json::parse(params).unwrap()).unwrap().owns_evidence());
    }

    #[test]
    fn canary_automation_hash_takes_the_first_truthy_tool() {
        let k = "lifter:canary_automation_hash";
        let params = r#"{"catalogues":["puppeteer","playwright","selenium","curl_impersonate"]}"#;
        assert_eq!(
            fires(k, params, r#"{"canvas_audio_hash_match":"puppeteer","canvas_hash":"c1"}"#).as_deref(),
            Some(r#"{"metric":"canvas_audio_hash","matched_signature":"puppeteer"}"#)
        );
        assert_eq!(
            fires(k, params, r#"{"canvas_audio_hash_match":"","matched_tool":"selenium"}"#).as_deref(),
            Some(r#"{"metric":"canvas_audio_hash","matched_signature":"selenium"}"#),
            "an empty match falls through to matched_tool"
        );
        assert_eq!(
            fires(k, params, r#"{"canvas_audio_hash_match":"firefox","matched_tool":"selenium"}"#),
            None,
            "a truthy first value decides, and firefox is not in the catalogues"
        );
        assert_eq!(fires(k, params, r#"{"canvas_audio_hash_match":7,"matched_tool":"selenium"}"#), None);
        assert_eq!(fires(k, params, r#"{"canvas_audio_hash_match":null,"matched_tool":""}"#), None);
        assert_eq!(fires(k, params, r#"{"canvas_hash":"c1"}"#), None);
        assert_eq!(
            fires(k, "{}", r#"{"matched_tool":"firefox"}"#).as_deref(),
            Some(r#"{"metric":"canvas_audio_hash","matched_signature":"firefox"}"#),
            "no catalogues: any tool"
        );
        assert!(compile(k, &Json::parse(r#"{"catalogues":"puppeteer"}"#).unwrap()).is_err());
    }

    #[test]
    fn canary_webrtc_leak_needs_the_geo_mismatch() {
        let k = "lifter:canary_webrtc_leak";
        let params = r#"{"require_geo_mismatch":true}"#;
        assert_eq!(
            fires(k, params, r#"{"webrtc_geo_mismatch":true,"webrtc_local_ip":"192.168.1.5"}"#).as_deref(),
            Some(r#"{"metric":"webrtc_geo_mismatch","matched_signature":"webrtc_private_vs_source_ip"}"#)
        );
        assert_eq!(fires(k, params, r#"{"webrtc_geo_mismatch":false,"webrtc_local_ip":"192.168.1.5"}"#), None);
        assert_eq!(fires(k, params, r#"{"webrtc_local_ip":"192.168.1.5"}"#), None);
        assert_eq!(fires(k, params, r#"{"webrtc_geo_mismatch":"yes"}"#), None);
    }

    #[test]
    fn canary_tz_mismatch_before_language_mismatch() {
        let k = "lifter:canary_tz_lang_mismatch";
        assert_eq!(
            fires(k, "{}", r#"{"tz_mismatch_zones":7,"lang_country_mismatch":true}"#).as_deref(),
            Some(r#"{"metric":"timezone_geo_mismatch","matched_signature":"tz_zones>=7"}"#)
        );
        assert_eq!(
            fires(k, "{}", r#"{"tz_mismatch_zones":3}"#).as_deref(),
            Some(r#"{"metric":"timezone_geo_mismatch","matched_signature":"tz_zones>=3"}"#),
            "the bound is inclusive"
        );
        assert_eq!(
            fires(k, "{}", r#"{"tz_mismatch_zones":2,"lang_country_mismatch":true}"#).as_deref(),
            Some(r#"{"metric":"language_country_mismatch","matched_signature":"lang_vs_source_country"}"#)
        );
        assert_eq!(
            fires(k, "{}", r#"{"tz_mismatch_zones":5.0,"lang_country_mismatch":true}"#).as_deref(),
            Some(r#"{"metric":"language_country_mismatch","matched_signature":"lang_vs_source_country"}"#),
            "a float is not a Python int"
        );
        assert_eq!(fires(k, "{}", r#"{"tz_mismatch_zones":"9"}"#), None);
        assert_eq!(fires(k, "{}", r#"{"tz_mismatch_zones":true,"lang_country_mismatch":false}"#), None);
        assert_eq!(fires(k, "{}", r#"{"tz_mismatch_zones":2}"#), None);
    }

    #[test]
    fn canary_platform_before_webgl_inconsistency() {
        let k = "lifter:canary_platform_inconsistency";
        assert_eq!(
            fires(k, "{}", r#"{"platform_ua_inconsistent":true,"ua_webgl_mismatch":true}"#).as_deref(),
            Some(r#"{"metric":"platform_ua_mismatch","matched_signature":"navigator.platform_vs_userAgent"}"#)
        );
        assert_eq!(
            fires(k, "{}", r#"{"platform_ua_inconsistent":false,"ua_webgl_mismatch":true}"#).as_deref(),
            Some(r#"{"metric":"ua_webgl_mismatch","matched_signature":"userAgent_vs_webgl_renderer"}"#)
        );
        assert_eq!(fires(k, "{}", r#"{"platform_ua_inconsistent":false,"ua_webgl_mismatch":false}"#), None);
        assert_eq!(fires(k, "{}", r#"{"platform_ua_inconsistent":1,"navigator_platform":"Win32"}"#), None);
    }

    #[test]
    fn wrong_parameters_are_load_errors() {
        let err =
            compile("lifter:behavioral_beaconing", &Json::parse(r#"{"min_interval_s":"ten"}"#).unwrap()).unwrap_err();
        assert!(err.contains("min_interval_s"), "{err}");
        let err = compile("lifter:behavioral_k8s_sa_token", &Json::parse(r#"{"paths":["(a"]}"#).unwrap()).unwrap_err();
        assert!(err.contains("does not compile"), "{err}");
    }
}
