"""The code base stays ruff clean and type-checked (the configuration of both is in pyproject.toml)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The Python sources that `[tool.mypy] files` checks.
TYPED_TREES = (ROOT / "server" / "callrec", ROOT / "clients" / "python" / "callrec_client")
#: A `# type: ignore[...]` with no `  # why` after it on the same line (noqa codes are not a why).
_BARE_IGNORE = re.compile(r"#\s*type:\s*ignore(?:\[[^\]]*\])?(?!\[)(?!\s+#\s*(?!noqa)\S)")


def test_ruff_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is not installed: `make test` installs it"
    result = subprocess.run([ruff, "check", "--output-format", "concise", "."], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_clean():
    assert importlib.util.find_spec("mypy"), "mypy is not installed: `make test` installs it"
    # ~15 s from cold (a fresh clone in CI); under a second with the .mypy_cache of a previous run
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_type_ignore_says_why():
    bare = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for tree in TYPED_TREES
        for path in sorted(tree.rglob("*.py*"))
        if path.suffix in (".py", ".pyi")
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if _BARE_IGNORE.search(line)
    ]
    assert not bare, "a `# type: ignore[code]` needs `  # why` after it:\n" + "\n".join(bare)
