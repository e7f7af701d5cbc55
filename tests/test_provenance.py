"""Results say what made them, and the same result is the same bytes (issue 13, item 5).

Every JSON file a command writes (results, parts headers, the eval checkpoint's header line)
carries ``provenance``: mech's, torch's, transformers' and nnsight's versions and the hash of
``requirements.lock``. Two processes with different ``PYTHONHASHSEED`` that compute the same
result write byte-identical ``.json``, ``.jsonl``, ``.md`` and ``.safetensors`` files.

Oracles: ``importlib.metadata`` for the versions, ``hashlib.sha256`` of the lock file, pyproject's
version, and the other process's bytes.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import mech
from mech import results
from mech.results import BatchStore, provenance, read_json, write_json, write_tensors
from mech.testing.tiny import save_tiny, save_tiny_jsonl

ROOT = Path(__file__).resolve().parents[1]
QUESTIONS = ["what colour is the shape ?", "which shape is in the image ?", "what is the big shape ?"]
SUFFIXES = (".json", ".jsonl", ".md", ".safetensors")

# every command that writes JSON: report runs eval, attention, patch and contrib (and writes compare.json)
_DRIVER = """
import sys
from mech.cli import main
model, data, out = sys.argv[1:]
base = ["--model", model, "--data", f"jsonl:{data}", "--n", "3", "--batch-size", "2", "--out", out]
for argv in (["report", *base], ["inspect", *base]):
    assert main(argv) == 0, argv
"""


def expected() -> dict:
    def version(name):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    lock = ROOT / "requirements.lock"
    return {
        "mech": version("mech"),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "nnsight": version("nnsight"),
        "lock": "sha256:" + hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else None,
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The driver's output directories of two processes with different hash seeds, run side by side."""
    root = tmp_path_factory.mktemp("prov")
    save_tiny("llava", root / "model")
    save_tiny_jsonl(root, QUESTIONS)
    procs, outs = [], []
    for seed in ("1", "2"):
        outs.append(root / f"out{seed}")
        env = dict(
            os.environ,
            PYTHONHASHSEED=seed,
            OMP_NUM_THREADS="1",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", _DRIVER, str(root / "model"), str(root / "data.jsonl"), str(outs[-1])],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
    return outs


def _files(out: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(out)): p for p in sorted(out.rglob("*")) if p.is_file() and p.suffix in SUFFIXES
    }


def test_every_json_a_command_writes_carries_provenance(runs):
    files = _files(runs[0])
    want = expected()
    assert want["mech"] == mech.__version__ and want["torch"].split("+")[0] == torch.__version__.split("+")[0]
    names = {n for n in files if n.endswith(".json")}
    assert {
        "eval.json",
        "attention.json",
        "patch.json",
        "contrib.json",
        "compare.json",
        "inspect.json",
        ".attention.parts/header.json",
        ".patch.parts/header.json",
        ".contrib.parts/header.json",
        ".eval.parts/header.json",
        ".mech/eval.identity.json",
    } <= names
    for name in names:
        js = read_json(files[name])
        assert js["provenance"] == want, name
        assert list(js)[-1] == "provenance", name  # one place, the last key


def test_two_processes_write_identical_bytes(runs):
    a, b = (_files(out) for out in runs)
    assert sorted(a) == sorted(b) and any(n.endswith(".safetensors") for n in a)
    for name in a:
        assert a[name].read_bytes() == b[name].read_bytes(), name
    assert len(results.read_metadata(a["eval.safetensors"])) >= 3  # several keys: their order used to differ


def test_provenance_matches_metadata_pyproject_and_lock(tmp_path, monkeypatch):
    with open(ROOT / "pyproject.toml", "rb") as fh:
        assert provenance()["mech"] == mech.__version__ == tomllib.load(fh)["project"]["version"]
    assert provenance() == expected()
    lock = tmp_path / "requirements.lock"
    lock.write_text("torch==2.13.0\n")
    monkeypatch.setattr(results, "LOCK_FILE", lock)
    assert provenance()["lock"] == "sha256:" + hashlib.sha256(b"torch==2.13.0\n").hexdigest()
    monkeypatch.setattr(results, "LOCK_FILE", tmp_path / "absent.lock")
    assert provenance()["lock"] is None  # a wheel install has no lock


def test_write_json_stamps_once_and_last(tmp_path):
    path = write_json(tmp_path / "r.json", {"b": 1, "provenance": {"mech": "old"}, "a": {"x", "y"}})
    text = path.read_text()
    js = json.loads(text)
    assert list(js) == ["b", "a", "provenance"] and js["provenance"] == provenance() and js["a"] == ["x", "y"]
    assert text.count('"provenance"') == 1 and text.endswith("}\n")
    write_json(tmp_path / "list.json", [1, 2])  # not an object: written as it is
    assert read_json(tmp_path / "list.json") == [1, 2]


def test_parts_resume_whatever_versions_wrote_their_header(tmp_path):
    head = {"command": "t", "args": {"n": 2}}
    store = BatchStore(tmp_path / "parts", head)
    store.put(0, {"x": torch.ones(2)}, {"k": 1})
    assert read_json(tmp_path / "parts" / "header.json")["provenance"] == provenance()
    old = read_json(tmp_path / "parts" / "header.json")
    old["provenance"] = dict(old["provenance"], torch="0.0.1", lock=None)
    (tmp_path / "parts" / "header.json").write_text(json.dumps(old))
    assert BatchStore.finished(tmp_path / "parts", head) == [0]
    again = BatchStore(tmp_path / "parts", head, clear=False)
    assert again.resumed and again.indices() == [0] and again.meta(0) == {"k": 1}
    assert not BatchStore(tmp_path / "parts", {**head, "args": {"n": 3}}).resumed  # settings still count


def test_safetensors_metadata_in_one_canonical_entry(tmp_path):
    tensors = {
        "b": torch.arange(3.0),
        "a": torch.ones(2, dtype=torch.long),
        "c": torch.zeros(1, dtype=torch.uint8),
    }
    meta = {"z": "1", "groups": "image,text", "a": "é", "m": 2, "nested": {"y": 1, "x": [1, 2]}}
    path = write_tensors(tmp_path / "t.safetensors", tensors, meta)
    with safe_open(str(path), "pt") as fh:
        raw = fh.metadata()
        assert list(raw) == [results.METADATA_KEY] and all(
            torch.equal(fh.get_tensor(k), v) for k, v in tensors.items()
        )
    assert raw[results.METADATA_KEY] == json.dumps(meta, sort_keys=True)
    assert results.read_metadata(path) == meta
