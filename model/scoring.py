"""Score users against the exported item matrix with onnxruntime.

:class:`ScoringModel` wraps one ORT session of the graph built by :mod:`model.onnx_model` plus the
``item_ids`` list of its registry version (index -> id). :meth:`ScoringModel.topk` over-fetches
by the number of excluded items a row can lose, drops them, and returns exactly ``k`` items per
user (fewer only when the model has too few items).

Execution provider: :func:`choose_providers` takes ``scoring.provider``. ``auto`` uses CUDA when
the installed onnxruntime has it (the ``onnxruntime-gpu`` build, extra ``[gpu]``) and the CPU
otherwise; ``cuda`` fails loudly when CUDA is not available instead of silently running on CPU.

Cold start (users without a vector) is not handled here: the item prior baked into the graph
and the caller's popularity fallback cover it.

>>> import numpy as np
>>> from model.onnx_model import export_model_bytes
>>> items = np.eye(3, dtype=np.float32)
>>> meta = {"version": "v000001", "item_ids": ["a", "b", "c"], "dim": 3}
>>> sm = ScoringModel.from_bytes(export_model_bytes(items, np.zeros(3), np.zeros(3), 0.0), meta, ["CPUExecutionProvider"])
>>> sm.topk(np.array([[0.1, 0.9, 0.5]], dtype=np.float32), 2, exclude=[{"b"}])
[[('c', 0.5), ('a', 0.10000000149011612)]]
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Literal, Sequence

import numpy as np
import onnxruntime as ort

from streamrec.model.onnx_model import (
    FORMAT,
    INPUT_ITEMS,
    INPUT_K,
    INPUT_OFFSET,
    INPUT_USERS,
    OUTPUT_INDICES,
    OUTPUT_SCORES,
    build_live_scoring_model,
)

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class ProviderUnavailableError(RuntimeError):
    """``scoring.provider = "cuda"`` but this onnxruntime cannot run on CUDA."""


class ModelMismatchError(ValueError):
    """The ONNX model and its meta.json disagree (item count, dimension, format)."""


def choose_providers(
    preference: Literal["auto", "cuda", "cpu"] = "auto",
    available: Sequence[str] | None = None,
) -> list[str]:
    """ORT execution providers for ``preference``, most preferred first.

    >>> choose_providers("auto", available=["CUDAExecutionProvider", "CPUExecutionProvider"])
    ['CUDAExecutionProvider', 'CPUExecutionProvider']
    >>> choose_providers("auto", available=["CPUExecutionProvider"])
    ['CPUExecutionProvider']
    >>> choose_providers("cpu", available=["CUDAExecutionProvider", "CPUExecutionProvider"])
    ['CPUExecutionProvider']
    """
    if preference not in ("auto", "cuda", "cpu"):
        raise ValueError(f"provider must be 'auto', 'cuda' or 'cpu', got {preference!r}")
    available = list(ort.get_available_providers() if available is None else available)
    has_cuda = CUDA in available
    if preference == "cuda" and not has_cuda:
        raise ProviderUnavailableError(
            "scoring.provider = 'cuda' but onnxruntime offers only "
            f"{', '.join(available) or 'nothing'}: install onnxruntime-gpu (pip uninstall "
            "onnxruntime && pip install 'streamrec[gpu]') with a matching CUDA/cuDNN, or set "
            "scoring.provider = 'auto' / 'cpu'"
        )
    providers = [CUDA, CPU] if has_cuda and preference != "cpu" else [CPU]
    log.info("scoring provider preference %r -> %s (available: %s)", preference, providers, available)
    return providers


def check_finite_weights(model_bytes: bytes, version: str | None) -> None:
    """Refuse a graph whose weights hold NaN or Inf: they would spread into every score."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load_from_string(model_bytes).graph
    for init in graph.initializer:
        values = numpy_helper.to_array(init)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            bad = int(np.count_nonzero(~np.isfinite(values)))
            raise ModelMismatchError(f"model {version}: {bad} non-finite (NaN/Inf) weights in {init.name}")


