"""Build the compiled media path: `make compile` (`make run` and `make test` run it first).

mypyc compiles `callrec.compiled.MODULES` from their sources, in place (the extension modules land
beside the .py files, where the editable install finds them; C and objects under server/build/),
then `callrec/_compiled.json` records each source's digest. Without a C compiler it says so and
leaves the server interpreted (`--require`, which `make test` passes, makes that an error: the tests
must run what ships). Usage:

    .venv/bin/python tools/build_native.py [--require] [--clean]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "server"
sys.path.insert(0, str(SERVER))
os.environ["CALLREC_COMPILED"] = "0"  # this process imports callrec; it must not load what it replaces

from callrec import compiled  # noqa: E402  (after the path and the environment are set)


def remove_build() -> int:
    """Delete every extension module in the package (this set's, the group library, those an earlier set
    left: `compiled.built_extensions`) and the manifest; returns how many files."""
    removed = 0
    for built in compiled.built_extensions():
        built.unlink()
        removed += 1
    if compiled.MANIFEST.exists():
        compiled.MANIFEST.unlink()
        removed += 1
    return removed


def build() -> None:
    """mypyc in place, then the manifest of what the build was made from."""
    from mypyc.build import mypycify  # imported here: `--clean` needs neither mypyc nor setuptools
    from setuptools import setup

    digests = {m: compiled.source_digest(compiled.source_path(m)) for m in compiled.MODULES}
    paths = [str(compiled.source_path(m).relative_to(SERVER)) for m in compiled.MODULES]
    previous = Path.cwd()
    os.chdir(SERVER)  # mypyc names modules from paths relative to here: callrec/core/jitter.py -> callrec.core.jitter
    try:
        setup(name="callrec-native", ext_modules=mypycify(paths, group_name=compiled.GROUP, opt_level="3"),
              script_args=["--quiet", "build_ext", "--inplace"])
    finally:
        os.chdir(previous)
    compiled.MANIFEST.write_text(json.dumps({"modules": digests}, indent=2) + "\n", encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description="Compile callrec's media path with mypyc (in place).")
    parser.add_argument("--require", action="store_true",
                        help="fail without a C compiler instead of staying interpreted")
    parser.add_argument("--clean", action="store_true", help="remove the build: the server runs interpreted")
    args = parser.parse_args()
    removed = remove_build()
    if args.clean:
        print(f"removed the compiled build ({removed} files): callrec runs interpreted")
        return 0
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        message = (f"no C compiler ({compiler!r} not on PATH): callrec runs interpreted, with more CPU per frame "
                   "(Debian: apt-get install gcc)")
        print(("error: " if args.require else "warning: ") + message, file=sys.stderr)
        return 1 if args.require else 0
    started = time.monotonic()
    try:
        build()
    except (Exception, SystemExit) as exc:  # setuptools reports a failed compile as SystemExit
        remove_build()
        print(f"{'error' if args.require else 'warning'}: the mypyc build failed ({exc}); callrec runs interpreted",
              file=sys.stderr)
        return 1 if args.require else 0
    print(f"compiled {len(compiled.MODULES)} modules with mypyc in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
