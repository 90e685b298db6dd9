"""The registry's CURRENT model, followed as the stream follows it: the same watcher
(:class:`model.registry.CurrentModelWatcher`), the same loader as the job's learner (ONNX session
on the provider ``scoring.provider`` chooses, plus the version's checked item table), so a version
the stream refuses is refused here too and the previous one keeps serving (docs/registry.md).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import onnxruntime as ort

from streamrec.core.config import Config
from streamrec.model.item_table import ItemTable, load_item_table
from streamrec.model.registry import CurrentModelWatcher, Registry
from streamrec.model.scoring import ScoringModel, choose_providers


class NoModelError(LookupError):
    """Nothing to score with: the registry has no CURRENT yet, or none could be loaded."""


@dataclass(frozen=True)
class LoadedModel:
    scoring: ScoringModel
    items: ItemTable
    #: item ids by descending popularity (the version's items.npz), for users without a list
    popular: tuple[str, ...]


@dataclass(frozen=True)
class Scored:
    version: str
    provider: str
    items: list[tuple[str, float]]
    unknown_candidates: list[str]


class ModelServer:
    def __init__(self, cfg: Config, popular_k: int) -> None:
        paths = cfg.paths_resolved
        self.registry = Registry(paths.registry_dir, log_max_bytes=cfg.exporter.log_max_bytes,
                                 log_keep=cfg.exporter.log_keep)
        self.dim = cfg.learner.dim
        self.providers = choose_providers(cfg.scoring.provider)
        self.threads = cfg.scoring.ort_threads
        self.popular_k = popular_k
        self.watcher: CurrentModelWatcher[LoadedModel] = CurrentModelWatcher(
            self.registry, self._load, interval_s=cfg.scoring.swap_check_interval_s,
            actor=f"serve@{socket.gethostname()}:{os.getpid()}")

    def _load(self, model_bytes: bytes, meta: dict) -> LoadedModel:
        # the job's loader (udfs/learner_core.py): what it refuses is refused here
        options = ort.SessionOptions()
        if self.threads:
            options.intra_op_num_threads = self.threads
        table = load_item_table(self.registry, meta["version"], expected_dim=self.dim)
        scoring = ScoringModel.from_bytes(model_bytes, meta, providers=self.providers, session_options=options)
        return LoadedModel(scoring, table, tuple(table.top_popular(self.popular_k)))

    def start(self) -> None:
        self.watcher.start()

    def stop(self) -> None:
        self.watcher.stop()

    def current(self) -> tuple[str | None, LoadedModel | None]:
        return self.watcher.get()

    def score(self, vector: np.ndarray | None, k: int, exclude: Iterable[str],
              candidates: tuple[str, ...] | None) -> Scored:
        """Top ``k`` of the served model for ``vector`` (None: a user without a vector gets the
        zero vector, i.e. item bias + popularity prior), without ``exclude``, among
        ``candidates`` when given."""
        version, loaded = self.watcher.get()
        if loaded is None:
            why = (f"no model could be loaded: CURRENT is {self.registry.current()}, see the registry's refusals"
                   if self.registry.current() else "the registry has no CURRENT model yet")
            raise NoModelError(why)
        model = loaded.scoring
        users = (np.zeros((1, model.dim), np.float32) if vector is None
                 else np.asarray(vector, np.float32).reshape(1, -1))
        unknown: list[str] = []
        if candidates is None:
            items = model.topk(users, k, [set(exclude)])[0]
        else:
            wanted = set()
            for item in candidates:
                row = model.index.get(item)
                if row is None:
                    unknown.append(item)
                elif item not in exclude:
                    wanted.add(row)
            items = []
            if wanted:  # the whole ranking, filtered: the graph ranks the catalogue only
                scores, rows = model.raw_topk(users, model.item_count)
                for s, row in zip(scores[0].tolist(), rows[0].tolist()):
                    if row in wanted:
                        items.append((model.item_ids[row], s))
                        if len(items) == k:
                            break
        # rounded as the stream's records are (udfs/shard_model.py)
        return Scored(version, model.provider, [(i, round(s, 6)) for i, s in items], unknown)

    def describe(self) -> dict:
        """The registry's versions, CURRENT, the pin, and what this process serves."""
        current, pin = self.registry.current(), self.registry.pinned()
        refused = self.registry.refusals()
        versions = []
        for version in self.registry.list_versions():
            try:
                meta = self.registry.read_meta(version)
            except Exception as exc:  # noqa: BLE001 - a damaged version is listed, not fatal
                versions.append({"version": version, "status": "corrupt", "error": str(exc)})
                continue
            versions.append({"version": version, "status": meta.get("status"),
                             "created_at": meta.get("created_at"), "items": meta.get("item_count"),
                             "dim": meta.get("dim"), "quality": meta.get("quality"),
                             "refused": [e.get("reason") for e in refused.get(version, [])]})
        serving, loaded = self.watcher.get()
        return {"current": current, "pin": pin, "serving": serving,
                "provider": loaded.scoring.provider if loaded else None, "versions": versions}
