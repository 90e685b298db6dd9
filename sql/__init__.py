"""The Flink SQL of the jobs (package data: flink_jobs/env.py reads these files by name)."""
