"""The documentation's code runs, its settings table matches the code, and the site builds.

- Every ```python block of the pages under ``docs/`` runs, each page in a fresh namespace, its blocks in order, in a
  fresh interpreter (this file run as a script) at a tiny size: ``LIGHTNING_EP_DOCS_TINY=1`` (the tutorial reads its
  sizes from it; ``TINY_ENV``), and, on the other pages, the ``Trainer`` capped at one epoch of two batches and
  ``my_project`` (the reader's own code in the examples) a small synthetic stand-in. Tracebacks point at the page's
  own line. A block right after a ``<!-- docs-test: skip -->`` line (for what needs several processes, a cluster, a
  login or a file from an earlier run) is compiled and its imports run, nothing else. The generated pages
  (``results.md``, ``benchmarks.md``) hold commands, not Python, and are left to their own test.
- The settings table of ``docs/guide/lightning.md`` lists every field of every settings group (and ``method``,
  ``seed``, ``eval_hflip``) with its current default, and nothing else.
- ``mkdocs build --strict`` passes: no warning, no broken link or anchor, every docstring renders.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TINY_ENV = "LIGHTNING_EP_DOCS_TINY"
SKIP_MARK = "<!-- docs-test: skip -->"
GENERATED_PAGES = {"results.md", "benchmarks.md"}  # written by benchmarks/render_tables.py, tested there
TUTORIAL = "tutorial.md"
SETTINGS_PAGE = DOCS / "guide" / "lightning.md"


# -- reading the pages --------------------------------------------------------------------------------------------
def python_blocks(page: Path) -> list[dict]:
    """The ```python blocks of a page, in order: their code (dedented), first line number and skip mark."""
    blocks, lines = [], page.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^(\s*)```(?:python|py)\b", lines[i])
        if not opening:
            i += 1
            continue
        indent, start = opening.group(1), i + 1
        skip = any(lines[j].strip() == SKIP_MARK for j in range(max(0, i - 2), i))
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        if i == len(lines):
            raise AssertionError(f"{page}:{start}: a ```python block is never closed")
        blocks.append({"page": str(page), "line": start + 1, "code": "\n".join(body) + "\n", "skip": skip})
        i += 1
    return blocks


def pages_with_code() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if p.name not in GENERATED_PAGES and python_blocks(p))


