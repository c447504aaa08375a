"""The shape of the code: every default is written once (imambig/config.py), the library
never reaches up into the orchestration layer, no module imports itself back through
others, and a package imports only from the packages below it."""

from __future__ import annotations

import ast
import inspect
import itertools
from pathlib import Path

import pytest

from flows.encode import encode_flow
from flows.evaluate import evaluate_flow
from flows.grant import grant_flow
from flows.ingest import ingest_flow
from flows.pipeline import pipeline
from flows.serve import add_arguments as add_serve_arguments
from flows.train import train_flow
from imambig import cli
from imambig.attacks.suite import ATTACKS
from imambig.config import (
    DEFAULT_ATTACKS,
    AttackConfig,
    EncodeConfig,
    EvaluateConfig,
    IngestConfig,
    PipelineConfig,
    SecretSources,
    TrainConfig,
)

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "imambig"

# Lowest first: a module may import from its own package and from the ones before it.
LAYERS = ["errors", "untrusted", "config", "stores", "model", "access", "mechanism", "evaluation", "attacks",
          "stages", "study", "cli", "__main__"]


def _defaults(fn: object) -> dict[str, object]:
    fn = getattr(fn, "fn", fn)  # a Prefect flow wraps the function
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize(("flow", "expected"), [
    # None: an existing store's settings (an append), else IngestConfig()'s
    (ingest_flow, {"config": None}),
    (train_flow, {"config": TrainConfig()}),
    (encode_flow, {"config": EncodeConfig(), "secrets": SecretSources()}),
    (evaluate_flow, {"config": EvaluateConfig(), "secrets": SecretSources()}),
    (grant_flow, {"secrets": SecretSources()}),
    (pipeline, {"config": PipelineConfig(), "secrets": SecretSources()}),
], ids=lambda x: getattr(x, "name", ""))
def test_flows_take_whole_configs_with_the_configs_defaults(flow, expected) -> None:
    defaults = _defaults(flow)
    for name, value in expected.items():
        assert defaults[name] == value
    # no setting of a config is also a flow parameter of its own
    fields = {f for v in expected.values()
              for f in (v if v is not None else IngestConfig()).__dataclass_fields__}
    assert not fields & set(inspect.signature(flow.fn).parameters) - set(expected)


def test_the_pipeline_config_is_made_of_the_stage_configs() -> None:
    p = PipelineConfig()
    assert (p.ingest, p.train, p.encode, p.evaluate) == (
        IngestConfig(), TrainConfig(), EncodeConfig(), EvaluateConfig())
    sized = p.ingest_for_model()
    assert (sized.height, sized.width) == (p.train.model.image_height, p.train.model.image_width)


@pytest.mark.parametrize(("argv", "build", "expected"), [
    (["ingest", "src", "--out", "x"], cli.ingest_config, IngestConfig()),
    (["train", "--images", "i", "--out", "o"], cli.train_config, TrainConfig()),
    (["encode", "--images", "i", "--model", "m", "--public", "p", "--keys", "k"],
     cli.encode_config, EncodeConfig()),
    (["evaluate", "--images", "i", "--model", "m", "--public", "p", "--keys", "k",
      "--out", "o"], cli.evaluate_config, EvaluateConfig()),
    (["attack", "--model", "m", "--images", "i"], cli.attack_config, AttackConfig()),
    (["encode", "--images", "i", "--model", "m", "--public", "p", "--keys", "k"],
     cli.secret_sources, SecretSources()),
], ids=lambda x: x[0] if isinstance(x, list) else "")
def test_cli_flags_default_to_the_configs_defaults(argv, build, expected) -> None:
    assert build(cli.build_parser().parse_args(argv)) == expected


def test_serve_defaults_to_the_encode_config() -> None:
    import argparse

    p = argparse.ArgumentParser()
    add_serve_arguments(p)
    args = p.parse_args(["--images", "i", "--model", "m", "--public", "p", "--keys", "k"])
    assert args.region_items == EncodeConfig().region_items


def test_default_attacks_are_registered() -> None:
    assert set(DEFAULT_ATTACKS) <= set(ATTACKS)
    assert set(ATTACKS) - set(DEFAULT_ATTACKS) == {"lp"}  # the slow one runs on request


def test_demo_and_serve_are_commands_from_the_flows() -> None:
    commands = cli.build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert {"demo", "serve", "ingest", "train", "encode", "validate", "keys", "grant",
            "reveal", "evaluate", "attack"} <= set(commands)


def _imports(path: Path) -> list[str]:
    """Absolute module names imported by a file (relative imports are not used)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_the_library_never_imports_the_orchestration_layer() -> None:
    for path in LIBRARY.rglob("*.py"):
        for name in _imports(path):
            assert name.split(".")[0] not in ("flows", "infra"), f"{path}: imports {name}"
        assert "-m flows" not in path.read_text(), path


# The import graph of a package: every import is an arrow, wherever it stands (at the top,
# inside a function, under ``if TYPE_CHECKING:``), since each one ties two modules together.

Graph = dict[str, dict[str, int]]  # module -> {module it imports: line of the first import}


def _module_name(path: Path, root: Path) -> str:
    """``root/pkg/a/b.py`` -> ``pkg.a.b``; ``root/pkg/a/__init__.py`` -> ``pkg.a``."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, module: str, is_package: bool,
              modules: set[str]) -> list[str]:
    """The modules of ``modules`` that one import statement names: for ``from M import n``
    the submodule ``M.n`` where there is one, else ``M`` itself."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    base = node.module or ""
    if node.level:  # relative: from the importing module's own package, level-1 up
        here = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join([*here[:len(here) - node.level + 1], *([base] if base else [])])
    found = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
             for a in node.names]
    return [m for m in found if m in modules]


def import_graph(root: Path, package: str) -> Graph:
    """Which modules of ``package`` (a folder under ``root``) import which."""
    files = {_module_name(p, root): p for p in sorted((root / package).rglob("*.py"))}
    graph: Graph = {}
    for module, path in files.items():
        arrows = graph.setdefault(module, {})
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                for target in _imported(node, module, path.name == "__init__.py", set(files)):
                    if target != module:
                        arrows.setdefault(target, node.lineno)
    return graph


def package_graph(graph: Graph) -> Graph:
    """The same arrows between the package's first-level parts (``pkg.a.b`` -> ``a``);
    the package's own ``__init__`` is no part."""
    parts: Graph = {}
    for source, arrows in graph.items():
        mine = _part(source)
        for target, line in arrows.items():
            theirs = _part(target)
            if mine is not None and theirs not in (None, mine):
                parts.setdefault(mine, {}).setdefault(theirs, line)
    return parts


