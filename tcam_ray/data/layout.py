"""Reader and writer of the YouTube-Objects dataset layout.

    {root}/{class}/data/{video:04d}/shots/{shot:03d}/frame{n:04d}.jpg     frames
    {metadata}/class_id.yaml                                              {name: id}
    {metadata}/{split}/image_ids.txt      train: shot ids; val/test: frame ids
    {metadata}/{split}/class_labels.txt   id,label
    {metadata}/{split}/image_sizes.txt    id,width,height          (val/test)
    {metadata}/{split}/localization.txt   id,x0,y0,x1,y1 per box   (val/test; several lines per id allowed)

Ids are paths relative to the dataset root. Every problem found is reported
with its file and line, all of them at once, in one `DatasetError`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from ..errors import TcamRayError
from ..io import atomic_write_text

SPLITS = ("train", "val", "test")
IDS_FILE = "image_ids.txt"
LABELS_FILE = "class_labels.txt"
SIZES_FILE = "image_sizes.txt"
BOXES_FILE = "localization.txt"
CLASS_FILE = "class_id.yaml"
MAX_PROBLEMS_SHOWN = 20

Box = tuple[float, float, float, float]


class DatasetError(TcamRayError, ValueError):
    """One or more problems in a dataset, each naming its file (and line): one line for one problem, a
    list for several."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:
            super().__init__(self.problems[0])
            return
        shown = "\n".join(f"  {p}" for p in self.problems[:MAX_PROBLEMS_SHOWN])
        more = len(self.problems) - MAX_PROBLEMS_SHOWN
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(f"{len(self.problems)} problems in the dataset:\n{shown}{tail}")

    def __reduce__(self):  # crosses Ray processes whole (a decode task's error reaches the driver)
        return type(self), (self.problems,)


