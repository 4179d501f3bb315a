#![allow(dead_code)] // each harness (multihost.rs, multihost_scale.rs) uses its own part of it
//! Hosts for the multi-host test: network namespaces joined by a bridge, and a DNS server.
//!
//! Each [`Host`] is a network namespace with one veth link to a bridge in the root namespace, where
//! the test process has the bridge's address, so it reaches every host and nothing else: the
//! subnet is private (10.203.N.0/24, N free on this machine) and no host has a default route.
//! [`Dns`] is Debian's `dnsmasq` in a host of its own, answering from a hosts file it re-reads on
//! SIGHUP; every host's `/etc/netns/<ns>/resolv.conf` (bind-mounted by `ip netns exec`) points at
//! it. Everything is named with a per-run prefix (`lgm` + the test's pid in hex) so parallel runs
//! do not collide; [`Network`]'s drop removes them, also when the test panics, and
//! [`Network::create`] first removes what an aborted earlier run (a prefix whose pid is gone)
//! left behind. `scripts/multihost`'s trap does the same.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use plumbing::tls::TlsFiles;

// What every harness on these hosts deploys the same way: the name the Dopplers are published
// under and the port each component listens on (every host has its own address, so each
// component keeps the one port its role has).

/// The name every Doppler's address is published under.
pub const DOPPLER_NAME: &str = "doppler.multihost.test";
pub const GRPC: u16 = 8082;
pub const AGENT: u16 = 3458;
pub const RLP: u16 = 8090;
pub const GATEWAY: u16 = 8088;
pub const WEBSOCKET: u16 = 8081;
pub const LOG_CACHE: u16 = 8080;
pub const LOG_CACHE_HTTP: u16 = 8083;
pub const METRICS: u16 = 14830;

/// `port` on `host`.
pub fn at(host: &Host, port: u16) -> SocketAddr {
    SocketAddr::from((host.ip, port))
}

/// A `[table]` of TLS files in a component's TOML.
pub fn tls_table(table: &str, files: &TlsFiles) -> String {
    format!(
        "[{table}]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
        files.ca_file.display().to_string(),
        files.cert_file.display().to_string(),
        files.key_file.display().to_string()
    )
}

/// Prefix of every namespace, bridge and link this test creates.
pub const PREFIX: &str = "lgm";

/// Runs a command, panicking with its output when it fails: setting up hosts must not half-work.
pub fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("cannot run `{program}`: {error} (is it installed?)"));
    assert!(
        output.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs a command whose failure is fine (cleanup of what may already be gone).
fn run_quietly(program: &str, args: &[&str]) {
    let _ = Command::new(program).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
}

/// Fails the test, with the reason, unless it runs as root with `ip`, `dnsmasq` and `getent`: it must not
/// skip silently.
pub fn require_root_and_tools() {
    let uid = run("id", &["-u"]);
    assert_eq!(uid.trim(), "0", "the multi-host test needs root (network namespaces); run scripts/multihost as root");
    for (tool, package) in [("ip", "iproute2"), ("dnsmasq", "dnsmasq-base"), ("getent", "libc-bin")] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output();
        assert!(
            found.is_ok_and(|o| o.status.success()),
            "the multi-host test needs `{tool}` (Debian package {package}); scripts/test installs it"
        );
    }
}

