"""Evaluation of fraudstream's detection quality (tooling beside the service).

Imports :mod:`fraudstream.service` and :mod:`fraudstream.producers`; nothing in
the service imports it.
"""
