"""The benchmarks (``streamrec bench``; BENCHMARKS.md has what they measured).

The ML-100k benchmark: :mod:`.run_bench` runs its phases in order (``python -m streamrec.bench``
is its command line); :mod:`.phases` measures each, on the topics and jobs of :mod:`.jobs`, watched
by :mod:`.monitor` (Flink's REST API) and :mod:`.probes` (``/proc``); :mod:`.stats` does the
arithmetic and :mod:`.report` writes the result and its table, :mod:`.plots` its figure. In
process, without Flink: :mod:`.scale` (costs as the catalogue and id space grow), :mod:`.sharded`
(the recall of several shards), :mod:`.synthetic` (the second stream), :mod:`.river_peer` (the
peer), :mod:`.learner_choice` (the learner's sweep); :mod:`.connector_check` tries a Kafka
connector release against the exactly-once tests.
"""
