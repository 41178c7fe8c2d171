"""Catalog identifiers in their own columns: GTIN (EAN/UPC/ITF-14) and manufacturer part number (MPN).

A GTIN is checked (8, 12, 13 or 14 digits; GS1 mod-10 check digit) and normalised to its 14-digit form
(left-padded with zeros: UPC-A ``036000291452`` and EAN-13 ``0036000291452`` are the same GTIN). Equal
valid GTINs are near-certain evidence of a match, different valid GTINs of a non-match; an invalid value
is no evidence at all (and :func:`gtin_problem` says why). An MPN joins the identifier channel with the
normalisation of model numbers found in titles (``features/lexical.py``).
"""

from __future__ import annotations

import math
import re
import unicodedata
from decimal import Decimal
from typing import Any

from .lexical import identifiers

GTIN_LENGTHS = (8, 12, 13, 14)
_SEPARATORS = re.compile(r"[\s\-.]+")
_NOT_ALNUM = re.compile(r"[^0-9a-z]+")


def gtin_check_digit_ok(digits: str) -> bool:
    """GS1 mod-10: weights 3,1,3,... from the digit left of the check digit; the sum is a multiple of 10."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits[:-1])))
    return (10 - total % 10) % 10 == int(digits[-1])


def _digits_of(value: Any) -> tuple[str | None, str | None]:
    """(digit string, problem). Integers (a numeric column has lost leading zeros) are zero-padded to 14."""
    if value is None:
        return None, None
    if isinstance(value, bool):
        return None, "not a number"
    if isinstance(value, float | Decimal):
        if not (value.is_finite() if isinstance(value, Decimal) else math.isfinite(value)) or value != int(value):
            return None, "not a whole number"
        value = int(value)
    if isinstance(value, int):
        if value <= 0 or value >= 10**14:
            return None, "wrong length (a GTIN has 8, 12, 13 or 14 digits)"
        return str(value).zfill(14), None
    text = _SEPARATORS.sub("", unicodedata.normalize("NFKC", str(value)))
    if not text:
        return None, None
    if not text.isascii() or not text.isdigit():
        return None, "not digits"
    if len(text) not in GTIN_LENGTHS:
        return None, "wrong length (a GTIN has 8, 12, 13 or 14 digits)"
    return text, None


def gtin_problem(value: Any) -> str | None:
    """Why ``value`` is not a valid GTIN (``None``: valid, or empty/NULL)."""
    digits, problem = _digits_of(value)
    if problem or digits is None:
        return problem
    if int(digits) == 0:
        return "all zeros"
    if not gtin_check_digit_ok(digits):
        return "bad check digit"
    return None


def normalize_gtin(value: Any) -> str | None:
    """The 14-digit form of a valid GTIN-8/12/13/14 (spaces and hyphens ignored), else ``None``."""
    digits, problem = _digits_of(value)
    if problem or digits is None or int(digits) == 0 or not gtin_check_digit_ok(digits):
        return None
    return digits.zfill(14)


def normalize_mpn(value: Any) -> str | None:
    """The MPN as stored in the index: trimmed text (``None`` when empty)."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def mpn_identifiers(mpn: str | None) -> list[str]:
    """Identifier tokens of an MPN column value: the whole value in the normalisation of title model numbers
    (NFKC, lower-case, separators dropped: ``KDL-40V4100`` → ``kdl40v4100``, as in a title) and the
    identifiers of its parts (``KDL 40V4100`` also gives ``40v4100``). Values without a digit or shorter
    than 3 characters (``N/A``, ``none``, ``-``) are placeholders, not part numbers."""
    if not mpn:
        return []
    whole = _NOT_ALNUM.sub("", unicodedata.normalize("NFKC", mpn).lower())
    out = [whole] if len(whole) >= 3 and any(c.isdigit() for c in whole) else []
    return list(dict.fromkeys(out + identifiers(mpn)))


def gtin_evidence(a: list[str | None], b: list[str | None]) -> list[int]:
    """Per pair: 1 equal valid GTINs, -1 different valid GTINs, 0 a side has none."""
    return [0 if not x or not y else 1 if x == y else -1 for x, y in zip(a, b, strict=True)]
