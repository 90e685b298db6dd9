"""The scoring model as an ONNX graph: ``top-k(user · itemᵀ + item_offset)``.

The graph is written node by node with :mod:`onnx.helper` rather than traced from torch:

* **small install** — numpy + onnx are already dependencies; torch would add ~1 GB to every
  TaskManager image for a graph of four nodes;
* **exact graph** — the file contains precisely the nodes listed below, so the numpy reference
  :func:`numpy_topk` can mirror it operation for operation, and tests compare the two;
* **no exporter drift** — a torch upgrade can change the exported opset, fuse or split nodes, or
  rename inputs; a hand-built graph changes only when this file does.

Graph (opset :data:`OPSET`)::

    inputs        user_vectors float32 [B, D]   (B dynamic)
                  k            int64   [1]      (dynamic: the scorer over-fetches to drop seen items)
    initializers  item_vectors float32 [N, D]   (row i = item_ids[i] in the registry's meta.json)
                  item_offset  float32 [N]      item bias + prior_weight * prior_i
                  item_count   int64   [1]      N
    nodes         logits  = Gemm(user_vectors, item_vectors, item_offset, transB=1)   # [B, N]
                  k_eff   = Min(k, item_count)                                       # k > N is fine
                  scores, indices = TopK(logits, k_eff, axis=-1, largest=1, sorted=1)
    outputs       scores  float32 [B, k_eff]
                  indices int64   [B, k_eff]

``Gemm(transB=1)`` with a ``[N]`` bias is ``MatMul(user, itemᵀ) + offset`` in one node.

**Prior.** ``item_prior`` is a per-item score computed at export time from the item features;
:func:`popularity_prior` gives the default, ``log1p(max(popularity, 0))`` where popularity is the
item's weighted interaction count. It lets popular items win among near-equal dot products and
gives items with young (near-zero) vectors a sensible rank. ``prior_weight`` is
``learner.popularity_prior``; 0 disables it.

**Ties.** ONNX TopK (opset >= 11) specifies that among equal values the lower index comes first;
onnxruntime implements that, and :func:`numpy_topk` uses a stable sort on the negated scores to
do the same. Tests check it with duplicated item rows.

>>> import numpy as np
>>> items = np.array([[1, 0], [0, 1], [1, 0]], dtype=np.float32)   # rows 0 and 2 tie
>>> m = build_scoring_model(items, np.zeros(3), np.zeros(3), 0.0)
>>> [i.name for i in m.graph.input], [o.name for o in m.graph.output]
(['user_vectors', 'k'], ['scores', 'indices'])
>>> s, idx = numpy_topk(np.array([[2, 1]], dtype=np.float32), items, np.zeros(3, np.float32), 5)
>>> idx.tolist(), s.tolist()
([[0, 2, 1]], [[2.0, 2.0, 1.0]])
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: ONNX opset the graph is written against (Min on int64 needs >= 12, TopK with input k >= 10).
OPSET = 17
#: IR version pinned so older onnxruntime builds (down to 1.14) still load the file.
IR_VERSION = 8
#: Written into the model's metadata_props; bump when the graph's contract changes.
FORMAT = "streamrec-topk-v1"

INPUT_USERS = "user_vectors"
INPUT_K = "k"
OUTPUT_SCORES = "scores"
OUTPUT_INDICES = "indices"


def popularity_prior(popularity: np.ndarray | list[float]) -> np.ndarray:
    """Default per-item prior: ``log1p(max(popularity, 0))`` as float32.

    >>> popularity_prior([0, -3, np.e - 1]).round(3).tolist()
    [0.0, 0.0, 1.0]
    """
    pop = np.asarray(popularity, dtype=np.float64)
    return np.log1p(np.maximum(pop, 0.0)).astype(np.float32)


def item_offsets(item_bias: np.ndarray, item_prior: np.ndarray, prior_weight: float) -> np.ndarray:
    """``item_bias + prior_weight * item_prior`` as float32 (the graph's ``item_offset``)."""
    bias = np.asarray(item_bias, dtype=np.float32).reshape(-1)
    prior = np.asarray(item_prior, dtype=np.float32).reshape(-1)
    if bias.shape != prior.shape:
        raise ValueError(f"item_bias has {bias.shape[0]} entries but item_prior {prior.shape[0]}")
    return (bias + np.float32(prior_weight) * prior).astype(np.float32)


def _check_items(item_vectors: np.ndarray) -> np.ndarray:
    items = np.ascontiguousarray(item_vectors, dtype=np.float32)
    if items.ndim != 2 or items.shape[0] < 1 or items.shape[1] < 1:
        raise ValueError(f"item_vectors must be a non-empty [N, D] matrix, got shape {items.shape}")
    if not np.isfinite(items).all():
        raise ValueError("item_vectors contains NaN or infinity")
    return items


def build_scoring_model(
    item_vectors: np.ndarray,
    item_bias: np.ndarray,
    item_prior: np.ndarray,
    prior_weight: float,
) -> onnx.ModelProto:
    """Build and check the scoring graph for ``N`` items of dimension ``D``.

    ``item_vectors`` is ``[N, D]``; ``item_bias`` and ``item_prior`` are ``[N]``. Row ``i`` must
    correspond to ``item_ids[i]`` in the registry's ``meta.json``.
    """
    items = _check_items(item_vectors)
    n, d = items.shape
    offset = item_offsets(item_bias, item_prior, prior_weight)
    if offset.shape[0] != n:
        raise ValueError(f"item_bias/item_prior have {offset.shape[0]} entries, item_vectors {n} rows")
    if not np.isfinite(offset).all():
        raise ValueError("item_bias/item_prior/prior_weight give a NaN or infinite offset")

    initializers = [
        numpy_helper.from_array(items, name="item_vectors"),
        numpy_helper.from_array(offset, name="item_offset"),
        numpy_helper.from_array(np.array([n], dtype=np.int64), name="item_count"),
    ]
    nodes = [
        helper.make_node(
            "Gemm", [INPUT_USERS, "item_vectors", "item_offset"], ["logits"], transB=1, name="score"
        ),
        helper.make_node("Min", [INPUT_K, "item_count"], ["k_eff"], name="clamp_k"),
        helper.make_node(
            "TopK",
            ["logits", "k_eff"],
            [OUTPUT_SCORES, OUTPUT_INDICES],
            axis=-1,
            largest=1,
            sorted=1,
            name="topk",
        ),
    ]
    graph = helper.make_graph(
        nodes,
        "streamrec_scoring",
        inputs=[
            helper.make_tensor_value_info(INPUT_USERS, TensorProto.FLOAT, ["batch", d]),
            helper.make_tensor_value_info(INPUT_K, TensorProto.INT64, [1]),
        ],
        outputs=[
            helper.make_tensor_value_info(OUTPUT_SCORES, TensorProto.FLOAT, ["batch", "k_eff"]),
            helper.make_tensor_value_info(OUTPUT_INDICES, TensorProto.INT64, ["batch", "k_eff"]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="streamrec",
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(
        model,
        {
            "format": FORMAT,
            "item_count": str(n),
            "dim": str(d),
            "prior_weight": repr(float(prior_weight)),
        },
    )
    onnx.checker.check_model(model)
    return model


def export_model_bytes(
    item_vectors: np.ndarray,
    item_bias: np.ndarray,
    item_prior: np.ndarray,
    prior_weight: float,
) -> bytes:
    """:func:`build_scoring_model` serialised (the bytes :meth:`Registry.publish` takes).

    Protobuf caps a model at 2 GiB: about 16 M items at D=32.
    """
    return build_scoring_model(item_vectors, item_bias, item_prior, prior_weight).SerializeToString()


def numpy_topk(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    item_offset: np.ndarray,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference implementation of the graph: ``(scores float32 [B, k'], indices int64 [B, k'])``.

    ``k' = min(k, N)``. Scores are computed in float32 like the graph; equal scores keep the lower
    item index first (stable sort), as ONNX TopK specifies.
    """
    users = np.asarray(user_vectors, dtype=np.float32)
    items = np.asarray(item_vectors, dtype=np.float32)
    offset = np.asarray(item_offset, dtype=np.float32)
    logits = users @ items.T + offset[None, :]
    kk = max(0, min(int(k), items.shape[0]))
    order = np.argsort(-logits, axis=1, kind="stable")[:, :kk].astype(np.int64)
    return np.take_along_axis(logits, order, axis=1), order


#: Format of the live scoring graph (the item table is an input, not an initializer).
LIVE_FORMAT = "streamrec-live-topk-v1"
INPUT_ITEMS = "item_vectors"
INPUT_OFFSET = "item_offset"


def build_live_scoring_model(dim: int) -> onnx.ModelProto:
    """The in-stream scoring graph: the same ``TopK(Gemm(users, itemsᵀ, offset))`` as
    :func:`build_scoring_model`, with the item table fed per call instead of baked in, so the
    learning shard scores its live item vectors (no export round trip)::

        inputs   user_vectors float32 [B, D], item_vectors float32 [N, D],
                 item_offset float32 [N], k int64 [1] (the caller keeps k <= N)
        outputs  scores float32 [B, k], indices int64 [B, k]

    >>> m = build_live_scoring_model(4)
    >>> [i.name for i in m.graph.input]
    ['user_vectors', 'item_vectors', 'item_offset', 'k']
    """
    if dim < 1:
        raise ValueError(f"dim must be positive, got {dim}")
    nodes = [
        helper.make_node("Gemm", [INPUT_USERS, INPUT_ITEMS, INPUT_OFFSET], ["logits"], transB=1, name="score"),
        helper.make_node("TopK", ["logits", INPUT_K], [OUTPUT_SCORES, OUTPUT_INDICES], axis=-1, largest=1,
                         sorted=1, name="topk"),
    ]
    graph = helper.make_graph(
        nodes,
        "streamrec_live_scoring",
        inputs=[
            helper.make_tensor_value_info(INPUT_USERS, TensorProto.FLOAT, ["batch", dim]),
            helper.make_tensor_value_info(INPUT_ITEMS, TensorProto.FLOAT, ["items", dim]),
            helper.make_tensor_value_info(INPUT_OFFSET, TensorProto.FLOAT, ["items"]),
            helper.make_tensor_value_info(INPUT_K, TensorProto.INT64, [1]),
        ],
        outputs=[
            helper.make_tensor_value_info(OUTPUT_SCORES, TensorProto.FLOAT, ["batch", "k"]),
            helper.make_tensor_value_info(OUTPUT_INDICES, TensorProto.INT64, ["batch", "k"]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="streamrec",
                              producer_version="1")
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"format": LIVE_FORMAT, "dim": str(dim)})
    onnx.checker.check_model(model)
    return model
