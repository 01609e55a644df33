"""Every parameter of what the API reference pages show has a one-line meaning in its docstring.

The pages under docs/api/ name what mkdocstrings renders (`::: path` with an optional `members:` list); this test reads
the same lists, so an object added to a page is checked without touching the test.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import yaml

API_PAGES = pathlib.Path(__file__).resolve().parents[1] / "docs" / "api"
DIRECTIVE = re.compile(r"^::: (\S+)\n((?:    .*\n|\n)*)", re.M)


def documented_objects() -> Iterator[tuple[str, list[str] | None]]:
    """Each `::: path` of the API pages with its `members:` list (None where the page shows the default members)."""
    for page in sorted(API_PAGES.glob("*.md")):
        for match in DIRECTIVE.finditer(page.read_text()):
            options = yaml.safe_load(re.sub(r"^    ", "", match.group(2), flags=re.M)) or {}
            yield match.group(1), (options.get("options") or {}).get("members")


def resolve(path: str) -> Any:
    """The object a dotted path names: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(path)


def module_members(module: Any, members: list[str] | None) -> list[str]:
    """What mkdocstrings shows of a module: the listed members, else `__all__`, else what the module defines."""
    if members:
        return members
    if hasattr(module, "__all__"):
        return list(module.__all__)
    defined = [n for n, v in vars(module).items() if getattr(v, "__module__", None) == module.__name__]
    return [n for n in defined if not n.startswith("_")]


def parameters(fn: Callable) -> list[str]:
    """The named parameters of a callable (not self/cls, *args or **kwargs)."""
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    named = [p for p in inspect.signature(fn).parameters.values() if p.kind not in kinds]
    return [p.name for p in named if p.name not in ("self", "cls")]


def described(doc: str | None) -> str:
    """The Google-style `Args:` or `Attributes:` sections of a docstring, joined."""
    text = inspect.cleandoc(doc or "")
    return "\n".join(m.group(1) for m in re.finditer(r"^(?:Args|Attributes):\n((?:[ \t]+.*\n?|\n)*)", text, re.M))


def undescribed(fn: Callable, doc: str | None) -> list[str]:
    """The parameters of `fn` without a `name:` or `name (type):` line in `doc`'s Args/Attributes."""
    section = described(doc)
    return [p for p in parameters(fn) if not re.search(rf"^\s+\*{{0,2}}{re.escape(p)}( \(.*\))?:", section, re.M)]


def own_public_methods(cls: type) -> Iterator[tuple[str, Callable]]:
    """Public methods a class defines itself; overrides of a base method are documented by the base."""
    for name, value in vars(cls).items():
        function = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        if name.startswith("_") or isinstance(value, property) or not inspect.isfunction(function):
            continue
        if any(name in vars(base) for base in cls.__mro__[1:] if base is not object):
            continue
        yield name, function


def problems_of(obj: Any, path: str) -> list[str]:
    """`path.param` for each parameter of `obj` (a class: its constructor and own methods) that has no meaning."""
    found: list[str] = []
    if inspect.isclass(obj):
        if "__init__" in vars(obj) or hasattr(obj, "__dataclass_fields__"):
            init_doc = obj.__init__.__doc__ if described(obj.__init__.__doc__) else obj.__doc__
            found += [f"{path}({p})" for p in undescribed(obj.__init__, init_doc)]
        for name, method in own_public_methods(obj):
            found += [f"{path}.{name}({p})" for p in undescribed(method, method.__doc__)]
    elif inspect.isfunction(obj):
        found += [f"{path}({p})" for p in undescribed(obj, obj.__doc__)]
    return found


def test_the_api_pages_name_objects() -> None:
    """The checker below reads something: the pages exist and list the core objects."""
    paths = {path for path, _ in documented_objects()}
    assert "lightning_ep.module.EPLightningModule" in paths and "lightning_ep.callbacks" in paths


def test_every_documented_parameter_has_a_meaning() -> None:
    """No documented function, constructor or method leaves a parameter out of its Args: (or Attributes:)."""
    problems: list[str] = []
    for path, members in documented_objects():
        obj = resolve(path)
        if inspect.ismodule(obj):
            for name in module_members(obj, members):
                problems += problems_of(getattr(obj, name), f"{path}.{name}")
        else:
            problems += problems_of(obj, path)
    assert not problems, "parameters without a one-line meaning in Args:\n" + "\n".join(problems)


def test_the_checker_finds_a_missing_meaning() -> None:
    """The oracle can fail: a function whose Args: leaves out one parameter is reported."""

    def half_documented(a: int, b: int) -> int:
        """Add.

        Args:
            a: the first.
        """
        return a + b

    assert problems_of(half_documented, "f") == ["f(b)"]
