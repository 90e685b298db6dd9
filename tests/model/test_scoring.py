"""ScoringModel on real onnxruntime sessions: exclusion, over-fetch, provider choice."""

import numpy as np
import onnxruntime as ort
import pytest

from streamrec.model.onnx_model import export_model_bytes, item_offsets, numpy_topk, popularity_prior
from streamrec.model.registry import Registry
from streamrec.model.scoring import (
    ModelMismatchError,
    ProviderUnavailableError,
    ScoringModel,
    choose_providers,
)

CPU = ["CPUExecutionProvider"]


def _scoring(n=50, d=8, seed=0, version="v000001"):
    rng = np.random.default_rng(seed)
    items = rng.normal(size=(n, d)).astype(np.float32)
    bias = rng.normal(scale=0.1, size=n).astype(np.float32)
    prior = popularity_prior(rng.poisson(3.0, size=n))
    meta = {"version": version, "item_ids": [f"i{j}" for j in range(n)], "dim": d}
    model = ScoringModel.from_bytes(export_model_bytes(items, bias, prior, 0.2), meta, CPU)
    return model, items, item_offsets(bias, prior, 0.2)


def test_exclusion_returns_exactly_k_none_excluded():
    model, items, offset = _scoring(n=50, d=8)
    rng = np.random.default_rng(1)
    users = rng.normal(size=(6, 8)).astype(np.float32)
    k = 10
    _, ref = numpy_topk(users, items, offset, 50)
    exclude = []
    for b in range(6):
        # exclude some of the row's own top items (the hard case) plus ids the model lacks
        top_ids = {f"i{j}" for j in ref[b, : 2 * b]}
        exclude.append(top_ids | {"unknown-item"})
    out = model.topk(users, k, exclude=exclude)
    assert len(out) == 6
    for b, row in enumerate(out):
        ids = [i for i, _ in row]
        assert len(ids) == k and len(set(ids)) == k
        assert not set(ids) & exclude[b]
        expected = [f"i{j}" for j in ref[b] if f"i{j}" not in exclude[b]][:k]
        assert ids == expected
        scores = [s for _, s in row]
        assert scores == sorted(scores, reverse=True)


def test_fewer_than_k_when_items_run_out_and_edge_cases():
    model, _, _ = _scoring(n=5, d=3)
    users = np.ones((2, 3), np.float32)
    out = model.topk(users, 10, exclude=[{"i0", "i1"}, None])
    assert [len(r) for r in out] == [3, 5]
    assert not {"i0", "i1"} & {i for i, _ in out[0]}
    assert model.topk(users, 0) == [[], []]
    assert model.topk(np.zeros((0, 3), np.float32), 4) == []
    assert len(model.topk(np.ones(3, np.float32), 2)[0]) == 2  # a single vector is a batch of 1
    with pytest.raises(ValueError):
        model.topk(np.ones((1, 4), np.float32), 2)
    with pytest.raises(ValueError):
        model.topk(users, 2, exclude=[set()])


def test_meta_must_match_graph():
    data = export_model_bytes(np.ones((3, 2), np.float32), np.zeros(3), np.zeros(3), 0.0)
    with pytest.raises(ModelMismatchError):
        ScoringModel.from_bytes(data, {"item_ids": ["a", "b"], "dim": 2}, CPU)
    with pytest.raises(ModelMismatchError):
        ScoringModel.from_bytes(data, {"item_ids": ["a", "b", "c"], "dim": 5}, CPU)


def test_from_registry_current(tmp_path):
    reg = Registry(tmp_path)
    with pytest.raises(LookupError):
        ScoringModel.from_registry(reg, providers=CPU)
    data = export_model_bytes(np.eye(4, dtype=np.float32), np.zeros(4), np.zeros(4), 0.0)
    v = reg.publish(data, {"item_ids": list("abcd"), "dim": 4})
    reg.promote(v, actor="t", reason="")
    model = ScoringModel.from_registry(reg, providers=CPU)
    assert model.version == v and model.provider == "CPUExecutionProvider"
    assert model.topk(np.array([[0, 0, 1, 0]], np.float32), 1) == [[("c", 1.0)]]


def test_choose_providers():
    both = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", both) == both
    assert choose_providers("cuda", both) == both
    assert choose_providers("cpu", both) == ["CPUExecutionProvider"]
    assert choose_providers("auto", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    with pytest.raises(ProviderUnavailableError, match="onnxruntime-gpu"):
        choose_providers("cuda", ["CPUExecutionProvider"])
    with pytest.raises(ValueError):
        choose_providers("tpu")  # type: ignore[arg-type]
    # against the installed onnxruntime
    real = choose_providers("auto")
    assert real[-1] == "CPUExecutionProvider"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(ProviderUnavailableError):
            choose_providers("cuda")


def test_a_graph_with_nan_weights_is_refused():
    from onnx import numpy_helper

    from streamrec.model.onnx_model import build_scoring_model
    from streamrec.model.scoring import ModelMismatchError, ScoringModel

    proto = build_scoring_model(np.ones((4, 3), np.float32), np.zeros(4, np.float32), np.zeros(4), 0.0)
    init = max(proto.graph.initializer, key=lambda i: numpy_helper.to_array(i).size)  # the item matrix
    poisoned = numpy_helper.to_array(init).copy()
    poisoned.flat[5] = np.nan  # as a broken writer would leave it (export itself refuses NaN)
    init.CopyFrom(numpy_helper.from_array(poisoned, init.name))
    data = proto.SerializeToString()
    with pytest.raises(ModelMismatchError, match="1 non-finite"):
        ScoringModel.from_bytes(data, {"item_ids": list("abcd"), "dim": 3, "version": "v9"})
