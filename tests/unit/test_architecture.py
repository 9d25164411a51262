"""Layering rules from DESIGN.md, enforced on the import graph:

- core/ imports only callrec.core, the standard library and numpy (everything else
  through the ports of core/ports.py);
- storage/ and events/ know nothing of gRPC, storage/ nothing of core;
- media/ may use core (it implements core's ports) but not gRPC, storage, events or state;
- security/ (token verification, the role policy, TLS files) is pure: no gRPC, nothing of the
  server's other layers, so every security rule is testable without a server (api/auth.py is
  its gRPC side);
- generated stubs are used by api/ and the composition root only;
- the package root holds only the composition root, config, logs, metrics and the harness;
- no two classes or protocols of the server share a name.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "server" / "callrec"
STDLIB = set(sys.stdlib_module_names) | {"__future__"}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def modules(layer: str) -> list[Path]:
    return sorted((PKG / layer).rglob("*.py"))


def test_core_imports_only_core_the_standard_library_and_numpy() -> None:
    offenders = []
    for path in modules("core"):
        for name in imports_of(path):
            top = name.split(".")[0]
            if top in STDLIB or top == "numpy" or name == "callrec.core" or name.startswith("callrec.core."):
                continue
            offenders.append(f"{path.relative_to(PKG)} imports {name}")
    assert not offenders, offenders


@pytest.mark.parametrize("layer,forbidden", [
    ("storage", ("grpc", "callrec.v1", "callrec.api", "callrec.core", "callrec.events", "callrec.media")),
    ("events", ("grpc", "callrec.v1", "callrec.api", "callrec.media", "callrec.storage")),
    ("state", ("grpc", "callrec.v1", "callrec.api", "callrec.media", "callrec.storage", "callrec.events")),
    ("media", ("grpc", "callrec.v1", "callrec.api", "callrec.storage", "callrec.events", "callrec.state")),
    ("security", ("grpc", "callrec.v1", "callrec.api", "callrec.core", "callrec.media", "callrec.storage",
                  "callrec.events", "callrec.state", "callrec.server")),
])
def test_layer_imports(layer: str, forbidden: tuple[str, ...]) -> None:
    offenders = []
    for path in modules(layer):
        for name in imports_of(path):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                offenders.append(f"{path.relative_to(PKG)} imports {name}")
    assert not offenders, offenders


def test_only_the_composition_root_and_support_modules_sit_at_the_package_root() -> None:
    allowed = {"__init__.py", "__main__.py", "server.py", "config.py", "logs.py", "metrics.py", "testing",
               "child_process.py",  # support: how the video and upload workers are started
               "runtime_gc.py",  # support: the garbage collector of the serving process
               "runtime_blas.py",  # support: BLAS on one thread in the serving process
               "runtime_priority.py",  # support: a control node's threads at real-time priority
               "cancellation.py",  # support: loops that honour a cancel a library swallowed
               "loop_lag.py",  # support: the serving event loop's lag, on /metrics
               "compiled.py"}  # support: the mypyc-compiled media path, or its source when that build is stale
    at_root = {p.name for p in PKG.iterdir() if (p.suffix == ".py" or p.is_dir()) and not p.name.startswith(".")}
    packages = {"api", "core", "media", "storage", "events", "state", "security", "webhooks", "v1", "schemas",
                "__pycache__"}
    assert at_root - packages <= allowed, sorted(at_root - packages - allowed)


def test_generated_stubs_are_used_only_by_the_api_layer_and_the_composition_root() -> None:
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[0] in ("api", "v1") or rel.name == "server.py":
            continue
        for name in imports_of(path):
            if name == "callrec.v1" or name.startswith("callrec.v1."):
                offenders.append(f"{rel} imports {name}")
    assert not offenders, offenders


def test_no_two_classes_share_a_name() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in PKG.rglob("*.py"):
        if "v1" in path.relative_to(PKG).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                where[node.name].append(str(path.relative_to(PKG)))
    shared = {name: paths for name, paths in where.items() if len(paths) > 1}
    assert not shared, shared


def test_the_grpc_layer_builds_media_responses_only_in_convert() -> None:
    """api/media.py only translates: acks, `opened`, warnings and state updates come from convert.py."""
    source = (PKG / "api" / "media.py").read_text()
    for message in ("StreamOpened(", "MediaAck(", "ParticipantAck(", "MediaWarning(", "RecordingStateUpdate("):
        assert message not in source, message
