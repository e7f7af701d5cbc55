"""``mech --help`` against ``python -c "import torch"``, side by side on the same machine.

Issue 16 asks for ``mech --help`` in at most half the time of importing torch. Each command runs
``--repeats`` times in fresh processes, alternating, after one warm-up run each; the medians and
their ratio are printed (and written as JSON with ``--out``). Run: ``python benchmarks/bench_cli.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "mech --help": [sys.executable, "-m", "mech.cli", "--help"],
    "mech patch --help": [sys.executable, "-m", "mech.cli", "patch", "--help"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
}


def _time(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", default=None, help="write the medians and ratios as JSON here")
    args = p.parse_args()
    for cmd in COMMANDS.values():
        _time(cmd)  # warm the file cache
    times: dict[str, list[float]] = {k: [] for k in COMMANDS}
    for _ in range(args.repeats):
        for name, cmd in COMMANDS.items():
            times[name].append(_time(cmd))
    med = {k: statistics.median(v) for k, v in times.items()}
    torch_s = med["python -c 'import torch'"]
    rows = {
        k: {"median_s": round(v, 3), "ratio_to_import_torch": round(v / torch_s, 3)} for k, v in med.items()
    }
    for k, r in rows.items():
        print(f"{k:28s} {r['median_s']:.3f} s  ({r['ratio_to_import_torch']:.2f} x import torch)")
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
