"""Benchmarks for django-durably. Run ``python -m bench --help``."""
