"""``python -m fraudstream`` runs the ``fraudstream`` command."""

from fraudstream.cli import main

main()
