"""Fixtures shared by every test: real servers on loopback ports and the JSON Schemas."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from tests.harness import OWN_SCHEMAS, SHARED_SCHEMAS, ServerProcess


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the whole session (media clock, 2 s reconnect grace); use unique call ids."""
    proc = ServerProcess(tmp_path_factory.mktemp("server"), "--clock", "media", "--reconnect-grace", "2")
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory for servers of a test's own (restart tests reuse the same data dir)."""
    started: list[ServerProcess] = []

    def make(*args: str, data_dir: Path | None = None, env: dict[str, str] | None = None) -> ServerProcess:
        proc = ServerProcess(data_dir or tmp_path / "data", *args, env=env)
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.stop()


def _validators(name: str) -> list[Draft202012Validator]:
    assert (OWN_SCHEMAS / f"{name}.schema.json").exists(), f"the project must ship its own {name} schema"
    found = []
    for folder in (OWN_SCHEMAS, SHARED_SCHEMAS):
        path = folder / f"{name}.schema.json"
        if path.exists():
            schema = json.loads(path.read_text())
            found.append(Draft202012Validator(schema, format_checker=FormatChecker()))
    assert found, f"no schema {name} found in {OWN_SCHEMAS} or {SHARED_SCHEMAS}"
    return found


@pytest.fixture(scope="session")
def validate_json() -> Callable[[str, object], None]:
    """validate_json(schema_name, document): validates against the project's copy and ../shared/schemas."""
    cache: dict[str, list[Draft202012Validator]] = {}

    def check(name: str, doc: object) -> None:
        validators = cache.setdefault(name, _validators(name))
        for v in validators:
            errors = sorted(v.iter_errors(doc), key=lambda e: e.json_path)
            assert not errors, "; ".join(f"{e.json_path}: {e.message}" for e in errors)

    return check
