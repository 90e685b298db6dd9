"""A running job's progress, one line every few seconds: what `streamrec run` prints while the
pipeline runs (the web UI has the rest).

What a line says comes from outside the job, so it costs the job nothing: the recommendations
committed so far (the topic's read_committed end offsets; transaction markers take offsets too,
hence "about"), the source's lag (events.raw end offsets minus the offsets the job committed
with its last checkpoint, under its lineage's consumer group) and the registry's CURRENT.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

from streamrec.core.config import Config


@dataclass(frozen=True)
class ProgressSample:
    seconds: float  #: since the run started
    recommendations: int | None  #: committed end offsets of the recommendations topic
    lag: int | None  #: events.raw records the job has not committed a checkpoint past
    current: str | None  #: the registry's CURRENT
    pinned: str | None  #: the version CURRENT is pinned to, if any

    def line(self, previous: "ProgressSample | None" = None) -> str:
        """
        >>> a = ProgressSample(15.0, 1_000, 99_000, None, None)
        >>> b = ProgressSample(30.0, 25_000, 75_000, "v000002", None)
        >>> b.line(a)
        '30 s: about 25,000 recommendations committed (1,600/s), source lag 75,000 events, CURRENT v000002'
        >>> ProgressSample(45.0, None, None, "v000002", "v000002").line(b)
        '45 s: recommendations unknown (broker not answering), source lag unknown, CURRENT v000002 (pinned)'
        """
        parts = [f"{self.seconds:.0f} s:"]
        if self.recommendations is None:
            parts.append("recommendations unknown (broker not answering),")
        else:
            rate = ""
            if previous is not None and previous.recommendations is not None and self.seconds > previous.seconds:
                per_s = (self.recommendations - previous.recommendations) / (self.seconds - previous.seconds)
                rate = f" ({per_s:,.0f}/s)"
            parts.append(f"about {self.recommendations:,} recommendations committed{rate},")
        parts.append("source lag unknown," if self.lag is None else f"source lag {self.lag:,} events,")
        model = f"CURRENT {self.current}" if self.current else "no CURRENT model yet"
        if self.pinned:
            model += " (pinned)" if self.pinned == self.current else f" (pinned to {self.pinned})"
        parts.append(model)
        return " ".join(parts)


def sample(cfg: Config, group: str, seconds: float) -> ProgressSample:
    """Read the figures of one progress line (each None where its source does not answer)."""
    from confluent_kafka import TopicPartition

    from streamrec.model.registry import Registry, RegistryError
    from streamrec.runtime import kafka_io

    topics = cfg.kafka.topics
    recommendations = lag = None
    try:
        recommendations = sum(kafka_io.end_offsets(cfg, topics.recommendations, retry_s=0).values())
        ends = kafka_io.end_offsets(cfg, topics.raw, retry_s=0)
        cons = kafka_io.consumer(cfg, group=group)
        try:
            committed = cons.committed([TopicPartition(topics.raw, p) for p in ends], timeout=5)
        finally:
            cons.close()
        lag = sum(max(0, ends[tp.partition] - max(tp.offset, 0)) for tp in committed)
    except Exception:  # noqa: BLE001 - a progress line never stops the run
        pass
    registry = Registry(cfg.paths_resolved.registry_dir)
    try:
        current = registry.current()
        pin = registry.pinned()
    except (OSError, RegistryError, ValueError):
        current, pin = None, None
    return ProgressSample(seconds, recommendations, lag, current, (pin or {}).get("version"))


class RunProgress(threading.Thread):
    """Prints a :class:`ProgressSample` line every ``every_s`` seconds until :meth:`stop`."""

    def __init__(self, cfg: Config, job_name: str, group: str, every_s: float,
                 say: Callable[[str], None] | None = None):
        super().__init__(daemon=True, name=f"{job_name}-progress")
        self.cfg, self.job_name, self.group, self.every_s = cfg, job_name, group, every_s
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.stopped = threading.Event()

    def run(self) -> None:
        started, previous = time.monotonic(), None
        while not self.stopped.wait(self.every_s):
            current = sample(self.cfg, self.group, time.monotonic() - started)
            self.say(f"[{self.job_name}] {current.line(previous)}")
            previous = current

    def stop(self) -> None:
        self.stopped.set()
