"""The host application's own package, called ``service`` like many applications' are.

fraudstream's code lives in ``fraudstream.service``: importing ``fraudstream``
never shadows or is shadowed by a top-level ``service`` package.
"""

NAME = "payments gateway"
