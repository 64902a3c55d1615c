"""The README's set-up commands, as dry runs (`make -n -B`: printed, nothing executed):
`make run` installs only what `switchd serve` needs, `make test` adds the test extras."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def dry_run(target: str) -> str:
    """The commands `make target` would run, even under a `make test` (its MAKEFLAGS and
    MAKELEVEL would add directory lines)."""
    environ = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", target],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_make_run_installs_only_what_serving_needs():
    commands = dry_run("run")
    assert "pip install -q -e .\n" in commands
    assert "[test]" not in commands
    assert commands.rstrip().endswith("switchd serve")


def test_make_test_adds_the_test_extras_before_the_suite():
    commands = dry_run("test")
    assert "pip install -q -e '.[test]'" in commands
    assert commands.index("[test]") < commands.index("pytest")
