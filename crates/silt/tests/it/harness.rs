//! Runs the real `silt` binary for end-to-end tests: a fresh data directory, free ports, and
//! helpers to kill, terminate, restart, scrape metrics and read the process's memory.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub struct AgentProc {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub admin_port: u16,
    env: Vec<(String, String)>,
    starts: u32,
    /// The address it listens on (127.0.0.1, or its network namespace's).
    pub ip: String,
    /// The network namespace it runs in, if any.
    netns: Option<String>,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl AgentProc {
    /// Starts an agent with a 20 ms flush interval and the given extra `SILT_*` settings.
    pub fn start(env: &[(&str, &str)]) -> Self {
        let mut a = Self::new(env);
        a.spawn();
        a
    }

    /// Starts an agent inside a network namespace, listening on its address.
    pub fn start_in(ns: &silt_testkit::NetNs, env: &[(&str, &str)]) -> Self {
        let mut a = Self::new(env);
        a.ip = ns.ip.clone();
        a.netns = Some(ns.name.clone());
        a.spawn();
        a
    }

    fn new(env: &[(&str, &str)]) -> Self {
        Self {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            port: free_port(),
            admin_port: free_port(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            starts: 0,
            ip: "127.0.0.1".into(),
            netns: None,
        }
    }

    /// Runs an agent that must fail to start; returns its exit status and log.
    pub fn start_failing(env: &[(&str, &str)]) -> (ExitStatus, String) {
        let mut a = Self::new(env);
        a.starts = 1;
        let log = std::fs::File::create(a.log_path()).unwrap();
        let mut child = a
            .command()
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn silt");
        let deadline = Instant::now() + Duration::from_secs(60);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the agent was expected to fail but is still running:\n{}",
                    a.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        a.child = None;
        (status, a.log())
    }

    pub fn bootstrap(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("agent-{}.log", self.starts))
    }

    /// Starts the agent. A port taken by another process between choosing and binding it
    /// (tests run side by side) is retried: with fresh ports on a first start, on the same
    /// ports after a pause on a restart.
    fn spawn(&mut self) {
        for attempt in 0..5 {
            self.starts += 1;
            let log = std::fs::File::create(self.log_path()).unwrap();
            let child = self
                .command()
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn silt");
            self.child = Some(child);
            if self.wait_ready() {
                return;
            }
            assert!(attempt < 4, "ports stayed taken:\n{}", self.log());
            if self.starts == attempt + 1 {
                self.port = free_port();
                self.admin_port = free_port();
            } else {
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }

    fn command(&self) -> Command {
        let bin = env!("CARGO_BIN_EXE_silt");
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, bin]);
                c
            }
            None => Command::new(bin),
        };
        cmd.arg("agent")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SILT_LOG", "info")
            .env("SILT_LISTEN", self.bootstrap())
            .env(
                "SILT_ADMIN_LISTEN",
                format!("{}:{}", self.ip, self.admin_port),
            )
            .env("SILT_DATA_DIR", self.data_dir())
            .env("SILT_FLUSH__INTERVAL_MS", "20");
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        cmd
    }

    /// Waits for `/readyz` to answer 200: the agent serves and its share is loaded. Returns
    /// false if it exited because a port was taken.
    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.ready() {
                return true;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                if self.log().contains("Address already in use") {
                    self.child = None;
                    return false;
                }
                panic!(
                    "agent exited with {status} during start-up:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "agent not ready in 30 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `/readyz` answers 200 now.
    pub fn ready(&self) -> bool {
        let Ok(mut s) = TcpStream::connect((self.ip.as_str(), self.admin_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        body.starts_with("HTTP/1.1 200")
    }

    /// Sends a signal ("STOP", "CONT", ...) to the agent.
    pub fn signal(&self, sig: &str) {
        silt_testkit::signal(self.pid(), sig);
    }

    /// The exit status, if the agent exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().unwrap())
    }

    /// Starts a stopped (killed or exited) agent again on the same ports.
    pub fn start_again(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.spawn();
    }

    /// The current run's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "agent did not stop within 30 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Changes (or adds) a setting for the next start.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Starts again on the same data directory and ports.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `/metrics`, checked to be a valid Prometheus text exposition, as series -> value.
    pub fn metrics_strict(&self) -> HashMap<String, f64> {
        parse_exposition(&self.http_get("/metrics"))
    }

    /// The body of `GET path` on the admin port.
    pub fn http_get(&self, path: &str) -> String {
        self.http("GET", path).1
    }

    /// `method path` on the admin port: (status code, body).
    pub fn http(&self, method: &str, path: &str) -> (u16, String) {
        self.http_with(method, path, "")
    }

    /// `method path` with extra header lines (each ending in `\r\n`): (status code, body).
    pub fn http_with(&self, method: &str, path: &str, headers: &str) -> (u16, String) {
        let mut s = TcpStream::connect((self.ip.as_str(), self.admin_port)).expect("admin port");
        s.write_all(format!("{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}\r\n").as_bytes())
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status code");
        let body = resp.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        (code, body.to_string())
    }

    /// Counters from `/metrics` (label-free series only, plus labelled ones by full name).
    pub fn metrics(&self) -> HashMap<String, f64> {
        let mut s = TcpStream::connect((self.ip.as_str(), self.admin_port)).expect("admin port");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        let body = body
            .split("\r\n\r\n")
            .nth(1)
            .expect("http body")
            .to_string();
        body.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    /// Resident memory of the agent process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    /// Number of flush objects in the local object store.
    pub fn object_count(&self) -> usize {
        fn walk(p: &Path) -> usize {
            std::fs::read_dir(p)
                .map(|rd| {
                    rd.flatten()
                        .map(|e| {
                            let path = e.path();
                            if path.is_dir() {
                                walk(&path)
                            } else {
                                usize::from(path.extension().is_some_and(|x| x == "silt"))
                            }
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        walk(&self.data_dir().join("objects"))
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- agent log ----\n{}", self.log());
        }
        self.kill();
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn eventually<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Parses a Prometheus text exposition strictly: every sample belongs to a family declared by
/// `# TYPE`, names and labels are well formed, values are numbers, and histogram buckets are
/// cumulative and end at `+Inf` = `_count`. Returns series (name with labels) -> value.
pub fn parse_exposition(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut out = HashMap::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(valid_name(name), "bad family name {name:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad type in {line:?}"
            );
            assert!(
                types.insert(name.into(), kind.into()).is_none(),
                "family {name} declared twice"
            );
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value: {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "bad metric name in {line:?}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("bad labels in {line:?}"));
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(valid_name(k), "bad label name in {line:?}");
                assert!(v.starts_with('"'), "unquoted label value in {line:?}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| {
                name.strip_suffix(suf)
                    .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        assert!(
            types.contains_key(family),
            "sample {line:?} has no # TYPE before it"
        );
        assert!(
            out.insert(series.to_string(), v).is_none(),
            "series {series} twice"
        );
    }
    // Histograms: cumulative buckets ending at +Inf = count.
    for (family, _) in types.iter().filter(|(_, k)| *k == "histogram") {
        let counts: Vec<(&String, f64)> = out
            .iter()
            .filter(|(k, _)| k.starts_with(&format!("{family}_count")))
            .map(|(k, v)| (k, *v))
            .collect();
        for (count_series, count) in counts {
            let labels = count_series
                .strip_prefix(&format!("{family}_count"))
                .unwrap();
            let inner = labels.trim_start_matches('{').trim_end_matches('}');
            let sep = if inner.is_empty() { "" } else { "," };
            let inf = format!("{family}_bucket{{{inner}{sep}le=\"+Inf\"}}");
            assert_eq!(
                out.get(&inf),
                Some(&count),
                "{inf} must equal {count_series}"
            );
            let mut buckets: Vec<(f64, f64)> = out
                .iter()
                .filter_map(|(k, v)| {
                    let rest = k.strip_prefix(&format!("{family}_bucket{{{inner}{sep}le=\""))?;
                    let le: f64 = rest.strip_suffix("\"}")?.parse().ok()?;
                    Some((le, *v))
                })
                .collect();
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1)
                    && buckets.iter().all(|b| b.1 <= count),
                "{family}{labels}: buckets are not cumulative"
            );
        }
    }
    out
}
