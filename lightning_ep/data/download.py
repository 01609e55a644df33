"""Downloading a dataset file from its mirrors, accepted only with a known checksum."""

from __future__ import annotations

import shutil
import urllib.request
from pathlib import Path

from .catalog import DataNotFoundError, DatasetInfo
from .checksums import ChecksumError, check_digests, file_digest, known_digests

DOWNLOAD_TIMEOUT_S = 60.0
"""Seconds a download waits for the server (per connection and read) before trying the next mirror."""


def download_file(info: DatasetInfo, name: str, dest_dir: Path) -> Path:
    """Fetch ``name`` from the first mirror that serves it with the right md5, announcing each attempt."""
    dest = dest_dir / name
    dest_dir.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    known = known_digests(info.key, name)
    errors: list[str] = []
    checksum_error: ChecksumError | None = None
    for base in info.mirrors:
        url = base + name
        print(f"lightning_ep: downloading {url} -> {dest}", flush=True)
        try:
            with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, part.open("wb") as out:
                shutil.copyfileobj(response, out)
            actual = {algo: file_digest(part, algo) for algo in known}
            check_digests(f"{url} (downloaded to {dest})", actual, known, "the mirror served a bad file")
        except ChecksumError as err:
            checksum_error = err
            errors.append(str(err))
        except (OSError, ValueError) as err:  # URLError / HTTPError / timeouts are OSErrors
            errors.append(f"{url}: {err}")
        else:
            part.replace(dest)
            return dest
        finally:
            part.unlink(missing_ok=True)
    if checksum_error is not None:
        raise checksum_error
    raise DataNotFoundError(f"could not download {name} from any mirror:\n  " + "\n  ".join(errors))
