"""Event producers of fraudstream: simulator, file producer, recorder and replayer.

The demo feed is :func:`producers.stream.stream_simulation`; the click
commands (``simulate``, ``produce``, ``record``, ``replay``) are in
:data:`producers.cli.COMMANDS`.
"""
