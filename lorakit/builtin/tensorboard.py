"""Built-in tracker ``tensorboard``: with ``train.tensorboard = true``, each epoch's metrics (and, at the end,
the test split's) go to TensorBoard event files in ``<folder>/tensorboard/``, through the run-event hooks
like any tracker plugin. ``tensorboard --logdir outputs`` then shows every experiment side by side.

The event files are written here, without TensorBoard or protobuf: an event file is a sequence of TFRecords
(length, masked CRC-32C, payload, masked CRC-32C) whose payloads are ``Event`` protocol buffers, of which a
scalar needs five fields.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..hookspecs import hookimpl

FOLDER = "tensorboard"
_writers: dict[str, EventWriter] = {}  # exp_id -> the writer of its running run


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked(data: bytes) -> bytes:
    crc = crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        out.append(bits | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def scalar_event(tag: str, value: float, step: int, wall_time: float) -> bytes:
    """``Event{wall_time, step, summary{value{tag, simple_value}}}``, serialized."""
    value_msg = _field(1, tag.encode("utf-8")) + b"\x15" + struct.pack("<f", value)
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10" + _varint(step) + _field(5, _field(1, value_msg))


class EventWriter:
    """One event file, appended to record by record and flushed after each, so a crash loses nothing."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.lorakit"
        self.path = folder / name
        self._file = open(self.path, "ab")  # noqa: SIM115 - kept open for the run, closed at its end
        version = b"\x09" + struct.pack("<d", time.time()) + _field(3, b"brain.Event:2")
        self._write(version)

    def _write(self, event: bytes) -> None:
        length = struct.pack("<Q", len(event))
        self._file.write(length + _masked(length) + event + _masked(event))
        self._file.flush()

    def scalars(self, values: Mapping[str, Any], step: int, prefix: str = "") -> None:
        now = time.time()
        for tag, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._write(scalar_event(prefix + tag, float(value), step, now))

    def close(self) -> None:
        self._file.close()


def _enabled(config: Mapping[str, Any]) -> bool:
    return bool((config.get("train") or {}).get("tensorboard"))


@hookimpl
def lorakit_on_run_start(exp_id: str, config: Mapping[str, Any], output_dir: str) -> None:
    old = _writers.pop(exp_id, None)
    if old is not None:
        old.close()
    if _enabled(config):
        _writers[exp_id] = EventWriter(Path(output_dir) / FOLDER)


@hookimpl
def lorakit_on_epoch_end(exp_id: str, epoch: int, metrics: Mapping[str, float]) -> None:
    writer = _writers.get(exp_id)
    if writer is not None:
        writer.scalars(metrics, epoch)


@hookimpl
def lorakit_on_run_end(exp_id: str, status: str, metrics: Mapping[str, Any], output_dir: str) -> None:
    writer = _writers.pop(exp_id, None)
    if writer is None:
        return
    try:
        epochs = [int(k[len("epoch_") :]) for k in metrics if k.startswith("epoch_") and k[6:].isdigit()]
        test = metrics.get("test")
        if isinstance(test, Mapping):
            writer.scalars(test, max(epochs, default=0), prefix="test/")
    finally:
        writer.close()