@dataclass
class SplitMetadata:
    """The metadata of one split. `ids` are shots (train) or frames (val/test)."""

    split: str
    ids: list[str] = field(default_factory=list)
    labels: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # id -> (width, height)
    boxes: dict[str, list[Box]] = field(default_factory=dict)
    # Where each id was read, for error messages: file name -> id -> line number.
    lines: dict[str, dict[str, int]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def lists_shots(self) -> bool:
        return self.split == "train"

    def where(self, file_name: str, item_id: str, metadata_dir: Path) -> str:
        line = self.lines.get(file_name, {}).get(item_id)
        location = metadata_dir / self.split / file_name
        return f"{location}:{line}" if line else str(location)


@dataclass
class DatasetMetadata:
    metadata_dir: Path
    classes: dict[str, int]  # class name -> label id
    splits: dict[str, SplitMetadata]

    @property
    def class_names(self) -> list[str]:
        """Class names ordered by label id."""
        return [name for name, _ in sorted(self.classes.items(), key=lambda kv: kv[1])]


# --------------------------------------------------------------------------- reading


def read_class_ids(path: Path) -> dict[str, int]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise DatasetError([f"{path}: class list not found"]) from None
    except yaml.YAMLError as err:
        raise DatasetError([f"{path}: not valid YAML: {err}"]) from None
    if not isinstance(data, dict) or not data:
        raise DatasetError([f"{path}: expected a mapping 'class name: id', got {type(data).__name__}"])
    problems = []
    for name, label in data.items():
        if not isinstance(label, int) or isinstance(label, bool) or label < 0:
            problems.append(f"{path}: class {name!r} has id {label!r}; ids are integers >= 0")
    ids = [v for v in data.values() if isinstance(v, int)]
    if len(set(ids)) != len(ids):
        problems.append(f"{path}: two classes share an id ({sorted(ids)})")
    if problems:
        raise DatasetError(problems)
    return {str(name): int(label) for name, label in data.items()}


def numbered_lines(path: Path):
    """(line number, stripped text) of each non-blank line; a missing file has none."""
    if not path.exists():
        return
    with path.open() as handle:
        for number, text in enumerate(handle, start=1):
            text = text.strip()
            if text:
                yield number, text


def bad_id_reason(item_id: str) -> str | None:
    pure = PurePosixPath(item_id)
    if pure.is_absolute() or ".." in pure.parts or "\\" in item_id:
        return "ids are paths relative to the dataset root, without '..'"
    return None


def split_fields(text: str, count: int) -> list[str] | None:
    """`id,f1,...,f{count}` split from the right, so ids may hold commas."""
    parts = text.rsplit(",", count)
    return [p.strip() for p in parts] if len(parts) == count + 1 else None


class SplitReader:
    """Reads the four files of one split, collecting every problem with its line."""

    def __init__(self, metadata_dir: Path, split: str, classes: dict[str, int]):
        self.folder = metadata_dir / split
        self.meta = SplitMetadata(split)
        self.label_ids = set(classes.values())
        self.problems: list[str] = []

    def problem(self, file_name: str, line: int, message: str) -> None:
        self.problems.append(f"{self.folder / file_name}:{line}: {message}")

    def known_id(self, file_name: str, line: int, item_id: str) -> bool:
        if item_id in self.meta.lines.get(IDS_FILE, {}):
            return True
        self.problem(file_name, line, f"id {item_id!r} is not listed in {IDS_FILE}")
        return False

    def read(self) -> SplitMetadata:
        if not (self.folder / IDS_FILE).exists():
            raise DatasetError([f"{self.folder / IDS_FILE}: file not found"])
        self.read_ids()
        self.read_labels()
        self.read_sizes()
        self.read_boxes()
        if self.problems:
            raise DatasetError(self.problems)
        return self.meta

    def read_ids(self) -> None:
        seen = self.meta.lines.setdefault(IDS_FILE, {})
        for line, item_id in numbered_lines(self.folder / IDS_FILE):
            reason = bad_id_reason(item_id)
            if reason:
                self.problem(IDS_FILE, line, f"bad id {item_id!r}: {reason}")
            elif item_id in seen:
                self.problem(IDS_FILE, line, f"id {item_id!r} repeats line {seen[item_id]}")
            else:
                seen[item_id] = line
                self.meta.ids.append(item_id)

    def read_labels(self) -> None:
        where = self.meta.lines.setdefault(LABELS_FILE, {})
        for line, text in numbered_lines(self.folder / LABELS_FILE):
            fields = split_fields(text, 1)
            if fields is None or not fields[1].lstrip("-").isdigit():
                self.problem(LABELS_FILE, line, f"expected 'id,label' with an integer label, got {text!r}")
                continue
            item_id, label = fields[0], int(fields[1])
            if not self.known_id(LABELS_FILE, line, item_id):
                continue
            if item_id in where:
                self.problem(LABELS_FILE, line, f"id {item_id!r} already labelled at line {where[item_id]}")
                continue
            where[item_id] = line
            if label in self.label_ids:
                self.meta.labels[item_id] = label
            else:
                self.problem(LABELS_FILE, line, f"label {label} of {item_id!r} is not an id in {CLASS_FILE} "
                             f"(ids: {sorted(self.label_ids)})")
        unlabelled = [i for i in self.meta.ids if i not in where]
        for item_id in unlabelled:
            self.problem(IDS_FILE, self.meta.lines[IDS_FILE][item_id], f"id {item_id!r} has no line in {LABELS_FILE}")

    def read_sizes(self) -> None:
        where = self.meta.lines.setdefault(SIZES_FILE, {})
        for line, text in numbered_lines(self.folder / SIZES_FILE):
            fields = split_fields(text, 2)
            if fields is None or not (fields[1].isdigit() and fields[2].isdigit()) or "0" in (fields[1], fields[2]):
                self.problem(SIZES_FILE, line, f"expected 'id,width,height' with positive integers, got {text!r}")
                continue
            if self.known_id(SIZES_FILE, line, fields[0]):
                where[fields[0]] = line
                self.meta.sizes[fields[0]] = (int(fields[1]), int(fields[2]))

    def read_boxes(self) -> None:
        where = self.meta.lines.setdefault(BOXES_FILE, {})
        for line, text in numbered_lines(self.folder / BOXES_FILE):
            fields = split_fields(text, 4)
            coords = parse_box(fields[1:]) if fields else None
            if coords is None:
                self.problem(BOXES_FILE, line, f"expected 'id,x0,y0,x1,y1' with numbers, got {text!r}")
                continue
            x0, y0, x1, y1 = coords
            if not (x1 > x0 and y1 > y0):
                self.problem(BOXES_FILE, line, f"box {coords} is empty: need x1 > x0 and y1 > y0")
                continue
            if self.known_id(BOXES_FILE, line, fields[0]):
                where.setdefault(fields[0], line)
                self.meta.boxes.setdefault(fields[0], []).append(coords)


def parse_box(values: list[str]) -> Box | None:
    try:
        box = tuple(float(v) for v in values)
    except ValueError:
        return None
    return box if all(math.isfinite(v) for v in box) else None


def read_metadata(metadata_dir: str | Path, splits: tuple[str, ...] | None = None) -> DatasetMetadata:
    """Read class_id.yaml and the given splits (default: every split folder present)."""
    metadata_dir = Path(metadata_dir)
    if not metadata_dir.is_dir():
        raise DatasetError([f"{metadata_dir}: metadata folder not found"])
    classes = read_class_ids(metadata_dir / CLASS_FILE)
    if splits is None:
        splits = tuple(s for s in SPLITS if (metadata_dir / s).is_dir())
        if not splits:
            raise DatasetError([f"{metadata_dir}: no split folder ({', '.join(SPLITS)})"])
    problems, read = [], {}
    for split in splits:
        try:
            read[split] = SplitReader(metadata_dir, split, classes).read()
        except DatasetError as err:
            problems.extend(err.problems)
    if problems:
        raise DatasetError(problems)
    return DatasetMetadata(metadata_dir, classes, read)


# --------------------------------------------------------------------------- writing


def split_file_texts(meta: SplitMetadata) -> dict[str, str]:
    def lines(rows):
        return "".join(f"{row}\n" for row in rows)

    return {
        IDS_FILE: lines(meta.ids),
        LABELS_FILE: lines(f"{i},{meta.labels[i]}" for i in meta.ids),
        SIZES_FILE: lines(f"{i},{meta.sizes[i][0]},{meta.sizes[i][1]}" for i in meta.ids if i in meta.sizes),
        BOXES_FILE: lines(f"{i},{x0!r},{y0!r},{x1!r},{y1!r}" for i in meta.ids for x0, y0, x1, y1 in meta.boxes.get(i, [])),
    }


def write_metadata(metadata: DatasetMetadata) -> None:
    """Write class_id.yaml and every split's four files (each file atomically)."""
    folder = Path(metadata.metadata_dir)
    atomic_write_text(folder / CLASS_FILE, yaml.safe_dump(metadata.classes, sort_keys=False))
    for split, meta in metadata.splits.items():
        for name, text in split_file_texts(meta).items():
            atomic_write_text(folder / split / name, text)
