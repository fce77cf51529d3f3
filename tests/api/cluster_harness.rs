//! A real Redis Cluster per test: 3 masters + 3 replicas, six `redis-server` processes on free
//! loopback ports, each in its own directory, joined by `redis-cli --cluster create`.
//!
//! The binaries are `$CALLGATE_TEST_REDIS_SERVER` (or `redis-server`) and
//! `$CALLGATE_TEST_REDIS_CLI` (or `redis-cli`). If one is missing the test panics: Redis tests
//! never skip. Starting a cluster costs 2–4 s on a 2-core machine, so tests that need one start
//! exactly one and keep the number of cluster tests small.
//!
//! Node flags (see `/work/shared/notes/redis-cluster.md`): a short `cluster-node-timeout` so a
//! dead master is replaced within ~2 s, `cluster-require-full-coverage no` so the healthy
//! masters keep answering, AOF with `appendfsync always`, and the two `repl-*` settings that
//! make replicas sync at once.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::redis_harness::REDIS_SERVER_ENV;

/// Environment variable naming the `redis-cli` binary to use.
pub const REDIS_CLI_ENV: &str = "CALLGATE_TEST_REDIS_CLI";

const NODES: usize = 6;
/// Milliseconds before a silent master is declared failed and its replica promoted.
pub const NODE_TIMEOUT_MS: u64 = 1000;
/// Bound on every wait of the harness (startup, readiness, sync, promotion).
const WAIT_LIMIT: Duration = Duration::from_secs(30);
/// The cluster bus listens on port + 10000, which must be a valid port too.
const MAX_PORT: u16 = 55_535;

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

fn server_binary() -> String {
    std::env::var(REDIS_SERVER_ENV).unwrap_or_else(|_| "redis-server".to_owned())
}

fn cli_binary() -> String {
    std::env::var(REDIS_CLI_ENV).unwrap_or_else(|_| "redis-cli".to_owned())
}

/// A free loopback port whose bus port (+10000) is free too.
fn free_port_pair() -> u16 {
    for _ in 0..1000 {
        let Ok(l) = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)) else {
            continue;
        };
        let port = l.local_addr().expect("local addr").port();
        if port > MAX_PORT {
            continue;
        }
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port pair below {MAX_PORT}");
}

/// One node of the test cluster.
pub struct Node {
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self) -> Result<(), String> {
        let port = self.port.to_string();
        let child = Command::new(server_binary())
            .args([
                "--port",
                &port,
                "--bind",
                "127.0.0.1",
                "--protected-mode",
                "no",
            ])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .args(["--save", ""])
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--repl-ping-replica-period", "1"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {:?} ({e}). Install redis-server or set {REDIS_SERVER_ENV}; \
                     Redis tests never skip.",
                    server_binary()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + WAIT_LIMIT;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Err(format!("node {} exited with {status}", self.port));
            }
            if raw_command(self.port, "PING").is_some_and(|r| r.starts_with("+PONG")) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!("node {} gave no PONG", self.port))
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `INFO replication`'s `role:` line: `master` or `slave`.
    pub fn role(&self) -> Option<String> {
        let info = raw_command(self.port, "INFO replication")?;
        info.lines()
            .find_map(|l| l.strip_prefix("role:"))
            .map(|r| r.trim().to_owned())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL: like a crash.
            let _ = child.wait();
        }
    }
}

impl RedisCluster {
    /// One inline command sent to node `i`; its raw RESP reply.
    pub fn command(&self, i: usize, command: &str) -> String {
        raw_command(self.nodes[i].port, command)
            .unwrap_or_else(|| panic!("node {i} did not answer {command:?}"))
    }
}

/// Sends one inline command and returns the raw reply (bounded by a short read timeout).
fn raw_command(port: u16, command: &str) -> Option<String> {
    let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    // Bulk replies may come in several reads: read until the reply is complete.
    loop {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if reply_complete(&out) {
            break;
        }
    }
    String::from_utf8(out).ok()
}

/// True when `out` holds a whole simple reply or a whole bulk string.
fn reply_complete(out: &[u8]) -> bool {
    match out.first() {
        Some(b'$') => {
            let Some(end) = out.windows(2).position(|w| w == b"\r\n") else {
                return false;
            };
            let len: i64 = std::str::from_utf8(&out[1..end])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            len < 0 || out.len() >= end + 2 + len as usize + 2
        }
        Some(_) => out.ends_with(b"\r\n"),
        None => false,
    }
}

/// A running 3-master + 3-replica cluster; every process is killed (and its directory
/// removed) on drop.
pub struct RedisCluster {
    pub nodes: Vec<Node>,
    root: PathBuf,
}

