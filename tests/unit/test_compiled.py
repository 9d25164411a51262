"""The compiled media path (issue 11): what runs is the build of the current source, or the source itself.

`make test` compiles first (`tools/build_native.py --require`), so the suite tests what ships; the
guard must never run a build older than its source, since compiled modules of one group call each
other natively and an edited source would silently not run.
"""

from __future__ import annotations

import importlib.machinery
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from callrec import compiled

MODULES = ("callrec.core.jitter", "callrec.media.pipe_channel")


def fake_build(root: Path, built: tuple[str, ...] = MODULES) -> Path:
    """A package tree with sources, extension files for `built` and a manifest of the sources' digests."""
    digests = {}
    for module in MODULES:
        source = compiled.source_path(module, root)
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(f"# {module}\n")
        digests[module] = compiled.source_digest(source)
        if module in built:
            source.with_name(source.stem + importlib.machinery.EXTENSION_SUFFIXES[0]).write_bytes(b"\x7fELF")
    manifest = root / "_compiled.json"
    manifest.write_text(json.dumps({"modules": digests}))
    return manifest


def decide(root: Path, manifest: Path, environ: dict[str, str] | None = None) -> compiled.CompiledState:
    return compiled.decide(environ or {}, manifest, root, MODULES)


def test_a_build_of_the_current_sources_runs_compiled(tmp_path: Path) -> None:
    state = decide(tmp_path, fake_build(tmp_path))
    assert state.compiled and "2 modules" in state.reason


def test_an_edited_source_makes_the_whole_set_interpreted_and_says_which(tmp_path: Path) -> None:
    manifest = fake_build(tmp_path)
    compiled.source_path("callrec.media.pipe_channel", tmp_path).write_text("# edited after the build\n")
    state = decide(tmp_path, manifest)
    assert not state.compiled and not state.requested
    assert "callrec.media.pipe_channel" in state.reason and "callrec.core.jitter" not in state.reason
    assert "make compile" in state.reason


def test_a_missing_extension_or_manifest_is_no_build(tmp_path: Path) -> None:
    state = decide(tmp_path, fake_build(tmp_path, built=("callrec.core.jitter",)))
    assert not state.compiled and "callrec.media.pipe_channel" in state.reason
    state = decide(tmp_path, tmp_path / "absent.json")
    assert not state.compiled and "no compiled build" in state.reason and "C compiler" in state.reason
    (tmp_path / "broken.json").write_text("{not json")
    assert not decide(tmp_path, tmp_path / "broken.json").compiled


def test_a_rebuild_finds_the_extensions_an_earlier_set_left(tmp_path: Path) -> None:
    """A module taken out of the set keeps its old extension beside its source, which Python imports first and
    which then asks the new group library for an entry it lacks: the build must find it to delete it."""
    fake_build(tmp_path)
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    left = compiled.source_path("callrec.core.chunker", tmp_path).with_name("chunker" + suffix)
    left.write_bytes(b"\x7fELF")
    group = tmp_path / ("native__mypyc" + suffix)
    group.write_bytes(b"\x7fELF")
    found = compiled.built_extensions(tmp_path)
    assert left in found and group in found
    assert {compiled.extension_path(m, tmp_path) for m in MODULES} <= set(found)
    assert not any(path.suffix == ".py" for path in found) and len(found) == 4


@pytest.mark.parametrize("value", ["0", "false", "OFF", "no"])
def test_the_environment_can_ask_for_the_source(tmp_path: Path, value: str) -> None:
    state = decide(tmp_path, fake_build(tmp_path), {"CALLREC_COMPILED": value})
    assert not state.compiled and state.requested and value in state.reason


def loaded_from(environ: dict[str, str]) -> dict[str, str]:
    """Where a fresh interpreter loads each compiled module from, and what it decided."""
    code = ("import json, importlib, callrec.compiled as c; "
            "print(json.dumps({'state': c.state().reason, "
            "**{m: importlib.import_module(m).__file__ for m in c.MODULES}}))")
    env = {k: v for k, v in os.environ.items() if k != "CALLREC_COMPILED"} | environ
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60, check=True)
    result: dict[str, str] = json.loads(out.stdout)
    return result


def test_the_test_run_uses_the_compiled_build_and_can_turn_it_off() -> None:
    """`make test` builds before the suite: a missing or stale build here means the suite would not test
    what ships (run `make compile`)."""
    if os.environ.get("CALLREC_COMPILED", "").lower() in ("0", "false", "no", "off"):
        pytest.skip("the suite runs interpreted on purpose (CALLREC_COMPILED=0)")
    default = loaded_from({})
    assert "compiled by mypyc" in default.pop("state"), "the compiled build is missing or stale: run `make compile`"
    assert all(Path(f).suffix == ".so" for f in default.values()), default
    interpreted = loaded_from({"CALLREC_COMPILED": "0"})
    assert interpreted.pop("state") == "interpreted: CALLREC_COMPILED=0"
    assert all(Path(f).suffix == ".py" for f in interpreted.values()), interpreted
    assert set(interpreted) == set(compiled.MODULES)


def test_the_makefile_rebuilds_when_any_compiled_source_changes() -> None:
    """`make compile` decides from COMPILED_SOURCES whether to rebuild: it must list the whole compiled set."""
    makefile = (Path(__file__).resolve().parents[2] / "Makefile").read_text()
    block = makefile.split("COMPILED_SOURCES :=", 1)[1].split("COMPILED_STAMP", 1)[0]
    listed = {"callrec." + path.replace("/", ".") for path in re.findall(r"\b((?:core|media)/\w+)\.py", block)}
    assert listed == set(compiled.MODULES)
    assert "compiled.py" in block  # the list itself


def test_no_slice_bound_of_the_compiled_modules_calls_anything_but_len() -> None:
    """mypyc 2.4 evaluates a slice bound of a bytearray or memoryview twice: `view[os.write(fd, view):]`
    wrote every answer of the decode worker twice. A call in a bound must be a pure one (`len`)."""
    import ast

    offenders = []
    for module in compiled.MODULES:
        path = compiled.source_path(module)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Slice):
                for bound in (node.lower, node.upper, node.step):
                    calls = [c for c in ast.walk(bound) if isinstance(c, ast.Call)] if bound is not None else []
                    if any(not (isinstance(c.func, ast.Name) and c.func.id == "len") for c in calls):
                        offenders.append(f"{module}:{node.lineno}")
    assert not offenders, offenders
