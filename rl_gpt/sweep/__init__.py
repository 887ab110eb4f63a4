"""Prompt sweeps (G.pt's desired-versus-observed protocol), baselines, novelty and reports."""
