"""The exporter's user snapshot, attached to every registry version as ``users.npz``.

The served model needs only items; the user vectors of the same cut are what
``streamrec run --from-version V`` puts back into the learner, so that learner and model go back
together (docs/registry.md, "Learner rollback"). A plain ``numpy.savez`` archive (no pickles),
sha256-checked like every file of a version:

============  =================  ==================================================
``user_ids``  str ``[U]``        sorted ascending
``vectors``   float32 ``[U, D]`` the latest ``model.users`` vector of each user (core.records.USER_RECORD)
============  =================  ==================================================

>>> import numpy as np
>>> t = UserTable.of({"b": np.ones(2, np.float32), "a": np.zeros(2, np.float32)}, dim=2)
>>> back = UserTable.from_npz_bytes(t.to_npz_bytes())
>>> back.user_ids.tolist(), back.vectors.tolist(), back.dim
(['a', 'b'], [[0.0, 0.0], [1.0, 1.0]], 2)
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

#: The attachment's file name in a registry version directory.
USERS_ATTACHMENT = "users.npz"


@dataclass(frozen=True)
class UserTable:
    """User vectors of one exported version, sorted by user id."""

    user_ids: np.ndarray  # str [U]
    vectors: np.ndarray   # float32 [U, D]

    def __post_init__(self) -> None:
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.user_ids):
            raise ValueError(f"vectors has shape {self.vectors.shape}, expected [{len(self.user_ids)}, D]")

    @classmethod
    def of(cls, users: Mapping[str, np.ndarray], dim: int) -> "UserTable":
        ids = sorted(users)
        vectors = np.stack([np.asarray(users[u], np.float32) for u in ids]) if ids else np.zeros((0, dim), np.float32)
        return cls(np.asarray(ids, dtype=str), vectors)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def __len__(self) -> int:
        return len(self.user_ids)

    def as_dict(self) -> dict[str, np.ndarray]:
        return {str(u): self.vectors[n] for n, u in enumerate(self.user_ids.tolist())}

    def to_npz_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, user_ids=np.asarray(self.user_ids, dtype=str),
                 vectors=np.ascontiguousarray(self.vectors, dtype=np.float32))
        return buf.getvalue()

    @classmethod
    def from_npz_bytes(cls, data: bytes) -> "UserTable":
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            missing = [f for f in ("user_ids", "vectors") if f not in npz.files]
            if missing:
                raise ValueError(f"{USERS_ATTACHMENT} lacks {', '.join(missing)}")
            ids = npz["user_ids"]
            if len(ids) and ids.dtype.kind != "U":
                raise ValueError(f"{USERS_ATTACHMENT}: user_ids has dtype {ids.dtype}, expected str")
            return cls(ids.astype(str), npz["vectors"].astype(np.float32, copy=False))


def load_user_table(registry: Any, version: str, expected_dim: int) -> UserTable:
    """The ``users.npz`` of ``version``, sha256-checked, of the learner's dimension and finite
    (:class:`model.registry.CorruptModelError` otherwise); a version exported before user
    snapshots were attached has none (:class:`model.registry.RegistryError`)."""
    from streamrec.model.registry import CorruptModelError, RegistryError

    meta = registry.read_meta(version)
    if USERS_ATTACHMENT not in (meta.get("attachments") or {}):
        raise RegistryError(f"model {version} has no {USERS_ATTACHMENT} (exported before user snapshots "
                            "were attached): the learner cannot be rolled back to it")
    data = registry.load_attachment(version, USERS_ATTACHMENT)
    try:
        table = UserTable.from_npz_bytes(data)
    except (ValueError, OSError, KeyError) as exc:
        raise CorruptModelError(f"model {version}: {USERS_ATTACHMENT} is unreadable: {exc}") from None
    if len(table) and table.dim != expected_dim:
        raise CorruptModelError(f"model {version}: {USERS_ATTACHMENT} dim {table.dim}, the learner's is {expected_dim}")
    bad = int(np.count_nonzero(~np.isfinite(table.vectors)))
    if bad:
        raise CorruptModelError(f"model {version}: {bad} non-finite (NaN/Inf) values in {USERS_ATTACHMENT}")
    return table
