"""Rotating a node's ledger signing key from its configuration: what ``coalition ledger
rotate-key`` and the demo run.

The new key's file is written first (``keys/rotated/<key_id>.pem``, where every process
of the node loads the key in force from), then the rotation entry is appended through
the node's own sequencer, signed by the key in force (``NodeService.rotate_ledger_key``),
and what is committed is sealed if this process can take the node's lease. On
PostgreSQL this runs beside the node's running processes (the sequencer serialises it
with their writes, and each process's sealer reads the schedule from the database); on
SQLite the node MUST be stopped (its writer lock refuses a second opener, with a message).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from coalition.node.config import NodeConfig
from coalition.ops.keyfiles import new_rotated_key
from coalition.runtime.wiring import open_node


@dataclass(frozen=True, slots=True)
class Rotated:
    """What a rotation did: the new key's file and id, the epoch, the rotation entry's
    id, and the newest sealed height afterwards (None: not sealed by this process)."""

    path: Path
    key_id: str
    epoch: int
    entry_id: str
    sealed_height: int | None


def rotate_ledger_key(config: NodeConfig) -> Rotated:
    service = open_node(config)
    try:
        key, path = new_rotated_key(config)
        entry = service.rotate_ledger_key(key)
        sealed = service.sealer.flush()
    finally:
        service.close()
    rotation = entry["rotation"]
    assert isinstance(rotation, dict)
    epoch = rotation["epoch"]
    assert isinstance(epoch, int)
    return Rotated(
        path,
        key.public_key.key_id,
        epoch,
        str(entry["id"]),
        None if sealed is None else sealed.header.height,
    )
