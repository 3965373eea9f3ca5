//! The fleet: attackers, identities, campaigns, and the habits each campaign shares.
//!
//! Everything about an entity is a function of (seed, index): its uuid (v5 under a
//! namespace of the seed), its address, its identity and campaign, whether its row comes
//! late. Only the indexes the event stream searches by are materialised (members of each
//! campaign, identities that can be merged), so memory is linear in the fleet and
//! independent of the number of events.
//!
//! Identity merges always point from an identity to one of lower index in the same
//! campaign, in the tables as in `identity.merged` events, so no sequence of merges, replays
//! and unmerges can form a `merged_into` cycle (which a run reports as `merge_cycle`).

use std::fmt::Write as _;

use uuid::Uuid;

use super::rng::{draw, Rng};

/// Attackers are numbered into 100.64.0.0/10, which holds this many addresses.
pub const MAX_ATTACKERS: u64 = 1 << 22;
/// Identities and campaigns are indexed by `u32`.
pub const MAX_GROUPS: u64 = u32::MAX as u64;

/// Purposes of [`draw`]: one per trait, so traits are independent of each other.
mod purpose {
    pub const IDENTITY: u64 = 1;
    pub const NO_IDENTITY: u64 = 2;
    pub const CAMPAIGN: u64 = 3;
    pub const NO_CAMPAIGN: u64 = 4;
    pub const LATE: u64 = 5;
    pub const REVEAL: u64 = 6;
    pub const IPV6: u64 = 7;
    pub const STYLE: u64 = 8;
    pub const LONE_STYLE: u64 = 9;
    pub const IP_OFFSET: u64 = 10;
    pub const TABLE_MERGE: u64 = 11;
    pub const CAMPAIGN_MERGE: u64 = 12;
    pub const INTEL_ROW: u64 = 13;
}

/// Attackers without an identity (DECNET's corpus: about one in eight).
const NO_IDENTITY_PERMILLE: u64 = 130;
/// Identities without a campaign.
const NO_CAMPAIGN_PERMILLE: u64 = 50;
/// Attackers on IPv6 addresses.
const IPV6_PERMILLE: u64 = 40;
/// Identity rows that arrive already merged into another identity.
const TABLE_MERGE_PERMILLE: u64 = 30;
/// Campaign rows that arrive merged into another campaign.
const CAMPAIGN_MERGE_PERMILLE: u64 = 40;
/// Attackers with a `decnet.attacker_intel` row in the tables.
pub const INTEL_ROW_PERMILLE: u64 = 400;

/// A uuid's text, kept on the stack.
#[derive(Clone, Copy)]
pub struct UuidText([u8; 36]);

impl UuidText {
    fn of(uuid: Uuid) -> UuidText {
        let mut text = [0u8; 36];
        uuid.hyphenated().encode_lower(&mut text);
        UuidText(text)
    }

