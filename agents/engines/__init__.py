"""Reasoning engines: one interface, an offline playbook engine and an OpenAI-compatible one."""
