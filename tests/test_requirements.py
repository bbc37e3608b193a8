"""Every third-party module the product imports comes from a pinned requirement (a clean install
has nothing else: a module present only because a dev or bench tool pulled it in breaks CI)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OWN = {"sndw", "sndw_airflow", "airflow", "tests", "bench"}


def _imported_modules(folders: list[Path]) -> set[str]:
    found: set[str] = set()
    for folder in folders:
        for path in folder.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    found |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    found.add(node.module.split(".")[0])
    return found - OWN - set(sys.stdlib_module_names) - {"__future__"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_runtime_imports_are_in_the_lock() -> None:
    locked = {_normalise(line.split("==")[0]) for line in (ROOT / "requirements.lock").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    distributions = importlib.metadata.packages_distributions()
    missing = {}
    for module in sorted(_imported_modules([ROOT / "include", ROOT / "dags", ROOT / "plugins", ROOT / "scripts"])):
        names = {_normalise(d) for d in distributions.get(module, [module])}
        if not names & locked:
            missing[module] = sorted(names)
    assert not missing, f"imported but not pinned in requirements.lock: {missing}"
