"""``mesh run evaluator``: the evaluator process."""

from __future__ import annotations

from agents import events as ev
from agents.app import load_app
from agents.engines.select import engine_from_env
from agents.evaluator.agent import Evaluator
from agents.runtime.app import AgentApp
from agents.runtime.consumer import Handler, HandlerSink
from agents.runtime.settings import MeshSettings


def run(settings: MeshSettings, *, concurrency: int = 4) -> int:
    mesh_app = load_app(settings.app)
    engine = engine_from_env(mesh_app.playbooks())
    # The offline engine judges in microseconds: threads would only add hand-offs. A model's
    # judgements wait on the network, so several run at once.
    if engine.name == "offline":
        concurrency = 1
    app = AgentApp.start("evaluator", settings, db_size=concurrency + 1, reads_only=True)
    evaluator = Evaluator(engine=engine, registry=mesh_app.registry(), db=app.db)
    handlers: dict[type[ev.Event], Handler] = {
        ev.TaskCompleted: evaluator.on_outcome,
        ev.TaskFailed: evaluator.on_outcome,
    }
    sink = HandlerSink(
        handlers, concurrency=concurrency, hooks=evaluator, on_failure=evaluator.on_failure
    )
    return app.serve(app.consumer(roles=("results",), sink=sink))
