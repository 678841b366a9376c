"""Typed tools: the registry, the base definitions, and the shipped tool sets."""
