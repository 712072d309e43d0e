"""CAM stores and frame indexes a user may have received: a damaged file is one error naming it, and a
column whose values are pickles never runs them (security issue 16)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.data  # noqa: F401  registers ray.data.arrow_pickled_object, as every tcam-ray process using Ray Data does
from ray.data._internal.object_extensions.arrow import ArrowPythonObjectArray

from tcam_ray.data.cam_store import METADATA_KEY as STORE_KEY
from tcam_ray.data.cam_store import CamStore, CamStoreWriter, StoreInfo
from tcam_ray.data.frame_index import METADATA_KEY as INDEX_KEY
from tcam_ray.data.frame_index import FrameIndex, IndexInfo, Row, rows_to_table
from tcam_ray.data.layout import DatasetError

INFO = StoreInfo("d", "f" * 64, ["a"], "ckpt", "id", "cam", 4, "uint8")
ROWS = [Row("s/frame1.jpg", "s", 0, 0, "train", 8, 6, []), Row("t/frame1.jpg", "t", 0, 0, "val", 8, 6, [[0, 0, 4, 3]])]


def write_store(path: Path) -> Path:
    writer = CamStoreWriter(path, INFO)
    writer.write(["s/frame1.jpg", "s/frame2.jpg"], ["s", "s"], [0, 1], [0, 0], np.full((2, 4, 4), 0.5, np.float32))
    return writer.close()


def write_index(path: Path) -> Path:
    return FrameIndex(rows_to_table(ROWS), IndexInfo("d", "/root", "/meta", ["a"], "f" * 64)).write(path)


KINDS = {"CAM store": (write_store, CamStore.read, STORE_KEY), "frame index": (write_index, FrameIndex.read, INDEX_KEY)}


@pytest.fixture(params=list(KINDS))
def kind(request):
    return request.param


def refused(kind: str, path: Path, message: str) -> DatasetError:
    """Reading `path` as `kind` fails with one line that starts with the path and says `message`."""
    with pytest.raises(DatasetError, match=re.escape(f"{path}: {message}")) as caught:
        KINDS[kind][1](path)
    assert "\n" not in str(caught.value)
    return caught.value


def good_table(kind: str, tmp_path: Path) -> pa.Table:
    return pq.read_table(KINDS[kind][0](tmp_path / "good.parquet"))


def write_with(path: Path, table: pa.Table, metadata: bytes, key: bytes) -> Path:
    pq.write_table(table.replace_schema_metadata({key: metadata}), path)
    return path


# --------------------------------------------------------------------------- damaged files


def test_files_as_written_read_back(kind, tmp_path):
    write, read, _ = KINDS[kind]
    assert read(write(tmp_path / "good.parquet")).table.num_rows == 2


def test_missing_file(kind, tmp_path):
    refused(kind, tmp_path / "none.parquet", f"{kind} not found")


def test_zero_byte_file(kind, tmp_path):
    path = tmp_path / "empty.parquet"
    path.write_bytes(b"")
    refused(kind, path, f"{kind} is empty (0 bytes)")


def test_truncated_file(kind, tmp_path):
    path = KINDS[kind][0](tmp_path / "cut.parquet")
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    error = refused(kind, path, f"not a readable Parquet file (truncated, damaged or not a {kind}): ")
    assert "Could not open" not in str(error)  # pyarrow's own naming of the path is left out


def test_text_file(kind, tmp_path):
    path = tmp_path / "notes.parquet"
    path.write_text("frame_id,cam\ns/frame1.jpg,0\n" * 20)
    refused(kind, path, f"not a readable Parquet file (truncated, damaged or not a {kind}): ")


def test_not_read_while_ray_would_unpickle_tensor_metadata(kind, tmp_path, monkeypatch):
    path = KINDS[kind][0](tmp_path / "good.parquet")
    monkeypatch.setenv("RAY_DATA_AUTOLOAD_CLOUDPICKLE_TENSOR_METADATA", "1")
    refused(kind, path, "not read while RAY_DATA_AUTOLOAD_CLOUDPICKLE_TENSOR_METADATA=1")


def test_folder(kind, tmp_path):
    refused(kind, tmp_path, f"a folder, not a {kind} file")


def test_parquet_without_metadata(kind, tmp_path):
    path = tmp_path / "other.parquet"
    pq.write_table(pa.table({"a": [1]}), path)
    refused(kind, path, f"Parquet file without tcam-ray {kind} metadata")


def test_store_whose_maps_are_not_the_size_its_metadata_says(tmp_path):
    table = good_table("CAM store", tmp_path)
    table = table.set_column(4, "cam", pa.array([b"\0" * 8] * 2, pa.binary(8)))
    path = write_with(tmp_path / "s.parquet", table, INFO.to_json(), STORE_KEY)
    refused("CAM store", path, "not a tcam-ray CAM store (column cam is fixed_size_binary[8], "
                               "expected fixed_size_binary[16] for 4x4 uint8 maps)")


def test_store_with_a_column_of_another_type(tmp_path):
    table = good_table("CAM store", tmp_path).set_column(2, "frame_idx", pa.array([0, 1], pa.int64()))
    path = write_with(tmp_path / "s.parquet", table, INFO.to_json(), STORE_KEY)
    refused("CAM store", path, "not a tcam-ray CAM store (column frame_idx is int64, expected int32)")


def test_index_without_a_column(tmp_path):
    table = good_table("frame index", tmp_path)
    path = write_with(tmp_path / "i.parquet", table.drop_columns(["boxes"]), table.schema.metadata[INDEX_KEY],
                      INDEX_KEY)
    refused("frame index", path, "not a tcam-ray frame index (no column boxes)")


def test_index_with_boxes_of_another_type(tmp_path):
    table = good_table("frame index", tmp_path)
    table = table.set_column(7, "boxes", pa.array([[], [[0.0, 0.0, 4.0, 3.0]]], pa.list_(pa.list_(pa.float64()))))
    path = write_with(tmp_path / "i.parquet", table, table.schema.metadata[INDEX_KEY], INDEX_KEY)
    refused("frame index", path, "not a tcam-ray frame index (column boxes is list<element: list<element: double>>, "
                                 "expected list<item: fixed_size_list<item: double>[4]>)")


def store_metadata(**changes) -> bytes:
    data = {**json.loads(INFO.to_json()), **changes}
    return json.dumps({k: v for k, v in data.items() if v is not None}).encode()


@pytest.mark.parametrize("metadata, message", [
    (b'{"format": "tcam-ray cam store", "vers', "damaged CAM store metadata (not JSON: "),
    (b"\xff\xfe\x00garbage", "damaged CAM store metadata (not JSON: "),
    (b"[1, 2]", "not a version-1 tcam-ray CAM store"),
    (store_metadata(version=2), "not a version-1 tcam-ray CAM store"),
    (store_metadata(size=None), "damaged CAM store metadata (no 'size')"),
    (store_metadata(size="4"), "damaged CAM store metadata (size is '4', expected int)"),
    (store_metadata(size=True), "damaged CAM store metadata (size is True, expected int)"),
    (store_metadata(size=0), "damaged CAM store metadata (size is 0, expected 1 to 32767 pixels)"),
    (store_metadata(dtype="int7"), "damaged CAM store metadata (dtype is 'int7', expected one of uint8, float16)"),
    (store_metadata(classes=["a", 3]), "damaged CAM store metadata (classes is ['a', 3], expected list[str])"),
])
def test_store_with_damaged_metadata(tmp_path, metadata, message):
    path = write_with(tmp_path / "s.parquet", good_table("CAM store", tmp_path), metadata, STORE_KEY)
    refused("CAM store", path, message)


@pytest.mark.parametrize("metadata, message", [
    (b"{not json", "damaged frame index metadata (not JSON: "),
    (b'{"format": "tcam-ray frame index", "version": 1}', "damaged frame index metadata (no 'dataset')"),
    (b'{"format": "tcam-ray frame index", "version": 1, "dataset": "d", "root": "/r", "metadata": "/m", '
     b'"classes": "a", "fingerprint": "f"}', "damaged frame index metadata (classes is 'a', expected list[str])"),
])
def test_index_with_damaged_metadata(tmp_path, metadata, message):
    path = write_with(tmp_path / "i.parquet", good_table("frame index", tmp_path), metadata, INDEX_KEY)
    refused("frame index", path, message)


# --------------------------------------------------------------------------- pickles planted in a column


class Payload:
    """Unpickling it creates `marker`: proof that a file's value ran code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def pickles(marker: Path, count: int) -> pa.Array:
    return ArrowPythonObjectArray.from_objects([Payload(marker) for _ in range(count)])


