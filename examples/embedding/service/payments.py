"""A stand-in for the host application's own code."""

from __future__ import annotations


def describe(amount: float, currency: str = "EUR") -> str:
    """How the host application talks about a payment.

    >>> describe(12.5)
    '12.50 EUR'
    """
    return f"{amount:.2f} {currency}"
