"""The Python example client (clients/python/), generated from the proto with grpcio-tools at
test time and run as a user would run it, against a live callgate."""

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest

from conftest import DEMO_KEY, ROOT, TOKEN, doubletick_body

CLIENT = ROOT / "clients" / "python" / "callgate_client.py"
BUSINESS = "+919000000000"
CUSTOMERS = ["+919876543210", "+919876543211", "+919876543212"]


@pytest.fixture(scope="module")
def gen_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    subprocess.run([sys.executable, str(ROOT / "clients" / "python" / "generate.py"),
                    "--out", str(out)], check=True, timeout=120)
    assert (out / "callgate" / "v1" / "callgate_pb2_grpc.py").exists()
    return out


def client(gen_dir, app, *args, timeout=30):
    # --token: the client sends it as `authorization: Bearer KEY`; callgate requires it.
    return subprocess.run(
        [sys.executable, str(CLIENT), "--gen-dir", str(gen_dir), "--addr", app.grpc,
         "--token", DEMO_KEY, *args],
        capture_output=True, text=True, timeout=timeout)


def post(app, customer, message_id, response="accept"):
    status, body = app.post(
        "/webhooks/doubletick", doubletick_body(BUSINESS, customer, message_id, response),
        {"content-type": "application/json", "authorization": f"Bearer {TOKEN}"})
    assert status == 200, body


def follow(gen_dir, app, cursor, *extra):
    result = client(gen_dir, app, "follow", "--cursor-file", str(cursor), "--duration", "20",
                    *extra)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_a_call_without_the_api_key_is_refused(gen_dir, callgate):
    result = subprocess.run(
        [sys.executable, str(CLIENT), "--gen-dir", str(gen_dir), "--addr", callgate.grpc,
         "dial", BUSINESS, CUSTOMERS[0]], capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    assert "check failed (UNAUTHENTICATED" in result.stdout, result.stdout


def test_checks_before_dialing_and_fails_closed(gen_dir, callgate):
    result = client(gen_dir, callgate, "dial", BUSINESS, CUSTOMERS[0])
    assert (result.returncode, result.stdout) == (
        3, f"not dialing {CUSTOMERS[0]}: CONSENT_STATE_NO_CONSENT\n")
    post(callgate, CUSTOMERS[0], "wamid.py1")
    result = client(gen_dir, callgate, "check", BUSINESS, CUSTOMERS[0])
    assert (result.returncode, result.stdout) == (
        0, "allowed=true state=CONSENT_STATE_GRANTED_PERMANENT\n")
    result = client(gen_dir, callgate, "dial", BUSINESS, CUSTOMERS[0])
    assert (result.returncode, result.stdout) == (
        0, f"dialing {CUSTOMERS[0]} (CONSENT_STATE_GRANTED_PERMANENT)\n")
    # An invalid number is an error, and an error never dials.
    result = client(gen_dir, callgate, "dial", BUSINESS, "12ab")
    assert result.returncode == 3
    assert "check failed (INVALID_ARGUMENT" in result.stdout
    # callgate gone: the check fails, the dialer does not call.
    callgate.kill()
    result = client(gen_dir, callgate, "dial", BUSINESS, CUSTOMERS[0])
    assert result.returncode == 3
    assert "check failed (UNAVAILABLE" in result.stdout, result.stdout
    result = client(gen_dir, callgate, "check", BUSINESS, CUSTOMERS[0])
    assert result.returncode == 1 and result.stderr.startswith("error: UNAVAILABLE")


def test_follows_stream_grants_and_resumes_from_the_saved_cursor(gen_dir, callgate, tmp_path):
    cursor = tmp_path / "grants.cursor"
    since = (datetime.now(timezone.utc) - timedelta(minutes=1)).isoformat()
    post(callgate, CUSTOMERS[0], "wamid.f1")
    # First run: no cursor saved, so it replays from --since; stops after one event.
    events = follow(gen_dir, callgate, cursor, "--since", since, "--max-events", "1")
    assert [(e["kind"], e["customer"], e["message_id"]) for e in events] == [
        ("EVENT_KIND_GRANTED", CUSTOMERS[0], "wamid.f1")]
    saved = cursor.read_text()
    assert saved
    # While the client is away: a grant, a denial, another grant.
    post(callgate, CUSTOMERS[1], "wamid.f2")
    post(callgate, CUSTOMERS[0], "wamid.f3", response="reject")
    post(callgate, CUSTOMERS[2], "wamid.f4")
    # Second run resumes after the saved cursor: exactly the three missed events, and not the
    # first one again (--since is ignored once a cursor is saved).
    events = follow(gen_dir, callgate, cursor, "--since", since, "--include-denials",
                    "--max-events", "3")
    assert sorted((e["kind"], e["customer"], e["message_id"]) for e in events) == sorted([
        ("EVENT_KIND_GRANTED", CUSTOMERS[1], "wamid.f2"),
        ("EVENT_KIND_DENIED", CUSTOMERS[0], "wamid.f3"),
        ("EVENT_KIND_GRANTED", CUSTOMERS[2], "wamid.f4"),
    ])
    assert cursor.read_text() != saved
    # Nothing new: an idle run only moves the cursor with checkpoints and sees no event.
    events = follow(gen_dir, callgate, cursor, "--include-denials", "--duration", "1")
    assert events == []
