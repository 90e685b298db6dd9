-- Pass-through: copy events.raw to another topic byte for byte, exactly once.
-- Used to prove the runtime (connector jars, checkpoints, Kafka transactions) end to end.
CREATE TABLE raw_in (
  payload STRING,
  src_partition INT METADATA FROM 'partition' VIRTUAL,
  src_offset BIGINT METADATA FROM 'offset' VIRTUAL
) WITH (
  ${source_options},
  'format' = 'raw'
);

CREATE TABLE passthrough_out (
  payload STRING
) WITH (
  ${sink_options},
  'format' = 'raw'
);

INSERT INTO passthrough_out SELECT payload FROM raw_in;
