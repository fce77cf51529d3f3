#!/usr/bin/env python3
"""Generates callgate's Python gRPC code from proto/ with grpcio-tools.

    python3 clients/python/generate.py [--out clients/python/gen]

Writes callgate/v1/callgate_pb2.py and callgate/v1/callgate_pb2_grpc.py under --out; the
client imports them from there (CALLGATE_PY_GEN or --gen-dir tells it where). Nothing generated
is committed: the proto is the contract.
"""

import argparse
import sys
from pathlib import Path

from grpc_tools import protoc

try:  # Python 3.9+: the well-known types (google/protobuf/timestamp.proto) ship with grpcio-tools.
    from importlib.resources import files
except ImportError:  # pragma: no cover
    files = None

ROOT = Path(__file__).resolve().parents[2]
PROTO = ROOT / "proto"


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    well_known = str(files("grpc_tools") / "_proto")
    code = protoc.main([
        "grpc_tools.protoc",
        f"-I{PROTO}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(PROTO / "callgate" / "v1" / "callgate.proto"),
    ])
    if code != 0:
        sys.exit(f"protoc failed with exit code {code}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "gen")
    generate(parser.parse_args().out)
