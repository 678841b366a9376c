"""The agent mesh: planner, workers and evaluator as independent Kafka consumers."""

__version__ = "0.1.0"