impl RedisCluster {
    /// Starts six nodes, creates the cluster, and waits until every node reports
    /// `cluster_state:ok`, every master has a replica whose link is up, and every node's
    /// `CLUSTER SLOTS` lists all three replicas.
    pub fn start() -> Self {
        let started = Instant::now();
        let root = std::env::temp_dir().join(format!(
            "callgate-cluster-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        let mut cluster = RedisCluster {
            nodes: Vec::new(),
            root: root.clone(),
        };
        for i in 0..NODES {
            let dir = root.join(format!("n{i}"));
            std::fs::create_dir_all(&dir).expect("create node dir");
            // A port picked by binding to 0 can be taken before Redis binds it: retry.
            let mut last = String::new();
            let node = (0..5).find_map(|_| {
                let mut node = Node {
                    port: free_port_pair(),
                    dir: dir.clone(),
                    child: None,
                };
                match node.spawn() {
                    Ok(()) => Some(node),
                    Err(e) => {
                        last = e;
                        None
                    }
                }
            });
            cluster
                .nodes
                .push(node.unwrap_or_else(|| panic!("redis-server did not start: {last}")));
        }
        cluster.create();
        cluster.wait_ready();
        eprintln!(
            "test cluster ready in {:?} (ports {:?})",
            started.elapsed(),
            cluster.nodes.iter().map(|n| n.port).collect::<Vec<_>>()
        );
        cluster
    }

    fn create(&self) {
        let addrs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let deadline = Instant::now() + WAIT_LIMIT;
        loop {
            let out = Command::new(cli_binary())
                .args(["--cluster", "create"])
                .args(&addrs)
                .args(["--cluster-replicas", "1", "--cluster-yes"])
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {:?} ({e}). Install redis-tools or set {REDIS_CLI_ENV}",
                        cli_binary()
                    )
                });
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && text.contains("All 16384 slots covered") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-cli --cluster create failed:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Polls (bounded) until the cluster is whole: see [`start`](Self::start).
    pub fn wait_ready(&self) {
        self.wait_until("cluster ready, replicas in sync", || {
            self.nodes.iter().filter(|n| n.is_running()).all(|n| {
                let ok = raw_command(n.port, "CLUSTER INFO")
                    .is_some_and(|i| i.contains("cluster_state:ok"));
                let synced = match n.role().as_deref() {
                    Some("master") => raw_command(n.port, "INFO replication")
                        .is_some_and(|i| i.contains("connected_slaves:1") && i.contains("online")),
                    Some("slave") => raw_command(n.port, "INFO replication")
                        .is_some_and(|i| i.contains("master_link_status:up")),
                    _ => false,
                };
                // `CLUSTER SLOTS` lists each range's master then its replicas: three
                // ranges, each with two nodes, once the replicas are known everywhere.
                let slots_known = raw_command(n.port, "CLUSTER SLOTS")
                    .is_some_and(|s| s.matches("127.0.0.1").count() >= NODES);
                ok && synced && slots_known
            })
        });
    }

    /// Polls `f` every 50 ms until it holds; panics after [`WAIT_LIMIT`].
    pub fn wait_until(&self, what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT_LIMIT;
        while !f() {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {WAIT_LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `redis://127.0.0.1:p1,redis://127.0.0.1:p2,...`: the value of
    /// `CALLGATE_REDIS_CLUSTER_NODES` (every node; any one would do).
    pub fn nodes_env(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the running master serving `slot`.
    pub fn master_of_slot(&self, slot: u16) -> usize {
        self.nodes
            .iter()
            .position(|n| {
                n.is_running()
                    && n.role().as_deref() == Some("master")
                    && raw_command(n.port, "CLUSTER NODES").is_some_and(|text| {
                        text.lines()
                            .find(|l| l.contains("myself"))
                            .is_some_and(|me| serves(me, slot))
                    })
            })
            .unwrap_or_else(|| panic!("no running master serves slot {slot}"))
    }

    /// Kills node `i` with SIGKILL, as a crash would.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Starts killed node `i` again, on its port and with its directory (its `nodes.conf` and
    /// AOF): it rejoins the cluster, as a replica if its master role was taken over.
    pub fn restart(&mut self, i: usize) {
        let deadline = Instant::now() + WAIT_LIMIT;
        while let Err(e) = self.nodes[i].spawn() {
            assert!(Instant::now() < deadline, "node {i} did not restart: {e}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Closes every replication link of master `i` (`CLIENT KILL TYPE replica`): what its
    /// replicas did not receive yet, they will not get from this connection.
    pub fn cut_replication(&self, i: usize) {
        let reply = self.command(i, "CLIENT KILL TYPE replica");
        assert!(reply.starts_with(':'), "{reply}");
    }

    /// Freezes node `i` (SIGSTOP): it holds its connections but answers nothing.
    pub fn pause(&self, i: usize) {
        self.signal(i, "-STOP");
    }

    /// Lets a paused node run again (SIGCONT).
    pub fn resume(&self, i: usize) {
        self.signal(i, "-CONT");
    }

    fn signal(&self, i: usize, signal: &str) {
        let pid = self.nodes[i]
            .child
            .as_ref()
            .expect("node is running")
            .id()
            .to_string();
        let status = Command::new("kill").args([signal, &pid]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill {signal} {pid}");
    }

    /// The index of the replica of master `master`.
    pub fn replica_of(&self, master: usize) -> usize {
        let port = format!("master_port:{}", self.nodes[master].port);
        self.nodes
            .iter()
            .position(|n| {
                n.is_running()
                    && raw_command(n.port, "INFO replication")
                        .is_some_and(|i| i.contains("role:slave") && i.contains(&port))
            })
            .unwrap_or_else(|| panic!("master {master} has no replica"))
    }

    /// Waits until `slot` is served by a running master other than a killed one.
    pub fn wait_promoted(&self, slot: u16) -> usize {
        let mut found = None;
        self.wait_until("replica promoted", || {
            found = self.nodes.iter().position(|n| {
                n.is_running()
                    && n.role().as_deref() == Some("master")
                    && raw_command(n.port, "CLUSTER NODES").is_some_and(|text| {
                        text.lines()
                            .find(|l| l.contains("myself"))
                            .is_some_and(|me| serves(me, slot))
                    })
                    && raw_command(n.port, "CLUSTER INFO")
                        .is_some_and(|i| i.contains("cluster_state:ok"))
            });
            found.is_some()
        });
        found.expect("promoted")
    }
}

/// True if a `CLUSTER NODES` line lists `slot` among its ranges (`a-b` or `a`).
fn serves(line: &str, slot: u16) -> bool {
    line.split_whitespace().skip(8).any(|range| {
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
    })
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
