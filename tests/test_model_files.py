"""Model files are untrusted input: every wrong card or weights file is one line, exit 4,
naming the file and the field (scripts/fuzz_model_files.py does the same at scale)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import fuzz_model_files  # noqa: E402  (scripts/fuzz_model_files.py)

from diveq_codec.codec.cli.app import run_app  # noqa: E402
from diveq_codec.models.weights_file import file_sha256  # noqa: E402


def card_path(weights_copy: Path) -> Path:
    return next(weights_copy.glob("*.json"))


@pytest.mark.parametrize("field, value, words", [
    ("rate_points", {"quality": 1}, "rate_points: must be a list"),
    ("rate_points", "all", "rate_points: must be a list"),
    ("rate_points", None, "rate_points: must be a list"),
    ("rate_points", 7, "rate_points: must be a list"),
    ("file", None, "file: must be a non-empty string"),
    ("file", "../../etc/passwd", "file: '../../etc/passwd' is not a valid value"),
    ("model_id", "8", "model_id: must be a whole number"),
    ("sha256", "abc", "sha256: 'abc' is not a valid value"),
])
def test_a_card_field_of_the_wrong_kind(weights_copy: Path, field: str, value: object, words: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    path = card_path(weights_copy)
    card = json.loads(path.read_text())
    card[field] = value
    path.write_text(json.dumps(card))
    assert run_app(["models"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"diveq-codec: error: model card {path.name}: {words}"), err


@pytest.mark.parametrize("text, words", [
    ("[" * 100_000 + "]" * 100_000, "nests deeper"),
    ('{"name": ' + "[" * 100 + "]" * 100 + "}", "nests deeper"),
    ("{", "is not readable JSON"),
    ("[]", "must hold a JSON object"),
])
def test_a_card_that_is_not_a_card(weights_copy: Path, text: str, words: str,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    card_path(weights_copy).write_text(text)
    assert run_app(["models"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0]


def test_weights_that_disagree_with_their_config_are_one_line(
        weights_copy: Path, tmp_path: Path, parrots_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from diveq_codec.codec import zoo

    path = card_path(weights_copy)
    card = json.loads(path.read_text())
    config, tensors, tables, second = zoo.read_weights_file(weights_copy / card["file"])
    name = sorted(tensors)[0]
    tensors[name] = tensors[name][:1].contiguous()
    tensors.update({zoo.ENTROPY_TENSOR: torch.from_numpy(tables.astype("int32")),
                    zoo.SECOND_ENTROPY_TENSOR: torch.from_numpy(second.astype("int32"))})
    save_file(tensors, str(weights_copy / card["file"]), metadata={"config": json.dumps(config.to_dict())})
    card["sha256"] = file_sha256(weights_copy / card["file"])
    path.write_text(json.dumps(card))
    zoo.clear_model_cache()
    assert run_app(["encode", str(parrots_path), str(tmp_path / "o.dvq"), "-q", "1"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"tensor {name!r}" in err[0] and "the config's network needs" in err[0]


def test_fuzzed_model_files_never_end_in_an_internal_error() -> None:
    messages: list[str] = []
    outcomes = fuzz_model_files.run(200, seed=7, say=messages.append)
    bad = {key: n for key, n in outcomes.items() if key[1].startswith(("INTERNAL", "MULTI"))}
    assert bad == {}, messages
    assert sum(n for (_, outcome), n in outcomes.items() if outcome == "exit 4") > 100