def planted(table: pa.Table, column: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(column), column, values)


@pytest.mark.parametrize("kind, column", [
    ("CAM store", "cam"), ("CAM store", "frame_id"), ("CAM store", "shot_id"),
    ("frame index", "frame_id"), ("frame index", "split"), ("frame index", "boxes"),
])
def test_pickled_column_never_runs(tmp_path, kind, column):
    marker = tmp_path / "ran"
    table = good_table(kind, tmp_path)
    path = tmp_path / "planted.parquet"
    pq.write_table(planted(table, column, pickles(marker, 2)), path)
    pq.read_table(path)[column].to_pylist()
    assert marker.exists(), "the planted column must run its payload when converted, or this test proves nothing"
    marker.unlink()
    refused(kind, path, f"refused, column {column} holds extension type 'ray.data.arrow_pickled_object' "
                        f"(its values could run code when read): a tcam-ray {kind} holds only plain Arrow types")
    assert not marker.exists()


def test_pickles_nested_in_the_boxes_never_run(tmp_path):
    marker = tmp_path / "ran"
    table = good_table("frame index", tmp_path)
    nested = pa.ListArray.from_arrays(pa.array([0, 1, 2], pa.int32()), pickles(marker, 2))
    path = tmp_path / "planted.parquet"
    pq.write_table(planted(table, "boxes", nested), path)
    pq.read_table(path)["boxes"].to_pylist()
    assert marker.exists()
    marker.unlink()
    refused("frame index", path, "refused, column boxes holds extension type 'ray.data.arrow_pickled_object'")
    assert not marker.exists()


def test_extension_type_not_registered_here_is_refused_too(tmp_path):
    """Read where its type is unknown, such a column is plain binary naming the type in its metadata; sent
    to a process that knows the type (a Ray worker), it would become the type again."""
    table = good_table("CAM store", tmp_path)
    field = pa.field("frame_id", pa.large_binary(), metadata={b"ARROW:extension:name": b"elsewhere.pickled"})
    table = table.set_column(0, field, pa.array([b"x", b"y"], pa.large_binary()))
    path = write_with(tmp_path / "s.parquet", table, INFO.to_json(), STORE_KEY)
    refused("CAM store", path, "refused, column frame_id holds extension type 'elsewhere.pickled'")


# --------------------------------------------------------------------------- the command line


def test_cli_names_a_broken_store_in_one_line(cli, tmp_path):
    path = write_store(tmp_path / "cams.parquet")
    path.write_bytes(path.read_bytes()[:100])
    result = cli("train", "--stage", "tcam", "--set", f"tcam.cams={path}", "--set", f"run.root={tmp_path}",
                 "--set", f"dataset.root={tmp_path / 'data'}")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert f"{path}: not a readable Parquet file (truncated, damaged or not a CAM store)" in result.stderr
