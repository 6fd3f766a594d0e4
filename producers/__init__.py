"""Event producers of fraudstream: simulator, file producer, recorder and replayer.

The demo feed is :func:`fraudstream.producers.stream.stream_simulation`; the click
commands (``simulate``, ``produce``, ``record``, ``replay``) are in
:data:`fraudstream.producers.cli.COMMANDS`.
"""
