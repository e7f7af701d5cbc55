"""requirements.lock: made from today's pyproject.toml, every dependency pinned with hashes, torch outside it."""

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import lock  # noqa: E402


def _pins():
    text = (ROOT / "requirements.lock").read_text()
    return {
        m.group(1).lower(): m.group(2) for m in re.finditer(r"^([A-Za-z0-9_.\-]+)==(\S+) \\$", text, re.M)
    }, text


def _name(req):
    return re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower().replace("_", "-")


def test_the_lock_matches_pyproject():
    done = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "lock.py"), "check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_a_changed_dependency_changes_the_fingerprint(tmp_path):
    text = (ROOT / "pyproject.toml").read_text()
    changed = tmp_path / "pyproject.toml"
    changed.write_text(text.replace('"einops>=0.8"', '"einops>=0.9"'))
    assert lock.fingerprint(changed) != lock.fingerprint()
    unrelated = tmp_path / "other.toml"
    unrelated.write_text(text.replace("markers = [", 'markers = [\n    "extra: not a dependency",'))
    assert lock.fingerprint(unrelated) == lock.fingerprint()


def test_every_dependency_is_pinned_with_hashes_and_torch_is_left_out():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {
        _name(r)
        for r in project["dependencies"]
        + project["optional-dependencies"]["dev"]
        + project["optional-dependencies"]["tl"]
    }
    pins, text = _pins()
    assert "torch" not in pins and not any(p.startswith(("nvidia-", "triton", "cuda-")) for p in pins)
    assert wanted - {"torch"} <= set(pins), sorted(wanted - {"torch"} - set(pins))
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text)
    for block in blocks:
        if "==" in block.splitlines()[0]:
            assert "--hash=sha256:" in block, block.splitlines()[0]
