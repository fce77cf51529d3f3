"""Shared helpers of the deployment tests: the built callgate binary, a real redis-server and a
real callgate process on free loopback ports, and the settings callgate knows (src/config.rs).

These tests check what ships beside the code (Dockerfile, compose.yaml, deploy/, clients/)
against the real binary. scripts/test.sh runs them after `cargo test`, so the debug binary exists.
"""

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def config_env_vars():
    """Every environment variable src/config.rs defines (ENV_* constants)."""
    text = (ROOT / "src" / "config.rs").read_text()
    names = set(re.findall(r'pub const ENV_\w+: &str = "(CALLGATE_\w+)";', text))
    assert names, "no ENV_ constants found in src/config.rs"
    return names


def config_default(name):
    """A `pub const DEFAULT_*: &str` of src/config.rs."""
    text = (ROOT / "src" / "config.rs").read_text()
    m = re.search(rf'pub const {name}: &str = "([^"]*)";', text)
    assert m, f"{name} not found in src/config.rs"
    return m.group(1)


_BINARY = []


def callgate_binary():
    """The debug callgate binary, brought up to date once per run (a no-op after `cargo test`,
    which builds it too), so no test runs a stale build."""
    if os.environ.get("CALLGATE_BIN"):
        return os.environ["CALLGATE_BIN"]
    if not _BINARY:
        subprocess.run(
            ["cargo", "build", "--locked", "--bin", "callgate"], cwd=ROOT, check=True
        )
        target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
        _BINARY.append(str(target / "debug" / "callgate"))
    return _BINARY[0]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout=20.0, what="condition"):
    """Polls `condition` until it returns a truthy value (bounded); returns that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def redis_command(port, *args):
    """One RESP command to a redis-server on loopback; returns the decoded reply."""
    payload = f"*{len(args)}\r\n".encode()
    for a in args:
        a = a.encode() if isinstance(a, str) else a
        payload += b"$%d\r\n%s\r\n" % (len(a), a)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        f = s.makefile("rb")
        return _read_resp(f)


def _read_resp(f):
    line = f.readline().rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        raise RuntimeError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)[:-2]
        return data.decode()
    if kind == b"*":
        return [_read_resp(f) for _ in range(int(rest))]
    raise RuntimeError(f"unexpected reply {line!r}")


class RedisServer:
    """A real redis-server on a free loopback port, in its own directory."""

    def __init__(self, args=()):
        self.port = free_port()
        self.dir = tempfile.TemporaryDirectory(prefix="callgate-redis-")
        self.proc = subprocess.Popen(
            ["redis-server", *args, "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", self.dir.name],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._pong, what="redis-server to answer PING")

    def _pong(self):
        try:
            return redis_command(self.port, "PING") == "PONG"
        except OSError:
            return False

    def config(self, key):
        return redis_command(self.port, "CONFIG", "GET", key)[1]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.dir.cleanup()


class CallgateProcess:
    """A real callgate process. Its JSON log's "callgate listening" line gives its ports."""

    def __init__(self, args, env, binary=None):
        full_env = {"PATH": os.environ.get("PATH", ""), **env}
        full_env.setdefault("CALLGATE_LOG_FORMAT", "json")
        self.proc = subprocess.Popen(
            [binary or callgate_binary(), *args],
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log = []
        self._listening = threading.Event()
        self.http = self.grpc = None
        for pipe in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=self._read, args=(pipe,), daemon=True).start()
        if not self._listening.wait(30):
            self.kill()
            raise AssertionError("callgate did not start:\n" + "\n".join(self.log))

    def _read(self, pipe):
        for line in pipe:
            self.log.append(line.rstrip("\n"))
            if "callgate listening" in line:
                fields = json.loads(line)["fields"]
                self.http, self.grpc = fields["http"], fields["grpc"]
                self._listening.set()

    def get(self, path):
        """(status, body text) of a GET on the HTTP port."""
        try:
            with urllib.request.urlopen(f"http://{self.http}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def post(self, path, body, headers):
        req = urllib.request.Request(
            f"http://{self.http}{path}", data=body.encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def metrics(self):
        status, text = self.get("/metrics")
        assert status == 200
        return text

    def terminate(self, timeout=30):
        """SIGTERM, then wait (bounded); returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


def doubletick_body(business, customer, message_id, response="accept", permanent=True):
    from datetime import datetime, timezone

    return json.dumps({
        "from": customer,
        "to": business,
        "receivedAt": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "messageId": message_id,
        "response": response,
        "responseSource": "user_initiated",
        "isPermanent": permanent,
    })


@pytest.fixture
def redis():
    server = RedisServer()
    yield server
    server.stop()


TOKEN = "deploy-test-token"
# The README's demo API client (demo/api-clients.toml lists its SHA-256): a published key.
API_CLIENTS_FILE = str(ROOT / "demo" / "api-clients.toml")
DEMO_KEY = "demo-key"


@pytest.fixture
def callgate():
    """callgate on the embedded store, loopback ports, accepting webhooks with TOKEN."""
    proc = CallgateProcess(
        ["serve", "--http-addr", "127.0.0.1:0", "--grpc-addr", "127.0.0.1:0"],
        {"CALLGATE_WEBHOOK_TOKENS": TOKEN, "CALLGATE_CHECKPOINT_SECS": "0.3",
         "CALLGATE_API_CLIENTS_FILE": API_CLIENTS_FILE},
    )
    yield proc
    proc.kill()
