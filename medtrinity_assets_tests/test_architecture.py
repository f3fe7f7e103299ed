"""The package's shape: the Dagster layer stays in defs/, stage packages import no Dagster and
form no import cycle, and functions and modules stay short enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "medtrinity_assets"
DAGSTER_LAYER = ("defs/", "definitions.py", "cli.py")
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (annotations only, never executed)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = child.test if isinstance(child, ast.If) else None
            if test is not None and "TYPE_CHECKING" in ast.unparse(test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def _imports(path: Path, module: str) -> set[str]:
    """Modules imported by ``path`` at run time, at any depth (lazy imports in functions count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_only_the_dagster_layer_imports_dagster():
    offenders = []
    for module, path in _modules().items():
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith(DAGSTER_LAYER):
            continue
        if any(name == "dagster" or name.startswith(("dagster.", "dagster_")) for name in _imports(path, module)):
            offenders.append(rel)
    assert offenders == []


def test_no_import_cycles_between_modules():
    modules = _modules()
    graph = {m: {i for i in _imports(p, m) if i in modules and i != m} for m, p in modules.items()}
    # a package's __init__ re-exporting its submodules is not a cycle of the submodules
    graph = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append([*stack[stack.index(n):], n] if n in stack else [m, n])
            elif n not in state:
                visit(n, [*stack, n])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_functions_and_modules_are_short():
    long_functions, long_modules = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES:
            long_modules.append((rel, text.count("\n")))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append((rel, node.name, n))
    assert long_modules == [] and long_functions == []


def test_architecture_doc_lists_the_table_contracts():
    """docs/ARCHITECTURE.md's data contracts are the ones in core/tables.py."""
    from medtrinity_assets.core.tables import markdown

    doc = (PACKAGE.parent / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    begin, end = "<!-- contracts:begin -->\n", "<!-- contracts:end -->"
    assert begin in doc and end in doc
    assert doc[doc.index(begin) + len(begin) : doc.index(end)] == markdown(), (
        "regenerate with: python -m medtrinity_assets.core.tables --write"
    )


def test_missing_required_column_names_table_and_column(tmp_path):
    import polars as pl
    import pytest

    from medtrinity_assets.core.tables import ROI_SET, ContractError

    ROI_SET.write(ROI_SET.empty(), tmp_path, "s")
    pl.DataFrame({"record_id": ["a"]}).write_parquet(ROI_SET.path(tmp_path, "s"))
    with pytest.raises(ContractError, match="table 'roi_set'.*required column\\(s\\) missing: source, roi_id"):
        ROI_SET.read(tmp_path, "s")
    with pytest.raises(ContractError, match="not in its contract: extra"):
        ROI_SET.write(ROI_SET.empty().with_columns(pl.lit(1).alias("extra")), tmp_path, "s")
