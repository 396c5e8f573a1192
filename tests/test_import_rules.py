"""The layering of specs/import-rules.toml, checked on the source and in a fresh interpreter."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("quicvoice", "lb")
#: The one module allowed to touch aioquic's private names (specs/architecture.md).
AIOQUIC_GLUE = "quicvoice.quic"


@dataclass(frozen=True)
class Layer:
    name: str
    modules: tuple[str, ...]
    may_import: tuple[str, ...]
    forbid: tuple[str, ...]


def load_layers() -> list[Layer]:
    rules = tomllib.loads((ROOT / "specs" / "import-rules.toml").read_text())
    return [
        Layer(
            name=table["name"],
            modules=tuple(table["modules"]),
            may_import=tuple(table["may_import"]),
            forbid=tuple(table.get("forbid", ())),
        )
        for table in rules["layer"]
    ]


def matches(module: str, prefix: str) -> bool:
    if prefix.startswith("="):
        return module == prefix[1:]
    return module == prefix or module.startswith(prefix + ".")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[module_name(path)] = path
    return found


def imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None or node.level:
                # `from . import x` may name submodules: check each as a module.
                found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
            found.append((node.lineno, target))
    return found


def layer_of(module: str, layers: list[Layer]) -> Layer | None:
    best: tuple[int, Layer] | None = None
    for layer in layers:
        for prefix in layer.modules:
            if matches(module, prefix) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), layer)
    return best[1] if best else None


def allowed(target: str, layer: Layer) -> bool:
    top = target.split(".")[0]
    if any(matches(target, banned) for banned in layer.forbid):
        return False
    if "*" in layer.may_import:
        return True
    for rule in layer.may_import:
        if rule == "stdlib" and top in sys.stdlib_module_names:
            return True
        if matches(target, rule):
            return True
        # `from quicvoice import errors` resolves to the package first.
        if target in PACKAGES and any(matches(r, target) for r in layer.may_import):
            return True
    return False


def test_every_module_has_a_layer() -> None:
    layers = load_layers()
    orphans = [m for m in project_modules() if layer_of(m, layers) is None]
    assert not orphans, f"add these modules to specs/import-rules.toml: {orphans}"


def test_imports_follow_the_layers() -> None:
    layers = load_layers()
    violations = []
    for module, path in project_modules().items():
        layer = layer_of(module, layers)
        if layer is None:
            continue
        for line, target in imports_of(module, path):
            if not allowed(target, layer):
                violations.append(f"{path.relative_to(ROOT)}:{line}: {layer.name} imports {target}")
    assert not violations, "\n".join(violations)


def test_only_the_glue_module_touches_private_names_of_other_objects() -> None:
    violations = []
    for module, path in project_modules().items():
        if module == AIOQUIC_GLUE:
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            name = node.attr
            if not name.startswith("_") or (name.startswith("__") and name.endswith("__")):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            violations.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{name}")
    assert not violations, "\n".join(violations)


def test_forwarder_loads_without_aioquic_numpy_or_sessions() -> None:
    """What `import lb` really pulls in, in a fresh interpreter (catches transitive imports)."""
    probe = (
        "import sys, importlib, pkgutil, lb\n"
        "for info in pkgutil.walk_packages(lb.__path__, 'lb.'):\n"
        "    importlib.import_module(info.name)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('aioquic', 'numpy', 'msgpack', 'opuslib_next', 'redis') "
        "or m.startswith(('quicvoice.audio', 'quicvoice.session', 'quicvoice.store',"
        " 'quicvoice.asyncio')))\n"
        "print(' '.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == ""


def runtime_imports_of(module: str, path: Path) -> list[tuple[int, str]]:
    """``imports_of`` less the imports under ``if TYPE_CHECKING:`` (never run)."""
    tree = ast.parse(path.read_text(), str(path))
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                type_only.update(
                    sub.lineno for sub in ast.walk(inner) if isinstance(sub, ast.stmt)
                )
    return [(line, target) for line, target in imports_of(module, path) if line not in type_only]


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports when it runs, lazy imports included.

    Left out: an import of a module's own parent package (Python initialises a package before
    its submodules whatever they import, so that edge orders nothing) and imports for type
    checkers only.
    """
    modules = project_modules()
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for module, path in modules.items():
        for _, target in runtime_imports_of(module, path):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != module and not matches(module, target):
                graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_quicvoice_never_imports_the_forwarder() -> None:
    """``lb`` builds on quicvoice's codec and settings; the reverse would make a package cycle."""
    found = [
        f"{path.relative_to(ROOT)}:{line}: {target}"
        for module, path in project_modules().items()
        if matches(module, "quicvoice")
        for line, target in imports_of(module, path)
        if matches(target, "lb")
    ]
    assert found == []


def test_the_package_root_names_what_it_exports() -> None:
    """Every name in ``quicvoice.__all__`` resolves (the lazy ones import their module)."""
    import quicvoice

    missing = [name for name in quicvoice.__all__ if not hasattr(quicvoice, name)]
    assert missing == []
