"""Stamp and check ``requirements.lock`` against the dependency sections of ``pyproject.toml``.

``python3 tools/lock.py stamp``  appends the fingerprint line after ``make lock`` has resolved the lock.
``python3 tools/lock.py check``  exits 1 with a message naming the fix when the lock was made from other
                                 dependencies (run by make before every install, and by the tests).

The fingerprint is the SHA-256 of ``requires-python``, ``dependencies`` and ``optional-dependencies``
as canonical JSON: editing anything else in pyproject.toml (pytest settings, package data) does not
ask for a new lock. Standard library only: it runs before any virtual environment exists.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = "# pyproject dependencies sha256: "


def fingerprint(pyproject: Path = ROOT / "pyproject.toml") -> str:
    """SHA-256 hex of the dependency sections of ``pyproject``."""
    project = tomllib.loads(pyproject.read_text())["project"]
    keys = ("requires-python", "dependencies", "optional-dependencies")
    blob = json.dumps({k: project.get(k) for k in keys}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def stamped(lock: Path = ROOT / "requirements.lock") -> str | None:
    """The fingerprint recorded in ``lock``, or None when it has none."""
    for line in lock.read_text().splitlines():
        if line.startswith(PREFIX):
            return line[len(PREFIX) :].strip()
    return None


def main(argv: list[str]) -> int:
    lock = ROOT / "requirements.lock"
    if argv[1:] == ["stamp"]:
        text = "".join(l + "\n" for l in lock.read_text().splitlines() if not l.startswith(PREFIX))
        lock.write_text(text + PREFIX + fingerprint() + "\n")
        return 0
    if argv[1:] == ["check"]:
        if not lock.exists():
            print("requirements.lock is missing: run `make lock` (README, 'Dependencies').", file=sys.stderr)
            return 1
        if stamped(lock) != fingerprint():
            print(
                "requirements.lock was resolved from other dependencies than pyproject.toml declares now: "
                "run `make lock` to refresh it (after `make test-latest`; README, 'Dependencies').",
                file=sys.stderr,
            )
            return 1
        return 0
    print("usage: python3 tools/lock.py stamp|check", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
