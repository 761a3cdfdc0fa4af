"""Imports run one way: cli -> pipeline -> stages -> model and types, with no cycle.

Read from the source with the standard library's ast, so a new module is checked the day it
is added."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

from marketpipe.samples import make_sample

SRC = Path(__file__).resolve().parents[1] / "src" / "marketpipe"

# Layers, lowest first. A module may import its own layer's package and any lower layer.
LAYERS = [
    {
        "marketpipe.version",
        "marketpipe.defaults",
        "marketpipe.types",
        "marketpipe.errors",
        "marketpipe.symbology",
        "marketpipe.logs",
    },
    {"marketpipe.model", "marketpipe.components", "marketpipe.parsing"},
    {"marketpipe.registry"},
    {"marketpipe.config", "marketpipe.retries", "marketpipe.transform", "marketpipe.samples"},
    {"marketpipe.sources", "marketpipe.rules", "marketpipe.stores"},  # the stages, by package
    {"marketpipe.reading", "marketpipe.coverage"},
    {"marketpipe.pipeline", "marketpipe.exporting"},
    {"marketpipe.cluster"},
    {"marketpipe.ingesting"},  # the Python API's ingest, which the CLI's renders
    {"marketpipe.tables"},  # tables fit to the terminal: Rich only
    {"marketpipe.console"},
    {"marketpipe.commands"},
    {"marketpipe.cli"},
    {"marketpipe.__main__"},
    {"marketpipe"},  # the package: the Python API's front door (marketpipe.open)
]


STAGES = next(i for i, layer in enumerate(LAYERS) if "marketpipe.stores" in layer)


def _module(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(("marketpipe", *parts)).removesuffix(".__init__")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("marketpipe"):
            # `from marketpipe import pipeline` imports the module marketpipe.pipeline, not
            # the package's own names.
            package = SRC.joinpath(*node.module.split(".")[1:])
            for alias in node.names:
                if (package / f"{alias.name}.py").exists() or (package / alias.name).is_dir():
                    found.add(f"{node.module}.{alias.name}")
                else:
                    found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("marketpipe")}
    return found


def _layer(module: str) -> tuple[int, str]:
    """(layer, unit): a stage package is one unit, every other module its own."""
    for depth, names in enumerate(LAYERS):
        for name in sorted(names, key=len, reverse=True):
            if module == name or (depth == STAGES and module.startswith(name + ".")):
                return depth, name
    raise AssertionError(f"{module} is in no layer: add it to LAYERS")


GRAPH = {_module(p): _imports(p) for p in SRC.rglob("*.py")}


def test_every_import_goes_down_or_stays_in_its_stage() -> None:
    wrong = []
    for module, imports in GRAPH.items():
        depth, unit = _layer(module)
        for imported in imports:
            their_depth, their_unit = _layer(imported)
            if their_depth > depth or (their_depth == depth and their_unit != unit):
                wrong.append(f"{module} -> {imported}")
    assert wrong == []


def test_no_import_cycle() -> None:
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for imported in sorted(GRAPH.get(module, ())):
            if imported == module:
                continue
            if state.get(imported) == "open":
                return [*path, imported]
            if imported not in state and (cycle := visit(imported, [*path, imported])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(GRAPH):
        if module not in state:
            assert visit(module, [module]) is None


def _unnamed(text: str) -> list[str]:
    # Whole file names: `client.py` is not named by `databento_client.py`.
    named = set(re.findall(r"(?<![\w.])(\w+\.py)\b", text))
    return [
        str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if p.name != "__init__.py" and p.name not in named
    ]


def test_the_readme_layout_names_every_module() -> None:
    readme = (SRC.parents[1] / "README.md").read_text()
    layout = readme.split("## Layout", 1)[1].split("```")[1]
    assert _unnamed(layout) == [], "README's layout section does not name these"


def test_the_architecture_map_names_every_module() -> None:
    """docs/architecture.md, the newcomer's map, says where each module fits."""
    assert _unnamed((SRC.parents[1] / "docs" / "architecture.md").read_text()) == []


def test_errors_live_in_errors_py() -> None:
    """Every error a user can see is marketpipe's (one base, MarketpipeError, or the
    KeyboardInterrupt a signal is) and is declared in errors.py. The rule's one exception is
    an error that carries a stage's own type: IngestFailed holds the pipeline's RunSummary, so
    it lives with ingesting.py. A module's private control flow (``_Abandoned``) stays there."""
    errors = ast.parse((SRC / "errors.py").read_text())
    names = {"Exception", "BaseException", "KeyboardInterrupt"} | {
        node.name for node in errors.body if isinstance(node, ast.ClassDef)
    }
    outside = []
    for path in SRC.rglob("*.py"):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                bases = {b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases}
                if bases & names:
                    outside.append(f"{path.relative_to(SRC)}:{node.name}")
    assert outside == ["ingesting.py:IngestFailed"]


