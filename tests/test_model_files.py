"""Model files are untrusted input: every wrong card or weights file is one line, exit 4,
naming the file and the field (scripts/fuzz_model_files.py does the same at scale)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
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


@pytest.mark.parametrize("value, words", [
    (-0.001, "must be ≥ 0, got -0.001"),
    ("0.0035", "must be a finite number"),
    (float("inf"), "must be a finite number"),
])
def test_a_bad_static_rate_weight(weights_copy: Path, value: object, words: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = card_path(weights_copy)
    card = json.loads(path.read_text())
    card["rate_points"][2]["static_rate_weight"] = value
    path.write_text(json.dumps(card))
    assert run_app(["models"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"rate_points[2].static_rate_weight: {words}" in err[0], err


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


def _rewrite_weights(weights_copy: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> str:
    """Write the copy's weights file again with ``change`` applied to all its tensors (the
    network's, the static tables and the index model's), its card's sha256 kept right so that
    only the tensors can be refused; returns the file's name."""
    from diveq_codec.codec import zoo

    path = card_path(weights_copy)
    card = json.loads(path.read_text())
    config, tensors, tables, index_tensors = zoo.read_weights_file(weights_copy / card["file"])
    assert index_tensors, "the shipped weights carry an index model"
    tensors[zoo.ENTROPY_TENSOR] = torch.from_numpy(tables.astype("int32"))
    tensors.update({name: torch.from_numpy(np.ascontiguousarray(value)) for name, value in index_tensors.items()})
    change(tensors)
    save_file(tensors, str(weights_copy / card["file"]), metadata={"config": json.dumps(config.to_dict())})
    card["sha256"] = file_sha256(weights_copy / card["file"])
    path.write_text(json.dumps(card))
    zoo.clear_model_cache()
    return card["file"]


def _encode_error(parrots_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """The one line of stderr of an encode that must end in exit 4."""
    assert run_app(["encode", str(parrots_path), str(tmp_path / "o.dvq"), "-q", "1"]) == 4
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_weights_that_disagree_with_their_config_are_one_line(
        weights_copy: Path, tmp_path: Path, parrots_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    name = ""

    def cut(tensors: dict[str, torch.Tensor]) -> None:
        nonlocal name
        name = sorted(k for k in tensors if not k.startswith(("entropy_", "index_model.")))[0]
        tensors[name] = tensors[name][:1].contiguous()

    _rewrite_weights(weights_copy, cut)
    err = _encode_error(parrots_path, tmp_path, capsys)
    assert f"tensor {name!r}" in err and "the config's network needs" in err


def _set(name: str, make: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        tensors["index_model." + name] = make(tensors["index_model." + name]).contiguous()
    return change


def _drop(name: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def change(tensors: dict[str, torch.Tensor]) -> None:
        del tensors["index_model." + name]
    return change


def _inexact(tensors: dict[str, torch.Tensor]) -> None:
    """Codewords and projection weights so large that the projection's sums pass 2^53."""
    for name in ("codebooks", "stage2.project_w"):
        tensors["index_model." + name] = torch.full_like(tensors["index_model." + name], 2**31 - 1)


def _zero_last(table: torch.Tensor) -> torch.Tensor:
    table = table.clone()
    table[-1] = 0
    return table


INDEX_MODEL_DAMAGE = {
    "hidden_w-shape": (_set("stage1.hidden_w", lambda w: w[:, :-1]), "stage 1: a tensor of shape"),
    "context_w-shape": (_set("stage2.context_w", lambda w: w[1:]), "stage 2: a tensor of shape"),
    "table-rising": (_set("output_table", lambda t: t.flip(0)), "output table must fall"),
    "table-zero": (_set("output_table", _zero_last), "output table must fall"),
    "table-too-high": (_set("output_table", lambda t: t * 2), "output table must fall from at most 2^16"),
    "missing-previous": (_drop("stage2.previous"), "index_model.stage2.previous"),
    "missing-table": (_drop("output_table"), "index_model.output_table"),
    "offsets-same-position": (_set("neighbour_offsets", lambda o: torch.zeros_like(o)), "neighbour offsets"),
    "offsets-below": (_set("neighbour_offsets", lambda o: -o), "neighbour offsets"),
    "shift-range": (_set("stage1.hidden_shift", lambda s: torch.full_like(s, 61)), "outside 0..60"),
    "cap-zero": (_set("cap", torch.zeros_like), "cap or codebooks out of range"),
    "codebook-alphabet": (_set("codebooks", lambda c: c[:, :-1]), "stage 1: a tensor of shape"),
    "inexact-sums": (_inexact, "not exact in float64"),
}


@pytest.mark.parametrize("damage", INDEX_MODEL_DAMAGE)
def test_a_broken_index_model_is_one_line(weights_copy: Path, tmp_path: Path, parrots_path: Path,
                                          capsys: pytest.CaptureFixture[str], damage: str) -> None:
    """The index model is read from the weights file like the network: a tensor of the wrong
    shape, a missing one, an output table that does not fall, offsets a decoder cannot know,
    shifts or sums outside what the integer arithmetic holds exactly: exit 4, one line naming
    the file."""
    change, words = INDEX_MODEL_DAMAGE[damage]
    file = _rewrite_weights(weights_copy, change)
    err = _encode_error(parrots_path, tmp_path, capsys)
    assert err.startswith(f"diveq-codec: error: weights file {file}: index model") and words in err, err


def test_the_rewrite_helper_keeps_the_weights_usable(weights_copy: Path, tmp_path: Path, parrots_path: Path) -> None:
    """Guards the refusals above: rewritten unchanged, the weights still encode."""
    _rewrite_weights(weights_copy, lambda tensors: None)
    assert run_app(["encode", str(parrots_path), str(tmp_path / "o.dvq"), "-q", "1"]) == 0


def test_fuzzed_model_files_never_end_in_an_internal_error() -> None:
    messages: list[str] = []
    outcomes = fuzz_model_files.run(200, seed=7, say=messages.append)
    bad = {key: n for key, n in outcomes.items() if key[1].startswith(("INTERNAL", "MULTI"))}
    assert bad == {}, messages
    assert sum(n for (_, outcome), n in outcomes.items() if outcome == "exit 4") > 100
