"""Bad input at the command line (issue 15): every mistake a user can make ends in one line on
stderr that says what was wrong and what to do, the exit code of its kind (1 refused, 2 the command
line does not parse, 130 interrupted, 3 a bug), no traceback (only with ``--debug``), and no result
file. Cases run ``mech.cli.main`` in this process (fast); a few run ``python -m mech.cli`` to show
that nothing else reaches stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mech.cli
from mech import errors as E
from mech.testing.tiny import save_tiny, save_tiny_jsonl

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["what colour is the shape ?", "which shape is in the image ?", "what is the big shape ?"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A saved tiny LLaVA, broken copies of it, jsonl data (one with a bad row) and a plain file."""
    root = tmp_path_factory.mktemp("cli")
    model = save_tiny("llava", root / "model")
    save_tiny_jsonl(root, QUESTIONS)
    rows = (root / "data.jsonl").read_text().splitlines()
    (root / "badrow.jsonl").write_text("\n".join(rows[:2] + ["this is not json"] + rows[2:]) + "\n")
    (root / "afile").write_text("x")
    (root / "empty").mkdir()
    weights = (model / "model.safetensors").read_bytes()
    for name in ("trunc", "garbage", "noweights", "noconfig", "badtype", "badjson", "bert"):
        d = root / name
        d.mkdir()
        for f in model.iterdir():
            (d / f.name).write_bytes(f.read_bytes())
    (root / "trunc" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (root / "garbage" / "model.safetensors").write_bytes(b"\xff" * 64 + weights[64:128])
    (root / "noweights" / "model.safetensors").unlink()
    (root / "noconfig" / "config.json").unlink()
    cfg = json.loads((model / "config.json").read_text())
    (root / "badtype" / "config.json").write_text(json.dumps({**cfg, "model_type": "foo_bar"}))
    (root / "badjson" / "config.json").write_text("{not json")
    (root / "bert" / "config.json").write_text(
        json.dumps({"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1})
    )
    return root


@pytest.fixture
def seen(monkeypatch):
    """The exceptions the command line reported, by class."""
    caught = []
    report = mech.cli._report_error
    monkeypatch.setattr(mech.cli, "_report_error", lambda exc, *a: caught.append(exc) or report(exc, *a))
    return caught


def _run(argv, capsys):
    rc = mech.cli.main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _no_gpu():
    return not torch.cuda.is_available()


def _fake_gpus(n):
    def setup(monkeypatch, root):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)

    return setup


def _old_gpu(monkeypatch, root):
    _fake_gpus(1)(monkeypatch, root)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla V100")


def _env(**values):
    def setup(monkeypatch, root):
        for k, v in values.items():
            monkeypatch.setenv(k, v)

    return setup


def _first_run(monkeypatch, root):
    assert (
        mech.cli.main(
            [
                "attention",
                "--model",
                str(root / "model"),
                "--data",
                "organism:shapes",
                "--n",
                "2",
                "--batch-size",
                "2",
                "--out",
                str(root / "taken"),
                "--no-progress",
            ]
        )
        == 0
    )


A = "attention"
M, D = "--model {root}/model", "--data organism:shapes"
# (id, argv (split on spaces, {root} and {out} filled in), exit code, error class, phrase of the fix, setup)
CASES = [
    # the output folder
    ("out-is-file", f"{A} {M} --out {{root}}/afile", 1, E.OutputError, "pass a directory", None),
    ("out-parent-is-file", f"{A} {M} --out {{root}}/afile/sub", 1, E.OutputError, "pass a directory", None),
    (
        "out-unwritable-sys",
        f"{A} {M} --out /sys/mech-out",
        1,
        E.OutputError,
        "Pass a --out in a folder you can write",
        None,
    ),
    ("out-unwritable-proc", f"{A} {M} --out /proc/mech/out", 1, E.OutputError, "cannot write there", None),
    ("out-report", f"report {M} --out {{root}}/afile", 1, E.OutputError, "pass a directory", None),
    # devices and device maps
    ("device-cuda", f"{A} {M} --device cuda", 1, E.DeviceError, "pass --device cpu", "nogpu"),
    ("device-tpu", f"{A} {M} --device tpu", 1, E.DeviceError, "pass cpu, cuda, cuda:N", None),
    ("device-garbage", f"{A} {M} --device gpu0", 1, E.DeviceError, "is not a device", None),
    ("device-empty-index", f"{A} {M} --device cuda:x", 1, E.DeviceError, "is not a device", None),
    ("device-meta", f"{A} {M} --device meta", 1, E.DeviceError, "mech computes on cpu, cuda", None),
    (
        "device-cuda3-of-2",
        f"{A} {M} --device cuda:3",
        1,
        E.DeviceError,
        "has 2 CUDA GPUs (cuda:0 .. cuda:1)",
        _fake_gpus(2),
    ),
    (
        "device-cuda1-of-1",
        f"eval {M} --device cuda:1",
        1,
        E.DeviceError,
        "has 1 CUDA GPU (cuda:0)",
        _fake_gpus(1),
    ),
    (
        "dtype-bf16-old-gpu",
        f"{A} {M} --device cuda --dtype bfloat16",
        1,
        E.DeviceError,
        "pass --dtype float16 or float32",
        _old_gpu,
    ),
    ("device-mps", f"{A} {M} --device mps", 1, E.DeviceError, "MPS (Apple GPUs) is not available", "nomps"),
    ("device-inspect", f"inspect {M} --device tpu", 1, E.DeviceError, "is not a device", None),
    ("device-report", f"report {M} --device cuda:x", 1, E.DeviceError, "is not a device", None),
    ("device-map-bogus", f"{A} {M} --device-map bogus", 1, E.DeviceError, "pass auto, balanced", None),
    ("device-map-cuda", f"{A} {M} --device-map cuda:0", 1, E.DeviceError, "pass --device cpu", "nogpu"),
    (
        "device-map-and-device",
        f"{A} {M} --device-map auto --device cpu",
        1,
        E.DeviceError,
        "pass one of them",
        None,
    ),
    # values checked by the settings
    ("dtype", f"{A} {M} --dtype float8", 1, E.ConfigError, "allowed: float32", None),
    ("dtype-alias", f"{A} {M} --dtype fp16", 1, E.ConfigError, "allowed: float32", None),
    ("n-zero", f"eval {M} --n 0", 1, E.ConfigError, "pass a positive integer", None),
    ("n-negative", f"{A} {M} --n -5", 1, E.ConfigError, "pass a positive integer", None),
    ("batch-size-negative", f"patch {M} --batch-size -1", 1, E.ConfigError, "pass a positive integer", None),
    ("condition", f"eval {M} --conditions complete,sepia", 1, E.ConfigError, "allowed: complete", None),
    (
        "condition-repeat",
        f"eval {M} --conditions complete complete",
        1,
        E.ConfigError,
        "without repeats",
        None,
    ),
    ("corruption", f"patch {M} --corruption sepia", 1, E.ConfigError, "allowed: complete", None),
    ("removal", f"contrib {M} --removal zero", 1, E.ConfigError, "allowed: resample, noise", None),
    # the command line itself (exit 2)
    ("n-not-int", f"{A} {M} --n abc", 2, E.UsageError, "see mech attention --help", None),
    ("n-missing-value", f"{A} {M} --n", 2, E.UsageError, "expected one argument", None),
    ("unknown-option", f"{A} {M} --frobnicate 3", 2, E.UsageError, "see mech attention --help", None),
    (
        "other-commands-option",
        f"{A} {M} --corruption white_image",
        2,
        E.UsageError,
        "unrecognized arguments",
        None,
    ),
    ("unknown-command", "frobnicate --n 3", 2, E.UsageError, "see mech --help", None),
    (
        "report-has-no-shard",
        f"report {M} --shard 0/2",
        2,
        E.UsageError,
        "unrecognized arguments: --shard",
        None,
    ),
    # shards and launchers
    ("shard-3-of-2", f"{A} {M} --shard 3/2", 1, E.ConfigError, "--shard 0/2 ... --shard 1/2", None),
    ("shard-0-of-0", f"{A} {M} --shard 0/0", 1, E.ConfigError, "0 <= K < N", None),
    ("shard-letters", f"{A} {M} --shard a/b", 1, E.ConfigError, "pass K/N with integers", None),
    ("shard-half", f"{A} {M} --shard 1/", 1, E.ConfigError, "pass K/N with integers", None),
    ("shard-negative", f"{A} {M} --shard=-1/2", 1, E.ConfigError, "pass K/N with integers", None),
    (
        "world-size-garbage",
        f"{A} {M}",
        1,
        E.ConfigError,
        "unset it, or start mech with torchrun",
        _env(WORLD_SIZE="two"),
    ),
    ("rank-outside", f"{A} {M}", 1, E.ConfigError, "RANK must be in 0..1", _env(WORLD_SIZE="2", RANK="5")),
    # data specs
    ("data-scheme", f"eval {M} --data hf:foo", 1, E.SpecError, "use one of organism:shapes", None),
    ("data-organism", f"eval {M} --data organism:nope", 1, E.SpecError, "'organism:shapes'", None),
    ("jsonl-missing", f"{A} {M} --data jsonl:{{root}}/none.jsonl", 1, E.SpecError, "pass jsonl:<path", None),
    # model folders and ids
    ("model-missing", f"{A} --model {{root}}/nope {D}", 1, E.SpecError, "pass an existing directory", None),
    (
        "model-truncated",
        f"{A} --model {{root}}/trunc {D}",
        1,
        E.ModelFileError,
        "Download the model again",
        None,
    ),
    (
        "model-garbage-header",
        f"{A} --model {{root}}/garbage {D}",
        1,
        E.ModelFileError,
        "not a safetensors file",
        None,
    ),
    (
        "model-no-weights",
        f"{A} --model {{root}}/noweights {D}",
        1,
        E.ModelFileError,
        "beside config.json",
        None,
    ),
    (
        "model-no-config",
        f"{A} --model {{root}}/noconfig {D}",
        1,
        E.ModelFileError,
        "has no config.json",
        None,
    ),
    (
        "model-bad-json",
        f"{A} --model {{root}}/badjson {D}",
        1,
        E.ModelFileError,
        "re-save it with save_pretrained",
        None,
    ),
    (
        "model-unknown-type",
        f"{A} --model {{root}}/badtype {D}",
        1,
        E.UnsupportedArchitectureError,
        "model_type 'foo_bar'",
        None,
    ),
    (
        "model-unsupported",
        f"{A} --model {{root}}/bert {D}",
        1,
        E.UnsupportedArchitectureError,
        "Supported: gemma3",
        None,
    ),
    (
        "model-hub-offline",
        f"{A} --model no-such-org/no-such-model {D}",
        1,
        E.SpecError,
        "huggingface-cli download",
        _env(HF_HUB_OFFLINE="1"),
    ),
    # merge
    ("merge-missing", "merge {root}/nothing-here", 1, E.ConfigError, "the path does not exist", None),
    ("merge-empty", "merge {root}/empty", 1, E.ConfigError, "parts are written by mech eval", None),
    ("merge-file", "merge {root}/afile", 1, E.ConfigError, "is a file", None),
    # two runs into one folder
    ("conflict", f"{A} {M} {D} --n 3 --out {{root}}/taken", 1, E.RunConflictError, "--overwrite", _first_run),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_refused_in_one_line(root, tmp_path, monkeypatch, capsys, seen, case):
    name, argv, code, error, phrase, setup = case
    if setup == "nogpu":
        if not _no_gpu():
            pytest.skip("this machine has a GPU")
    elif setup == "nomps":
        if torch.backends.mps.is_available():
            pytest.skip("this machine has MPS")
    elif setup is not None:
        setup(monkeypatch, root)
    out = tmp_path / "out"
    argv = [a.format(root=root) for a in argv.split()]
    if "--out" not in argv and argv[0] != "merge" and argv[0] in mech.cli.COMMANDS:
        argv += ["--out", str(out)]
    rc, stdout, err = _run(
        argv + ["--no-progress"]
        if argv[0] in ("attention", "eval", "patch", "contrib") and code != 2
        else argv,
        capsys,
    )
    lines = err.strip().splitlines()
    assert rc == code, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("mech") and ": error: " in lines[0], lines[0]
    assert phrase in lines[0], lines[0]
    assert [type(e) for e in seen] == [error], seen
    left = (
        [p for p in out.rglob("*") if p.suffix in (".json", ".safetensors", ".tmp")] if out.exists() else []
    )
    assert left == [], left


def test_corpus_is_large_enough():
    assert len(CASES) >= 30


def _skipped_is_counted(root, tmp_path, capsys, commands):
    for command in commands:
        out = tmp_path / command
        rc, stdout, err = _run(
            [
                command,
                "--model",
                str(root / "model"),
                "--data",
                f"jsonl:{root / 'badrow.jsonl'}",
                "--n",
                "3",
                "--batch-size",
                "3",
                "--out",
                str(out),
                "--no-progress",
            ],
            capsys,
        )
        assert rc == 0, err
        assert f"mech {command}: skipped 1 data rows:" in stdout, stdout
        sk = json.loads((out / f"{command}.json").read_text())["skipped"]
        assert sk["count"] == 1 and sum(sk["reasons"].values()) == 1, sk
        assert sk["items"][0]["reason"] in sk["reasons"]


def test_a_bad_row_is_skipped_counted_and_stored(root, tmp_path, capsys):
    """A jsonl row that is not JSON: the run goes on, prints the count and the reason at the end,
    and stores them in its JSON (every command, through the run loop)."""
    _skipped_is_counted(root, tmp_path, capsys, ("attention", "eval", "patch"))


def test_contrib_counts_skipped_rows(root, tmp_path, capsys):
    _skipped_is_counted(root, tmp_path, capsys, ("contrib",))


def test_ctrl_c_prints_what_was_finished(root, tmp_path, monkeypatch, capsys, seen):
    """Ctrl-C in the second of two batches: one line, exit 130, the first batch kept."""
    from mech.measure.attention.job import AttentionJob

    measure, calls = AttentionJob.measure, []

    def interrupt(self, *a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return measure(self, *a, **k)

    monkeypatch.setattr(AttentionJob, "measure", interrupt)
    out = tmp_path / "out"
    rc, _, err = _run(
        [
            A,
            "--model",
            str(root / "model"),
            "--data",
            "organism:shapes",
            "--n",
            "4",
            "--batch-size",
            "2",
            "--out",
            str(out),
            "--no-progress",
        ],
        capsys,
    )
    assert rc == 130 and err.strip() == (
        f"mech attention: interrupted: 1 of 2 batches of mech attention are written "
        f"to {out}; rerun the same command to resume."
    ), err
    assert isinstance(seen[0], E.Interrupted) and isinstance(seen[0], KeyboardInterrupt)
    assert (out / ".attention.parts" / "000000.safetensors").is_file() and not (
        out / "attention.json"
    ).exists()


def test_a_bug_says_so_and_debug_shows_the_traceback(root, tmp_path, monkeypatch, capsys):
    from mech.measure.attention.job import AttentionJob

    monkeypatch.setattr(AttentionJob, "measure", lambda *a, **k: 1 / 0)
    argv = [
        A,
        "--model",
        str(root / "model"),
        "--data",
        "organism:shapes",
        "--n",
        "2",
        "--out",
        str(tmp_path / "o"),
        "--no-progress",
    ]
    rc, _, err = _run(argv, capsys)
    assert rc == 3 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "internal error (a bug in mech" in err and "ZeroDivisionError" in err and "--debug" in err
    rc, _, err = _run(["--debug", *argv], capsys)
    assert (
        rc == 3
        and "Traceback" in err
        and "1 / 0" in err
        and err.strip().splitlines()[-1].startswith("mech attention")
    )
    rc, _, err = _run(argv + ["--debug"], capsys)  # after the command too
    assert rc == 3 and "Traceback" in err
    rc, _, err = _run([A, "--model", str(root / "nope"), "--out", str(tmp_path / "o"), "--debug"], capsys)
    assert rc == 1 and "Traceback" in err and "SpecError" in err  # a refusal's traceback, on request


def _env_sub():
    return dict(
        os.environ,
        OMP_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )


SUBPROCESS = [
    ("device", ["attention", "--model", "{root}/model", "--device", "tpu"], 1, "is not a device"),
    (
        "truncated-weights",
        ["attention", "--model", "{root}/trunc", "--n", "2", "--no-progress", "--out", "{out}"],
        1,
        "Download the model again",
    ),
    ("usage", ["patch", "--sites"], 2, "expected at least one argument"),
    (
        "hub-id",
        ["attention", "--model", "no-such-org/no-such-model", "--out", "{out}"],
        1,
        "huggingface-cli download",
    ),
]


@pytest.mark.parametrize("case", SUBPROCESS, ids=[c[0] for c in SUBPROCESS])
def test_nothing_else_reaches_stderr(root, tmp_path, case):
    """``python -m mech.cli`` as a user runs it: stderr is exactly the one line (no warnings, no
    traceback, no loading bars)."""
    _, argv, code, phrase = case
    argv = [a.format(root=root, out=tmp_path / "out") for a in argv]
    done = subprocess.run(
        [sys.executable, "-m", "mech.cli", *argv], env=_env_sub(), capture_output=True, text=True, timeout=300
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code and len(lines) == 1 and phrase in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_a_data_set_outside_the_vocabulary_warns_in_one_line(tmp_path, capsys):
    """The organism (a word-level tokenizer) on questions whose words it has never seen: the command runs,
    and says so in ONE stderr line (mech's warnings are not printed as Python's two-line warnings)."""
    from mech.testing.tiny import save_tiny_jsonl

    save_tiny_jsonl(
        tmp_path,
        [
            "which photosynthesis pathway dominates cacti ?",
            "derive the eigenvalues of this hamiltonian matrix ?",
        ],
    )
    rc, out, err = _run(
        [
            "attention",
            "--model",
            "organism:balanced",
            "--data",
            f"jsonl:{tmp_path / 'data.jsonl'}",
            "--batch-size",
            "2",
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ],
        capsys,
    )
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert (
        lines[0].startswith("mech attention: warning: ") and "outside the model's vocabulary" in lines[0]
    ), err
    assert "Warning:" not in err and "warnings.warn" not in err
