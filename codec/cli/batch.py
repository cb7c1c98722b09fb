"""Many files in one process: the model is loaded once, N workers share the cores.

Each file is reported on its own line as it finishes (a JSON line with ``--json``); a file
that fails is reported and the others go on; the exit code is that of the first input that failed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diveq_codec.codec.cli.common import PROG, exit_code_of, json_out
from diveq_codec.codec.cli.progress import Progress
from diveq_codec.codec.errors import UsageError


@dataclass(frozen=True)
class Job:
    input: str
    output: str


def available_cores() -> int:
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:  # not on Linux
        return max(os.cpu_count() or 1, 1)


def share_cores(workers: int) -> None:
    """Give each worker its share of the cores, so that N workers do not each start a thread
    per core (PyTorch's default): oversubscribed, they run several times slower."""
    import torch

    torch.set_num_threads(max(available_cores() // workers, 1))


def jobs_into_folder(inputs: Sequence[str], out_dir: str, extension: str) -> list[Job]:
    """One job per input, named ``out_dir/<input's stem><extension>``; two inputs that would
    write one output (``a.png`` and ``a.jpg``) are refused before any work."""
    if "-" in inputs:
        raise UsageError("a batch (--out-dir) reads files, not standard input")
    if not os.path.isdir(out_dir):
        raise UsageError(f"--out-dir {out_dir} is not a folder")
    jobs, owners = [], {}
    for name in inputs:
        output = os.path.join(out_dir, Path(name).stem + extension)
        if output in owners:
            raise UsageError(f"{owners[output]} and {name} would both be written to {output}")
        owners[output] = name
        jobs.append(Job(name, output))
    return jobs


class Reporter:
    """Prints one line per finished file, keeping a terminal progress bar below them."""

    def __init__(self, progress: Progress, json_flag: bool, quiet: bool) -> None:
        self.progress = progress
        self.json_flag = json_flag
        self.quiet = quiet
        self._lock = threading.Lock()

    def done(self, line: str, summary: dict[str, Any]) -> None:
        with self._lock:
            if self.json_flag:
                json_out(summary)
            else:
                self.progress.print_line(line)
            self.progress.advance()

    def note(self, message: str) -> None:
        if not self.quiet:
            with self._lock:
                self.progress.print_line(f"{PROG}: note: {message}")

    def warn(self, message: str) -> None:
        with self._lock:
            self.progress.print_line(f"{PROG}: warning: {message}")

    def failed(self, job: Job, exc: BaseException) -> int:
        code, message = exit_code_of(exc)
        with self._lock:
            named = message if job.input in message else f"{job.input}: {message}"
            self.progress.print_line(f"{PROG}: error: {named}")
            if self.json_flag:
                json_out({"input": job.input, "output": job.output, "error": message, "exit_code": code})
            self.progress.advance()
        return code


Work = Callable[[Job, "Reporter"], tuple[str, dict[str, Any]]]  # one file: (its result line, its JSON)


def run_jobs(jobs: Sequence[Job], work: Work, workers: int,
             label: str, json_flag: bool, quiet: bool) -> int:
    """Run ``work`` on every job with ``workers`` threads; return 0, or the exit code of the
    first input (in the order given) that failed."""
    workers = max(1, min(workers, len(jobs)))
    share_cores(workers)
    failures: dict[int, int] = {}  # job index -> exit code
    with Progress(len(jobs), label, quiet=quiet) as progress:
        reporter = Reporter(progress, json_flag, quiet)

        def one(index: int) -> None:
            try:
                line, summary = work(jobs[index], reporter)
            except Exception as exc:  # noqa: BLE001 - a failing file is reported; the batch goes on
                failures[index] = reporter.failed(jobs[index], exc)
                return
            reporter.done(line, summary)

        if workers == 1:
            for index in range(len(jobs)):
                one(index)
        else:
            pool = ThreadPoolExecutor(max_workers=workers)
            try:
                for future in as_completed([pool.submit(one, index) for index in range(len(jobs))]):
                    future.result()
            finally:  # on Ctrl-C, files not yet started are dropped rather than waited for
                pool.shutdown(wait=True, cancel_futures=True)
    return failures[min(failures)] if failures else 0
