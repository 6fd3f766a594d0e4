"""Benchmarks of fraudstream on real Kafka and Redis (tooling beside the service).

Imports :mod:`fraudstream.service`; nothing in the service imports it. Results
are written to ``bench/results/``.
"""
