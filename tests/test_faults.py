"""Fault injection (issue 15): a write that fails half-way (disk full, the rename refused), an
assembly that raises, a folder lock held by another process, Ctrl-C and ``kill -9`` mid-run. Each
leaves no partial file (every JSON parses, every safetensors file opens, no temporary file is
left) and one line on stderr; the same command, rerun, writes the bytes of one clean run.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mech.cli
import mech.results
import mech.runs.folder
import mech.runs.loop
from mech.errors import LockError, WriteError
from mech.testing.tiny import save_tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny("llava", tmp_path_factory.mktemp("faults") / "model")


def _argv(model_dir, out, n=4):
    return [
        "attention",
        "--model",
        str(model_dir),
        "--data",
        "organism:shapes",
        "--n",
        str(n),
        "--batch-size",
        "2",
        "--out",
        str(out),
        "--no-progress",
    ]


def _results(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.suffix in (".json", ".safetensors")
    }


@pytest.fixture(scope="module")
def clean(model_dir, tmp_path_factory):
    """One uninterrupted run per n: the bytes every faulted run must end with."""
    runs = {}
    for n in (4, 6):
        out = tmp_path_factory.mktemp(f"clean{n}")
        assert mech.cli.main(_argv(model_dir, out, n)) == 0
        runs[n] = _results(out)
    return runs


def _no_partial_file(out: Path) -> None:
    from safetensors import safe_open

    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")], sorted(out.rglob("*"))
    for p in out.rglob("*.json"):
        json.loads(p.read_text())
    for p in out.rglob("*.safetensors"):
        with safe_open(str(p), "pt") as fh:
            list(fh.keys())
    assert not (out / "attention.json").exists()


def _once(match, fault):
    """``fault`` on the first call whose target's name is ``match``."""
    fired = []

    def wrap(real):
        def call(*args, **kwargs):
            target = os.path.basename(str(args[1] if len(args) > 1 else args[0]))
            if not fired and target == match:
                fired.append(target)
                fault(*args)
            return real(*args, **kwargs)

        return call

    return wrap, fired


def _disk_full(*_):
    raise OSError(errno.ENOSPC, "No space left on device")


def _half_then_full(data, tmp, metadata=None):
    """safetensors' writer filling half the file, then the disk is full."""
    from safetensors.torch import save

    Path(tmp).write_bytes(save(data, metadata=metadata)[:100])
    _disk_full()


def _rename_refused(src, dst, *rest):
    assert Path(src).is_file()  # the temporary file is complete: only the rename is missing
    raise OSError(errno.EIO, "Input/output error")


# (id, where: (module, attribute), target file name, fault, exit code, phrase, exception class)
WRITE_FAULTS = [
    (
        "part-rename-refused",
        (mech.results.os, "replace"),
        "000001.safetensors",
        _rename_refused,
        1,
        "could not write",
        WriteError,
    ),
    (
        "part-disk-full-mid-write",
        (mech.results, "save_file"),
        None,
        _half_then_full,
        1,
        "No space left on device",
        WriteError,
    ),
    (
        "result-json-rename-refused",
        (mech.results.os, "replace"),
        "attention.json",
        _rename_refused,
        1,
        "rerun the same command",
        WriteError,
    ),
    (
        "result-tensors-disk-full",
        (mech.results.os, "replace"),
        "attention.safetensors",
        _disk_full,
        1,
        "Free disk space",
        WriteError,
    ),
    (
        "identity-disk-full",
        (mech.results.os, "replace"),
        "attention.identity.json",
        _disk_full,
        1,
        "could not write",
        WriteError,
    ),
    (
        "header-disk-full",
        (mech.results.os, "replace"),
        "header.json",
        _disk_full,
        1,
        "could not write",
        WriteError,
    ),
]


