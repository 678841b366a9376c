"""The worker agent: tasks in, tool calls, results out (see ``agent``)."""
