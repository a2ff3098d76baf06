"""The package layout: agents/ in three rooms over a shared floor, imports pointing down, no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A module may import from its own level or any level below it (a lower number).
LEVELS = {"envs": 0, "agents": 1, "agents.runs": 2, "agents.meta": 3, "agents.continual": 4}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.split(".")[0] in ("agents", "envs")}


def _level(module: str) -> int:
    parts = module.split(".")
    if parts[0] == "agents" and len(parts) > 2 and ".".join(parts[:2]) in LEVELS:
        return LEVELS[".".join(parts[:2])]
    return LEVELS[parts[0]]


def _graph() -> dict[str, set[str]]:
    files = sorted((ROOT / "agents").rglob("*.py")) + sorted((ROOT / "envs").rglob("*.py"))
    return {_module_name(path): _imports(path) for path in files}


def test_every_agents_module_lives_in_a_room_or_the_shared_floor() -> None:
    floor = {path.stem for path in (ROOT / "agents").glob("*.py")} - {"__init__"}
    assert floor == {"policy", "sampler", "episodes"}
    rooms = {path.name for path in (ROOT / "agents").iterdir() if path.is_dir() and path.name != "__pycache__"}
    assert rooms == {"meta", "continual", "runs"}


def test_imports_point_down() -> None:
    upward = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if _level(target) > _level(module)
    ]
    assert not upward, upward


def test_envs_import_no_torch_and_no_agents() -> None:
    for path in (ROOT / "envs").rglob("*.py"):
        tree = ast.parse(path.read_text())
        names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        names |= {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert not any(name.split(".")[0] in ("torch", "agents") for name in names), path


def test_no_import_cycles() -> None:
    graph = _graph()
    modules = set(graph)

    def resolve(target: str) -> str | None:  # `from agents.x import y` may name a module or a symbol
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    edges = {module: {t for t in map(resolve, targets) if t and t != module} for module, targets in graph.items()}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in edges[module]:
            assert state.get(target) != 1, " -> ".join([*path, module, target])
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in sorted(modules):
        if module not in state:
            visit(module, [])
