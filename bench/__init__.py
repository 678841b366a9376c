"""Benchmarks: the mesh against the raw Kafka ceiling and against peer orchestrators."""
