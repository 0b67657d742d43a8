"""Evaluation: metrics, benchmark runs and reports."""
