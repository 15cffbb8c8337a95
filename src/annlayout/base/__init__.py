"""The base layer: errors named by condition, defaults, optional extras, version, malloc arenas. Imports nothing of annlayout."""
