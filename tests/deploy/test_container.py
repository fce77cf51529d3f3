"""The container image and the compose file.

No container engine runs where these tests run (only the docker client is installed, and no
registry can be reached), so the image is not built here. Instead:
- the Dockerfile passes hadolint and a stated set of checks (multi-stage, --locked, non-root
  numeric USER, HEALTHCHECK in exec form, EXPOSE = callgate's default ports, every base image
  pinned to a version tag, never `latest`, every setting documented);
- the build context that .dockerignore leaves holds everything the build needs;
- the image's entrypoint, command, environment and HEALTHCHECK, parsed from the Dockerfile, are
  run with the real binary outside a container (as the image's non-root user when the tests run
  as root), against a redis-server started with compose.yaml's own Redis command line.
"""

import fnmatch
import json
import os
import re
import shlex
import subprocess
import tomllib
import urllib.request

import yaml

from conftest import (
    DEMO_KEY,
    ROOT,
    RedisServer,
    callgate_binary,
    config_default,
    config_env_vars,
    doubletick_body,
    free_port,
    redis_command,
    wait_for,
)

IMAGE_UID = 65532


def dockerfile_instructions():
    """[(stage index, INSTRUCTION, argument text)], comments dropped, continuations joined."""
    lines, current = [], ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        if raw.lstrip().startswith("#") or not raw.strip():
            continue
        if raw.rstrip().endswith("\\"):
            current += raw.rstrip()[:-1] + " "
            continue
        lines.append(current + raw)
        current = ""
    out, stage = [], -1
    for line in lines:
        instr, _, rest = line.strip().partition(" ")
        instr = instr.upper()
        if instr == "FROM":
            stage += 1
        out.append((stage, instr, rest.strip()))
    return out


def final_stage():
    instrs = dockerfile_instructions()
    last = max(s for s, _, _ in instrs)
    return [(i, a) for s, i, a in instrs if s == last]


def exec_form(text):
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


def image_env():
    env = {}
    for instr, arg in final_stage():
        if instr == "ENV":
            for pair in shlex.split(arg):
                k, _, v = pair.partition("=")
                env[k] = v
    return env


def healthcheck_command():
    for instr, arg in final_stage():
        if instr == "HEALTHCHECK":
            _, _, cmd = arg.partition("CMD ")
            return exec_form(cmd)
    raise AssertionError("no HEALTHCHECK in the final stage")


def single(instr):
    values = [a for i, a in final_stage() if i == instr]
    assert len(values) == 1, f"{instr}: {values}"
    return values[0]


