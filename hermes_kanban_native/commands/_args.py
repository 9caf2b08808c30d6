"""Command-line number arguments, validated the same way by every command:
an ``argparse`` type that names the offending text and the allowed range."""
from __future__ import annotations

import argparse
import math


def number(kind=float, *, low=None, high=None, low_open=False, unit=""):
    """number(kind=float, *, low=None, high=None, low_open=False, unit="")

    An argparse ``type=`` for a ``kind`` (int or float) between ``low`` and
    ``high`` (inclusive; ``low_open`` excludes ``low``), either bound
    optional.  NaN and infinities are refused.  ``unit`` ("seconds") only
    words the messages.
    """
    noun = f"a number of {unit}" if unit else ("a whole number" if kind is int else "a number")
    suffix = f" {unit}" if unit else ""

    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"not {noun}: {text!r}")
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and value > high
        if too_low or too_high:
            if low is not None and high is not None:
                wanted = f"between {low} and {high}{suffix}"
            elif low is not None:
                wanted = f"{'more than' if low_open else 'at least'} {low}{suffix}"
            else:
                wanted = f"at most {high}{suffix}"
            raise argparse.ArgumentTypeError(f"must be {wanted}: {text!r}")
        return value
    parse.__name__ = kind.__name__          # argparse names the type in its errors
    return parse
