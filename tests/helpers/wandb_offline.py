"""Read what an offline W&B run logged, from its ``run-<id>.wandb`` file (no server, no wandb.Api).

The file is a 7-byte header (":W&B", uint16 0xBEE1, uint8 version), then LevelDB log records in 32 KiB blocks
(chunk header: uint32 crc, uint16 length, uint8 type; FULL=1 FIRST=2 MIDDLE=3 LAST=4), each record payload a
``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7


def _payloads(data: bytes) -> list[bytes]:
    out, pending, pos = [], b"", HEADER
    while pos + 7 <= len(data):
        block_left = BLOCK - (pos % BLOCK)
        if block_left < 7:  # trailer padding
            pos += block_left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            pos += BLOCK - (pos % BLOCK) if pos % BLOCK else 0
            continue
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            out.append(pending + chunk)
            pending = b""
    return out


def run_file(save_dir: Path) -> Path:
    """The single offline run file under ``save_dir``."""
    files = sorted(Path(save_dir).rglob("offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline run file under {save_dir}, found {files}"
    return files[0]


def read_records(path: Path, timeout: float = 60.0) -> dict[str, Any]:
    """History rows (key -> value) in order, the config, and the summary, decoded from the run file. The W&B
    service writes the file in the background after ``finish()``: wait until its exit record is there."""
    from wandb.proto import wandb_internal_pb2

    deadline = time.monotonic() + timeout
    while True:
        data = Path(path).read_bytes()
        assert data[:4] == b":W&B", f"{path} is not a W&B run file"
        records = []
        for payload in _payloads(data):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(payload)
            records.append(rec)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    history: list[dict[str, Any]] = []
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    for rec in records:
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in rec.history.item})
        elif kind == "config":
            for item in rec.config.update:
                config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
        elif kind == "summary":
            for item in rec.summary.update:
                summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return {"history": history, "config": config, "summary": summary}
