"""Shared machinery of every agent: settings, codec use, Kafka transport, telemetry, errors."""
