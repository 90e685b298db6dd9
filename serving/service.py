"""The service without HTTP: the store (resumed from its snapshot), the topic reader, the model,
and the answers the endpoints give.

A user without a list of their own gets the **popularity list**, labelled ``"source":
"popularity"``: the served model version's item popularity (its ``items.npz``: the learner's
decayed counts, the same numbers the stream's popularity path uses) when a version is loaded,
else the items in the most current lists of the store (what the stream has been recommending).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from streamrec.core.config import Config
from streamrec.serving.materializer import Materializer, source_of
from streamrec.serving.models import ModelServer, Scored
from streamrec.serving.requests import Limits, ScoreRequest
from streamrec.serving.snapshot import SnapshotError, read_snapshot
from streamrec.serving.store import ServingStore

log = logging.getLogger(__name__)


def snapshot_path(cfg: Config) -> Path:
    path = cfg.serving.snapshot_file
    return path if path.is_absolute() else cfg.paths_resolved.state_dir / path


def open_store(cfg: Config, path: Path) -> tuple[ServingStore, str]:
    """The store of the snapshot at ``path`` if it is of these topics, else an empty one; and a
    sentence saying which."""
    empty = ServingStore(width=cfg.scoring.top_k, dim=cfg.learner.dim)
    if not path.exists():
        return empty, f"no snapshot at {path}: reading the topics from the beginning"
    try:
        store, source = read_snapshot(path)
    except SnapshotError as exc:
        return empty, f"snapshot ignored ({exc}): reading the topics from the beginning"
    if source != source_of(cfg):
        return empty, (f"snapshot {path} is of {source}, not of {source_of(cfg)}: reading the topics "
                       "from the beginning")
    offsets = {t: sum(parts.values()) for t, parts in store.offsets.items()}
    return store, (f"resumed from snapshot {path}: {store.lists} users with a list, {store.vectors} "
                   f"with a vector, offsets read so far {offsets}")


class ServingService:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.limits = Limits.of(cfg)
        self.snapshot_path = snapshot_path(cfg)
        self.store, self.opened = open_store(cfg, self.snapshot_path)
        log.warning("%s", self.opened)
        self.materializer = Materializer(cfg, self.store, self.snapshot_path)
        self.models = ModelServer(cfg, popular_k=cfg.serving.max_k)
        self._popular_cache: tuple[float, list[str]] = (float("-inf"), [])

    def start(self) -> None:
        self.materializer.start()
        self.models.start()

    def stop(self) -> None:
        self.models.stop()
        self.materializer.stop()

    # -- answers -------------------------------------------------------------------------------
    def recommendations(self, user_id: str, k: int) -> dict:
        now_ms = int(time.time() * 1000)
        found = self.store.lookup(user_id, k)
        if found is not None:
            found["age_ms"] = now_ms - found["emitted_ts"]
            found["source"] = "stream"
            return found
        items, basis, version = self.popular(k)
        return {"user_id": user_id, "items": [{"item_id": i, "score": None} for i in items],
                "model_version": version, "strategy": "popularity", "cold_start": True,
                "user_events": 0, "event_ts": None, "emitted_ts": None, "age_ms": None,
                "source": "popularity", "popularity_basis": basis}

    def popular(self, k: int) -> tuple[list[str], str, str | None]:
        """(item ids, what they are ranked by, the model version whose popularity it is)."""
        version, loaded = self.models.current()
        if loaded is not None:
            return list(loaded.popular[:k]), f"item popularity of model {version} (items.npz)", version
        cached_at, items = self._popular_cache
        if time.monotonic() - cached_at > 1.0 or len(items) < k:  # a sort per second, not per request
            items = self.store.popular_by_recommendations(self.limits.max_k)
            self._popular_cache = (time.monotonic(), items)
        return items[:k], "items in the most current recommendation lists (no model loaded)", None

    def score(self, req: ScoreRequest) -> dict:
        vector = self.store.vector(req.user_id)
        scored: Scored = self.models.score(vector, req.k, req.exclude, req.candidates)
        out = {"user_id": req.user_id, "items": [{"item_id": i, "score": s} for i, s in scored.items],
               "model_version": scored.version, "provider": scored.provider, "cold_start": vector is None}
        if req.candidates is not None:
            out["unknown_candidates"] = scored.unknown_candidates
        return out