@pytest.mark.parametrize("case", WRITE_FAULTS, ids=[c[0] for c in WRITE_FAULTS])
def test_a_failed_write_leaves_nothing_partial(model_dir, clean, tmp_path, monkeypatch, capsys, case):
    _, (owner, attr), match, fault, code, phrase, error = case
    real = getattr(owner, attr)
    if match is None:  # the second batch's writer: half a file, then the disk is full
        calls = []

        def fake(data, tmp, metadata=None):
            calls.append(tmp)
            if len(calls) == 2:
                fault(data, tmp, metadata)
            return real(data, tmp, metadata=metadata)

        monkeypatch.setattr(owner, attr, fake)
    else:
        wrap, fired = _once(match, fault)
        monkeypatch.setattr(owner, attr, wrap(real))
    caught = []
    report = mech.cli._report_error
    monkeypatch.setattr(mech.cli, "_report_error", lambda exc, *a: caught.append(exc) or report(exc, *a))
    out = tmp_path / "out"
    assert mech.cli.main(_argv(model_dir, out)) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and phrase in err and "Traceback" not in err, err
    assert isinstance(caught[0], error) and isinstance(caught[0], OSError), caught
    _no_partial_file(out)
    monkeypatch.setattr(owner, attr, real)
    assert mech.cli.main(_argv(model_dir, out)) == 0
    assert _results(out) == clean[4]
    assert not list(out.rglob("*.tmp"))


@pytest.mark.parametrize(
    "fault, code, phrase",
    [
        (RuntimeError("boom in assemble"), 3, "internal error (a bug in mech"),
        (
            KeyboardInterrupt(),
            130,
            "interrupted while writing the results of mech attention: all 2 batches are in",
        ),
        (OSError(errno.ENOSPC, "No space left on device"), 3, "OSError"),
    ],
    ids=["raises", "ctrl-c", "oserror"],
)
def test_a_failed_assembly_keeps_the_parts(
    model_dir, clean, tmp_path, monkeypatch, capsys, fault, code, phrase
):
    from mech.measure.attention.job import AttentionJob

    def broken(self, *args, **kwargs):
        raise fault

    monkeypatch.setattr(AttentionJob, "assemble", broken)
    out = tmp_path / "out"
    assert mech.cli.main(_argv(model_dir, out)) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and phrase in err and "Traceback" not in err, err
    _no_partial_file(out)
    assert len(list((out / ".attention.parts").glob("*.safetensors"))) == 2  # kept: the rerun only assembles
    assert not (out / ".attention.parts" / "assembling").exists()
    monkeypatch.undo()
    load = []
    monkeypatch.setattr(mech.runs.loop, "load_model", lambda *a: load.append(a))
    assert mech.cli.main(_argv(model_dir, out)) == 0 and load == []
    assert _results(out) == clean[4]