def check_servable(registry: Any, version: str, expected_dim: int) -> None:
    """Run every check a reader makes before it serves ``version`` (sha256 of the files, the
    ONNX graph against meta.json, NaN / Inf weights, the item table and the learner's dimension),
    so that an operator's ``promote`` / ``rollback`` refuses what the stream would refuse to load;
    raises :class:`ModelMismatchError` or :class:`model.registry.CorruptModelError`."""
    from streamrec.model.item_table import load_item_table

    data, meta = registry.load(version)
    ScoringModel.from_bytes(data, meta, providers=[CPU])
    load_item_table(registry, version, expected_dim=expected_dim)


class ScoringModel:
    """One loaded model version: ORT session + ``item_ids`` (index -> id)."""

    def __init__(
        self,
        session: ort.InferenceSession,
        item_ids: list[str],
        version: str | None = None,
        meta: dict[str, Any] | None = None,
    ):
        self.session = session
        self.item_ids = list(item_ids)
        self.index = {item_id: i for i, item_id in enumerate(self.item_ids)}
        self.version = version
        self.meta = dict(meta or {})
        self.providers = session.get_providers()
        shape = session.get_inputs()[0].shape
        self.dim = int(shape[1])
        props = session.get_modelmeta().custom_metadata_map
        if props.get("format") != FORMAT:
            raise ModelMismatchError(f"model {version}: format {props.get('format')!r}, expected {FORMAT!r}")
        if int(props.get("item_count", -1)) != len(self.item_ids):
            raise ModelMismatchError(
                f"model {version}: graph has {props.get('item_count')} items, meta.json lists "
                f"{len(self.item_ids)} item_ids"
            )
        if "dim" in self.meta and int(self.meta["dim"]) != self.dim:
            raise ModelMismatchError(f"model {version}: graph dim {self.dim}, meta.json dim {self.meta['dim']}")

    @property
    def item_count(self) -> int:
        return len(self.item_ids)

    @property
    def provider(self) -> str:
        """The provider the session actually runs on first (CUDA may have fallen back to CPU)."""
        return self.providers[0]

    @classmethod
    def from_bytes(
        cls,
        model_bytes: bytes,
        meta: dict[str, Any],
        providers: Sequence[str] | None = None,
        session_options: ort.SessionOptions | None = None,
    ) -> "ScoringModel":
        """Load ``model_bytes`` (already verified) with ``meta`` from the registry.

        ``providers`` defaults to ``choose_providers("auto")``.
        """
        providers = list(providers) if providers is not None else choose_providers("auto")
        check_finite_weights(model_bytes, meta.get("version"))
        session = ort.InferenceSession(model_bytes, sess_options=session_options, providers=providers)
        model = cls(session, meta["item_ids"], meta.get("version"), meta)
        if CUDA in providers and model.provider != CUDA:
            log.warning("model %s: CUDA requested but the session runs on %s", model.version, model.provider)
        log.info("model %s loaded: %d items, dim %d, provider %s",
                 model.version, model.item_count, model.dim, model.provider)
        return model

    @classmethod
    def from_registry(
        cls,
        registry: Any,
        version: str | None = None,
        providers: Sequence[str] | None = None,
        session_options: ort.SessionOptions | None = None,
    ) -> "ScoringModel":
        """Load ``version`` (default: CURRENT) from a :class:`model.registry.Registry`, sha-checked."""
        if version is None:
            version = registry.current()
            if version is None:
                raise LookupError(f"registry {registry.root} has no promoted model yet")
        data, meta = registry.load(version)
        return cls.from_bytes(data, meta, providers, session_options)

    def raw_topk(self, user_vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The graph's outputs: ``(scores [B, min(k, N)], indices [B, min(k, N)])``."""
        users = np.ascontiguousarray(user_vectors, dtype=np.float32)
        if users.ndim == 1:
            users = users[None, :]
        if users.ndim != 2 or users.shape[1] != self.dim:
            raise ValueError(f"user_vectors must be [B, {self.dim}], got shape {users.shape}")
        kk = max(0, min(int(k), self.item_count))
        if users.shape[0] == 0 or kk == 0:
            return np.zeros((users.shape[0], 0), np.float32), np.zeros((users.shape[0], 0), np.int64)
        scores, indices = self.session.run(
            [OUTPUT_SCORES, OUTPUT_INDICES],
            {INPUT_USERS: users, INPUT_K: np.array([kk], dtype=np.int64)},
        )
        return scores, indices

    def topk(
        self,
        user_vectors: np.ndarray,
        k: int,
        exclude: Sequence[Iterable[str] | None] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Top ``k`` ``(item_id, score)`` per user, best first, without each row's excluded ids.

        One ORT call per batch, fetching ``k + max_b |exclude_b ∩ items|`` so that every row
        still has ``k`` items after filtering (fewer only if ``N - |exclude_b| < k``).
        """
        users = np.asarray(user_vectors)
        if users.ndim == 1:
            users = users[None, :]
        b = users.shape[0]
        if exclude is not None and len(exclude) != b:
            raise ValueError(f"exclude has {len(exclude)} entries for {b} users")
        if k <= 0 or b == 0:
            return [[] for _ in range(b)]
        excluded: list[set[int]] = []
        for ex in exclude if exclude is not None else [None] * b:
            excluded.append({self.index[i] for i in ex if i in self.index} if ex else set())
        fetch = int(k) + max((len(e) for e in excluded), default=0)
        scores, indices = self.raw_topk(users, fetch)
        out: list[list[tuple[str, float]]] = []
        ids = self.item_ids
        for row_scores, row_idx, ex in zip(scores.tolist(), indices.tolist(), excluded):
            row: list[tuple[str, float]] = []
            for s, i in zip(row_scores, row_idx):
                if i in ex:
                    continue
                row.append((ids[i], s))
                if len(row) == k:
                    break
            out.append(row)
        return out


class LiveScorer:
    """onnxruntime over a learning shard's live item table (:func:`build_live_scoring_model`).

    One session per shard, built once; each call passes the item tensors, so a changed table
    needs no new session (on CUDA, onnxruntime copies them to the device per call).

    >>> scorer = LiveScorer(2, providers=[CPU])
    >>> items = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    >>> s, idx = scorer.topk(np.array([[1.0, 0.5]], dtype=np.float32), items, np.zeros(3, np.float32), 2)
    >>> idx.tolist(), s.tolist()
    ([[2, 0]], [[1.5, 1.0]])
    """

    def __init__(self, dim: int, providers: Sequence[str] | None = None, threads: int = 1):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.providers = list(providers) if providers is not None else choose_providers("auto")
        self.dim = int(dim)
        self.session = ort.InferenceSession(build_live_scoring_model(self.dim).SerializeToString(),
                                            sess_options=options, providers=self.providers)

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def topk(self, users: np.ndarray, item_vectors: np.ndarray, item_offset: np.ndarray,
             k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(scores [B, k'], indices [B, k'])`` with ``k' = min(k, N)``, best first."""
        users = np.ascontiguousarray(users, dtype=np.float32)
        kk = max(0, min(int(k), int(item_vectors.shape[0])))
        if users.shape[0] == 0 or kk == 0:
            return np.zeros((users.shape[0], 0), np.float32), np.zeros((users.shape[0], 0), np.int64)
        return tuple(self.session.run([OUTPUT_SCORES, OUTPUT_INDICES], {
            INPUT_USERS: users,
            INPUT_ITEMS: np.ascontiguousarray(item_vectors, dtype=np.float32),
            INPUT_OFFSET: np.ascontiguousarray(item_offset, dtype=np.float32),
            INPUT_K: np.array([kk], dtype=np.int64),
        }))
