"""The optional packages that ``eval`` needs (the ``eval`` extra of pyproject.toml).

scipy filters the images for MS-SSIM, matplotlib draws rd.png and bjontegaard fits the
BD-rate curves. They are imported only where used; ``eval`` checks for them before any
work so that a missing one is one line at the start, not an error after an hour of measuring.
"""

from __future__ import annotations

import importlib.util

EVAL_PACKAGES = ("scipy", "matplotlib", "bjontegaard")
INSTALL_HINT = "pip install 'diveq-codec[eval]'"


def is_installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ValueError:  # in sys.modules without a spec: imported, so there
        return True


def missing_eval_packages() -> list[str]:
    return [name for name in EVAL_PACKAGES if not is_installed(name)]


def missing_message(command: str, missing: list[str]) -> str:
    """E.g. "eval needs scipy and matplotlib: pip install 'diveq-codec[eval]'"."""
    names = missing[0] if len(missing) == 1 else f"{', '.join(missing[:-1])} and {missing[-1]}"
    return f"{command} needs {names}: {INSTALL_HINT}"
