"""Progress on stderr: drawn only where someone watches (a terminal, or a stream given),
and fed by the network's own loops through a per-thread listener."""

from __future__ import annotations

import io
import threading

import torch

from diveq_codec.codec.cli.progress import Progress, StageProgress
from diveq_codec.models import progress, tiling


def test_bars_are_silent_off_a_terminal(capsys) -> None:
    with Progress(3, "encode") as bar:
        bar.advance()
        bar.print_line("a result line")
    with StageProgress("encode x.png") as stages:
        stages("analysis", 1, 2)
    assert capsys.readouterr().err == "a result line\n"  # result lines only, no bar


def test_bars_draw_on_a_given_stream_and_clean_up() -> None:
    stream = io.StringIO()
    with Progress(2, "decode", stream=stream) as bar:
        bar.advance()
        bar.advance()
    assert "decode [" in stream.getvalue() and "2/2" in stream.getvalue()
    assert stream.getvalue().endswith("\r")  # the bar's line is blanked for what follows
    quiet = io.StringIO()
    with Progress(2, "decode", quiet=True, stream=quiet) as bar:
        bar.advance()
    assert quiet.getvalue() == ""


def test_tiled_synthesis_reports_each_tile_to_its_own_thread() -> None:
    synthesis = torch.nn.Sequential(torch.nn.Conv2d(4, 12, 1), torch.nn.PixelShuffle(2))  # ×2, like the codec's
    heard: dict[str, list[tuple[str, int, int]]] = {"a": [], "b": []}

    def work(name: str, size: int) -> None:
        with progress.listening(lambda *event: heard[name].append(event)):
            tiling.tiled_synthesis(synthesis, torch.zeros(1, 4, size, size), stride=2, tile_size=8, margin=1)

    threads = [threading.Thread(target=work, args=("a", 8)), threading.Thread(target=work, args=("b", 4))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert heard["a"][-1] == ("synthesis", 4, 4) and len(heard["a"]) == 5  # 2×2 tiles, then done
    assert heard["b"] == []  # one tile: nothing worth a bar
    stages = io.StringIO()
    bar = StageProgress("decode big.dvq", stream=stages)
    for event in heard["a"]:
        bar(*event)
    assert "synthesis [" in stages.getvalue() and "4/4" in stages.getvalue()
