"""Benchmark namespace; see jobs.py."""
