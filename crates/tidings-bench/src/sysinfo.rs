//! What the kernel says about the machine and about processes: the settings
//! that bound how many connections it can hold, socket and slab memory, and
//! per-process CPU time and resident memory.

use std::collections::BTreeMap;

use serde::Serialize;

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// The `Key: value kB` lines of `/proc/meminfo`, in KiB.
pub(crate) fn meminfo() -> BTreeMap<String, u64> {
    read("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let value = rest.split_whitespace().next()?.parse().ok()?;
            Some((key.to_owned(), value))
        })
        .collect()
}

/// `/proc/net/sockstat` as `"TCP inuse"` → value (memory figures in pages).
pub(crate) fn sockstat() -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for line in read("/proc/net/sockstat").unwrap_or_default().lines() {
        let Some((protocol, rest)) = line.split_once(':') else {
            continue;
        };
        let words: Vec<&str> = rest.split_whitespace().collect();
        for pair in words.chunks(2) {
            if let [key, value] = pair
                && let Ok(value) = value.parse()
            {
                out.insert(format!("{protocol} {key}"), value);
            }
        }
    }
    out
}

/// Bytes in a page, as `/proc/net/sockstat` and `tcp_mem` count them.
pub(crate) const PAGE: u64 = 4096;

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times.
pub(crate) fn clock_ticks() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// A process's parent pid and its user+system CPU time in ticks.
fn stat(pid: u32) -> Option<(u32, u64)> {
    let text = read(&format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces and parentheses: fields follow the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(0) ppid(1) … utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// User+system CPU ticks a process has used (0 once it is gone).
pub(crate) fn cpu_ticks(pid: u32) -> u64 {
    stat(pid).map_or(0, |(_, ticks)| ticks)
}

/// Resident memory of a process, in KiB (0 once it is gone).
pub(crate) fn rss_kib(pid: u32) -> u64 {
    crate::run::rss_kib(pid).unwrap_or(0)
}

/// The pids of this process's children.
pub(crate) fn children() -> Vec<u32> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|(ppid, _)| ppid == me))
        .collect()
}

/// One kernel setting that bounds the number of connections.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Setting {
    pub name: String,
    pub value: String,
    /// What the run needs, in words.
    pub needed: String,
    /// Whether the value is enough for the run.
    pub enough: bool,
    /// The outcome of trying to raise it, when it was not enough.
    pub change: Option<String>,
}

/// Below this many connections the default backlogs are plenty, and a
/// small run (CI) leaves the machine's settings alone.
const STORM: u64 = 10_000;

fn sysctl_path(name: &str) -> String {
    format!("/proc/sys/{}", name.replace('.', "/"))
}

fn numbers(name: &str) -> Option<Vec<u64>> {
    let text = read(&sysctl_path(name))?;
    text.split_whitespace().map(|v| v.parse().ok()).collect()
}

/// Tries `sysctl -w name=value` and says how it went.
fn try_set(name: &str, value: &str) -> String {
    match std::process::Command::new("sysctl")
        .arg("-w")
        .arg(format!("{name}={value}"))
        .output()
    {
        Ok(o) if o.status.success() => format!("raised to {value}"),
        Ok(o) => format!(
            "`sysctl -w {name}={value}` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("`sysctl` could not run: {e}"),
    }
}

/// Reads the settings that matter for `connections` client+server socket
/// pairs over `sources` source addresses, and tries to raise those below
/// what the run needs (reporting what fails: it may not be allowed here).
pub(crate) fn check_settings(connections: usize, sources: usize) -> Vec<Setting> {
    let n = connections as u64;
    let mut out = Vec::new();
    let mut push = |name: &str, needed: String, enough: Option<bool>, raise: Option<String>| {
        let value =
            read(&sysctl_path(name)).map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "));
        let Some(value) = value else {
            out.push(Setting {
                name: name.to_owned(),
                value: "absent".to_owned(),
                needed,
                enough: true,
                change: None,
            });
            return;
        };
        let enough = enough.unwrap_or(true);
        let change = (!enough).then(|| {
            raise.map_or_else(
                || "cannot be raised by a sysctl".to_owned(),
                |v| try_set(name, &v),
            )
        });
        out.push(Setting {
            name: name.to_owned(),
            value,
            needed,
            enough,
            change,
        });
    };

    // Each source address has its own ephemeral ports (a bound source
    // address reserves the port for that address only).
    let per_source = n.div_ceil(sources.max(1) as u64);
    let ports = numbers("net.ipv4.ip_local_port_range")
        .and_then(|v| Some(v.get(1)?.saturating_sub(*v.first()?) + 1));
    push(
        "net.ipv4.ip_local_port_range",
        format!("≥ {per_source} ports (connections per source address, {sources} sources)"),
        ports.map(|p| p >= per_source),
        Some("1024 65535".to_owned()),
    );
    let somaxconn = numbers("net.core.somaxconn").and_then(|v| v.first().copied());
    push(
        "net.core.somaxconn",
        "≥ 4096 (accept backlog during the connect storm) past 10 000 connections".to_owned(),
        somaxconn.map(|v| v >= 4096 || n < STORM),
        Some("65535".to_owned()),
    );
    let syn = numbers("net.ipv4.tcp_max_syn_backlog").and_then(|v| v.first().copied());
    push(
        "net.ipv4.tcp_max_syn_backlog",
        "≥ 4096 past 10 000 connections".to_owned(),
        syn.map(|v| v >= 4096 || n < STORM),
        Some("65535".to_owned()),
    );
    // Idle sockets hold (nearly) no buffers; tcp_mem bounds buffered bytes.
    push(
        "net.ipv4.tcp_mem",
        "pages (min pressure max) for all TCP buffers; a fan-out queues in them".to_owned(),
        None,
        None,
    );
    let files = 2 * n + 100_000;
    let file_max = numbers("fs.file-max").and_then(|v| v.first().copied());
    push(
        "fs.file-max",
        format!("≥ {files} (two sockets per connection)"),
        file_max.map(|v| v >= files),
        Some(files.to_string()),
    );
    push(
        "fs.nr_open",
        "≥ 20 000 (per-process open files)".to_owned(),
        numbers("fs.nr_open").and_then(|v| v.first().map(|&v| v >= 20_000)),
        None,
    );
    // Loopback connections are tracked only when a netfilter rule asks; a
    // full table drops new connections.
    let conntrack = numbers("net.netfilter.nf_conntrack_max").and_then(|v| v.first().copied());
    let tracked = numbers("net.netfilter.nf_conntrack_count")
        .and_then(|v| v.first().copied())
        .unwrap_or(0);
    push(
        "net.netfilter.nf_conntrack_max",
        format!(
            "≥ {n} when connections are tracked ({tracked} tracked now{})",
            if tracked == 0 {
                ": loopback is not tracked"
            } else {
                ""
            }
        ),
        conntrack.map(|v| tracked == 0 || v >= n),
        Some((n + 100_000).to_string()),
    );
    out
}

/// Soft and hard open-files limits of this process.
pub(crate) fn open_files_limit() -> String {
    read("/proc/self/limits")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .map(|l| {
            l.split_whitespace()
                .skip(3)
                .take(2)
                .collect::<Vec<_>>()
                .join("/")
        })
        .unwrap_or_default()
}
