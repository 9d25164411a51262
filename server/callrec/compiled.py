"""The media hot path compiled by mypyc, and the guard that never lets a stale build run.

Why: at 600 audio participants the event loop's thread spent about 75 % of a core in per-frame and
per-tick Python (jitter buffers, the clock, the mixer, the decode requests); the same modules compiled
by mypyc from the same source, with the type hints they already carry, made that 57 % (issue 11,
figures in the README's "The compiled media path"). No second implementation: the source stays the
reference, and `CALLREC_COMPILED=0` (or no build) runs it interpreted.

`make compile` (run by `make run` and `make test`; `tools/build_native.py`) builds the extension
modules of `MODULES` next to their sources and writes `MANIFEST`: each module's source digest at
build time. At import of `callrec`, `install()` compares the digests with the sources: if any differs
(a source edited since the build) or a module's extension is missing, every module of the set loads
from its source instead (they are compiled as one group and call each other natively: a mix of old
compiled and new interpreted code is never run). `state()` says which, for the start-up log.

Where compiled code behaves differently (found by running the whole suite compiled, which `make test`
does, and kept out by tests/unit/test_compiled.py): `functools.cached_property` becomes a plain property
(so `MixResult` caches by hand); native classes cannot be monkeypatched, subclassed by interpreted
classes or weakly referenced; annotations are checked at run time (a `bytes` that is a `bytearray`
raises); and mypyc 2.4 evaluates a call in a slice bound of a bytearray or memoryview twice
(`view[os.write(fd, view):]` wrote everything twice): such bounds go into a local first.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.abc import MetaPathFinder
from pathlib import Path
from types import ModuleType

#: What is compiled: the modules every audio frame or tick runs through. Others were tried and left out:
#: the recordings' sinks (`chunker`, `audio_recording`, `writer_pool` measured no better compiled),
#: `recording_engine` (the interpreted `VideoRecording` cannot inherit from a native class) and `api/`
#: (mypyc does not compile async generators).
MODULES: tuple[str, ...] = (
    "callrec.core.jitter",
    "callrec.core.timeline",
    "callrec.core.clock",
    "callrec.core.mixer",
    "callrec.core.call_media",
    "callrec.core.call_hub",
    "callrec.media.decode_pool",
    "callrec.media.pipe_channel",
)

#: The group's shared library is `callrec.native__mypyc` (inside the package: the editable install
#: finds nothing at the top level of `server/`).
GROUP = "callrec.native"

PACKAGE_ROOT = Path(__file__).resolve().parent
MANIFEST = PACKAGE_ROOT / "_compiled.json"
DISABLE_ENV = "CALLREC_COMPILED"


def source_path(module: str, package_root: Path = PACKAGE_ROOT) -> Path:
    """The .py file of a `callrec.*` module."""
    parts = module.split(".")
    if parts[0] != "callrec":
        raise ValueError(f"{module!r} is not a callrec module")
    return package_root.joinpath(*parts[1:]).with_suffix(".py")


def source_digest(path: Path) -> str:
    """SHA-256 of a source file (what a build was made from)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def extension_path(module: str, package_root: Path = PACKAGE_ROOT) -> Path | None:
    """The built extension module next to the source, if there is one."""
    source = source_path(module, package_root)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = source.with_name(source.stem + suffix)
        if candidate.exists():
            return candidate
    return None


def built_extensions(package_root: Path = PACKAGE_ROOT) -> list[Path]:
    """Every extension module under the package, of this build or an earlier one.

    A module taken out of `MODULES` keeps the extension an earlier build left beside its source; Python
    imports that before the source, and it asks the new group library for an entry it no longer has
    (`AttributeError: module 'callrec.native__mypyc' has no attribute 'init_callrec___...'`). The build
    removes them all first."""
    return sorted({path for suffix in importlib.machinery.EXTENSION_SUFFIXES  # ".so" matches the others too
                   for path in package_root.rglob("*" + suffix)})


def stale_modules(manifest: dict[str, str], modules: Sequence[str] = MODULES,
                  package_root: Path = PACKAGE_ROOT) -> list[str]:
    """The modules whose build cannot be used: not built, or built from a source that has changed since."""
    stale = []
    for module in modules:
        built_from = manifest.get(module)
        if (built_from is None or extension_path(module, package_root) is None
                or built_from != source_digest(source_path(module, package_root))):
            stale.append(module)
    return stale


@dataclass(frozen=True)
class CompiledState:
    """Whether the hot path runs compiled, and if not, why (for the start-up log)."""

    compiled: bool
    reason: str
    requested: bool = False  # interpreted because the environment asked (not a missing or stale build)


def read_manifest(path: Path = MANIFEST) -> dict[str, str] | None:
    """The digests a build recorded, or None when there is no (readable) build."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    modules = data.get("modules") if isinstance(data, dict) else None
    if not isinstance(modules, dict):
        return None
    return {str(k): str(v) for k, v in modules.items()}


def decide(environ: dict[str, str] | os._Environ[str] = os.environ, manifest_path: Path = MANIFEST,
           package_root: Path = PACKAGE_ROOT, modules: Sequence[str] = MODULES) -> CompiledState:
    """Compiled or interpreted, from the environment, the manifest and the sources."""
    setting = environ.get(DISABLE_ENV, "").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return CompiledState(False, f"interpreted: {DISABLE_ENV}={environ[DISABLE_ENV]}", requested=True)
    manifest = read_manifest(manifest_path)
    if manifest is None:
        return CompiledState(False, "interpreted: no compiled build (`make compile` builds one; it needs a C compiler)")
    stale = stale_modules(manifest, modules, package_root)
    if stale:
        return CompiledState(False, f"interpreted: the compiled build is older than the source of {', '.join(stale)} "
                                    "(`make compile` rebuilds it)")
    return CompiledState(True, f"compiled by mypyc: {len(modules)} modules of the media path")


class _SourceFirst(MetaPathFinder):
    """Loads the listed modules from their .py files even where a built extension sits beside them."""

    def __init__(self, modules: Sequence[str], package_root: Path) -> None:
        self._paths = {m: source_path(m, package_root) for m in modules}

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None,
                  ) -> importlib.machinery.ModuleSpec | None:
        source = self._paths.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


_state: CompiledState | None = None


def install() -> CompiledState:
    """Decide once per process; when interpreted, make the listed modules load from source."""
    global _state
    if _state is None:
        _state = decide()
        if not _state.compiled:
            sys.meta_path.insert(0, _SourceFirst(MODULES, PACKAGE_ROOT))
    return _state


def state() -> CompiledState:
    """What `install()` decided."""
    return install()
