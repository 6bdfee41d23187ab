"""Sizes in bytes as people write them: the one parser of ember's command
line (``--default-pool-size``, ``--inf-pool-size``).

``parse_size("1G") == 1 << 30``.  A size is a whole or decimal number and
an optional binary suffix: ``K``, ``M``, ``G``, ``T``, ``P`` (powers of
1024), also written ``KiB``, ``MiB``, ... or ``KB`` ... (the same powers of
1024), any case; a plain number is bytes (``B`` allowed).  Arithmetic is
exact (no float rounding): ``1.5K`` is 1536, ``0.1K`` is refused (not a
whole number of bytes).
"""
import re

__all__ = ["parse_size", "format_size"]

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGTP]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text):
    """The number of bytes ``text`` names (an int > 0); ValueError with a
    message that quotes ``text`` otherwise."""
    if isinstance(text, bool):
        raise ValueError(f"not a size: {text!r}")
    if isinstance(text, int):
        value = text
    else:
        mo = _SIZE.match(str(text))
        if not mo:
            raise ValueError(f"not a size: {text!r} (use bytes or a suffix K, M, G, T, P "
                             f"(powers of 1024, also KiB, MiB, ...), e.g. 64M, 1G, 1.5T)")
        whole, _, frac = mo.group(1).partition(".")
        scaled = int(whole + frac or "0") * _UNITS[mo.group(2).upper()]
        value, rest = divmod(scaled, 10 ** len(frac))
        if rest:
            raise ValueError(f"not a whole number of bytes: {text!r}")
    if value <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return value


def format_size(n):
    """``n`` bytes in the largest unit that divides it exactly (``1G``) or,
    failing that, with one decimal (``1.5G``), for messages."""
    for suffix in ("P", "T", "G", "M", "K"):
        unit = _UNITS[suffix]
        if n >= unit:
            if n % unit == 0:
                return f"{n // unit}{suffix}"
            return f"{n / unit:.1f}{suffix}"
    return f"{n}B"