/// Removes every namespace, bridge and `/etc/netns` entry of a prefix whose pid is not running.
fn remove_leftovers() {
    let alive = |tag: &str| {
        u32::from_str_radix(tag, 16).is_ok_and(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    for line in run("ip", &["netns", "list"]).lines() {
        let Some(name) = line.split_whitespace().next() else { continue };
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let tag = rest.split('-').next().unwrap_or_default();
        if !alive(tag) {
            // Whatever the aborted run left running in it (components, dnsmasq) goes first.
            if let Ok(output) = Command::new("ip").args(["netns", "pids", name]).output() {
                for pid in String::from_utf8_lossy(&output.stdout).split_whitespace() {
                    run_quietly("kill", &["-9", pid]);
                }
            }
            run_quietly("ip", &["netns", "delete", name]);
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{name}"));
        }
    }
    for line in run("ip", &["-o", "link", "show", "type", "bridge"]).lines() {
        let Some(name) = line.split(':').nth(1).map(str::trim) else { continue };
        let Some(tag) = name.strip_prefix(PREFIX).and_then(|rest| rest.strip_suffix("br")) else { continue };
        if !alive(tag) {
            run_quietly("ip", &["link", "delete", name]);
        }
    }
}

/// One namespace: a host with one address on the bridge.
pub struct Host {
    /// Namespace name.
    pub ns: String,
    /// The root-namespace end of its veth pair (the bridge port): down = the host is cut off.
    pub link: String,
    pub ip: Ipv4Addr,
}

impl Host {
    /// The launcher of a process on this host.
    pub fn exec(&self) -> Vec<String> {
        ["ip", "netns", "exec", &self.ns].iter().map(|s| s.to_string()).collect()
    }

    /// Cuts the host's link (the bridge port goes down): no FIN, no RST, its packets are lost.
    pub fn cut(&self) {
        run("ip", &["link", "set", &self.link, "down"]);
    }

    pub fn reconnect(&self) {
        run("ip", &["link", "set", &self.link, "up"]);
    }
}

/// The bridge, its subnet, and the hosts on it. Dropping it removes them all.
pub struct Network {
    tag: String,
    bridge: String,
    subnet: u8,
    hosts: Vec<String>,
}

impl Network {
    /// Creates the bridge with the test's address (10.203.N.1/24) in the root namespace.
    pub fn create() -> Network {
        remove_leftovers();
        let tag = format!("{:x}", std::process::id());
        let bridge = format!("{PREFIX}{tag}br");
        assert!(bridge.len() <= 15, "interface name {bridge} too long");
        // A /24 no interface of this machine uses yet (parallel runs pick different ones).
        let in_use = run("ip", &["-4", "-o", "addr", "show"]);
        let subnet = (0..250u32)
            .map(|i| ((std::process::id() + i) % 250 + 1) as u8)
            .find(|n| !in_use.contains(&format!("10.203.{n}.")))
            .expect("a free 10.203.N.0/24");
        let network = Network { tag, bridge, subnet, hosts: Vec::new() };
        run("ip", &["link", "add", &network.bridge, "type", "bridge"]);
        run("ip", &["addr", "add", &format!("{}/24", network.ip(1)), "dev", &network.bridge]);
        run("ip", &["link", "set", &network.bridge, "up"]);
        network
    }

    /// 10.203.N.`last`.
    pub fn ip(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 203, self.subnet, last)
    }

    /// A new namespace `<prefix><tag>-<name>` with address .`last`, linked to the bridge, whose
    /// resolver is the DNS host at .2.
    pub fn host(&mut self, name: &str, last: u8) -> Host {
        let ns = format!("{PREFIX}{}-{name}", self.tag);
        let link = format!("{PREFIX}{}{name}", self.tag);
        assert!(link.len() <= 15, "interface name {link} too long");
        let peer = format!("{link}p");
        run("ip", &["netns", "add", &ns]);
        self.hosts.push(ns.clone());
        let etc = PathBuf::from(format!("/etc/netns/{ns}"));
        std::fs::create_dir_all(&etc).expect("creates /etc/netns/<ns>");
        let resolv = format!("nameserver {}\noptions timeout:1 attempts:2\n", self.ip(2));
        std::fs::write(etc.join("resolv.conf"), resolv).expect("writes the namespace's resolv.conf");
        run("ip", &["link", "add", &link, "type", "veth", "peer", "name", &peer]);
        run("ip", &["link", "set", &peer, "netns", &ns]);
        run("ip", &["link", "set", &link, "master", &self.bridge]);
        run("ip", &["link", "set", &link, "up"]);
        let ip = self.ip(last);
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &ns, "ip"];
            all.extend_from_slice(args);
            run("ip", &all);
        };
        inside(&["link", "set", "lo", "up"]);
        inside(&["link", "set", &peer, "name", "eth0"]);
        inside(&["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        inside(&["link", "set", "eth0", "up"]);
        Host { ns, link, ip }
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // Deleting a namespace deletes its veth end, and with it the bridge port.
        for ns in &self.hosts {
            run_quietly("ip", &["netns", "delete", ns]);
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
        }
        run_quietly("ip", &["link", "delete", &self.bridge]);
    }
}

/// `dnsmasq` on its own host, answering the names of a hosts file and nothing else.
pub struct Dns {
    hosts_file: PathBuf,
    entries: Vec<(Ipv4Addr, String)>,
    child: Child,
}

impl Dns {
    /// Starts dnsmasq on `host` (port 53) with `entries` and waits until it answers.
    pub fn start(host: &Host, hosts_file: PathBuf, entries: &[(Ipv4Addr, &str)]) -> Dns {
        let entries: Vec<(Ipv4Addr, String)> = entries.iter().map(|(ip, name)| (*ip, name.to_string())).collect();
        write_hosts(&hosts_file, &entries);
        let ip = host.ip.to_string();
        let child = Command::new("ip")
            .args(["netns", "exec", &host.ns, "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts"])
            .arg(format!("--addn-hosts={}", hosts_file.display()))
            .args(["--listen-address", &ip, "--bind-interfaces", "--port", "53", "--local-ttl=0"])
            // Nothing is forwarded anywhere: the test's names are the only ones it knows.
            .args(["--local=/#/", "--user=root", "--log-facility=-"])
            .arg(format!("--pid-file={}", hosts_file.with_extension("pid").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawns dnsmasq");
        Dns { hosts_file, entries, child }
    }

    /// Adds an address for `name` and makes dnsmasq re-read its hosts file (SIGHUP).
    pub fn add(&mut self, ip: Ipv4Addr, name: &str) {
        self.entries.push((ip, name.to_string()));
        write_hosts(&self.hosts_file, &self.entries);
        run("kill", &["-HUP", &self.child.id().to_string()]);
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_hosts(path: &PathBuf, entries: &[(Ipv4Addr, String)]) {
    let text: String = entries.iter().map(|(ip, name)| format!("{ip} {name}\n")).collect();
    std::fs::write(path, text).expect("writes the dnsmasq hosts file");
}

/// Resolves `name` from inside `host` with the same resolver the components use (glibc's
/// `getent ahostsv4`), sorted.
pub fn resolve_in(host: &Host, name: &str) -> Vec<Ipv4Addr> {
    let output = Command::new("ip").args(["netns", "exec", &host.ns, "getent", "ahostsv4", name]).output();
    let Ok(output) = output else { return Vec::new() };
    let mut found: Vec<Ipv4Addr> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect();
    found.sort();
    found.dedup();
    found
}
