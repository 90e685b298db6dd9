"""What the jobs and tools run on: the embedded Kafka broker, the standalone Flink cluster, the
Maven-resolved JVM assets, Kafka helpers and the state directories' lineage and run lock."""
