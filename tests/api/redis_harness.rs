//! A real `redis-server` per test, on a free loopback port, in its own directory.
//!
//! The binary is `$CALLGATE_TEST_REDIS_SERVER` or `redis-server` on the `PATH`. If it is missing
//! the test panics: Redis tests never skip, or a green run would prove nothing.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Environment variable naming the `redis-server` binary to use.
pub const REDIS_SERVER_ENV: &str = "CALLGATE_TEST_REDIS_SERVER";

/// How long a server may take to answer PING after being started.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run the server.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `--appendonly yes --appendfsync always`: every write survives `kill -9`.
    pub aof: bool,
    /// `--maxmemory-policy <policy>` (Redis's default is `noeviction`).
    pub maxmemory_policy: Option<String>,
    /// Any further `--option value` arguments.
    pub extra_args: Vec<String>,
}

impl RedisOptions {
    pub fn aof() -> Self {
        RedisOptions {
            aof: true,
            ..Default::default()
        }
    }

    pub fn maxmemory_policy(policy: &str) -> Self {
        RedisOptions {
            maxmemory_policy: Some(policy.to_owned()),
            ..Default::default()
        }
    }
}

pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    options: RedisOptions,
}

static NEXT_DIR: AtomicUsize = AtomicUsize::new(0);

fn binary() -> String {
    std::env::var(REDIS_SERVER_ENV).unwrap_or_else(|_| "redis-server".to_owned())
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

impl RedisServer {
    pub fn start() -> Self {
        Self::start_with(RedisOptions::default())
    }

    pub fn start_with(options: RedisOptions) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "callgate-redis-{}-{}",
            std::process::id(),
            NEXT_DIR.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cannot create the Redis test directory");
        // A port picked by binding to 0 can be taken again before Redis binds it: retry.
        let mut last_error = String::new();
        for _ in 0..5 {
            let mut server = RedisServer {
                child: None,
                port: free_port(),
                dir: dir.clone(),
                options: options.clone(),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last_error = e,
            }
        }
        panic!("redis-server did not start: {last_error}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let mut cmd = Command::new(binary());
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        if self.options.aof {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        } else {
            cmd.args(["--appendonly", "no"]);
        }
        if let Some(policy) = &self.options.maxmemory_policy {
            cmd.args(["--maxmemory-policy", policy]);
        }
        cmd.args(&self.options.extra_args);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {:?} ({e}). Install redis-server (apt-get install redis-server) \
                     or set {REDIS_SERVER_ENV} to its path; Redis tests never skip.",
                    binary()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
                return Err(format!("exited with {status}; log:\n{log}"));
            }
            if self.answers_ping() {
                // A port picked free can be bound by another test's server before ours binds
                // it: that server answers PING while ours exits, and the test would run
                // against a server that goes away when the other test ends.
                if self.is_ours() {
                    return Ok(());
                }
                self.kill();
                return Err(format!("port {} answered by another server", self.port));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        Err(format!("no PONG within {STARTUP_TIMEOUT:?}"))
    }

    /// True once the server answers `+PONG` (not `-LOADING` while it replays the AOF).
    fn answers_ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 64];
        s.write_all(b"PING\r\n").is_ok()
            && s.read(&mut buf)
                .is_ok_and(|n| buf[..n].starts_with(b"+PONG"))
    }

    /// True when the server on this port is this harness's child (`INFO server`'s
    /// `process_id`).
    fn is_ours(&self) -> bool {
        let Some(pid) = self.child.as_ref().map(|c| c.id()) else {
            return false;
        };
        let Ok(mut s) = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        if s.write_all(b"INFO server\r\n").is_err() {
            return false;
        }
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while seen.len() < 64 * 1024 {
            match s.read(&mut buf) {
                Ok(n) if n > 0 => seen.extend_from_slice(&buf[..n]),
                _ => break,
            }
            let text = String::from_utf8_lossy(&seen);
            // The whole `process_id:<pid>` line, once it has arrived.
            if let Some(at) = text.find("process_id:") {
                let line = &text[at + "process_id:".len()..];
                if let Some(end) = line.find("\r\n") {
                    return line[..end] == pid.to_string();
                }
            }
        }
        false
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A store config for this server on layout v1, for the tests that read or edit v1's
    /// keys themselves (an empty store is written in v2 by default).
    pub fn v1_config(&self) -> callgate::store::redis::RedisConfig {
        let mut config = callgate::store::redis::RedisConfig::new(self.url());
        config.layout = callgate::store::redis::Layout::V1;
        config
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill(); // SIGKILL: no shutdown save, like a crash.
            let _ = child.wait();
        }
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Starts the server again on the same port and in the same directory.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return,
                // The old socket may linger for a moment.
                Err(e) if Instant::now() >= deadline => panic!("redis-server restart: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Calls of `command` since the last [`reset_command_stats`], from `INFO commandstats` (commands
/// run inside scripts count too).
pub async fn command_calls(conn: &mut redis::aio::MultiplexedConnection, command: &str) -> u64 {
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await
        .unwrap();
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

pub async fn reset_command_stats(conn: &mut redis::aio::MultiplexedConnection) {
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(conn)
        .await
        .unwrap();
}
