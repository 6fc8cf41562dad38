"""The workflow's data as package data: the config schema and the shipped grids (workflows/)."""
