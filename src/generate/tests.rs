//! Whole-generator tests: determinism, the topic mix, decoding, and the fleet's invariants.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use ttpflow_dataflows::decode::{decode, Decoded};
use ttpflow_dataflows::record::{Line, Pos};

use super::*;

/// Generates into memory: (tables, events, summary).
fn run(options: &Options) -> (Vec<u8>, Vec<u8>, Summary) {
    let (mut tables, mut events) = (Vec::new(), Vec::new());
    let summary = generate(options, (&mut tables, "tables"), (&mut events, "events")).expect("generates");
    (tables, events, summary)
}

fn lines(bytes: &[u8]) -> Vec<&str> {
    std::str::from_utf8(bytes).expect("UTF-8").lines().collect()
}

fn parse(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn small() -> Options {
    Options { events: 5000, attackers: 300, identities: 60, campaigns: 6, ..Options::default() }
}

#[test]
fn same_options_write_the_same_bytes_and_seeds_differ() {
    let (t1, e1, s1) = run(&small());
    let (t2, e2, s2) = run(&small());
    assert!(t1 == t2 && e1 == e2, "two runs with the same options differ");
    assert_eq!(s1.counts, s2.counts);
    let (t3, e3, _) = run(&Options { seed: 2, ..small() });
    assert_ne!(t1, t3);
    assert_ne!(e1, e3);
    assert_eq!(lines(&e1).len() as u64, 5000 + s1.counts.late_rows);
    assert_eq!(s1.bytes, (t1.len() + e1.len()) as u64);
}

#[test]
fn the_topic_mix_follows_decnets_corpus() {
    let (_, events, summary) = run(&Options::default());
    let mut topics: BTreeMap<String, u64> = BTreeMap::new();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for line in lines(&events) {
        let v = parse(line);
        let topic = v["topic"].as_str().unwrap();
        if topic.starts_with("decnet.") {
            continue;
        }
        let family = match topic.strip_prefix("canary.") {
            Some(rest) => format!("canary.*.{}", rest.rsplit('.').next().unwrap()),
            None => topic.to_string(),
        };
        *topics.entry(family).or_default() += 1;
        if topic == "attacker.fingerprinted" {
            *kinds.entry(v["type"].as_str().unwrap().to_string()).or_default() += 1;
        }
    }
    assert_eq!(topics.values().sum::<u64>(), summary.counts.events);
    let share = |t: &str| *topics.get(t).unwrap_or(&0) as f64 / summary.counts.events as f64 * 100.0;
    let canary = share("canary.*.triggered") + share("canary.*.placed") + share("canary.*.revoked");
    for (topic, expected, got) in [
        ("attacker.session.ended", 45.4, share("attacker.session.ended")),
        ("attacker.fingerprinted", 16.0, share("attacker.fingerprinted")),
        ("attacker.observed", 9.0, share("attacker.observed")),
        ("email.received", 8.5, share("email.received")),
        ("attacker.intel.enriched", 6.0, share("attacker.intel.enriched")),
        ("canary.*", 6.0, canary),
        ("credential.reuse.detected", 5.0, share("credential.reuse.detected")),
        ("identity.formed", 2.0, share("identity.formed")),
        ("identity.merged", 1.0, share("identity.merged")),
    ] {
        assert!((got - expected).abs() <= expected * 0.12 + 0.2, "{topic}: {got:.2}% of events, expected ~{expected}%");
    }
    for rare in ["identity.unmerged", "credential.captured", "identity.observation.linked", "canary.*.placed"] {
        assert!(topics.get(rare).is_some_and(|&n| n > 0), "{rare} appears: {topics:?}");
    }
    for kind in ["http_request", "auth_attempt", "hassh", "tcpfp", "ipv6_leak", "jarm", "http_fingerprint", "tls_cert"]
    {
        assert!(kinds.get(kind).is_some_and(|&n| n >= 40), "fingerprint kind {kind}: {kinds:?}");
    }
}

#[test]
fn every_line_decodes_and_malformed_lines_are_the_only_dead_letters() {
    for malformed in [0, 20] {
        let (tables, events, summary) = run(&Options { malformed_permille: malformed, ..small() });
        let mut dead = 0;
        for (offset, line) in lines(&tables).into_iter().chain(lines(&events)).enumerate() {
            let decoded = decode(Line {
                pos: Pos { ts: 0, input: 0, offset: offset as u64 },
                topic: None,
                text: Ok(line.to_string()),
            });
            if let Decoded::Dead(d) = decoded {
                assert!(malformed > 0, "line {offset} is a dead letter ({:?}: {}): {line}", d.reason, d.detail);
                dead += 1;
            }
        }
        assert_eq!(dead, summary.counts.malformed);
        assert_eq!(dead > 0, malformed > 0, "{dead} malformed lines at {malformed}‰");
    }
}

#[test]
fn events_reference_the_fleet_and_merges_never_form_cycles() {
    let options = Options { events: 20_000, orphan_permille: 5, ..small() };
    let (tables, events, summary) = run(&options);
    let (mut campaigns, mut identities, mut attackers) = (BTreeSet::new(), BTreeMap::new(), BTreeMap::new());
    let mut pointers: BTreeMap<String, String> = BTreeMap::new();
    for line in lines(&tables) {
        let v = parse(line);
        let value = &v["value"];
        match v["topic"].as_str().unwrap() {
            "decnet.campaigns" => {
                campaigns.insert(value["uuid"].as_str().unwrap().to_string());
            }
            "decnet.attacker_identities" => {
                identities.insert(value["uuid"].as_str().unwrap().to_string(), value["campaign_id"].clone());
                if let Some(into) = value["merged_into_uuid"].as_str() {
                    pointers.insert(value["uuid"].as_str().unwrap().to_string(), into.to_string());
                }
            }
            "decnet.attackers" => {
                let ip = value["ip"].as_str().unwrap().to_string();
                assert!(attackers.insert(ip, value["identity_id"].clone()).is_none(), "one row per address");
            }
            "decnet.attacker_intel" => {
                assert!(attackers.contains_key(value["attacker_ip"].as_str().unwrap()), "intel of a known attacker");
            }
            other => panic!("unexpected table {other}"),
        }
    }
    assert_eq!(campaigns.len(), 6);
    assert_eq!(identities.len(), 60);
    for campaign in identities.values().filter_map(Value::as_str) {
        assert!(campaigns.contains(campaign), "identity rows name existing campaigns");
    }
    let no_cycle = |pointers: &BTreeMap<String, String>| {
        pointers.keys().all(|start| {
            let (mut at, mut steps) = (start, 0);
            while let Some(next) = pointers.get(at) {
                at = next;
                steps += 1;
                if steps > pointers.len() {
                    return false;
                }
            }
            true
        })
    };
    assert!(no_cycle(&pointers));
    let (mut orphans, mut late_rows, mut merges, mut last_ts) = (0, 0, 0, 0.0f64);
    for line in lines(&events) {
        let v = parse(line);
        let topic = v["topic"].as_str().unwrap();
        let p = &v["payload"];
        if topic == "decnet.attackers" {
            late_rows += 1;
            attackers.insert(v["value"]["ip"].as_str().unwrap().to_string(), v["value"]["identity_id"].clone());
            continue;
        }
        last_ts = last_ts.max(v["ts"].as_f64().unwrap());
        if let Some(ip) = p["attacker_ip"].as_str().or(p["src_ip"].as_str()) {
            if ip.starts_with("198.18.") || ip.starts_with("198.19.") {
                orphans += 1;
            }
        }
        if let Some(uuid) = p["identity_uuid"].as_str() {
            assert!(identities.contains_key(uuid), "{topic} names an identity of the tables");
        }
        match topic {
            "identity.merged" => {
                merges += 1;
                pointers.insert(p["loser_uuid"].as_str().unwrap().into(), p["winner_uuid"].as_str().unwrap().into());
                assert!(no_cycle(&pointers), "a merge closed a cycle: {line}");
            }
            "identity.unmerged" => {
                if let Some(loser) = p["loser_uuid"].as_str() {
                    pointers.remove(loser);
                }
            }
            _ => {}
        }
    }
    assert!(merges > 100);
    assert_eq!(late_rows, summary.counts.late_rows);
    assert!(late_rows > 0, "some attacker rows come late");
    assert_eq!(attackers.len(), 300, "every attacker row is written once, early or late");
    assert_eq!(orphans, summary.counts.orphans);
    assert!((50..=150).contains(&orphans), "about 5‰ of 20000: {orphans}");
    // Four events per simulated second on average, from 2026-03-01.
    let span = last_ts - START_MICROS as f64 / 1e6;
    assert!((4500.0..5500.0).contains(&span), "20000 events span {span} s");
}

#[test]
fn replays_bursts_and_sessions_look_like_a_fleet() {
    let options = Options { events: 20_000, ..small() };
    let (_, events, summary) = run(&options);
    let all = lines(&events);
    let distinct: BTreeSet<&str> = all.iter().copied().collect();
    let repeated = all.len() - distinct.len();
    assert!(repeated as u64 <= summary.counts.replays && summary.counts.replays > 300, "{summary:?}");
    assert!(repeated > 300, "replays repeat earlier lines verbatim: {repeated}");
    let (mut strings, mut objects, mut texts) = (0, 0, BTreeSet::new());
    let mut failures: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in &all {
        let v = parse(line);
        let p = &v["payload"];
        if let Some(commands) = p["commands"].as_array() {
            for c in commands {
                match c {
                    Value::String(s) => {
                        strings += 1;
                        texts.insert(s.clone());
                    }
                    _ => {
                        objects += 1;
                        texts.insert(c["command_text"].as_str().unwrap().to_string());
                    }
                }
            }
        }
        if v["type"] == "auth_attempt" && p["fail_count"].is_null() && p["result"] == "fail" {
            failures.entry(p["attacker_ip"].as_str().unwrap().into()).or_default().push(v["ts"].as_f64().unwrap());
        }
    }
    assert!(strings > 100 && objects > 10 * strings, "mostly objects, some bare strings: {strings} / {objects}");
    for wanted in ["uname -a", "whoami", "cat /etc/passwd", "history -c", "ls"] {
        assert!(texts.contains(wanted), "sessions run {wanted:?}");
    }
    for fragment in ["wget", "curl", "authorized_keys", "crontab", "/dev/tcp/", "xmrig", "useradd"] {
        assert!(texts.iter().any(|t| t.contains(fragment)), "sessions run {fragment}");
    }
    // A burst: at least 8 failures from one address within 10 minutes.
    let bursts = failures.values().filter(|ts| ts.windows(8).any(|w| w[7] - w[0] < 600.0)).count();
    assert!(bursts >= 3, "credential bursts: {bursts}");
}

#[test]
fn bad_options_are_refused() {
    for options in [
        Options { attackers: 0, ..Options::default() },
        Options { attackers: MAX_ATTACKERS + 1, ..Options::default() },
        Options { replay_permille: 1001, ..Options::default() },
    ] {
        let err = generate(&options, (Vec::new(), "t"), (Vec::new(), "e")).unwrap_err();
        assert!(matches!(err, GenerateError::Options(_)), "{err}");
    }
    let (tables, events, summary) = run(&Options { identities: 0, campaigns: 0, events: 500, ..Options::default() });
    assert!(lines(&tables)
        .iter()
        .all(|l| l.contains("\"decnet.attackers\"") || l.contains("\"decnet.attacker_intel\"")));
    assert!(!String::from_utf8(events).unwrap().contains("\"identity."), "no identity events without identities");
    assert_eq!(summary.counts.events, 500);
}
