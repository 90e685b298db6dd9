# The two commands a newcomer needs:  make demo   and   make test
# Both set up everything first, idempotently: a virtualenv in .venv, the pinned packages in ONE
# pip resolver run, the Kafka broker and Flink Kafka connector jars (Maven, sha256-locked) and
# ML-100k (sha256-checked, never committed).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
PYTEST_ARGS ?=

.PHONY: setup demo test test-fast test-faults bench clean-state help

help:
	@echo "make demo   - run the whole pipeline on ML-100k with the embedded Kafka broker and Flink mini-cluster"
	@echo "make test   - run the test suite (includes slow end-to-end tests)"
	@echo "make bench  - run the benchmarks, results in bench/results/"
	@echo "make test-faults - the heavy fault-injection variants (kill -9 on 30k events, ...)"

$(STAMP): pyproject.toml constraints.txt
	@command -v java >/dev/null 2>&1 || { echo "Java was not found: streamrec runs Apache Flink and Apache Kafka, which need a Java 17 JDK (e.g. apt-get install openjdk-17-jdk-headless)."; exit 1; }
	@command -v javac >/dev/null 2>&1 || test -x "$$(dirname "$$(readlink -f "$$(command -v java)")")/javac" || { echo "javac was not found: streamrec compiles its validation UDF (udfs/jvm) at set-up and needs a Java 17 JDK, not only a runtime (e.g. apt-get install openjdk-17-jdk-headless)."; exit 1; }
	@command -v mvn >/dev/null 2>&1 || { echo "Maven (mvn) was not found: streamrec fetches the Kafka broker and the Flink Kafka connector from Maven Central with it (e.g. apt-get install maven)."; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || { echo "streamrec needs Python 3.11 (PyFlink 2.3 wheels); found $$($(PYTHON) --version)."; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python -m pip check
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)
	$(BIN)/streamrec setup

demo: setup
	$(BIN)/streamrec demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-faults: setup
	$(BIN)/python -m pytest -m faults -v $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

# The latency phase's checkpoint interval: a read_committed reader waits for the checkpoint that
# commits the sinks (the job's own default, flink.checkpoint_interval_ms, is 5 s).
LATENCY_CHECKPOINT_MS ?= 300

bench: setup
	$(BIN)/streamrec bench --latency-checkpoint-ms $(LATENCY_CHECKPOINT_MS)

clean-state:
	-$(BIN)/streamrec down
	rm -rf .streamrec/kafka .streamrec/checkpoints .streamrec/registry .streamrec/savepoints
