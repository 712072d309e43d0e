"""Reading the Parquet files tcam-ray writes (frame indexes, CAM stores), which a user may have received.

Each is checked before any value in it becomes a Python object: Arrow extension types can hold pickles that
run code when converted (Ray registers `ray.data.arrow_pickled_object`), so only the plain Arrow types a
tcam-ray file is written with get through. A missing, empty, damaged or unsafe file is one DatasetError
naming it.
"""
from __future__ import annotations

import json
import os
import re
import typing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .layout import DatasetError

EXTENSION_NAME_KEY = b"ARROW:extension:name"
PARQUET_SOURCE = re.compile(r"^Could not open Parquet input source '.*?': ")
# Ray 2.60 reads its tensor types' metadata as JSON; this switch makes it cloudpickle.loads them instead.
RAY_PICKLED_METADATA = "RAY_DATA_AUTOLOAD_CLOUDPICKLE_TENSOR_METADATA"



def read_tcam_parquet(path: Path, kind: str, metadata_key: bytes, missing_hint: str = "") -> tuple[pa.Table, bytes]:
    """The table of the tcam-ray `kind` file at `path` and its metadata entry, with no column of an
    extension type. A missing, empty, damaged or unsafe file is one DatasetError naming it."""
    if os.environ.get(RAY_PICKLED_METADATA) == "1":
        raise DatasetError([f"{path}: not read while {RAY_PICKLED_METADATA}=1: Ray then unpickles a Parquet file's "
                            "tensor metadata as it opens the file, which could run code; unset it"])
    if not path.exists():
        raise DatasetError([f"{path}: {kind} not found{missing_hint}"])
    if path.is_dir():
        raise DatasetError([f"{path}: a folder, not a {kind} file"])
    if path.stat().st_size == 0:
        raise DatasetError([f"{path}: {kind} is empty (0 bytes)"])
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        raise DatasetError([f"{path}: not a readable Parquet file (truncated, damaged or not a {kind}): "
                            f"{parquet_problem(err)}"]) from None
    refuse_extension_types(table.schema, path, kind)
    raw = (table.schema.metadata or {}).get(metadata_key)
    if raw is None:
        raise DatasetError([f"{path}: Parquet file without tcam-ray {kind} metadata"])
    return table, raw


def parquet_problem(err: Exception) -> str:
    """pyarrow's message on one line, without the path the caller already names."""
    return PARQUET_SOURCE.sub("", " ".join(str(err).split()))


def extension_in(field: pa.Field) -> str | None:
    """The name of an extension type in `field` or nested in it, or None. A field that only names one in its
    metadata counts: read where the type is not registered, it comes back as its storage type with that
    name, and becomes the extension type again in a process that has it (a Ray worker it is sent to)."""
    if isinstance(field.type, pa.BaseExtensionType):
        return field.type.extension_name
    if field.metadata and EXTENSION_NAME_KEY in field.metadata:
        return field.metadata[EXTENSION_NAME_KEY].decode(errors="replace")
    if pa.types.is_dictionary(field.type):  # no child fields: its values are a type
        return extension_in(pa.field("values", field.type.value_type))
    children = (field.type.field(i) for i in range(field.type.num_fields))
    return next((name for child in children if (name := extension_in(child)) is not None), None)


def refuse_extension_types(schema: pa.Schema, path: Path, kind: str) -> None:
    for field in schema:
        if (name := extension_in(field)) is not None:
            raise DatasetError([f"{path}: refused, column {field.name} holds extension type {name!r} (its values "
                                f"could run code when read): a tcam-ray {kind} holds only plain Arrow types"])


def check_columns(schema: pa.Schema, expected: pa.Schema, path: Path, kind: str,
                  notes: dict[str, str] | None = None) -> None:
    """Each column of `expected` once in `schema`, of its type (`notes[name]` explains a type)."""
    for field in expected:
        count = schema.names.count(field.name)
        if count != 1:
            found = "no column" if count == 0 else f"{count} columns named"
            raise DatasetError([f"{path}: not a tcam-ray {kind} ({found} {field.name})"])
        actual = schema.field(field.name).type
        if actual != field.type:
            note = (notes or {}).get(field.name, "")
            raise DatasetError([f"{path}: not a tcam-ray {kind} (column {field.name} is {actual}, "
                                f"expected {field.type}{note})"])


def info_fields(cls, raw: bytes, source: str, kind: str, file_format: str, version: int) -> dict:
    """The fields of the dataclass `cls` from a file's metadata JSON, each of its annotated type."""
    try:
        data = json.loads(raw)
    except ValueError as err:  # JSONDecodeError and UnicodeDecodeError both are ValueErrors
        raise DatasetError([f"{source}: damaged {kind} metadata (not JSON: {err})"]) from None
    if not isinstance(data, dict) or data.get("format") != file_format or data.get("version") != version:
        raise DatasetError([f"{source}: not a version-{version} tcam-ray {kind}"])
    fields = typing.get_type_hints(cls)
    for name, hint in fields.items():
        if name not in data:
            raise DatasetError([f"{source}: damaged {kind} metadata (no {name!r})"])
        if not has_type(data[name], hint):
            raise DatasetError([f"{source}: damaged {kind} metadata ({name} is {data[name]!r:.60}, "
                                f"expected {type_name(hint)})"])
    return {name: data[name] for name in fields}


def has_type(value, hint) -> bool:
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(has_type(v, item) for v in value)
    return isinstance(value, hint) and not (hint is int and isinstance(value, bool))


def type_name(hint) -> str:
    return str(hint) if typing.get_origin(hint) else hint.__name__
