"""The planner agent: goals in, validated plans and dispatched tasks out (see ``agent``)."""
