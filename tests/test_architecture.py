"""The shape of the code: every default is written once (imambig/config.py), the library
never reaches up into the orchestration layer, and a package imports only from the
packages below it."""

from __future__ import annotations

import ast
import inspect
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


def _layer(module: str) -> str:
    """``imambig.stores.location`` -> ``stores``; ``imambig.cli`` -> ``cli``."""
    return module.split(".")[1].removesuffix(".py")


def test_the_library_never_imports_the_orchestration_layer() -> None:
    for path in LIBRARY.rglob("*.py"):
        for name in _imports(path):
            assert name.split(".")[0] not in ("flows", "infra"), f"{path}: imports {name}"
        assert "-m flows" not in path.read_text(), path


def test_a_package_imports_only_from_the_packages_below_it() -> None:
    upward = []
    for path in LIBRARY.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        if len(rel.parts) < 2 or rel.parts[1] == "__init__":
            continue
        mine = LAYERS.index(rel.parts[1])
        for name in _imports(path):
            if name.startswith("imambig.") and LAYERS.index(_layer(name)) > mine:
                upward.append(f"{'/'.join(rel.parts)} imports {name}")
    assert not upward, "\n".join(upward)


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
