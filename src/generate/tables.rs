//! Table records: `decnet.campaigns`, `decnet.attacker_identities`, `decnet.attackers` and
//! `decnet.attacker_intel`, and the intel profile an attacker's enrichments are drawn from.
//!
//! Campaigns come first, then identities, then attackers, then intel rows: the order a
//! database dump of DECNET's tables would list them, parents before children, though the
//! job does not need it. Late attackers' rows are not here; the event stream writes them.

use std::io::{self, Write};

use super::fleet::Fleet;
use super::out::Obj;
use super::rng::{draw, Rng};

/// [`draw`] purpose of an attacker's intel profiles.
const INTEL_PROFILE: u64 = 101;

/// Writes a table record line: `{"topic":…,"key":…,"value":{…}}`.
fn record(out: &mut Vec<u8>, topic: &str, key: &str, value: impl FnOnce(&mut Obj<'_>)) {
    let mut o = Obj::open(out);
    o.str("topic", topic).str("key", key);
    let mut v = o.obj("value");
    value(&mut v);
    v.close();
    o.close();
    out.push(b'\n');
}

/// The attacker's `decnet.attackers` record.
pub fn attacker_row(fleet: &Fleet, i: u64, out: &mut Vec<u8>) {
    let uuid = fleet.attacker_uuid(i);
    let identity = fleet.identity_of(i).map(|j| fleet.identity_uuid(j));
    record(out, "decnet.attackers", uuid.as_str(), |v| {
        v.str("uuid", uuid.as_str()).str("ip", fleet.attacker_ip(i).as_str());
        v.opt_str("identity_id", identity.as_ref().map(|u| u.as_str()));
    });
}

/// Writes every table record of the fleet into `w` (buffered by the caller); returns the
/// number of lines.
pub fn write(fleet: &Fleet, w: &mut impl Write) -> io::Result<u64> {
    let mut lines = 0;
    let mut out = Vec::with_capacity(1024);
    let mut flush = |out: &mut Vec<u8>| -> io::Result<()> {
        lines += 1;
        w.write_all(out)?;
        out.clear();
        Ok(())
    };
    for c in 0..fleet.campaigns {
        let uuid = fleet.campaign_uuid(c);
        let merged = fleet.campaign_merge(c).map(|m| fleet.campaign_uuid(m));
        record(&mut out, "decnet.campaigns", uuid.as_str(), |v| {
            v.str("uuid", uuid.as_str()).opt_str("merged_into_uuid", merged.as_ref().map(|u| u.as_str()));
        });
        flush(&mut out)?;
    }
    for j in 0..fleet.identities {
        let uuid = fleet.identity_uuid(j);
        let campaign = fleet.identity_campaign(j).map(|c| fleet.campaign_uuid(c));
        let merged = fleet.table_merge(j).map(|m| fleet.identity_uuid(m));
        record(&mut out, "decnet.attacker_identities", uuid.as_str(), |v| {
            v.str("uuid", uuid.as_str()).opt_str("campaign_id", campaign.as_ref().map(|u| u.as_str()));
            v.opt_str("merged_into_uuid", merged.as_ref().map(|u| u.as_str()));
        });
        flush(&mut out)?;
    }
    for i in (0..fleet.attackers).filter(|&i| !fleet.is_late(i)) {
        attacker_row(fleet, i, &mut out);
        flush(&mut out)?;
    }
    for i in (0..fleet.attackers).filter(|&i| !fleet.is_late(i) && fleet.has_intel_row(i)) {
        let uuid = fleet.attacker_uuid(i);
        let intel = Intel::of(fleet, i, 0);
        // A row holds the providers that answered: AbuseIPDB always, the others sometimes.
        let mut rng = Rng::new(draw(fleet.seed, INTEL_PROFILE, !i));
        let (greynoise, feodo, threatfox) = (rng.chance(500), rng.chance(300), rng.chance(300));
        record(&mut out, "decnet.attacker_intel", uuid.as_str(), |v| {
            intel.write_abuseipdb(v);
            v.str("attacker_ip", fleet.attacker_ip(i).as_str()).str("attacker_uuid", uuid.as_str());
            if feodo {
                intel.write_feodo(v);
            }
            if greynoise {
                intel.write_greynoise(v);
            }
            if threatfox {
                intel.write_threatfox(v);
            }
        });
        flush(&mut out)?;
    }
    Ok(lines)
}

const CATEGORIES: &[u64] = &[3, 4, 5, 7, 9, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23];
const GREYNOISE_TAGS: &[&str] =
    &["tor_exit_node", "ssh_bruteforcer", "web_crawler", "cobalt_strike", "mirai", "zmap_client", "sliver"];
const MALWARE_FAMILIES: &[&str] = &["Dridex", "Emotet", "QakBot", "TrickBot", "Pikabot"];
const THREATFOX_FAMILIES: &[&str] = &["QakBot", "AsyncRAT", "Cobalt Strike", "Mirai"];
const THREAT_TYPES: &[&str] = &["botnet_cc", "payload_delivery", "payload", "cc_skimming"];
const IOC_TYPES: &[&str] = &["ip:port", "domain", "url"];

/// One of an attacker's intel profiles: what the providers say about its address.
pub struct Intel {
    categories: Vec<u64>,
    score: Option<u64>,
    verdict: &'static str,
    greynoise_class: Option<&'static str>,
    greynoise_name: Option<&'static str>,
    greynoise_tags: Vec<&'static str>,
    feodo_listed: Option<bool>,
    feodo_family: Option<&'static str>,
    threatfox_listed: Option<bool>,
    ioc_types: Vec<&'static str>,
    threatfox_families: Vec<&'static str>,
    threat_types: Vec<&'static str>,
}

/// Up to `n` distinct items of `pool`, in pool order.
fn some_of<T: Copy + PartialEq>(rng: &mut Rng, pool: &[T], n: u64) -> Vec<T> {
    let mut picked: Vec<T> = Vec::new();
    for _ in 0..n {
        let item = rng.pick(pool);
        if !picked.contains(&item) {
            picked.push(item);
        }
    }
    picked.sort_by_key(|item| pool.iter().position(|p| p == item));
    picked
}

impl Intel {
    /// Profile `version` of attacker `i`: enrichments of one attacker vary among a few
    /// profiles, as providers' answers change over days.
    pub fn of(fleet: &Fleet, i: u64, version: u64) -> Intel {
        let mut rng = Rng::new(draw(fleet.seed, INTEL_PROFILE, i) ^ version);
        let rng = &mut rng;
        let score = (!rng.chance(100)).then(|| rng.pick(&[0, 0, 12, 25, 40, 60, 80, 95, 100]));
        let n = rng.below(5);
        let categories = some_of(rng, CATEGORIES, n);
        let greynoise_class = rng.pick(&[None, Some("benign"), Some("malicious"), Some("unknown"), Some("suspicious")]);
        let greynoise_name = rng.chance(150).then(|| rng.pick(&["Shodan.io", "Censys", "BinaryEdge"]));
        let n = rng.below(3);
        let greynoise_tags = some_of(rng, GREYNOISE_TAGS, n);
        let feodo_listed = rng.pick(&[None, Some(false), Some(false), Some(true)]);
        let feodo_family = (feodo_listed == Some(true)).then(|| rng.pick(MALWARE_FAMILIES));
        let threatfox_listed = rng.pick(&[None, Some(false), Some(true)]);
        let n = rng.below(3);
        let ioc_types = some_of(rng, IOC_TYPES, n);
        let n = rng.below(2);
        let threatfox_families = some_of(rng, THREATFOX_FAMILIES, n);
        let n = if threatfox_listed == Some(true) { rng.range(1, 3) } else { 0 };
        let threat_types = some_of(rng, THREAT_TYPES, n);
        let s = score.unwrap_or(0);
        let verdict = if s >= 75 || greynoise_class == Some("malicious") || feodo_listed == Some(true) {
            "malicious"
        } else if s >= 25 || greynoise_class == Some("suspicious") {
            "suspicious"
        } else if score.is_some() {
            "benign"
        } else {
            "unknown"
        };
        Intel {
            categories,
            score,
            verdict,
            greynoise_class,
            greynoise_name,
            greynoise_tags,
            feodo_listed,
            feodo_family,
            threatfox_listed,
            ioc_types,
            threatfox_families,
            threat_types,
        }
    }

    /// AbuseIPDB's fields and the aggregate verdict.
    pub fn write_abuseipdb(&self, o: &mut Obj<'_>) {
        o.u64s("abuseipdb_categories", self.categories.iter().copied());
        match self.score {
            Some(s) => o.u64("abuseipdb_score", s),
            None => o.null("abuseipdb_score"),
        };
        o.str("aggregate_verdict", self.verdict);
    }

    pub fn write_feodo(&self, o: &mut Obj<'_>) {
        match self.feodo_listed {
            Some(b) => o.bool("feodo_listed", b),
            None => o.null("feodo_listed"),
        };
        o.opt_str("feodo_malware_family", self.feodo_family);
    }

    pub fn write_greynoise(&self, o: &mut Obj<'_>) {
        o.opt_str("greynoise_classification", self.greynoise_class);
        o.opt_str("greynoise_name", self.greynoise_name);
        o.strs("greynoise_tags", self.greynoise_tags.iter().copied());
    }

    pub fn write_threatfox(&self, o: &mut Obj<'_>) {
        o.strs("threatfox_ioc_types", self.ioc_types.iter().copied());
        match self.threatfox_listed {
            Some(b) => o.bool("threatfox_listed", b),
            None => o.null("threatfox_listed"),
        };
        o.strs("threatfox_malware_families", self.threatfox_families.iter().copied());
        o.strs("threatfox_threat_types", self.threat_types.iter().copied());
    }
}
