"""Redaction of personal data from text: what the query log stores (`HYBRID_QUERY_LOG=redacted`)
and, with `HYBRID_INGEST_REDACT`, what documents store.

The built-in redactor replaces, in this order: email addresses (`[email]`), IBANs
(`[iban]`), card numbers (13 to 19 digits, spaced or not, that pass the Luhn check:
`[card]`), US social security numbers (`[id]`), phone numbers (7 to 15 digits with the usual
separators or a leading `+`, dates excepted: `[phone]`) and any other run of 6 or more digits
(`[number]`): order, account, customer and national id numbers. Years, prices and versions
stay. It is a net for the common cases, not a guarantee; `HYBRID_REDACTOR=module:function`
puts any function from text to text in its place.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable

Redactor = Callable[[str], str]

# Every pattern is bounded and starts only where a run begins, so that no text, however long
# or hostile, costs more than linear time (an unbounded `[\w.]+@` is quadratic on a long word).
EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63}){1,8}")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
PHONE = re.compile(r"(?<![\w+.()-])\+?\(?\d[\d ().-]{5,24}\d(?![\w.])")
DATE = re.compile(r"\d{4}[./-]\d{1,2}[./-]\d{1,2}|\d{1,2}[./-]\d{1,2}[./-]\d{2,4}")
LONG_NUMBER = re.compile(r"(?<!\d)\d{6,}(?!\d)")


def builtin(text: str) -> str:
    """`text` with the personal data the built-in rules find replaced by their kind."""
    text = EMAIL.sub("[email]", text)
    text = IBAN.sub("[iban]", text)
    text = CARD.sub(lambda found: "[card]" if _luhn(found[0]) else found[0], text)
    text = SSN.sub("[id]", text)
    text = PHONE.sub(lambda found: "[phone]" if _is_phone(found[0]) else found[0], text)
    return LONG_NUMBER.sub("[number]", text)


def load(spec: str) -> Redactor:
    """The redactor `HYBRID_REDACTOR` names (`module:function`), or the built-in one."""
    if not spec:
        return builtin
    module, _, name = spec.partition(":")
    function: Redactor = getattr(importlib.import_module(module), name)
    return function


def _is_phone(text: str) -> bool:
    digits = sum(ch.isdigit() for ch in text)
    # A bare run of digits is left to LONG_NUMBER; a date is no phone number.
    return 7 <= digits <= 15 and not text.isdigit() and DATE.fullmatch(text.strip()) is None


def _luhn(number: str) -> bool:
    digits = [int(ch) for ch in number if ch.isdigit()]
    total = 0
    for i, digit in enumerate(reversed(digits)):
        if i % 2:
            digit = digit * 2 - 9 if digit > 4 else digit * 2
        total += digit
    return total % 10 == 0
