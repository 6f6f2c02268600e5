"""Reusable config presets (model sizes, mesh, optimizer, data) that experiment files compose."""