def test_store_schemes_are_read_in_one_place() -> None:
    """Which store a location names is the registry's word alone (``registry.kind_of``): no
    other module holds a store's prefix or tests a location against one (a message may name
    one in prose)."""
    from marketpipe.registry import BUILT_IN

    prefixes = {p for kind in BUILT_IN for p in kind.prefixes}  # ("://" alone is any URL's)
    found = []
    for path in SRC.rglob("*.py"):
        if path.name == "registry.py":
            continue
        tree = ast.parse(path.read_text())
        formatted = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):  # an f-string's text (a URL shown without its password) aside
            if isinstance(node, ast.Constant) and node.value in prefixes and id(node) not in formatted:
                found.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value!r}")
    assert found == []


def _concrete(package: str) -> dict[str, str]:
    """Class name -> the module defining it, for the public classes of a stage package."""
    classes = {}
    for path in (SRC / package).glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                classes[node.name] = path.name
    return classes


def test_the_core_asks_capabilities_not_concrete_classes() -> None:
    """No ``isinstance`` on a concrete store or source outside its own module: the core reads
    a store's ``Capabilities`` and kind, a source's protocols (``Quoting``, ``Throttled``)."""
    protocols = {"Store", "Connected", "Querying", "Quoting", "Throttled", "Stored", "Fetched"}
    concrete = {
        name: f"{package}/{module}"
        for package in ("stores", "sources")
        for name, module in _concrete(package).items()
        if name not in protocols and module != "base.py"
    }
    found = []
    for path in SRC.rglob("*.py"):
        where = str(path.relative_to(SRC))
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "isinstance":
                classes = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
                for cls in classes:
                    name = cls.id if isinstance(cls, ast.Name) else getattr(cls, "attr", "")
                    if name in concrete and concrete[name] != where:
                        found.append(f"{where}:{node.lineno}: {name}")
    assert concrete  # the scan found the stages' classes
    assert found == []


def test_no_store_or_source_module_reads_the_settings() -> None:
    """A store receives its own configuration (``components.StoreConfig``), the Databento
    client its own (``components.ApiConfig``), never the whole settings: no module of
    ``stores/`` or ``sources/`` imports ``Settings`` (or the config module whole)."""
    found = []
    for path in [*(SRC / "stores").glob("*.py"), *(SRC / "sources").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "marketpipe.config":
                found += [f"{path.name}: {a.name}" for a in node.names if a.name == "Settings"]
            elif isinstance(node, ast.Import):
                found += [f"{path.name}: {a.name}" for a in node.names if a.name == "marketpipe.config"]
    assert found == []


def test_ingesting_files_does_not_import_the_databento_client(tmp_path: Path) -> None:
    """The HTTP client costs an eighth of a second to import (its HTTP libraries, with pandas
    already imported): reading DBN files needs databento-dbn alone."""
    [_, trades] = make_sample(tmp_path / "s")
    code = f"""
import sys
from marketpipe.config import IngestRequest, load_settings
from marketpipe.pipeline import ingest
summary = ingest(IngestRequest(from_file={str(trades)!r}), load_settings(db={str(tmp_path / "x.duckdb")!r}))
assert summary.totals().stored == 2560
print(sorted(m for m in sys.modules if m.split(".")[0] in ("databento", "aiohttp", "requests")))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def _declared() -> tuple[set[str], set[str]]:
    """Distributions the package depends on, and those its extras add (normalized names)."""
    import tomllib

    project = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}

    extras = project["optional-dependencies"]
    return names(project["dependencies"]), names([r for k, v in extras.items() if k != "dev" for r in v])


def test_every_distribution_the_package_imports_is_declared() -> None:
    """A user installs the wheel, not the checkout's virtual environment: each third-party
    module src/ imports must come from a declared dependency, or from an extra (imported only
    where used: scripts/wheel_smoke.sh runs the default path with no extra installed)."""
    from importlib.metadata import packages_distributions

    required, optional = _declared()
    optional |= {"distributed", "dask"}  # dask[distributed]
    owners = packages_distributions()
    undeclared = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules = [node.module]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "marketpipe" or top == "__future__":
                    continue
                distributions = {d.lower().replace("_", "-") for d in owners.get(top, [top])}
                if not distributions & (required | optional):
                    owner = ", ".join(sorted(distributions))
                    undeclared.append(f"{path.relative_to(SRC)}: {module} ({owner})")
    assert undeclared == []
