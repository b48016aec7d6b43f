"""The code is as the formatter writes it (`ruff format`, settings in pyproject.toml): run it before committing."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_the_formatter_would_change_nothing():
    done = subprocess.run([sys.executable, "-m", "ruff", "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"run `ruff format .`:\n{done.stdout}{done.stderr}"
