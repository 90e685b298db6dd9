#!/usr/bin/env bash
# Start a Flink JobManager or TaskManager from the PyFlink wheel with a config built from
# $FLINK_PROPERTIES (one "key: value" per line, like the official Flink image's variable).
# Usage: flink-entrypoint.sh jobmanager|taskmanager
set -euo pipefail
FLINK_HOME=$(python -c 'import os, pyflink; print(os.path.dirname(pyflink.__file__))')
CONF=/tmp/flink-conf
mkdir -p "$CONF"
cp "$FLINK_HOME"/conf/log4j*.properties "$FLINK_HOME"/conf/logback*.xml "$CONF"/
{
  # keep the JVM module flags of the stock config; everything else comes from FLINK_PROPERTIES
  grep -E '^\s*all: --add' "$FLINK_HOME/conf/config.yaml" | sed 's/^\s*all:/env.java.opts.all:/'
  printf '%b\n' "${FLINK_PROPERTIES:-}"
} > "$CONF/config.yaml"
export FLINK_CONF_DIR="$CONF"
exec "$FLINK_HOME/bin/$1.sh" start-foreground
