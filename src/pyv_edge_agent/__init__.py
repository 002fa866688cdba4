"""Pyvorin edge agent components."""
