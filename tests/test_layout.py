"""The package's layout rules: commands on top, no import circles (counting imports inside
functions too), sizes kept small."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dpt_t2i"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The dpt_t2i modules a file imports anywhere (relative imports resolved), but for type
    annotations (`if TYPE_CHECKING:`)."""
    tree = ast.parse(path.read_text())
    package = _module(path) if path.name == "__init__.py" else _module(path).rpartition(".")[0]
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and getattr(block.test, "id", None) == "TYPE_CHECKING"
                   for n in ast.walk(block)}
    nodes = [n for n in ast.walk(tree) if id(n) not in typing_only]
    found = set()
    for node in nodes:
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package.split(".")[:len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        if target.startswith("dpt_t2i"):
            for alias in node.names:  # `from .commands import generate` names a module
                sub = f"{target}.{alias.name}"
                found.add(sub if _exists(sub) else target)
    return found


def _exists(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _files():
    return sorted(p for p in PACKAGE.rglob("*.py") if "weights" not in p.parts)


def test_nothing_below_the_commands_imports_them():
    upward = []
    for path in _files():
        module = _module(path)
        if module.startswith(("dpt_t2i.commands", "dpt_t2i.cli", "dpt_t2i.__main__")):
            continue
        upward += [f"{module} -> {m}" for m in _imports(path)
                   if m.startswith(("dpt_t2i.commands", "dpt_t2i.cli"))]
    assert upward == []


def test_no_import_circles():
    graph = {_module(p): _imports(p) for p in _files()}
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(node, trail):
        if state.get(node) == 1:
            raise AssertionError("import circle: " + " -> ".join(trail[trail.index(node):] +
                                                                  [node]))
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, trail + [node])
        state[node] = 2

    for module in sorted(graph):
        visit(module, [])


def test_files_and_functions_stay_small():
    too_big = []
    for path in _files():
        text = path.read_text()
        if text.count("\n") > 500:
            too_big.append(f"{path.name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > 80:
                    too_big.append(f"{path.name}:{node.name}: {size} lines")
    assert too_big == []


def test_the_screenshot_tool_is_not_in_the_package():
    assert not any(p.name == "demo_screenshot.py" for p in PACKAGE.rglob("*.py"))


# what each wing may import besides itself: data flows down (model < io, data < generation,
# training < eval < app < commands); io and data read each other's files (the Shapes
# vocabulary, the GenEval layout) but neither reads a wing above them
BELOW = {"model": set(), "io": {"model", "data"}, "data": {"model", "io"},
         "generation": {"model", "io", "data"}, "training": {"model", "io", "data"},
         "eval": {"model", "io", "data", "generation", "training"},
         "app": {"model", "io", "data", "generation", "eval"}}


def test_each_wing_imports_only_the_wings_below_it():
    upward = []
    for path in _files():
        parts = _module(path).split(".")
        if len(parts) < 3 or parts[1] not in BELOW:
            continue
        wing = parts[1]
        upward += [f"{_module(path)} -> {m}" for m in _imports(path)
                   if m.count(".") >= 1 and m.split(".")[1] not in BELOW[wing] | {wing}
                   and m.split(".")[1] != "__init__"]
    assert upward == []
