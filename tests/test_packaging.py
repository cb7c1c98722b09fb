"""The installed package claims one top-level name, so a user's own ``codec.py`` or
``models.py`` cannot shadow it, and the evaluation-only libraries stay optional."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_a_folder_with_its_own_codec_models_and_weights_modules(tmp_path: Path, parrots_path: Path) -> None:
    for name in ("codec", "models", "weights"):
        (tmp_path / f"{name}.py").write_text("raise ImportError('the user module was imported')\n")
    (tmp_path / "parrots.png").write_bytes(parrots_path.read_bytes())
    script = ("from diveq_codec import codec; data = codec.encode('parrots.png', quality=1, device='cpu'); "
              "print(codec.decode(data, device='cpu').size)")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(256, 192)"


@pytest.mark.slow
def test_the_wheel_installs_only_the_diveq_codec_namespace(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"diveq_codec", next(t for t in top if t.endswith(".dist-info"))}
    assert "diveq_codec/weights/diveq-rvq12-c128-rb2-ft1-ix2.safetensors" in names
    assert "diveq_codec/weights/diveq-rvq12-c128-rb2-ft1-ix2.json" in names
    assert not any(name.startswith(("diveq_codec/tests", "diveq_codec/experiments")) for name in names)


def test_eval_without_its_extra_says_what_to_install() -> None:
    script = ("import sys; sys.modules['matplotlib'] = None\n"
              "from diveq_codec.codec.cli.app import run_app\n"
              "sys.exit(run_app(['eval', '.', '--limit', '1']))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'diveq-codec[eval]'" in lines[0], done.stderr
