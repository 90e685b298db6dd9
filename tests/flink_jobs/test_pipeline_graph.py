"""The pipeline job's graph as Flink builds it (no job runs): which operators share a task.

A sink chained to the shard learner commits its transactions in the learner's task thread, after
the Python micro-batch in progress: the recommendations were committed a median 63 ms (p99 528 ms)
after each checkpoint completed, the other sinks 5 ms after (docs/hot-path.md). The learner's
sinks therefore run in a task of their own."""

from __future__ import annotations

from streamrec.flink_jobs import pipeline
from streamrec.flink_jobs.env import build_runtime


def job_vertices(cfg) -> list[str]:
    """The names of the pipeline's job vertices (one per task: a chain of operators)."""
    rt = build_runtime(cfg, pipeline.JOB_NAME)
    pipeline.build(rt, cfg, bounded=False).attach_as_datastream()
    stream_graph = rt.env._generate_stream_graph(clear_transformations=True)
    return [vertex.getName() for vertex in stream_graph.getJobGraph().getVerticesAsArray()]


def test_the_learners_sinks_run_in_their_own_task(cfg):
    vertices = job_vertices(cfg)
    learner = [v for v in vertices if "ShardLearner" in v]
    assert len(learner) == 1, vertices
    assert "_sink" not in learner[0], learner[0]
    for sink in ("recommendations_sink", "model_items_sink", "model_users_sink"):
        holders = [v for v in vertices if sink in v]
        assert len(holders) == 1 and "ShardLearner" not in holders[0], (sink, vertices)
    # all three in one task: one hop after the learner, not three
    assert len({v for v in vertices if "recommendations_sink" in v or "model_items_sink" in v
                or "model_users_sink" in v}) == 1, vertices
