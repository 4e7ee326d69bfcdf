"""US-dollar amounts as people and JSON see them: one rule for every message and command.

Text keeps at least cents and as many more digits (to the micro-dollar) as the amount needs,
so a $0.0001 limit never prints as ``$0.00``; JSON carries the amount rounded to the
micro-dollar (6 decimals), never a float's binary noise like ``0.005564999999999995``.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

__all__ = ["MICRO", "money", "money_json"]

MICRO = Decimal("0.000001")
"""The smallest amount shown or stored in JSON: one micro-dollar."""

_CENT = Decimal("0.01")


def _decimal(amount: float | int | Decimal) -> Decimal:
    """``amount`` as a Decimal by its shortest text (``0.1`` stays ``0.1``)."""
    return amount if isinstance(amount, Decimal) else Decimal(repr(float(amount)))


def money(amount: float | int | Decimal | None, *, none: str = "-") -> str:
    """``$1.50``, ``$0.0047``, ``$0.005565``, ``-$2.00``: cents at least, then the digits the
    amount needs up to the micro-dollar; below a micro-dollar but not zero, ``<$0.000001``."""
    if amount is None:
        return none
    value = _decimal(amount)
    if not value.is_finite():
        return f"${value}"
    rounded = value.quantize(MICRO, rounding=ROUND_HALF_EVEN)
    if rounded == 0 and value != 0:
        return ("-" if value < 0 else "") + f"<${MICRO}"
    sign = "-" if rounded < 0 else ""
    magnitude = abs(rounded)
    text = f"{magnitude:f}".rstrip("0")
    if magnitude == magnitude.quantize(_CENT):
        text = f"{magnitude.quantize(_CENT):f}"
    whole, _, fraction = text.partition(".")
    return f"{sign}${int(whole):,}.{fraction.ljust(2, '0')}"


def money_json(amount: float | int | Decimal | None) -> float | None:
    """``amount`` for JSON: US dollars rounded to the micro-dollar (``0.005565``)."""
    if amount is None:
        return None
    return float(_decimal(amount).quantize(MICRO, rounding=ROUND_HALF_EVEN))
