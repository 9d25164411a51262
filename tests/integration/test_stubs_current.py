"""The committed Python stubs in server/callrec/v1 are what `make proto` generates from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness import ROOT

PROTO_DIR = ROOT / "protos"
STUB_DIR = ROOT / "server" / "callrec" / "v1"
STALE = "stubs are stale: run `make proto`"


def test_python_stubs_match_protos(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "callrec" / "v1").glob("*.proto"))
    assert protos, f"no .proto files in {PROTO_DIR / 'callrec' / 'v1'}"
    proc = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}", *protos],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, f"protoc failed:\n{proc.stdout}{proc.stderr}"

    generated = sorted((tmp_path / "callrec" / "v1").iterdir())
    assert len(generated) == 3 * len(protos), [p.name for p in generated]
    problems = []
    for fresh in generated:
        committed = STUB_DIR / fresh.name
        if not committed.exists():
            problems.append(f"{committed.relative_to(ROOT)} is missing")
        elif committed.read_bytes() != fresh.read_bytes():
            problems.append(f"{committed.relative_to(ROOT)} differs from what protoc generates")
    # A stub whose .proto was removed would linger unnoticed otherwise.
    expected = {p.name for p in generated}
    for stub in STUB_DIR.glob("*_pb2*.py*"):
        if stub.name not in expected:
            problems.append(f"{stub.relative_to(ROOT)} has no .proto in protos/callrec/v1")
    assert not problems, f"{STALE}\n" + "\n".join(problems)
