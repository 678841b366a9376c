"""The chaos suite: many goals of every failure scenario on the real stack while agents are
killed and paused, then every promise the mesh makes checked from the ledger, the tools' effects
and the topics.

Run it as ``make chaos`` or ``python -m chaos``; from code::

    from chaos import ChaosConfig, run_chaos

    report = run_chaos(ChaosConfig(goals=40, kill_every=3.0))
    print(report.line())  # the one summary line
    assert report.ok, report.violations
"""

from chaos._run import ChaosConfig, default_out_dir, run_chaos
from chaos._scenarios import SCENARIOS, Effect, End, Scenario, mix
from chaos._verdict import COMPLETION_TARGET, ChaosReport, Observed, Tally, Violation, summarise

__all__ = [
    "COMPLETION_TARGET",
    "SCENARIOS",
    "ChaosConfig",
    "ChaosReport",
    "Effect",
    "End",
    "Observed",
    "Scenario",
    "Tally",
    "Violation",
    "default_out_dir",
    "mix",
    "run_chaos",
    "summarise",
]