def test_dockerfile_passes_hadolint():
    result = subprocess.run(
        ["hadolint", "--failure-threshold", "info", str(ROOT / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_passes_the_stated_checks():
    instrs = dockerfile_instructions()
    args = {m.group(1): m.group(2) for _, i, a in instrs if i == "ARG"
            for m in [re.match(r"(\w+)=(\S*)", a)] if m}
    froms = [a for _, i, a in instrs if i == "FROM"]
    assert len(froms) >= 2, "not multi-stage"
    for f in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], f.split()[0])
        name, _, tag = image.rpartition(":")
        assert name and tag and tag != "latest", f"base image without a pinned tag: {image}"
        if "/" not in image.split(":")[0] or image.startswith("rust"):
            assert re.search(r"\d", tag), f"tag is not a version: {image}"
    runs = " ".join(a for _, i, a in instrs if i == "RUN")
    assert re.search(r"cargo build[^&]*--release[^&]*--locked", runs), runs
    # The runtime is minimal: distroless or a slim Debian.
    assert re.search(r"distroless|slim", froms[-1]), froms[-1]
    user = single("USER")
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, f"USER must be a numeric non-root uid: {user}"
    exposed = sorted(int(p) for p in single("EXPOSE").split())
    defaults = sorted(
        int(config_default(n).rsplit(":", 1)[1])
        for n in ("DEFAULT_HTTP_ADDR", "DEFAULT_GRPC_ADDR")
    )
    assert exposed == defaults
    env = image_env()
    assert {env["CALLGATE_HTTP_ADDR"].rsplit(":", 1)[1],
            env["CALLGATE_GRPC_ADDR"].rsplit(":", 1)[1]} == {str(p) for p in exposed}
    hc = healthcheck_command()
    entry = exec_form(single("ENTRYPOINT"))
    assert hc[0] == entry[0], "HEALTHCHECK must run the image's own binary (no curl inside)"
    copied = [a.split()[-1] for i, a in final_stage() if i == "COPY" and "--from=" in a]
    assert entry[0] in copied, f"ENTRYPOINT {entry[0]} is not what the build stage copies"
    exec_form(single("CMD"))
    # Every setting is documented in the Dockerfile.
    text = (ROOT / "Dockerfile").read_text()
    missing = sorted(v for v in config_env_vars() | {"RUST_LOG"} if v not in text)
    assert not missing, f"settings not documented in the Dockerfile: {missing}"


def dockerignore_excludes(path):
    """Whether .dockerignore leaves `path` (relative, '/'-separated) out of the build context."""
    excluded = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        hit = any(
            fnmatch.fnmatchcase(p, pattern)
            or (pattern.startswith("**/") and fnmatch.fnmatchcase(p.split("/")[-1], pattern[3:]))
            for p in prefixes
        )
        if hit:
            excluded = not negate
    return excluded


def test_build_context_holds_what_the_locked_build_needs():
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    needed = ["Cargo.toml", "Cargo.lock", "build.rs", "src/main.rs", "src/lib.rs",
              "proto/callgate/v1/callgate.proto"]
    for member in manifest.get("workspace", {}).get("members", []):
        needed.append(f"{member}/Cargo.toml")
    for path in needed:
        assert (ROOT / path).exists(), path
        assert not dockerignore_excludes(path), f"{path} left out of the build context"
    for path in ["target/debug/callgate", ".git/HEAD", "fuzz/Cargo.toml"]:
        assert dockerignore_excludes(path), f"{path} should not be in the build context"


def compose():
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def compose_env_value(value):
    """Resolves compose's `${VAR:-default}` to its default (the tests set no such variable)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", str(value))


def test_compose_redis_is_configured_as_callgate_requires():
    c = compose()
    redis = c["services"]["redis"]
    assert re.match(r"^redis:\d+\.\d+\.\d+", redis["image"]), redis["image"]
    cmd = redis["command"]
    pairs = dict(zip(cmd[1::2], cmd[2::2]))
    assert cmd[0] == "redis-server"
    assert pairs["--appendonly"] == "yes"
    assert pairs["--appendfsync"] == "always"
    assert pairs["--maxmemory-policy"] == "noeviction"
    cg = c["services"]["callgate"]
    assert cg["depends_on"]["redis"]["condition"] == "service_healthy"
    assert cg["build"]["context"] == "."
    env = cg["environment"]
    assert set(env) <= config_env_vars() | {"RUST_LOG"}, set(env) - config_env_vars()
    assert env["CALLGATE_REDIS_URL"] == "redis://redis:6379"
    grace = float(env["CALLGATE_SHUTDOWN_GRACE_SECS"])
    stop = float(cg["stop_grace_period"].rstrip("s"))
    assert stop > grace, "docker would kill callgate before its drain ends"
    published = sorted(int(p.split(":")[1].split("#")[0]) for p in cg["ports"])
    exposed = sorted(int(p) for p in single("EXPOSE").split())
    assert published == exposed


def test_image_entrypoint_and_healthcheck_work_outside_a_container():
    c = compose()
    # compose.yaml's Redis command line, on a free loopback port.
    redis = RedisServer(c["services"]["redis"]["command"][1:])
    try:
        assert redis.config("appendonly") == "yes"
        assert redis.config("appendfsync") == "always"
        assert redis.config("maxmemory-policy") == "noeviction"

        # The image's environment, then compose's for the callgate service, with the compose
        # network's `redis` host and the published ports mapped to loopback ports here.
        env = dict(image_env())
        for k, v in c["services"]["callgate"]["environment"].items():
            env[k] = compose_env_value(v)
        env["CALLGATE_REDIS_URL"] = env["CALLGATE_REDIS_URL"].replace(
            "redis:6379", f"127.0.0.1:{redis.port}")
        http_port, grpc_port = free_port(), free_port()
        env["CALLGATE_HTTP_ADDR"] = env["CALLGATE_HTTP_ADDR"].replace(
            ":8080", f":{http_port}").replace("0.0.0.0", "127.0.0.1")
        env["CALLGATE_GRPC_ADDR"] = env["CALLGATE_GRPC_ADDR"].replace(
            ":50051", f":{grpc_port}").replace("0.0.0.0", "127.0.0.1")
        # compose's bind mounts, mapped back to the files in this repository.
        for volume in c["services"]["callgate"].get("volumes", []):
            host, container = volume.split(":")[:2]
            for k, v in env.items():
                if v == container:
                    env[k] = str((ROOT / host).resolve())
        assert os.path.exists(env["CALLGATE_API_CLIENTS_FILE"]), env["CALLGATE_API_CLIENTS_FILE"]
        env["PATH"] = os.environ.get("PATH", "")

        binary = callgate_binary()
        # Run as the image's user when we can (tests as root): the binary needs no privilege.
        as_image_user = []
        if os.geteuid() == 0:
            as_image_user = ["setpriv", f"--reuid={IMAGE_UID}", f"--regid={IMAGE_UID}",
                             "--clear-groups"]

        def image_argv(argv):
            return as_image_user + [binary] + argv[1:]

        entry = exec_form(single("ENTRYPOINT"))
        cmd = exec_form(single("CMD"))
        hc = healthcheck_command()

        def healthcheck():
            return subprocess.run(image_argv(hc), env=env, capture_output=True, text=True,
                                  timeout=30)

        assert healthcheck().returncode == 1, "healthcheck passed with nothing running"
        proc = subprocess.Popen(image_argv(entry + cmd), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            result = wait_for(lambda: (r := healthcheck()).returncode == 0 and r,
                              what="the HEALTHCHECK command to pass")
            assert result.stdout.startswith(
                f"healthy: http://127.0.0.1:{http_port}/healthz answered 200"), result.stdout
            # It runs on compose's Redis, as the image's user.
            if as_image_user:
                status = open(f"/proc/{proc.pid}/status").read()
                assert re.search(rf"^Uid:\s+{IMAGE_UID}\s", status, re.M), status
            token = env["CALLGATE_WEBHOOK_TOKENS"].split(",")[0]
            req = urllib.request.Request(
                f"http://127.0.0.1:{http_port}/webhooks/doubletick",
                data=doubletick_body("+919000000000", "+919876543210", "wamid.image1").encode(),
                headers={"content-type": "application/json",
                         "authorization": f"Bearer {token}"},
                method="POST")
            with urllib.request.urlopen(req, timeout=5) as r:
                assert r.status == 200
            check = subprocess.run(
                image_argv([entry[0], "check", "+919000000000", "+919876543210",
                            "--addr", f"127.0.0.1:{grpc_port}", "--token", DEMO_KEY]),
                env=env, capture_output=True, text=True, timeout=30)
            assert check.returncode == 0, check.stdout + check.stderr
            assert "allowed=true" in check.stdout
            assert int(redis_dbsize(redis)) > 0, "nothing was written to compose's Redis"
            # `docker stop`: SIGTERM, drained within compose's stop_grace_period.
            stop = float(c["services"]["callgate"]["stop_grace_period"].rstrip("s"))
            proc.send_signal(15)
            assert proc.wait(timeout=stop) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert healthcheck().returncode == 1, "healthcheck passed after the service stopped"
    finally:
        redis.stop()


def redis_dbsize(redis):
    return redis_command(redis.port, "DBSIZE")
