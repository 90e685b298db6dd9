"""The hand-built ONNX scoring graph against its numpy reference, run by onnxruntime."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from streamrec.model.onnx_model import (
    FORMAT,
    build_scoring_model,
    export_model_bytes,
    item_offsets,
    numpy_topk,
    popularity_prior,
)


def _session(items, bias, prior, weight):
    data = export_model_bytes(items, bias, prior, weight)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _run(sess, users, k):
    return sess.run(["scores", "indices"], {"user_vectors": users, "k": np.array([k], np.int64)})


@pytest.mark.parametrize("n,d", [(1, 1), (5, 3), (64, 8), (777, 16), (3000, 32)])
def test_matches_numpy_reference_on_random_data(n, d):
    rng = np.random.default_rng(n * 31 + d)
    items = rng.normal(size=(n, d)).astype(np.float32)
    bias = rng.normal(scale=0.1, size=n).astype(np.float32)
    prior = popularity_prior(rng.poisson(5.0, size=n))
    sess = _session(items, bias, prior, 0.3)
    offset = item_offsets(bias, prior, 0.3)
    for b in (1, 4, 33):
        users = rng.normal(size=(b, d)).astype(np.float32)
        for k in (1, 3, 10, n, n + 5):
            scores, idx = _run(sess, users, k)
            ref_scores, ref_idx = numpy_topk(users, items, offset, k)
            assert scores.shape == idx.shape == (b, min(k, n))
            assert idx.dtype == np.int64 and scores.dtype == np.float32
            np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
            # Float32 GEMM rounding may reorder scores that differ by ~1 ulp; everywhere else the
            # indices must be identical, and the chosen items must score what the reference says.
            exact = users.astype(np.float64) @ items.astype(np.float64).T + offset
            np.testing.assert_allclose(
                np.take_along_axis(exact, idx, 1), ref_scores, rtol=1e-5, atol=1e-5)
            gaps = np.abs(np.diff(ref_scores, axis=1))
            clear = np.ones_like(ref_idx, dtype=bool)
            clear[:, 1:] &= gaps > 1e-4
            clear[:, :-1] &= gaps > 1e-4
            assert np.array_equal(idx[clear], ref_idx[clear])


@pytest.mark.parametrize("n", [4, 50, 1000])
def test_ties_keep_lower_index_first_like_numpy(n):
    # Integer-valued vectors make every dot product exact in float32, whatever the summation
    # order, so duplicated rows tie exactly and only the tie rule decides the order.
    rng = np.random.default_rng(n)
    base = rng.integers(-2, 3, size=(max(2, n // 4), 6)).astype(np.float32)
    items = base[rng.integers(0, len(base), size=n)]
    items[-1] = items[0]  # at least one duplicated pair far apart
    bias = rng.integers(-1, 2, size=n).astype(np.float32)
    bias[-1] = bias[0]
    zeros = np.zeros(n, np.float32)
    sess = _session(items, bias, zeros, 0.0)
    users = rng.integers(-2, 3, size=(9, 6)).astype(np.float32)
    for k in (1, 2, n // 2, n, n + 1):
        scores, idx = _run(sess, users, k)
        ref_scores, ref_idx = numpy_topk(users, items, bias, k)
        assert np.array_equal(scores, ref_scores)
        assert np.array_equal(idx, ref_idx)
    # the reference really orders ties by index: all-equal scores come back 0..k-1
    _, idx = numpy_topk(np.ones((1, 6), np.float32), np.ones((n, 6), np.float32), zeros, n)
    assert idx.tolist() == [list(range(n))]
    _, idx = _run(_session(np.ones((n, 6), np.float32), zeros, zeros, 0.0), np.ones((1, 6), np.float32), n)
    assert idx.tolist() == [list(range(n))]


def test_graph_structure_and_metadata():
    m = build_scoring_model(np.ones((3, 2), np.float32), np.zeros(3), np.array([0.0, 1.0, 2.0]), 0.5)
    onnx.checker.check_model(m)
    assert [n.op_type for n in m.graph.node] == ["Gemm", "Min", "TopK"]
    inputs = {i.name: i for i in m.graph.input}
    assert inputs["user_vectors"].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert inputs["k"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    props = {p.key: p.value for p in m.metadata_props}
    assert props["format"] == FORMAT and props["item_count"] == "3" and props["dim"] == "2"
    offset = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}["item_offset"]
    assert offset.tolist() == [0.0, 0.5, 1.0]


def test_prior_changes_ranking_and_empty_batch():
    items = np.array([[1.0], [1.0]], np.float32)
    sess = _session(items, np.zeros(2), popularity_prior([0, 100]), 0.1)
    _, idx = _run(sess, np.ones((1, 1), np.float32), 2)
    assert idx.tolist() == [[1, 0]]  # equal dot products: the popular item wins
    scores, idx = _run(sess, np.zeros((0, 1), np.float32), 2)
    assert scores.shape == (0, 2)


def test_rejects_bad_input():
    with pytest.raises(ValueError):
        build_scoring_model(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.0)
    with pytest.raises(ValueError):
        build_scoring_model(np.zeros((3, 4)), np.zeros(2), np.zeros(3), 0.0)
    with pytest.raises(ValueError):
        build_scoring_model(np.full((3, 4), np.nan), np.zeros(3), np.zeros(3), 0.0)
