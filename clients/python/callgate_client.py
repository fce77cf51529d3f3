#!/usr/bin/env python3
"""A Python client of callgate's gRPC API: check before dialing, follow StreamGrants.

Generate the gRPC code first (python3 clients/python/generate.py), then:

    callgate_client.py check BUSINESS CUSTOMER      # exit 0 allowed, 3 not allowed, 1 error
    callgate_client.py dial BUSINESS CUSTOMER       # "dials" only if callgate says allowed
    callgate_client.py follow --cursor-file grants.cursor [--include-denials] [--include-expiries]

Options for every command: --addr host:port (default 127.0.0.1:50051), --token KEY (sent as
`authorization: Bearer KEY`, for a callgate that requires API keys), --ca-file PEM (TLS),
--gen-dir DIR (where generate.py wrote the code; default ./gen beside this file, or
CALLGATE_PY_GEN).

Rules this example follows, and a dialer should too:
- Fail closed: any error of a check (UNAVAILABLE, a timeout, a bad number) means "do not call".
- `follow` handles an event, then saves its cursor (to a temp file, renamed over the old one),
  so a restart resumes exactly after the last event handled: an event may be handled twice
  after a crash between the two steps, never missed. Checkpoints advance the cursor too.
- When callgate restarts, the stream ends with UNAVAILABLE; `follow` reconnects with backoff and
  resumes from its saved cursor. OUT_OF_RANGE means the cursor is older than the retained log:
  replay with --since, or rebuild state from checks.
"""

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path


def load_generated(gen_dir):
    gen = gen_dir or os.environ.get("CALLGATE_PY_GEN") or str(Path(__file__).resolve().parent / "gen")
    if not (Path(gen) / "callgate" / "v1" / "callgate_pb2.py").exists():
        sys.exit(f"no generated code in {gen}: run clients/python/generate.py first")
    sys.path.insert(0, gen)
    global grpc, pb, pb_grpc, Timestamp
    import grpc  # noqa: E402
    from google.protobuf.timestamp_pb2 import Timestamp  # noqa: E402
    from callgate.v1 import callgate_pb2 as pb  # noqa: E402
    from callgate.v1 import callgate_pb2_grpc as pb_grpc  # noqa: E402


class Callgate:
    """One channel to callgate, with the per-call metadata (API key) and deadline."""

    def __init__(self, addr, token=None, ca_file=None, timeout=2.0):
        if ca_file:
            creds = grpc.ssl_channel_credentials(Path(ca_file).read_bytes())
            self.channel = grpc.secure_channel(addr, creds)
        else:
            self.channel = grpc.insecure_channel(addr)
        self.stub = pb_grpc.ConsentAuthorityStub(self.channel)
        self.metadata = [("authorization", f"Bearer {token}")] if token else []
        self.timeout = timeout

    def check(self, business, customer, include_evidence=False, at_least_as_fresh=""):
        """The CheckCallPermissionResponse; raises grpc.RpcError on any failure.

        `include_evidence`: also return the deciding decision's evidence (not sent otherwise).
        `at_least_as_fresh`: a webhook 200's `consistency_token` (or a StreamGrants cursor, or
        an RFC 3339 time): the answer reflects at least that write, on any replica.
        """
        return self.stub.CheckCallPermission(
            pb.CheckCallPermissionRequest(
                business_number=business,
                customer_number=customer,
                include_evidence=include_evidence,
                at_least_as_fresh=at_least_as_fresh,
            ),
            metadata=self.metadata,
            timeout=self.timeout,
        )

    def may_call(self, business, customer):
        """(allowed, reason). Fails closed: an error is (False, the error)."""
        try:
            answer = self.check(business, customer)
        except grpc.RpcError as e:
            return False, f"check failed ({e.code().name}: {e.details()}): not calling"
        return answer.allowed, pb.ConsentState.Name(answer.state)

    def follow(self, cursor_file, handle, businesses=(), include_denials=False,
               include_expiries=False, since=None, max_events=None, deadline=None,
               max_reconnects=None):
        """Follows StreamGrants from the cursor saved in `cursor_file` (else from `since`, else
        from now), calling `handle(event)` for each consent event and saving the cursor after
        it. Returns the number of events handled (stops after `max_events`, or at `deadline`,
        a time.monotonic() value)."""
        cursor_path = Path(cursor_file)
        handled, reconnects, backoff = 0, 0, 0.1
        while True:
            cursor = cursor_path.read_text().strip() if cursor_path.exists() else ""
            request = pb.StreamGrantsRequest(
                business_numbers=list(businesses),
                include_denials=include_denials,
                include_expiries=include_expiries,
                resume_after=cursor,
            )
            if not cursor and since is not None:
                request.since.FromDatetime(since)
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            stream = self.stub.StreamGrants(request, metadata=self.metadata, timeout=timeout)
            try:
                for event in stream:
                    if event.kind != pb.EVENT_KIND_CHECKPOINT:
                        handle(event)
                        handled += 1
                    save_cursor(cursor_path, event.cursor)
                    backoff = 0.1
                    if max_events is not None and handled >= max_events:
                        stream.cancel()
                        return handled
                return handled  # the server ended the stream cleanly
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.CANCELLED:
                    return handled
                if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    return handled
                if e.code() == grpc.StatusCode.OUT_OF_RANGE:
                    raise SystemExit(f"cursor in {cursor_path} is older than callgate's retained "
                                     f"log ({e.details()}); replay with --since")
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                reconnects += 1
                if max_reconnects is not None and reconnects > max_reconnects:
                    raise
                print(f"stream interrupted ({e.details()}); resuming from the saved cursor",
                      file=sys.stderr)
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


