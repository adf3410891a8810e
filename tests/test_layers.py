"""The house's layering, read from the source: the import graph counts lazy imports too (every `import` /
`from ... import` anywhere in a module). No cycle among train.* and lora.*; lora imports nothing of train;
data/ imports nothing of train but config, errors, console, files, distributed and the family table (what length
a model takes); the main path never imports the tools (ship/, sweep)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("train", "lora")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` imports anywhere in its body (a package's __init__ counts as the package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def layering_problems() -> list[str]:
    paths = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph = {name: imports(path, name, set(paths)) for name, path in paths.items()}
    # a package's members importing the package's own names is the usual layout, not a cycle
    graph = {n: {t for t in ts if not n.startswith(t + ".")} for n, ts in graph.items()}
    problems = [" -> ".join(c) for c in cycles(graph)]
    problems += [f"{n} imports {t}" for n, ts in graph.items() if n.startswith("lora") for t in ts
                 if t.startswith("train")]
    allowed = ("train.data", "train.config", "train.errors", "train.console", "train.files", "train.distributed",
               "train.families")
    problems += [f"{n} imports {t}" for n, ts in graph.items() if n.startswith("train.data") for t in ts
                 if not t.startswith(allowed)]
    main_path = ("train.trainer", "train.model", "train.rundir", "train.data", "train.device", "train.prefix")
    problems += [f"{n} imports {t}" for n, ts in graph.items() if n.startswith(main_path) for t in ts
                 if t.startswith(("train.ship", "train.sweep"))]
    return problems


def test_no_import_cycle_and_the_layers_point_one_way():
    assert layering_problems() == []
