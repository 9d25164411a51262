"""Layering rules from DESIGN.md, enforced: core/ knows neither gRPC nor PyAV; storage/ and
events/ know nothing of gRPC; generated stubs are only used by api/ and the clients."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "server" / "callrec"


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer,forbidden", [
    ("core", ("grpc", "av", "callrec.v1", "callrec.api", "google.protobuf")),
    ("storage", ("grpc", "callrec.v1", "callrec.api", "callrec.core")),
    ("events", ("grpc", "callrec.v1", "callrec.api")),
    ("state", ("grpc", "callrec.v1", "callrec.api")),
])
def test_layer_imports(layer, forbidden):
    offenders = []
    for path in (PKG / layer).rglob("*.py"):
        for name in imports_of(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                offenders.append(f"{path.relative_to(PKG)} imports {name}")
    assert not offenders, offenders
