"""The frame index: one Parquet row per frame of a dataset.

Train rows come from listing each train shot's folder on disk (frames in
frame-number order); val/test rows are the listed frames with their boxes.
Columns: frame_id, shot_id, frame_idx, label, split, width,
height, boxes. The file's schema metadata records where the index came from
(dataset name, root, metadata folder, class names) and a fingerprint of its
content, so later artefacts (CAM stores, checkpoints) can refuse a mismatch.
"""
from __future__ import annotations

import hashlib
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from ..io import temporary_sibling
from .layout import BOXES_FILE, IDS_FILE, SIZES_FILE, DatasetError, DatasetMetadata, SplitMetadata
from .parquet_files import check_columns, info_fields, read_tcam_parquet

INDEX_FORMAT = "tcam-ray frame index"
INDEX_VERSION = 1
METADATA_KEY = b"tcam_ray.frame_index"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
TRAILING_NUMBER = re.compile(r"(\d+)$")

INDEX_SCHEMA = pa.schema(
    [
        ("frame_id", pa.string()),
        ("shot_id", pa.string()),
        ("frame_idx", pa.int32()),
        ("label", pa.int32()),
        ("split", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("boxes", pa.list_(pa.list_(pa.float64(), 4))),
    ]
)

Progress = Callable[[int], None]


@dataclass(frozen=True)
class IndexInfo:
    dataset: str
    root: str
    metadata: str
    classes: list[str]
    fingerprint: str

    def to_json(self) -> bytes:
        return json.dumps({"format": INDEX_FORMAT, "version": INDEX_VERSION, **self.__dict__}).encode()

    @classmethod
    def from_json(cls, raw: bytes, source: str) -> "IndexInfo":
        return cls(**info_fields(cls, raw, source, "frame index", INDEX_FORMAT, INDEX_VERSION))


@dataclass
class FrameIndex:
    table: pa.Table
    info: IndexInfo

    def split(self, name: str) -> pa.Table:
        return self.table.filter(pc.equal(self.table["split"], name))

    def counts(self) -> dict[str, int]:
        splits = self.table["split"].to_pylist()
        return {s: splits.count(s) for s in dict.fromkeys(splits)}

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = self.table.replace_schema_metadata({METADATA_KEY: self.info.to_json()})
        tmp = temporary_sibling(path)
        pq.write_table(table, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> "FrameIndex":
        path = Path(path)
        table, raw = read_tcam_parquet(path, "frame index", METADATA_KEY)
        info = IndexInfo.from_json(raw, str(path))
        check_columns(table.schema, INDEX_SCHEMA, path, "frame index")
        table = table.select(INDEX_SCHEMA.names)
        return cls(table.cast(INDEX_SCHEMA.with_metadata(table.schema.metadata)), info)


# --------------------------------------------------------------------------- listing frames


def frame_number(name: str) -> int | None:
    """The number a frame file name ends with (frame0042.jpg -> 42), or None if not a frame."""
    pure = PurePosixPath(name)
    if pure.suffix.lower() not in IMAGE_SUFFIXES:
        return None
    match = TRAILING_NUMBER.search(pure.stem)
    return int(match.group(1)) if match else None


def list_shot_frames(root: Path, shot_id: str) -> tuple[list[str], list[str]]:
    """Frame ids of a shot in frame-number order, and the problems found listing it."""
    folder = root / shot_id
    try:
        names = [entry.name for entry in Path(folder).iterdir() if entry.is_file()]
    except FileNotFoundError:
        return [], [f"shot folder {folder} not found"]
    except NotADirectoryError:
        return [], [f"shot {folder} is a file, not a folder"]
    numbered = sorted((n, name) for name in names if (n := frame_number(name)) is not None)
    problems = []
    if not numbered:
        problems.append(f"shot folder {folder} has no frames (expected files like frame0001.jpg)")
    for (n1, a), (n2, b) in zip(numbered, numbered[1:]):
        if n1 == n2:
            problems.append(f"shot folder {folder}: {a} and {b} have the same frame number {n1}")
    return [f"{shot_id}/{name}" for _, name in numbered], problems


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header; raises DatasetError naming the file."""
    try:
        with Image.open(path) as image:
            return image.size
    except FileNotFoundError:
        raise DatasetError([f"{path}: frame file not found"]) from None
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError([f"{path}: not a readable image ({err})"]) from None


# --------------------------------------------------------------------------- building


@dataclass
class Row:
    frame_id: str
    shot_id: str
    frame_idx: int
    label: int
    split: str
    width: int
    height: int
    boxes: list


class IndexBuilder:
    def __init__(self, root: Path, metadata: DatasetMetadata, probe_frames: str, threads: int, progress: Progress | None):
        self.root = root
        self.metadata = metadata
        self.probe_all = probe_frames == "all"
        self.threads = threads
        self.progress = progress or (lambda n: None)

    def where(self, meta: SplitMetadata, file_name: str, item_id: str) -> str:
        return meta.where(file_name, item_id, self.metadata.metadata_dir)

    def shot_rows(self, meta: SplitMetadata, shot_id: str) -> tuple[list[Row], list[str]]:
        frames, listing_problems = list_shot_frames(self.root, shot_id)
        where = self.where(meta, IDS_FILE, shot_id)
        problems = [f"{where}: {p}" for p in listing_problems]
        rows = []
        size = None
        for idx, frame_id in enumerate(frames):
            if size is None or self.probe_all:
                try:
                    size = image_size(self.root / frame_id)
                except DatasetError as err:
                    problems.extend(f"{where}: {p}" for p in err.problems)
                    continue
            rows.append(Row(frame_id, shot_id, idx, meta.labels[shot_id], meta.split, size[0], size[1], []))
        self.progress(1)
        return rows, problems

    def frame_row(self, meta: SplitMetadata, frame_id: str) -> tuple[list[Row], list[str]]:
        self.progress(1)
        shot_id = str(PurePosixPath(frame_id).parent)
        where = self.where(meta, IDS_FILE, frame_id)
        try:
            width, height = image_size(self.root / frame_id)
        except DatasetError as err:
            return [], [f"{where}: {p}" for p in err.problems]
        problems = []
        listed = meta.sizes.get(frame_id)
        if listed is not None and listed != (width, height):
            problems.append(
                f"{self.where(meta, SIZES_FILE, frame_id)}: {frame_id} is listed as {listed[0]}x{listed[1]} "
                f"but the image {self.root / frame_id} is {width}x{height}"
            )
        for x0, y0, x1, y1 in meta.boxes.get(frame_id, []):
            if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
                problems.append(
                    f"{self.where(meta, BOXES_FILE, frame_id)}: box {(x0, y0, x1, y1)} lies outside "
                    f"the {width}x{height} image {frame_id}"
                )
        shot_frames, _ = list_shot_frames(self.root, shot_id)
        frame_idx = shot_frames.index(frame_id) if frame_id in shot_frames else 0
        boxes = [list(b) for b in meta.boxes.get(frame_id, [])]
        row = Row(frame_id, shot_id, frame_idx, meta.labels[frame_id], meta.split, width, height, boxes)
        return [row], problems

    def split_rows(self, meta: SplitMetadata) -> tuple[list[Row], list[str]]:
        work = self.shot_rows if meta.lists_shots else self.frame_row
        with ThreadPoolExecutor(self.threads) as pool:
            results = list(pool.map(lambda item_id: work(meta, item_id), meta.ids))
        rows = [row for found, _ in results for row in found]
        problems = [p for _, found in results for p in found]
        return rows, problems

    def build(self) -> list[Row]:
        rows, problems = [], []
        for meta in self.metadata.splits.values():
            split_rows, split_problems = self.split_rows(meta)
            rows.extend(split_rows)
            problems.extend(split_problems)
        if problems:
            raise DatasetError(problems)
        return rows


def rows_to_table(rows: Iterable[Row]) -> pa.Table:
    columns = {name: [] for name in INDEX_SCHEMA.names}
    for row in rows:
        for name in INDEX_SCHEMA.names:
            columns[name].append(getattr(row, name))
    return pa.table(columns, schema=INDEX_SCHEMA)


def fingerprint(metadata: DatasetMetadata, table: pa.Table) -> str:
    """A hash of what the dataset is: classes, every row's id, label, size and boxes."""
    digest = hashlib.sha256(json.dumps(metadata.classes, sort_keys=True).encode())
    for name in ("frame_id", "label", "split", "width", "height", "boxes"):
        digest.update(json.dumps(table[name].to_pylist()).encode())
    return digest.hexdigest()


def count_work_items(metadata: DatasetMetadata) -> int:
    return sum(len(meta.ids) for meta in metadata.splits.values())


def build_frame_index(
    root: str | Path,
    metadata: DatasetMetadata,
    dataset_name: str = "dataset",
    probe_frames: str = "all",
    threads: int = 8,
    progress: Progress | None = None,
) -> FrameIndex:
    """Index every frame of `metadata`'s splits found under `root`.

    Raises DatasetError listing every problem: missing frames or shot folders,
    empty shots, unreadable images, sizes that disagree with image_sizes.txt.
    `progress(n)` is called as shots/frames are done (count_work_items in all).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError([f"{root}: dataset root folder not found"])
    rows = IndexBuilder(root, metadata, probe_frames, threads, progress).build()
    table = rows_to_table(rows)
    info = IndexInfo(
        dataset=dataset_name,
        root=str(root.resolve()),
        metadata=str(Path(metadata.metadata_dir).resolve()),
        classes=metadata.class_names,
        fingerprint=fingerprint(metadata, table),
    )
    return FrameIndex(table, info)