    pub fn as_str(&self) -> &str {
        // `encode_lower` writes ASCII hex digits and hyphens only.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// An address's text, kept on the stack.
#[derive(Clone, Copy)]
pub struct IpText {
    bytes: [u8; 39],
    len: u8,
}

impl IpText {
    fn of(args: std::fmt::Arguments<'_>) -> IpText {
        let mut text = String::with_capacity(39);
        let _ = text.write_fmt(args);
        let mut bytes = [0u8; 39];
        let len = text.len().min(39);
        bytes[..len].copy_from_slice(&text.as_bytes()[..len]);
        IpText { bytes, len: len as u8 }
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

/// Command families a campaign's sessions draw from (see `commands`).
pub const FAMILIES: usize = 11;

/// A framework whose default TLS / SSH fingerprints a campaign's C2 servers show.
#[derive(Clone, Debug)]
pub struct Framework {
    pub name: String,
    pub jarm: String,
    pub hassh: Option<String>,
}

/// What the attackers of one campaign share: infrastructure, tools and habits.
#[derive(Clone, Debug)]
pub struct Style {
    /// Where payloads are fetched from: a host name or an address.
    pub dl_host: String,
    /// The reverse-shell / C2 address and port.
    pub c2_ip: String,
    pub c2_port: u16,
    /// 0 wget, 1 curl, 2 busybox wget.
    pub fetch: u8,
    pub drop_dir: &'static str,
    pub payload: &'static str,
    pub persist_user: &'static str,
    pub service_name: &'static str,
    pub pool: String,
    pub wallet: String,
    pub ssh_key: String,
    /// Relative weights of the command families.
    pub families: [u32; FAMILIES],
    /// The campaign's own secrets, tried by all its attackers (credential reuse).
    pub passwords: [&'static str; 3],
    pub scanner_ua: &'static str,
    /// The campaign's TLS / SSH client fingerprints (shared infrastructure).
    pub jarm: String,
    pub hassh: String,
    pub framework: Option<Framework>,
    pub email: EmailStyle,
}

/// A campaign's mail: look-alike sender domains, a kit, a message body reused across its runs.
#[derive(Clone, Debug)]
pub struct EmailStyle {
    pub from_domain: &'static str,
    pub mail_from_domain: String,
    pub x_mailer: Option<&'static str>,
    /// The kit a producer recognised from the X-Mailer header, when any.
    pub kit: Option<&'static str>,
    pub subject: usize,
    pub body: usize,
    /// The body simhash every message of the campaign's runs shares.
    pub simhash: String,
    pub link_host: String,
    pub attachment: &'static str,
}

/// Writes `n` random lowercase hex digits.
pub fn push_hex(out: &mut String, rng: &mut Rng, n: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for _ in 0..n {
        out.push(char::from(DIGITS[rng.below(16) as usize]));
    }
}

fn hex(rng: &mut Rng, n: usize) -> String {
    let mut s = String::with_capacity(n);
    push_hex(&mut s, rng, n);
    s
}

/// Base58 without 0, O, I and l (Bitcoin's and Monero's alphabet).
pub const BASE58: &[u8] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

fn base58(rng: &mut Rng, n: usize) -> String {
    (0..n).map(|_| char::from(rng.pick(BASE58))).collect()
}

const DROP_DIRS: &[&str] = &["/tmp", "/var/tmp", "/dev/shm", "/tmp/.ICE-unix", "/var/run/.cache", "/usr/local/.lib"];
const PAYLOADS: &[&str] = &["bins.sh", "x86_64", "update.sh", "kx.sh", "sysupd", ".s", "dbus-helper", "ntpd2"];
const PERSIST_USERS: &[&str] = &["sysadm", "backup2", "svc_mon", "nagios1", "ftpuser", "support"];
const SERVICE_NAMES: &[&str] = &["dbus-helper", "netmond", "sys-update", "kworkerd", "rsyslog2"];
const TLDS: &[&str] = &["example.net", "example.org", "example.com"];
const HOST_WORDS: &[&str] = &["cdn", "update", "mirror", "static", "files", "repo", "dl", "img"];
/// Passwords campaigns keep for themselves (on top of the common ones every bot tries).
const CAMPAIGN_PASSWORDS: &[&str] = &[
    "Zx9!mirai",
    "Qwerty@2024",
    "s3rv3r!!",
    "P4ssw0rd#1",
    "h0neyp0t?",
    "Adm1n2026",
    "Summer2025!",
    "r00tme",
    "Welc0me#",
    "tr0ub4dor",
    "K1ngK0ng",
    "Xmr$pool",
    "b0tnet99",
    "Changeme!1",
    "Ubnt#2025",
    "OraDB!23",
];
const SCANNER_UAS: &[&str] = &[
    "Mozilla/5.00 (Nikto/2.5.0) (Evasions:None) (Test:004711)",
    "sqlmap/1.8.3#stable (https://sqlmap.org)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Nuclei - Open-source project (github.com/projectdiscovery/nuclei)",
    "gobuster/3.6",
    "Mozilla/5.0 zgrab/0.x",
    "WPScan v3.8.25 (https://wpscan.com/wordpress-security-scanner)",
    "Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)",
    "Fuzz Faster U Fool v2.1.0",
    "masscan/1.3 (https://github.com/robertdavidgraham/masscan)",
];
const FROM_DOMAINS: &[&str] = &[
    "paypa1-billing.example",
    "micros0ft-support.example",
    "docu-sign.example.net",
    "dhl-parcel.example.org",
    "victim.example",
    "corp-payroll.example",
    "amaz0n-orders.example",
    "office365-mail.example.com",
];
const X_MAILERS: &[(&str, Option<&str>)] = &[
    ("PHPMailer 6.9.1", None),
    ("Microsoft Outlook 16.0", None),
    ("Leaf PHPMailer 2.8", Some("leaf_phpmailer")),
    ("Gammadyne Mailer", Some("gammadyne")),
    ("Apple Mail (2.3774)", None),
    ("King Phisher 1.16", Some("king_phisher")),
];
const ATTACHMENTS: &[&str] = &["docm", "xlsm", "lnk", "iso", "img", "zip", "pdf", "html", "one"];

/// The C2 frameworks of the project's fingerprint catalogue, with their fingerprints.
fn frameworks() -> Vec<Framework> {
    let catalogue: serde_json::Value =
        serde_json::from_str(include_str!("../../dataflows/data/c2_fingerprints.json")).unwrap_or_default();
    let entries = |name: &str| -> Vec<(String, String)> {
        catalogue[name]
            .as_object()
            .map(|m| m.iter().filter_map(|(h, f)| Some((h.clone(), f.as_str()?.to_string()))).collect())
            .unwrap_or_default()
    };
    let hassh = entries("hassh");
    entries("jarm")
        .into_iter()
        .map(|(jarm, name)| {
            let hassh = hassh.iter().find(|(_, f)| *f == name).map(|(h, _)| h.clone());
            Framework { name, jarm, hassh }
        })
        .collect()
}

impl Style {
    fn new(mut rng: Rng, frameworks: &[Framework]) -> Style {
        let rng = &mut rng;
        let dl_host = if rng.chance(500) {
            format!("{}-{}.{}", rng.pick(HOST_WORDS), hex(rng, 4), rng.pick(TLDS))
        } else {
            format!("{}.{}", rng.pick(&["203.0.113", "198.51.100", "192.0.2"]), rng.range(2, 254))
        };
        // Baseline habits, then two specialities that set the campaign apart.
        let mut families = [45, 14, 14, 4, 3, 8, 4, 2, 3, 3, 2];
        for _ in 0..2 {
            families[rng.range(1, FAMILIES as u64) as usize] += rng.range(12, 26) as u32;
        }
        let mut passwords = [""; 3];
        for p in &mut passwords {
            *p = rng.pick(CAMPAIGN_PASSWORDS);
        }
        let (x_mailer, kit) = if rng.chance(300) {
            (None, None)
        } else {
            let (mailer, kit) = rng.pick(X_MAILERS);
            (Some(mailer), kit)
        };
        let link_host = if rng.chance(200) {
            format!("xn--{}-{}.example", hex(rng, 6), hex(rng, 3))
        } else {
            format!("{}-{}.{}", rng.pick(&["login", "secure", "account", "verify"]), hex(rng, 4), rng.pick(TLDS))
        };
        Style {
            dl_host,
            c2_ip: format!("203.0.113.{}", rng.range(2, 254)),
            c2_port: rng.pick(&[4444, 1337, 9001, 443, 8080, 53, 31337]),
            fetch: rng.below(3) as u8,
            drop_dir: rng.pick(DROP_DIRS),
            payload: rng.pick(PAYLOADS),
            persist_user: rng.pick(PERSIST_USERS),
            service_name: rng.pick(SERVICE_NAMES),
            pool: format!("pool-{}.example.org:{}", hex(rng, 4), rng.pick(&[3333, 4444, 5555, 14444])),
            wallet: format!("4{}{}", rng.pick(&['6', '7', '8', '9', 'A', 'B']), base58(rng, 93)),
            ssh_key: format!("ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQ{} op@{}", base58(rng, 48), hex(rng, 6)),
            families,
            passwords,
            scanner_ua: rng.pick(SCANNER_UAS),
            jarm: hex(rng, 62),
            hassh: hex(rng, 32),
            framework: (rng.chance(250) && !frameworks.is_empty())
                .then(|| frameworks[rng.below(frameworks.len() as u64) as usize].clone()),
            email: EmailStyle {
                from_domain: rng.pick(FROM_DOMAINS),
                mail_from_domain: format!("mx{}.{}", rng.below(100), rng.pick(TLDS)),
                x_mailer,
                kit,
                subject: rng.below(1 << 16) as usize,
                body: rng.below(1 << 16) as usize,
                simhash: hex(rng, 16),
                link_host,
                attachment: rng.pick(ATTACHMENTS),
            },
        }
    }
}

/// The fleet's structure.
pub struct Fleet {
    pub seed: u64,
    pub attackers: u64,
    pub identities: u64,
    pub campaigns: u64,
    late_permille: u32,
    namespace: Uuid,
    ip_offset: u64,
    /// One style per campaign (one for the whole fleet without campaigns).
    pub styles: Vec<Style>,
    /// Attackers by style, for partners of one campaign.
    members: Vec<Vec<u32>>,
    /// Identities by group (campaign, then one group for those without), ascending.
    identity_groups: Vec<Vec<u32>>,
    /// Each identity's position in its group.
    identity_pos: Vec<u32>,
    /// Identities with a lower-index identity in their group: those that can be merged.
    mergeable: Vec<u32>,
    /// Canary token ids.
    pub tokens: Vec<String>,
}

impl Fleet {
    pub fn new(seed: u64, attackers: u64, identities: u64, campaigns: u64, late_permille: u32) -> Fleet {
        let namespace = Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("ttpflow:generate:{seed}").as_bytes());
        let frameworks = frameworks();
        let styles = (0..campaigns.max(1)).map(|c| Style::new(Rng::new(draw(seed, purpose::STYLE, c)), &frameworks));
        let mut fleet = Fleet {
            seed,
            attackers,
            identities,
            campaigns,
            late_permille,
            namespace,
            ip_offset: draw(seed, purpose::IP_OFFSET, 0) % MAX_ATTACKERS,
            styles: styles.collect(),
            members: Vec::new(),
            identity_groups: vec![Vec::new(); campaigns as usize + 1],
            identity_pos: Vec::with_capacity(identities as usize),
            mergeable: Vec::new(),
            tokens: Vec::new(),
        };
        for j in 0..identities {
            let group = fleet.identity_campaign(j).unwrap_or(campaigns) as usize;
            let members = &mut fleet.identity_groups[group];
            fleet.identity_pos.push(members.len() as u32);
            if !members.is_empty() {
                fleet.mergeable.push(j as u32);
            }
            members.push(j as u32);
        }
        let mut members = vec![Vec::new(); fleet.styles.len()];
        for i in 0..attackers {
            members[fleet.style_of(i)].push(i as u32);
        }
        fleet.members = members;
        let tokens = (8 + fleet.styles.len() as u64 / 2).min(256);
        fleet.tokens = (0..tokens).map(|k| format!("tok-{}", fleet.uuid("token", k).as_str())).collect();
        fleet
    }

    fn uuid(&self, kind: &str, index: u64) -> UuidText {
        UuidText::of(Uuid::new_v5(&self.namespace, format!("{kind}:{index}").as_bytes()))
    }

    pub fn attacker_uuid(&self, i: u64) -> UuidText {
        self.uuid("attacker", i)
    }

    pub fn identity_uuid(&self, j: u64) -> UuidText {
        self.uuid("identity", j)
    }

    pub fn campaign_uuid(&self, c: u64) -> UuidText {
        self.uuid("campaign", c)
    }

    /// The attacker's address: unique per index, scattered over 100.64.0.0/10 (a few
    /// attackers on IPv6, in 2001:db8::/32).
    pub fn attacker_ip(&self, i: u64) -> IpText {
        if draw(self.seed, purpose::IPV6, i) % 1000 < IPV6_PERMILLE {
            return IpText::of(format_args!("2001:db8:{:x}:{:x}::{:x}", i >> 32, (i >> 16) & 0xffff, i & 0xffff));
        }
        // An odd multiplier is a bijection modulo 2^22.
        let n = (i.wrapping_mul(0x9e37_79b1).wrapping_add(self.ip_offset)) % MAX_ATTACKERS;
        IpText::of(format_args!("100.{}.{}.{}", 64 + (n >> 16), (n >> 8) & 0xff, n & 0xff))
    }

    /// An address no attacker row ever claims (198.18.0.0/15, the benchmarking range).
    pub fn orphan_ip(rng: &mut Rng) -> IpText {
        let n = rng.below(1 << 17);
        IpText::of(format_args!("198.{}.{}.{}", 18 + (n >> 16), (n >> 8) & 0xff, n & 0xff))
    }

    pub fn identity_of(&self, i: u64) -> Option<u64> {
        if self.identities == 0 || draw(self.seed, purpose::NO_IDENTITY, i) % 1000 < NO_IDENTITY_PERMILLE {
            return None;
        }
        Some(draw(self.seed, purpose::IDENTITY, i) % self.identities)
    }

    /// The identity's campaign; campaigns are skewed (a few large, many small).
    pub fn identity_campaign(&self, j: u64) -> Option<u64> {
        if self.campaigns == 0 || draw(self.seed, purpose::NO_CAMPAIGN, j) % 1000 < NO_CAMPAIGN_PERMILLE {
            return None;
        }
        let u = (draw(self.seed, purpose::CAMPAIGN, j) >> 11) as f64 / (1u64 << 53) as f64;
        Some(((u * u * self.campaigns as f64) as u64).min(self.campaigns - 1))
    }

    /// The style an attacker follows: its campaign's, else one of its own choosing.
    pub fn style_of(&self, i: u64) -> usize {
        let campaign = self.identity_of(i).and_then(|j| self.identity_campaign(j));
        campaign.unwrap_or_else(|| draw(self.seed, purpose::LONE_STYLE, i) % self.styles.len() as u64) as usize
    }

    /// Another attacker of the same style (the attacker itself when it is alone).
    pub fn partner(&self, i: u64, rng: &mut Rng) -> u64 {
        let members = &self.members[self.style_of(i)];
        if members.is_empty() {
            i
        } else {
            u64::from(rng.pick(members))
        }
    }

    /// Whether the attacker's row comes among the events rather than in the tables; the
    /// busiest percent of attackers (the lowest indexes) never does.
    pub fn is_late(&self, i: u64) -> bool {
        i >= (self.attackers / 100).max(1) && draw(self.seed, purpose::LATE, i) % 1000 < u64::from(self.late_permille)
    }

    /// The late attackers with the event index before which each one's row is written, in order.
    pub fn late_reveals(&self, events: u64) -> Vec<(u64, u32)> {
        if events == 0 {
            return Vec::new();
        }
        let mut reveals: Vec<(u64, u32)> = (0..self.attackers)
            .filter(|&i| self.is_late(i))
            .map(|i| (draw(self.seed, purpose::REVEAL, i) % events, i as u32))
            .collect();
        reveals.sort_unstable();
        reveals
    }

    /// An identity row's `merged_into_uuid` target, for a few identities.
    pub fn table_merge(&self, j: u64) -> Option<u64> {
        let pos = u64::from(self.identity_pos[j as usize]);
        (pos > 0 && draw(self.seed, purpose::TABLE_MERGE, j) % 1000 < TABLE_MERGE_PERMILLE)
            .then(|| self.lower_in_group(j, draw(self.seed, purpose::TABLE_MERGE, !j) % pos))
    }

    /// A campaign row's `merged_into_uuid` target (always a lower index), for a few campaigns.
    pub fn campaign_merge(&self, c: u64) -> Option<u64> {
        (c > 0 && draw(self.seed, purpose::CAMPAIGN_MERGE, c) % 1000 < CAMPAIGN_MERGE_PERMILLE)
            .then(|| draw(self.seed, purpose::CAMPAIGN_MERGE, !c) % c)
    }

    fn lower_in_group(&self, j: u64, pos: u64) -> u64 {
        let group = self.identity_campaign(j).unwrap_or(self.campaigns) as usize;
        u64::from(self.identity_groups[group][pos as usize])
    }

    /// A (loser, winner) pair for `identity.merged`: the winner has the lower index.
    pub fn merge_pair(&self, rng: &mut Rng) -> Option<(u64, u64)> {
        if self.mergeable.is_empty() {
            return None;
        }
        let loser = u64::from(rng.pick(&self.mergeable));
        let pos = u64::from(self.identity_pos[loser as usize]);
        Some((loser, self.lower_in_group(loser, rng.below(pos))))
    }

    /// Whether the attacker has a `decnet.attacker_intel` row in the tables.
    pub fn has_intel_row(&self, i: u64) -> bool {
        draw(self.seed, purpose::INTEL_ROW, i) % 1000 < INTEL_ROW_PERMILLE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn addresses_and_uuids_are_unique() {
        let fleet = Fleet::new(3, 5000, 300, 12, 20);
        let ips: BTreeSet<String> = (0..5000).map(|i| fleet.attacker_ip(i).as_str().to_string()).collect();
        assert_eq!(ips.len(), 5000);
        assert!(ips.iter().all(|ip| ip.parse::<std::net::IpAddr>().is_ok()), "every address parses");
        assert!(ips.iter().any(|ip| ip.contains(':')) && ips.iter().any(|ip| ip.starts_with("100.")));
        let uuids: BTreeSet<String> = (0..5000).map(|i| fleet.attacker_uuid(i).as_str().to_string()).collect();
        assert_eq!(uuids.len(), 5000);
        assert_ne!(fleet.attacker_uuid(0).as_str(), Fleet::new(4, 1, 0, 0, 0).attacker_uuid(0).as_str());
        let mut rng = Rng::new(1);
        assert!((0..100).all(|_| !ips.contains(Fleet::orphan_ip(&mut rng).as_str())));
    }

    #[test]
    fn merges_point_to_lower_identities_of_the_same_campaign() {
        let fleet = Fleet::new(5, 100, 400, 9, 0);
        let mut rng = Rng::new(2);
        for _ in 0..1000 {
            let (loser, winner) = fleet.merge_pair(&mut rng).expect("400 identities in 9 campaigns can merge");
            assert!(winner < loser);
            assert_eq!(fleet.identity_campaign(winner), fleet.identity_campaign(loser));
        }
        let merged: Vec<_> = (0..400).filter_map(|j| fleet.table_merge(j).map(|w| (j, w))).collect();
        assert!(!merged.is_empty());
        assert!(merged.iter().all(|&(j, w)| w < j && fleet.identity_campaign(w) == fleet.identity_campaign(j)));
        assert!(Fleet::new(5, 10, 1, 1, 0).merge_pair(&mut rng).is_none(), "one identity has nothing to merge with");
    }

    #[test]
    fn campaigns_share_styles_and_late_attackers_spread_over_the_run() {
        let fleet = Fleet::new(7, 2000, 200, 10, 50);
        for i in 0..2000 {
            let partner = fleet.partner(i, &mut Rng::new(i));
            assert_eq!(fleet.style_of(partner), fleet.style_of(i));
        }
        let reveals = fleet.late_reveals(10_000);
        assert!((50..150).contains(&reveals.len()), "about 5% of 2000: {}", reveals.len());
        assert!(reveals.windows(2).all(|w| w[0] <= w[1]));
        assert!(reveals.iter().all(|&(at, i)| at < 10_000 && u64::from(i) >= 20));
        assert!(Fleet::new(7, 2000, 200, 10, 0).late_reveals(10_000).is_empty());
        let sizes: Vec<usize> =
            (0..10).map(|c| (0..200).filter(|&j| fleet.identity_campaign(j) == Some(c)).count()).collect();
        assert!(sizes[0] > sizes[9], "campaigns are skewed: {sizes:?}");
    }
}
