//! Test hosts in network namespaces, for network-fault tests: each [`NetNs`] is a namespace
//! joined to this one by a veth pair on its own /24 (`10.213.K.1` on this side, `10.213.K.2`
//! inside), so a process started in it reaches services here through `host_ip` and is reached
//! at `ip`. Faults are iptables rules inside the namespace that DROP packets silently, as a
//! network cut does (no reset): to or from one port here (etcd, the object store) or to the
//! process's own listening port (its clients). Needs root, `ip` (iproute2) and `iptables`;
//! scripts/test installs them. Everything is removed on drop.

use std::process::Command;

/// A namespace with a veth link to this one.
pub struct NetNs {
    /// Namespace name.
    pub name: String,
    host_veth: String,
    /// This side's address, as seen from inside.
    pub host_ip: String,
    /// The namespace's address.
    pub ip: String,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = run(args) {
        panic!("{e}. Network-fault tests need root, iproute2 and iptables (scripts/test installs them)");
    }
}

impl NetNs {
    /// Creates namespace number `k` (1..=250), replacing a stale one of the same number.
    pub fn create(k: u8) -> Self {
        let ns = Self {
            name: format!("silt-nf{k}"),
            host_veth: format!("snh{k}"),
            host_ip: format!("10.213.{k}.1"),
            ip: format!("10.213.{k}.2"),
        };
        let _ = run(&["ip", "netns", "del", &ns.name]);
        let _ = run(&["ip", "link", "del", &ns.host_veth]);
        let inner = format!("sna{k}");
        must(&["ip", "netns", "add", &ns.name]);
        must(&[
            "ip",
            "link",
            "add",
            &ns.host_veth,
            "type",
            "veth",
            "peer",
            "name",
            &inner,
        ]);
        must(&["ip", "link", "set", &inner, "netns", &ns.name]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", ns.host_ip),
            "dev",
            &ns.host_veth,
        ]);
        must(&["ip", "link", "set", &ns.host_veth, "up"]);
        ns.exec(&["ip", "addr", "add", &format!("{}/24", ns.ip), "dev", &inner]);
        ns.exec(&["ip", "link", "set", &inner, "up"]);
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    fn exec(&self, args: &[&str]) {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        must(&full);
    }

    /// A command that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Silently drops every packet to and from `port` on this side (a cut from that service).
    pub fn cut_from(&self, port: u16) {
        let p = port.to_string();
        self.exec(&[
            "iptables", "-A", "OUTPUT", "-p", "tcp", "--dport", &p, "-j", "DROP",
        ]);
        self.exec(&[
            "iptables", "-A", "INPUT", "-p", "tcp", "--sport", &p, "-j", "DROP",
        ]);
    }

    /// Silently drops every packet to and from the namespace's own `port` (a cut from its
    /// clients).
    pub fn cut_inbound(&self, port: u16) {
        let p = port.to_string();
        self.exec(&[
            "iptables", "-A", "INPUT", "-p", "tcp", "--dport", &p, "-j", "DROP",
        ]);
        self.exec(&[
            "iptables", "-A", "OUTPUT", "-p", "tcp", "--sport", &p, "-j", "DROP",
        ]);
    }

    /// Removes every cut.
    pub fn heal(&self) {
        self.exec(&["iptables", "-F"]);
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
        let _ = run(&["ip", "link", "del", &self.host_veth]);
    }
}