def run_pages(pages: list[Path], tmp_path: Path, shrink: bool, timeout: int) -> None:
    """Run the pages' blocks in a fresh interpreter (this file as a script), each page in its own directory."""
    spec = [{"page": str(p), "blocks": python_blocks(p), "cwd": str(tmp_path / p.stem), "shrink": shrink}
            for p in pages]
    spec_file = tmp_path / "pages.json"
    spec_file.write_text(json.dumps(spec))
    env = {**os.environ, TINY_ENV: "1", "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, __file__, str(spec_file)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"a documentation example failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"


# -- the tests ----------------------------------------------------------------------------------------------------
def test_every_page_with_code_is_found():
    names = {p.relative_to(DOCS).as_posix() for p in pages_with_code()}
    assert {TUTORIAL, "getting-started.md", "guide/lightning.md"} <= names, names


def test_every_block_compiles():
    for page in pages_with_code():
        for block in python_blocks(page):
            compile("\n" * (block["line"] - 1) + block["code"], block["page"], "exec")


def test_guide_examples_run(tmp_path):
    """Getting started (the quickstart and the plain-PyTorch loop), the guides, the method: every block."""
    run_pages([p for p in pages_with_code() if p.name != TUTORIAL], tmp_path, shrink=True, timeout=300)


def test_readme_examples_run(tmp_path):
    """The README's quickstart, as the guides' examples run."""
    readme = ROOT / "README.md"
    assert python_blocks(readme), "the README has no python example"
    run_pages([readme], tmp_path, shrink=True, timeout=300)


def test_tutorial_runs(tmp_path, fashion_mnist_installed):
    """The tutorial as written, at the size its TINY switch sets (it reads FashionMNIST from local files)."""
    run_pages([DOCS / TUTORIAL], tmp_path, shrink=False, timeout=300)


def _table_rows(page: Path) -> dict[str, list[str]]:
    """The rows of the page's tables whose first cell is a `name` in backticks: name -> the other cells."""
    rows = {}
    for line in page.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = re.fullmatch(r"`([a-z_]+(?:\.[a-z0-9_]+)?)`", cells[0]) if line.lstrip().startswith("|") else None
        if name:
            assert name.group(1) not in rows, f"{page.name}: `{name.group(1)}` is listed twice"
            rows[name.group(1)] = cells[1:]
    return rows


def _default_text(value: object) -> str:
    """How the table writes a default: its repr in backticks; a settings group at its own defaults as `Group()`."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type) and value == type(value)():
        return f"`{type(value).__name__}()`"
    return f"`{value!r}`"


def test_settings_table_lists_every_field_with_its_default():
    from lightning_ep import (
        BPTTConfig,
        CurvatureConfig,
        EPConfig,
        EPLightningModule,
        NetworkConfig,
        OptimConfig,
        PhasesConfig,
    )

    groups = {"network": NetworkConfig, "phases": PhasesConfig, "ep": EPConfig, "bptt": BPTTConfig,
              "curvature": CurvatureConfig, "optim": OptimConfig}
    signature = inspect.signature(EPLightningModule.__init__).parameters
    plain = ("method", "seed", "eval_hflip")  # the arguments outside the groups
    assert set(signature) - {"self"} == set(groups) | set(plain), "a new argument: add it to the table"
    # the groups themselves are given whole; curvature is the one that may be None (no penalty)
    expected = {name: signature[name].default for name in (*plain, "curvature")}
    for group, cls in groups.items():
        defaults = cls()  # after __post_init__: the values the module really gets
        expected.update({f"{group}.{f.name}": getattr(defaults, f.name) for f in dataclasses.fields(cls)})
    rows = _table_rows(SETTINGS_PAGE)
    assert set(rows) == set(expected), (f"missing from the table: {sorted(set(expected) - set(rows))}; "
                                        f"no longer settings: {sorted(set(rows) - set(expected))}")
    for name, value in expected.items():
        meaning, default, recommended = rows[name][:3]
        shown = _default_text(value)
        assert shown in default, f"{name}: the table says {default}, the code's default is {shown}"
        assert meaning and recommended, f"{name}: say what it means and what to set it to"


def test_changelog_is_the_sites_changelog_page():
    assert '--8<-- "CHANGELOG.md"' in (DOCS / "changelog.md").read_text(encoding="utf-8")
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert re.search(r"^## Unreleased$", changelog, re.M), "CHANGELOG.md: an '## Unreleased' section first"
    assert re.search(r"^## 0\.1\.0 - \d{4}-\d\d-\d\d$", changelog, re.M), "CHANGELOG.md: '## 0.1.0 - <date>'"


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("mkdocs", "material", "mkdocstrings_handlers")),
                    reason='the docs tools are not installed: pip install ".[docs]"')
def test_site_builds_strict(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]


# -- the runner: this file as a script ----------------------------------------------------------------------------
def _stand_ins() -> None:
    """``my_project``: the reader's own DataModule and loaders in the examples, tiny and synthetic."""
    import torch
    from lightning.pytorch import LightningDataModule
    from torch.utils.data import DataLoader, TensorDataset

    class MyDataModule(LightningDataModule):
        """96 grey 28x28 images in [0, 1] (10 classes): 32 to train on, 64 to validate, test and predict."""

        def __init__(self, batch_size: int = 16) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.images = torch.rand(96, 1, 28, 28, generator=g)
            self.labels = torch.randint(0, 10, (96,), generator=g)
            self.batch_size = batch_size
            self.input_shape, self.num_classes = (1, 28, 28), 10

        def train_dataloader(self) -> DataLoader:
            train = TensorDataset(self.images[:32], self.labels[:32])
            return DataLoader(train, batch_size=self.batch_size, shuffle=True)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(TensorDataset(self.images[32:], self.labels[32:]), batch_size=self.batch_size)

        test_dataloader = val_dataloader

        def predict_dataloader(self) -> DataLoader:
            return DataLoader(self.images[32:], batch_size=self.batch_size)

    module = types.ModuleType("my_project")
    module.MyDataModule = MyDataModule  # type: ignore[attr-defined]
    data = MyDataModule()
    module.train_loader, module.val_loader = data.train_dataloader(), data.val_dataloader()  # type: ignore[attr-defined]
    sys.modules["my_project"] = module


def _shrink_trainer() -> None:
    """``Trainer(...)`` as the examples write it, capped at one epoch of two batches per loader."""
    import lightning
    import lightning.pytorch as pl

    class TinyTrainer(pl.Trainer):
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs.update(max_epochs=1, max_steps=-1, max_time=None, limit_train_batches=2, limit_val_batches=2,
                          limit_test_batches=2, limit_predict_batches=2, enable_progress_bar=False)
            super().__init__(*args, **kwargs)

    pl.Trainer = lightning.Trainer = TinyTrainer  # type: ignore[misc]


def _imports_only(code: str) -> str:
    tree = ast.parse(code)
    imports = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    return ast.unparse(ast.Module(body=imports, type_ignores=[]))


def _run(spec_file: str) -> None:
    _stand_ins()
    for page in json.loads(Path(spec_file).read_text()):
        if page["shrink"]:
            _shrink_trainer()
        cwd = Path(page["cwd"])
        cwd.mkdir(parents=True, exist_ok=True)
        os.chdir(cwd)
        namespace: dict = {"__name__": "__main__"}
        for block in page["blocks"]:
            print(f"--- {block['page']}:{block['line']}{' (imports only)' if block['skip'] else ''}", flush=True)
            code = _imports_only(block["code"]) if block["skip"] else "\n" * (block["line"] - 1) + block["code"]
            exec(compile(code, block["page"], "exec"), namespace)


if __name__ == "__main__":
    _run(sys.argv[1])
