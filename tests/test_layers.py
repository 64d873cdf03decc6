"""The layering of pyproject.toml's import-linter contracts (issue 20): the tree keeps them, and each contract does
break when a planted import violates it (so `lint-imports` in `make test` is not a check that cannot fail)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("aigq", "actors", "rollout", "learner", "serve_app")
LINT = str(Path(sys.executable).parent / "lint-imports")


def _lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([LINT, str(root / "pyproject.toml"), "--no-cache", "--no-logo"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_tree_keeps_every_contract():
    res = _lint(REPO)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "BROKEN" not in res.stdout and res.stdout.count("KEPT") == 5


def test_each_contract_breaks_on_a_planted_import(tmp_path):
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    plants = {
        "aigq/rewards/text.py": "import aigq.cli\n",  # below the CLI, importing it
        "learner/grpo.py": "import ray\n",  # Ray outside actors/, serve_app/, the bootstrap and the loop
        "aigq/rewards/rules.py": "from aigq.evaluation import metrics\n",  # rewards → evaluation
        "aigq/data/schema.py": "from aigq.models import factory\n",  # data → models: a layer pointing up, a cycle
    }
    for rel, line in plants.items():
        path = tmp_path / rel
        path.write_text(path.read_text() + "\n" + line)
    res = _lint(tmp_path)
    out = " ".join(res.stdout.split())  # import-linter wraps long lines
    assert res.returncode == 1 and "Contracts: 0 kept, 5 broken." in out, out[-3000:]
    for broken in ("aigq.rewards is not allowed to import aigq.cli",  # layers + nothing imports the CLI
                   "learner is not allowed to import ray",
                   "aigq.rewards is not allowed to import aigq.evaluation: - aigq.rewards.rules -> aigq.evaluation",
                   "aigq.data is not allowed to import aigq.models",
                   "No cycles are allowed in aigq."):
        assert broken in out, (broken, out[-3000:])
