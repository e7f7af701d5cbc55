"""Download the wheels the GPU benchmark carries to a machine without a package registry, at the exact
versions of ``requirements.lock``, and verify them against the lock's sha256 hashes.

    python benchmarks/fetch_wheels.py                 # transformers (the default set, DEVICE_WHEELS)
    python benchmarks/fetch_wheels.py NAME [NAME ...] # other locked packages too

Wheels land in ``benchmarks/wheels/`` (git-ignored); a wheel whose hash is not in the lock is deleted and
the script exits non-zero. Only pure-Python wheels (``py3-none-any``) are accepted unless ``--any-platform``
is given: a compiled wheel would have to match the device (CPython 3.12, manylinux x86-64), not this machine.
Why only transformers by default: ``benchmarks/README.md`` ("What the device has").
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / "benchmarks" / "wheels"
DEVICE_WHEELS = ("transformers",)  # the locked versions the device's own packages do not provide
DEVICE_PYTHON = "3.12"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked(lock: Path) -> dict[str, tuple[str, set[str]]]:
    """``normalised name -> (version, {sha256, ...})`` from a ``pip-compile --generate-hashes`` lock."""
    out: dict[str, tuple[str, set[str]]] = {}
    current = None
    for line in lock.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s\\;]+)", line)
        if m:
            current = _norm(m[1])
            out[current] = (m[2], set())
            continue
        h = re.search(r"--hash=sha256:([0-9a-f]{64})", line)
        if h and current is not None:
            out[current][1].add(h[1])
    return out


def sha256(path: Path) -> str:
    d = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            d.update(chunk)
    return d.hexdigest()


def fetch(
    names: list[str], *, any_platform: bool = False, lock: Path = ROOT / "requirements.lock"
) -> list[Path]:
    """Download and verify ``names``; returns the wheel paths. Raises SystemExit naming what failed."""
    pins = locked(lock)
    WHEELS.mkdir(parents=True, exist_ok=True)
    got = []
    for name in names:
        key = _norm(name)
        if key not in pins:
            raise SystemExit(f"{name} is not in {lock.name}; only locked packages can be carried")
        version, hashes = pins[key]
        for old in WHEELS.glob("*.whl"):  # one version per package: two stop the install on the device
            if _norm(old.name.split("-")[0]) == key and old.name.split("-")[1] != version:
                old.unlink()
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            DEVICE_PYTHON,
            "-d",
            str(WHEELS),
            f"{name}=={version}",
        ]
        subprocess.run(cmd, check=True)
        wheel = [
            w
            for w in WHEELS.glob("*.whl")
            if _norm(w.name.split("-")[0]) == key and w.name.split("-")[1] == version
        ]
        if len(wheel) != 1:
            raise SystemExit(
                f"{name}=={version}: expected one wheel in {WHEELS}, found {[w.name for w in wheel]}"
            )
        w = wheel[0]
        if not any_platform and not w.name.endswith("-none-any.whl"):
            w.unlink()
            raise SystemExit(f"{w.name} is not pure Python; build it for the device or pass --any-platform")
        digest = sha256(w)
        if digest not in hashes:
            w.unlink()
            raise SystemExit(
                f"{w.name}: sha256 {digest} is not among the lock's hashes for {name}=={version}"
            )
        print(f"{w.name}: sha256 matches requirements.lock")
        got.append(w)
    return got


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=list(DEVICE_WHEELS))
    p.add_argument("--any-platform", action="store_true", help="accept compiled wheels too")
    args = p.parse_args(argv)
    fetch(args.names, any_platform=args.any_platform)
    return 0


if __name__ == "__main__":
    sys.exit(main())
