"""Comparison studies: many models, one protocol, one report."""