def cycles(graph: Graph) -> dict[frozenset[str], str]:
    """Each set of nodes that reach each other (a strongly connected component of two or
    more), with one loop through it written out: ``a -> b (line 3) -> a (line 7)``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: dict[frozenset[str], str] = {}

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            members = []
            while True:
                member = stack.pop()
                members.append(member)
                if member == node:
                    break
            if len(members) > 1:
                found[frozenset(members)] = _loop(graph, frozenset(members))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _loop(graph: Graph, members: frozenset[str]) -> str:
    """The shortest way from the first member back to itself, inside ``members``, with the
    line of each import on the way (in a graph of modules)."""
    start = min(members)
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node]):
            if nxt == start:
                steps = [*paths[node], start]
                if "." not in start:  # parts of a package: a line says nothing there
                    return " -> ".join(steps)
                return " -> ".join([start, *(f"{b} (line {graph[a][b]} of {a})"
                                             for a, b in itertools.pairwise(steps))])
            if nxt in members and nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    raise AssertionError(f"no loop through {sorted(members)}")


def _part(module: str) -> str | None:
    """``pkg.stores.location`` -> ``stores``; ``pkg.cli`` -> ``cli``; ``pkg`` -> None."""
    return module.split(".")[1] if "." in module else None


def upward_imports(graph: Graph, layers: list[str]) -> list[str]:
    """Imports from one part of the package into a part above it in ``layers`` (lowest
    first), or between parts that ``layers`` does not place."""
    found = []
    for source, arrows in sorted(graph.items()):
        for target, line in sorted(arrows.items()):
            mine, theirs = _part(source), _part(target)
            if mine is None or theirs is None or mine == theirs:
                continue
            if mine not in layers or theirs not in layers:
                found.append(f"{source} imports {target}: {mine} or {theirs} has no layer")
            elif layers.index(theirs) > layers.index(mine):
                found.append(f"{source} (line {line}) imports {target}: "
                             f"{theirs} stands above {mine}")
    return found


def test_the_library_has_no_import_cycles() -> None:
    graph = import_graph(ROOT, "imambig")
    loops = [*cycles(graph).values(), *cycles(package_graph(graph)).values()]
    assert not loops, "\n".join(loops)


def test_a_package_imports_only_from_the_packages_below_it() -> None:
    upward = upward_imports(import_graph(ROOT, "imambig"), LAYERS)
    assert not upward, "\n".join(upward)


def test_the_checks_find_cycles_and_upward_imports(tmp_path: Path) -> None:
    """On a small package: a loop made only of an import inside a function and one under
    ``if TYPE_CHECKING:``, an upward import, and the loop between two parts it makes."""
    files = {
        "toy/__init__.py": "",
        "toy/low/__init__.py": "",
        "toy/low/a.py": "def f() -> None:\n    from . import b\n",
        "toy/low/b.py": ("from typing import TYPE_CHECKING\n\n"
                         "if TYPE_CHECKING:\n    from toy.low.a import f\n"),
        "toy/low/c.py": "import os\nimport toy.high.d\n",
        "toy/high/__init__.py": "",
        "toy/high/d.py": "from toy.low import a\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path, "toy")

    assert cycles(graph) == {frozenset({"toy.low.a", "toy.low.b"}):
                             "toy.low.a -> toy.low.b (line 2 of toy.low.a) "
                             "-> toy.low.a (line 4 of toy.low.b)"}
    assert cycles(package_graph(graph)) == {frozenset({"low", "high"}): "high -> low -> high"}
    assert upward_imports(graph, ["low", "high"]) == [
        "toy.low.c (line 2) imports toy.high.d: high stands above low"]
    assert upward_imports(graph, ["high", "low"]) == [
        "toy.high.d (line 1) imports toy.low.a: low stands above high"]
    assert upward_imports(graph, ["low"]) == [
        "toy.high.d imports toy.low.a: high or low has no layer",
        "toy.low.c imports toy.high.d: low or high has no layer"]


def test_the_command_line_help_loads_no_heavy_library() -> None:
    """``imambig --help`` builds every sub-command's parser without torch, zarr, Prefect
    or Dask (they load when a command runs), and names every registered attack."""
    import subprocess
    import sys

    code = ("import sys; from imambig.cli import build_parser; build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules}))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    for heavy in ("torch", "zarr", "prefect", "distributed", "scipy"):
        assert f"'{heavy}'" not in loaded, f"{heavy} is imported by the parser"
    from imambig.attacks.suite import ATTACKS
    from imambig.config import ALL_ATTACKS

    assert sorted(ALL_ATTACKS) == sorted(ATTACKS)
