"""attnviz.files.npz writes what np.savez writes (np.load reads the same arrays back), also when
a member is given piece by piece."""

from __future__ import annotations

import io

import numpy as np
import pytest

from attnviz.files.npz import Pieces, write_npz


def saved(arrays) -> dict:
    buffer = io.BytesIO()
    write_npz(buffer, arrays)
    buffer.seek(0)
    with np.load(buffer) as data:
        return {name: data[name] for name in data.files}


def test_arrays_read_back_as_np_savez_writes_them():
    rng = np.random.default_rng(0)
    arrays = {"weights": rng.random((2, 3, 4, 4), dtype=np.float32), "ids": np.arange(5),
              "tokens": np.asarray(["␣the", "中文", ""], dtype=str), "scalar": np.float64(2.5),
              "empty": np.zeros((0, 3), np.int64), "fortran": np.asfortranarray(rng.random((3, 2)))}
    ours = saved(arrays)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    buffer.seek(0)
    with np.load(buffer) as theirs:
        assert list(ours) == theirs.files
        for name in theirs.files:
            assert ours[name].dtype == theirs[name].dtype and ours[name].shape == theirs[name].shape
            np.testing.assert_array_equal(ours[name], theirs[name])
    assert len(buffer.getvalue()) > 0


def test_pieces_make_one_array_in_c_order():
    layers = [np.full((2, 3, 3), k, dtype=np.float64) + np.arange(9).reshape(3, 3) for k in range(4)]
    data = saved({"weights": Pieces((4, 2, 3, 3), np.float32, iter(layers)), "n": np.int64(4)})
    np.testing.assert_array_equal(data["weights"], np.stack(layers).astype(np.float32))
    assert data["weights"].dtype == np.float32 and int(data["n"]) == 4


@pytest.mark.parametrize("count", [1, 3])
def test_pieces_that_do_not_fill_the_announced_shape_are_refused(count):
    pieces = [np.zeros((2, 2), np.float32)] * count
    with pytest.raises(ValueError, match="announced"):
        saved({"w": Pieces((2, 2, 2), np.float32, pieces)})


def test_a_function_is_called_when_its_member_is_written_after_the_pieces_before_it():
    seen = []

    def pieces():
        for k in range(3):
            seen.append(k)
            yield np.full((2, 2), k, np.float32)

    buffer = io.BytesIO()
    written = write_npz(buffer, {"w": Pieces((3, 2, 2), np.float32, pieces()),
                                 "after": lambda: np.asarray(seen, dtype=np.int64),
                                 "listed": [1.5, 2.5]})
    assert written == {"w": ((3, 2, 2), np.dtype(np.float32)), "after": ((3,), np.dtype(np.int64)),
                       "listed": ((2,), np.dtype(np.float64))}
    buffer.seek(0)
    with np.load(buffer) as data:
        assert data["after"].tolist() == [0, 1, 2] and data["listed"].tolist() == [1.5, 2.5]
