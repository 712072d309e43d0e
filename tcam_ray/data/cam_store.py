"""The CAM store: one Parquet row per training frame with its stage-1 map.

Columns: frame_id, shot_id, frame_idx, label, cam. `cam` is a fixed-size
binary of size x size values (uint8 = round(255 * map), or float16), small
next to one float32 full-size tensor file per frame as the reference code
keeps. Binary (not an Arrow tensor column) so that Ray Data can group the
rows by shot. The file's metadata records the dataset (fingerprint) and the
checkpoint the maps came from; reading a store made for another dataset or
checkpoint is an error.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..io import file_sha256, temporary_sibling
from .parquet_files import check_columns, info_fields, read_tcam_parquet
from .layout import DatasetError

STORE_FORMAT = "tcam-ray cam store"
STORE_VERSION = 1
METADATA_KEY = b"tcam_ray.cam_store"
DTYPES = {"uint8": np.uint8, "float16": np.float16}
MAX_SIZE = 32767  # the largest float16 maps whose bytes fit a fixed-size binary (int32 width)


@dataclass(frozen=True)
class StoreSummary:
    """A filled store: where, how many frames, how large, how long it took."""
    path: Path
    frames: int
    bytes_per_frame: float
    seconds: float


@dataclass(frozen=True)
class StoreInfo:
    dataset: str
    dataset_fingerprint: str
    classes: list[str]
    checkpoint: str
    checkpoint_id: str
    method: str
    size: int
    dtype: str

    def to_json(self) -> bytes:
        return json.dumps({"format": STORE_FORMAT, "version": STORE_VERSION, **asdict(self)}).encode()

    @classmethod
    def from_json(cls, raw: bytes, source: str) -> "StoreInfo":
        info = cls(**info_fields(cls, raw, source, "CAM store", STORE_FORMAT, STORE_VERSION))
        if info.dtype not in DTYPES:
            raise DatasetError([f"{source}: damaged CAM store metadata (dtype is {info.dtype!r:.60}, "
                                f"expected one of {', '.join(DTYPES)})"])
        if not 1 <= info.size <= MAX_SIZE:
            raise DatasetError([f"{source}: damaged CAM store metadata (size is {info.size}, "
                                f"expected 1 to {MAX_SIZE} pixels)"])
        return info


def store_schema(info: StoreInfo) -> pa.Schema:
    itemsize = np.dtype(DTYPES[info.dtype]).itemsize
    return pa.schema([
        ("frame_id", pa.string()), ("shot_id", pa.string()), ("frame_idx", pa.int32()), ("label", pa.int32()),
        ("cam", pa.binary(info.size * info.size * itemsize)),
    ], metadata={METADATA_KEY: info.to_json()})


def checkpoint_id(checkpoint_state_file: Path) -> str:
    return file_sha256(checkpoint_state_file)[:16]


def encode_maps(maps: np.ndarray, dtype: str) -> list[bytes]:
    """(B, s, s) maps in [0, 1] -> one binary value per map."""
    maps = np.clip(maps, 0.0, 1.0)
    values = np.round(maps * 255).astype(np.uint8) if dtype == "uint8" else maps.astype(np.float16)
    return [m.tobytes() for m in values]


def decode_maps(cams: pa.Array | list[bytes], size: int, dtype: str) -> np.ndarray:
    """Binary values -> (N, size, size) float32 maps in [0, 1]."""
    raw = b"".join(cams.to_pylist() if isinstance(cams, (pa.Array, pa.ChunkedArray)) else cams)
    values = np.frombuffer(raw, dtype=DTYPES[dtype]).reshape(-1, size, size).astype(np.float32)
    return values / 255.0 if dtype == "uint8" else values


class CamStoreWriter:
    """Streams rows into a temporary file; `close()` moves it into place."""

    def __init__(self, path: str | Path, info: StoreInfo):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temporary_sibling(self.path)
        self.info = info
        self.schema = store_schema(info)
        self.writer = pq.ParquetWriter(self.tmp, self.schema)
        self.rows = 0

    def write(self, frame_id, shot_id, frame_idx, label, maps: np.ndarray) -> None:
        expected = (self.info.size, self.info.size)
        if maps.shape[1:] != expected:
            raise ValueError(f"CAM store {self.path} holds {expected} maps, got {maps.shape[1:]}")
        table = pa.table({"frame_id": frame_id, "shot_id": shot_id, "frame_idx": frame_idx, "label": label,
                          "cam": encode_maps(maps, self.info.dtype)}, schema=self.schema)
        self.writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> Path:
        self.writer.close()
        self.tmp.replace(self.path)
        return self.path


@dataclass
class CamStore:
    table: pa.Table
    info: StoreInfo

    @classmethod
    def read(cls, path: str | Path, dataset_fingerprint: str | None = None,
             checkpoint: str | None = None) -> "CamStore":
        """Read a store; with `dataset_fingerprint` / `checkpoint` (its id), a store made for
        another dataset or another checkpoint is refused."""
        path = Path(path)
        table, raw = read_tcam_parquet(path, "CAM store", METADATA_KEY, " (make one with `tcam-ray cams`)")
        info = StoreInfo.from_json(raw, str(path))
        schema = store_schema(info)
        maps = f" for {info.size}x{info.size} {info.dtype} maps"
        check_columns(table.schema, schema, path, "CAM store", notes={"cam": maps})
        store = cls(table.select(schema.names), info)
        if dataset_fingerprint is not None:
            store.check_dataset(dataset_fingerprint, path)
        if checkpoint is not None:
            store.check_checkpoint(checkpoint, path)
        return store

    def check_dataset(self, fingerprint: str, path: str | Path) -> None:
        """Refuse a store made for another dataset than the one with this fingerprint."""
        if self.info.dataset_fingerprint != fingerprint:
            raise DatasetError([f"{path}: CAM store made for dataset {self.info.dataset!r} "
                                f"(fingerprint {self.info.dataset_fingerprint[:12]}), not for this dataset "
                                f"(fingerprint {fingerprint[:12]}): run `tcam-ray cams` for it"])

    def check_checkpoint(self, checkpoint: str, path: str | Path) -> None:
        """Refuse a store made from another checkpoint than the one with id `checkpoint`."""
        if self.info.checkpoint_id != checkpoint:
            raise DatasetError([f"{path}: CAM store made from checkpoint {self.info.checkpoint} "
                                f"(id {self.info.checkpoint_id}), not from checkpoint id {checkpoint}"])

    def maps(self) -> np.ndarray:
        return decode_maps(self.table["cam"], self.info.size, self.info.dtype)

    def bytes_per_frame(self, path: str | Path) -> float:
        return Path(path).stat().st_size / max(1, self.table.num_rows)
