#!/usr/bin/env python3
"""Checks every row of a callgate NDJSON export against its hash, offline (issue 14, chain v1).

Usage: scripts/verify-export.py export.ndjson   (exit 0: every chained row intact)
An independent re-implementation of the algorithm in README.md, "The tamper-evident record",
for auditors: Python standard library only, no callgate code."""
import hashlib, json, sys
from datetime import datetime, timedelta, timezone

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

def ms(t):  # RFC 3339 as exported -> decimal milliseconds since the epoch
    if t == "":
        return b""
    d = datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    return str((d - EPOCH) // timedelta(milliseconds=1)).encode()

def field(b):
    return len(b).to_bytes(4, "big") + b

def entry_hash(r):
    parts = [b"callgate.chain.v1", r["business"].encode(), r["customer"].encode(),
             str(r["position"]).encode(), bytes.fromhex(r["prev_hash"]),
             r["outcome"].encode(), r["decision"].encode(), ms(r["event_time"]),
             ms(r["expires_at"]), ms(r["received_time"]), r["source"].encode(),
             r["message_id"].encode(), r["paired_message_id"].encode(),
             r["response_source"].encode(), r["sender_customer_id"].encode(),
             bytes.fromhex(r["body_sha256"]), ms(r["stated_event_time"]),
             ms(r["stated_expires_at"])]
    return hashlib.sha256(b"".join(field(p) for p in parts)).hexdigest()

bad = 0
last = {}
for n, line in enumerate(open(sys.argv[1]), 1):
    r = json.loads(line)
    if r["record"] != "chained":
        print(f"line {n}: {r['record']}")
        bad += r["record"] == "gone"
        continue
    if entry_hash(r) != r["entry_hash"]:
        print(f"line {n}: {r['customer']} position {r['position']}: edited"); bad += 1
    key = (r["business"], r["customer"])
    prev = last.get(key)
    if prev and prev["position"] + 1 == r["position"] and prev["entry_hash"] != r["prev_hash"]:
        print(f"line {n}: {r['customer']} position {r['position']}: unlinked"); bad += 1
    last[key] = r
print("OK" if bad == 0 else f"{bad} breaks")
sys.exit(1 if bad else 0)