def test_a_lock_held_by_another_process(model_dir, clean, tmp_path, monkeypatch, capsys):
    """Another process holds ``<out>/.mech/attention.lock``: after the wait, one line naming the
    folder; nothing is written; once it lets go, the same command completes."""
    out = tmp_path / "out"
    lock = out / ".mech" / "attention.lock"
    lock.parent.mkdir(parents=True)
    code = (
        "import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); l.acquire(); "
        "print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(mech.runs.folder, "LOCK_TIMEOUT_S", 0.3)
        caught = []
        report = mech.cli._report_error
        monkeypatch.setattr(mech.cli, "_report_error", lambda exc, *a: caught.append(exc) or report(exc, *a))
        assert mech.cli.main(_argv(model_dir, out)) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "is locked by another mech attention process" in err, err
        assert "wait for it to finish" in err and isinstance(caught[0], LockError)
        assert _results(out) == {} and not list(out.rglob("*.tmp"))
    finally:
        holder.kill()
        holder.wait()
    assert mech.cli.main(_argv(model_dir, out)) == 0
    assert _results(out) == clean[4]


def test_a_lock_timeout_inside_the_lock_library(model_dir, clean, tmp_path, monkeypatch, capsys):
    from filelock import Timeout

    def timeout(self, *a, **k):
        raise Timeout(self.lock_file)

    monkeypatch.setattr(mech.runs.folder.FileLock, "acquire", timeout)
    out = tmp_path / "out"
    assert mech.cli.main(_argv(model_dir, out)) == 1
    assert "pass another --out" in capsys.readouterr().err
    monkeypatch.undo()
    assert _results(out) == {}
    assert mech.cli.main(_argv(model_dir, out)) == 0 and _results(out) == clean[4]


def test_a_failed_batch_keeps_the_finished_ones(model_dir, clean, tmp_path, monkeypatch, capsys):
    """The parts store raising on the third batch (not a write error: a bug): the first two stay."""
    from mech.results import BatchStore

    put = BatchStore.put

    def failing(self, index, *a, **k):
        if index == 2:
            raise ValueError("injected")
        return put(self, index, *a, **k)

    monkeypatch.setattr(BatchStore, "put", failing)
    out = tmp_path / "out"
    assert mech.cli.main(_argv(model_dir, out, n=6)) == 3
    assert "ValueError: injected" in capsys.readouterr().err
    _no_partial_file(out)
    assert sorted(p.name for p in (out / ".attention.parts").glob("*.safetensors")) == [
        "000000.safetensors",
        "000001.safetensors",
    ]
    monkeypatch.undo()
    assert mech.cli.main(_argv(model_dir, out, n=6)) == 0 and _results(out) == clean[6]


# a run whose batches take a while, and whose rename of one named file hangs (to be killed there)
_SLOW = """
import os, signal, sys, time
# Ctrl-C as at a terminal, whatever this test run inherited: a suite started in the background (``make test &``,
# some CI runners) ignores SIGINT, and Python keeps an ignored SIGINT ignored, so the run would finish instead
signal.signal(signal.SIGINT, signal.default_int_handler)
import mech.measure.attention.job as J
import mech.results as R
delay, hang = float(sys.argv[1]), sys.argv[2]
measure, replace = J.AttentionJob.measure, os.replace
J.AttentionJob.measure = lambda self, *a, **k: (time.sleep(delay), measure(self, *a, **k))[1]
def slow_replace(src, dst, *a, **k):
    if os.path.basename(str(dst)) == hang:
        time.sleep(120)
    return replace(src, dst, *a, **k)
R.os.replace = slow_replace
from mech.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _env():
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )


def _signal_when(argv, ready, sig, delay=0.3, hang="-", timeout=180.0):
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW, str(delay), hang, *argv],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    t0 = time.monotonic()
    try:
        while not ready():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() - t0 < timeout
            time.sleep(0.02)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def test_ctrl_c_mid_run_then_rerun(model_dir, clean, tmp_path):
    """SIGINT after the first of three batches: exit 130, one line saying how many batches are
    written and that the same command resumes; the rerun's files equal a clean run's."""
    out = tmp_path / "out"
    argv = _argv(model_dir, out, n=6)
    rc, err = _signal_when(
        argv, lambda: (out / ".attention.parts" / "000000.safetensors").is_file(), signal.SIGINT
    )
    assert rc == 130, err
    assert re.fullmatch(
        rf"mech attention: interrupted: [12] of 3 batches of mech attention are written to "
        rf"{re.escape(str(out))}; rerun the same command to resume\.",
        err.strip(),
    ), err
    _no_partial_file(out)
    assert mech.cli.main(argv) == 0 and _results(out) == clean[6]


def test_kill_9_between_write_and_rename_then_rerun(model_dir, clean, tmp_path):
    """SIGKILL while the second batch's complete temporary file waits for its rename: the stray
    file is removed by the rerun, which writes a clean run's bytes."""
    out = tmp_path / "out"
    argv = _argv(model_dir, out, n=6)
    parts = out / ".attention.parts"
    rc, _ = _signal_when(
        argv,
        lambda: parts.is_dir() and any(p.name.startswith(".000001.safetensors.") for p in parts.iterdir()),
        signal.SIGKILL,
        delay=0.0,
        hang="000001.safetensors",
    )
    assert rc == -signal.SIGKILL
    assert [p.name for p in parts.glob("*.safetensors")] == ["000000.safetensors"]
    assert len(list(parts.glob(".*.tmp"))) == 1  # what kill -9 leaves
    assert mech.cli.main(argv) == 0
    assert _results(out) == clean[6] and not list(out.rglob("*.tmp"))
