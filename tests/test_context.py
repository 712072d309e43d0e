"""EarlyStart: the next epoch's input pipeline starts while the current epoch is still being validated."""
from __future__ import annotations

import threading

import pytest

from tcam_ray.train.context import EarlyStart


def test_first_batch_is_fetched_before_it_is_asked_for():
    fetched = threading.Event()

    def pipeline():
        fetched.set()
        yield from ("b1", "b2", "b3")

    started = EarlyStart(pipeline)
    assert fetched.wait(timeout=10)  # nobody has asked for a batch yet
    assert list(started.batches()) == ["b1", "b2", "b3"]


def test_an_empty_pipeline_gives_no_batches():
    assert list(EarlyStart(lambda: iter(())).batches()) == []


def test_a_failing_pipeline_raises_in_the_training_thread():
    def pipeline():
        raise FileNotFoundError("frame0001.jpg")
        yield  # pragma: no cover

    with pytest.raises(FileNotFoundError, match="frame0001.jpg"):
        list(EarlyStart(pipeline).batches())
