"""constraints.txt locks the environment `make test` builds: every requirement of pyproject.toml is in it.

Why: CI installs into a fresh venv. With only ranges in pyproject.toml, a release made after the last green run
(types-protobuf 7.35.1.20261122 dropped `Message.__new__(**kwargs)`) turned the lint test red on a clone of code
that had not changed. A requirement added to pyproject.toml without `make lock` would be installed unlocked again.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def locked_versions(text: str | None = None) -> dict[str, Version]:
    """constraints.txt as {canonical name: version}; every line that is not a comment is `name==version`."""
    if text is None:
        text = (ROOT / "constraints.txt").read_text()
    locked: dict[str, Version] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and name and version, f"constraints.txt:{number}: {line!r} is not name==version (see `make lock`)"
        locked[canonicalize_name(name)] = Version(version)
    return locked


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    return [Requirement(line) for line in lines]


def test_every_requirement_is_locked_at_a_version_it_allows():
    locked = locked_versions()
    problems = []
    for requirement in project_requirements():
        version = locked.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement.name} is not in constraints.txt: run `make lock`")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement.name}: constraints.txt has {version}, pyproject.toml asks {requirement}")
    assert not problems, "\n".join(problems)


def test_the_project_itself_is_not_locked():
    """The editable install of callrec is not a dependency: a pin of it would refuse the next version bump."""
    assert "callrec" not in locked_versions()


def test_a_line_that_is_not_a_pin_is_refused():
    """`pip freeze` writes `name @ file:///...` for a wheel installed from a file: no pin on another machine."""
    assert locked_versions("# comment\n\ngrpcio==1.85.1\n") == {"grpcio": Version("1.85.1")}
    with pytest.raises(AssertionError, match=r"constraints\.txt:2"):
        locked_versions("grpcio==1.85.1\ntypes-protobuf @ file:///tmp/x.whl\n")
    with pytest.raises(AssertionError, match="not name==version"):
        locked_versions("numpy>=2.2\n")


def test_the_build_backend_is_pinned_as_the_environment_is() -> None:
    """pip builds callrec in an isolated environment that constraints.txt does not reach."""
    build = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    locked = locked_versions()
    for line in build:
        requirement = Requirement(line)
        pins = [spec for spec in requirement.specifier if spec.operator == "=="]
        assert pins, f"build-system requires {line!r}: pin it (==) to the version in constraints.txt"
        assert locked.get(canonicalize_name(requirement.name)) == Version(pins[0].version), line
