//! A real `callgate` process (the built binary), for tests that need several replicas or a
//! restart. It listens on ports chosen by the OS and reports them in its first log line.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct CallgateProcess {
    child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    /// Everything the process logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl CallgateProcess {
    /// Starts `callgate serve` with these extra environment variables.
    pub fn start(env: &[(&str, &str)]) -> Result<Self, String> {
        Self::start_with_args(
            &[
                "serve",
                "--http-addr",
                "127.0.0.1:0",
                "--grpc-addr",
                "127.0.0.1:0",
            ],
            env,
        )
    }

    /// Starts `callgate ARGS` (which must make it serve on loopback ports) with this environment.
    pub fn start_with_args(args: &[&str], env: &[(&str, &str)]) -> Result<Self, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_callgate"));
        cmd.args(args)
            .env_clear()
            .env("CALLGATE_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env(
                "CALLGATE_API_CLIENTS_FILE",
                crate::helpers::api_clients_fixture(),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().map_err(|e| format!("spawn callgate: {e}"))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let log = log.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if line.contains("callgate listening") {
                        let _ = tx.send(line.clone());
                    }
                    log.lock().unwrap().push(line);
                }
            });
        }
        // Only the readers hold senders now: if the process exits before listening, both pipes
        // close and the wait ends at once (a refused start), not at the timeout.
        drop(tx);
        let line = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "callgate did not start; log:\n{}",
                    log.lock().unwrap().join("\n")
                ));
            }
        };
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
        let addr = |k: &str| -> SocketAddr { v["fields"][k].as_str().unwrap().parse().unwrap() };
        Ok(CallgateProcess {
            http: addr("http"),
            grpc: addr("grpc"),
            log,
            child,
        })
    }

    /// Everything logged so far, one line per entry.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// The log once `done` holds for it, or as it stands after `timeout`. The process writes a
    /// line before it answers, but the reader threads may not have collected it yet: wait for
    /// the line, never read the log once and hope.
    pub async fn log_when(&self, timeout: Duration, done: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let log = self.log_text();
            if done(&log) || tokio::time::Instant::now() >= deadline {
                return log;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops with SIGTERM and waits (bounded) for a clean exit; returns whether it exited 0.
    pub fn terminate(mut self) -> bool {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        // Poll (bounded: 10 s) for the exit.
        for _ in 0..1000 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }
}

impl Drop for CallgateProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