def save_cursor(path, cursor):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(cursor)
    os.replace(tmp, path)


def event_json(event):
    def when(ts):
        return ts.ToDatetime(tzinfo=dt.timezone.utc).isoformat() if ts.seconds else None

    return json.dumps({
        "kind": pb.EventKind.Name(event.kind),
        "business": event.business_number,
        "customer": event.customer_number,
        "permanent": event.permanent,
        "decided_at": when(event.decided_at),
        "expires_at": when(event.expires_at),
        "message_id": event.evidence.message_id,
    })


def main(argv=None):
    parser = argparse.ArgumentParser(description="callgate example client")
    parser.add_argument("--addr", default="127.0.0.1:50051")
    parser.add_argument("--token", help="API key, sent as `authorization: Bearer KEY`")
    parser.add_argument("--ca-file", help="PEM CA certificate: connect with TLS")
    parser.add_argument("--gen-dir", help="where generate.py wrote the gRPC code")
    parser.add_argument("--timeout", type=float, default=2.0, help="deadline of a check (s)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("check", "dial"):
        p = sub.add_parser(name)
        p.add_argument("business")
        p.add_argument("customer")
    p = sub.add_parser("follow")
    p.add_argument("--cursor-file", required=True)
    p.add_argument("--business", action="append", default=[])
    p.add_argument("--include-denials", action="store_true")
    p.add_argument("--include-expiries", action="store_true")
    p.add_argument("--since", help="ISO-8601 instant to replay from when no cursor is saved")
    p.add_argument("--max-events", type=int, help="stop after this many events")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    args = parser.parse_args(argv)

    load_generated(args.gen_dir)
    client = Callgate(args.addr, token=args.token, ca_file=args.ca_file, timeout=args.timeout)
    if args.command == "check":
        try:
            answer = client.check(args.business, args.customer)
        except grpc.RpcError as e:
            print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        print(f"allowed={str(answer.allowed).lower()} state={pb.ConsentState.Name(answer.state)}")
        return 0 if answer.allowed else 3
    if args.command == "dial":
        allowed, reason = client.may_call(args.business, args.customer)
        if allowed:
            print(f"dialing {args.customer} ({reason})")  # a real dialer places the call here
            return 0
        print(f"not dialing {args.customer}: {reason}")
        return 3
    since = dt.datetime.fromisoformat(args.since.replace("Z", "+00:00")) if args.since else None
    deadline = time.monotonic() + args.duration if args.duration else None
    client.follow(
        args.cursor_file,
        lambda e: print(event_json(e), flush=True),
        businesses=args.business,
        include_denials=args.include_denials,
        include_expiries=args.include_expiries,
        since=since,
        max_events=args.max_events,
        deadline=deadline,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
