"""The chaos suite, small: about 40 goals of every scenario on the real stack while an agent is
SIGKILLed or SIGSTOPped every few seconds, then every promise checked. It runs the same code as
``make chaos``; a failure names each broken invariant and the goals that broke it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.runtime.settings import MeshSettings
from chaos import ChaosConfig, ChaosReport, run_chaos

pytestmark = pytest.mark.integration


def _broken(report: ChaosReport) -> str:
    lines = [report.line()]
    lines += [
        f"  {d.goal_id} {d.scenario}: {d.status}; {', '.join(d.violations) or 'did not complete'}; "
        f"live: {', '.join(d.live) or 'nothing'}"
        for d in report.details
        if d.violations or (d.expect == "completed" and d.status != "completed")
    ]
    return "\n".join(lines)


@pytest.mark.timeout(1200)
def test_every_goal_completes_or_is_rolled_back_whatever_fails(
    stack_settings: MeshSettings, tmp_path: Path
) -> None:
    # A slow tool's goal needs three whole calls past their timeout between faults: on a loaded
    # machine that takes minutes, so the bound is wide; a goal that never ends still fails it.
    config = ChaosConfig(goals=40, kill_every=3.0, seed=2026, out_dir=tmp_path, timeout=780.0)
    report = run_chaos(config, settings=stack_settings)
    assert report.goals == 40
    assert report.tally.kills + report.tally.pauses > 0, "no fault struck"
    if not report.ok:
        pytest.fail(_broken(report))
