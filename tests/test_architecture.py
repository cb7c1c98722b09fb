"""Dependencies run one way: codec may import models, models never codec; no import cycles;
nothing reaches into another module's ``_private`` names. Read from the sources' syntax trees,
so a lazy import inside a function counts like one at the top."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "diveq_codec"
FOLDERS = {"codec": f"{PACKAGE}.codec", "models": f"{PACKAGE}.models", "weights": f"{PACKAGE}.weights"}
OUTSIDE = ("scripts", "experiments", "tests")
MAX_LINES = 450  # the guide is ~400; this is the line no module may cross


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    parts = list(relative.parts)
    if parts[0] in FOLDERS:
        parts[0] = FOLDERS[parts[0]]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_sources() -> dict[str, Path]:
    return {module_name(p): p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))}


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, names taken from it, line) for every import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, [], node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names], node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}:{node.lineno}: relative import; use the absolute {PACKAGE} name")
    return found


def test_models_import_nothing_from_codec() -> None:
    bad = [f"{path.relative_to(ROOT)}:{line} imports {module}"
           for path in sorted((ROOT / "models").rglob("*.py"))
           for module, _, line in imports_of(path) if module.startswith(f"{PACKAGE}.codec") or module == "codec"]
    assert bad == []


def test_no_generic_top_level_imports() -> None:
    """Every import of our code goes through the namespace: `import codec` would find whatever
    else is called codec on the user's path."""
    bad = []
    for folder in (*FOLDERS, *OUTSIDE):
        for path in sorted((ROOT / folder).rglob("*.py")):
            bad += [f"{path.relative_to(ROOT)}:{line} imports {module}" for module, _, line in imports_of(path)
                    if module.split(".")[0] in FOLDERS]
    assert bad == []


def test_no_import_cycles() -> None:
    sources = package_sources()
    graph: dict[str, set[str]] = {}
    for name, path in sources.items():
        targets = set()
        for module, names, _ in imports_of(path):
            targets |= {f"{module}.{n}" for n in names if f"{module}.{n}" in sources}
            if module in sources and not (names and all(f"{module}.{n}" in sources for n in names)):
                targets.add(module)
        graph[name] = targets - {name}
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(trail[trail.index(nxt):] + [node, nxt]) if nxt in trail else f"{node} -> {nxt}")
            elif nxt not in state:
                visit(nxt, trail + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert cycles == []


def private_uses(path: Path, sources: dict[str, Path]) -> list[str]:
    """`from ours import _x`, and `ours._x` on a module of ours imported under a name."""
    tree = ast.parse(path.read_text(), str(path))
    own = module_name(path) if path.parts[len(ROOT.parts)] in FOLDERS else None
    aliases, bad = {}, []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in sources and node.module != own:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in sources:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                elif alias.name.startswith("_"):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} takes {alias.name} from {node.module}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in sources and alias.asname:
                    aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__") and aliases[node.value.id] != own):
            bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return bad


def test_nothing_uses_another_modules_private_names() -> None:
    sources = package_sources()
    bad = []
    for folder in (*FOLDERS, *OUTSIDE):
        for path in sorted((ROOT / folder).rglob("*.py")):
            bad += private_uses(path, sources)
    assert bad == []


def test_modules_stay_small() -> None:
    long = [f"{path.relative_to(ROOT)}: {n} lines" for folder in FOLDERS
            for path in sorted((ROOT / folder).rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > MAX_LINES]
    assert long == []
