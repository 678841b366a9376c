"""The evaluator agent: task outcomes in, verdicts out (see ``agent``)."""
