"""Personal data in free text: e-mail, phone, payment card, IBAN, US SSN, Polish PESEL.

Numbers are only reported when their check digits hold (Luhn, mod-97, PESEL weights) or, for
SSNs, when they fall in an issuable range, so order ids, dates and product codes that merely look
like numbers stay quiet. Phones are matched by `phonenumbers` and must be valid for their region:
international numbers in any country's format, national ones only in `phone_region`'s.
Not covered: names and postal addresses (no offline NER model is shipped with the project), and
SSNs written without separators (nine bare digits are too often something else).
"""

from __future__ import annotations

import datetime
import re
from typing import NamedTuple

import phonenumbers


class Span(NamedTuple):
  start: int
  end: int
  type: str  # "email", "phone", "card", "iban", "ssn", "pesel", or a secret's type
  detail: str


EMAIL = re.compile(
    r"(?<![\w.+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")
SSN = re.compile(r"(?<![\d-])(\d{3})([- ])(\d{2})\2(\d{4})(?![\d-])")
PESEL = re.compile(r"(?<!\d)\d{11}(?!\d)")
IBAN_START = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2})\d{2}")

# Well-known SSNs that were published (a wallet insert, an advert) and never belong to a person.
PUBLISHED_SSNS = {"078-05-1120", "219-09-9999", "457-55-5462"}

# IBAN length per country (ISO 13616 registry).
IBAN_LENGTHS = dict(
    (entry[:2], int(entry[2:])) for entry in (
        "AD24 AE23 AL28 AT20 AZ28 BA20 BE16 BG22 BH22 BR29 BY28 CH21 CR22 CY28 CZ24 DE22 DK18 "
        "DO28 EE20 EG29 ES24 FI18 FO18 FR27 GB22 GE22 GI23 GL18 GR27 GT28 HR21 HU28 IE22 IL23 "
        "IQ23 IS26 IT27 JO30 KW30 KZ20 LB28 LC32 LI21 LT20 LU20 LV21 MC27 MD24 ME22 MK19 MR27 "
        "MT31 MU30 NL18 NO15 PK24 PL28 PS29 PT25 QA29 RO24 RS22 SA24 SC31 SE24 SI19 SK24 SM27 "
        "ST25 SV28 TL23 TN24 TR26 UA29 VA22 VG24 XK20").split())

CARD_BRANDS = (  # (brand, issuer prefixes, allowed lengths)
    ("Visa", ("4",), (13, 16, 19)),
    ("Mastercard", tuple(str(p) for p in range(51, 56)) + tuple(str(p) for p in range(2221, 2721)),
     (16,)),
    ("American Express", ("34", "37"), (15,)),
    ("Discover", ("6011", "65") + tuple(str(p) for p in range(644, 650)), (16, 19)),
    ("JCB", tuple(str(p) for p in range(3528, 3590)), (16, 19)),
    ("Diners Club", ("36", "38", "39") + tuple(str(p) for p in range(300, 306)), (14, 16)),
    ("UnionPay", ("62",), (16, 17, 18, 19)),
    ("Maestro", ("50", "56", "57", "58", "67"), (12, 13, 14, 15, 16, 17, 18, 19)),
)


def luhn_ok(digits: str) -> bool:
  total = 0
  for i, char in enumerate(reversed(digits)):
    d = int(char)
    if i % 2:
      d = d * 2 - 9 if d > 4 else d * 2
    total += d
  return total % 10 == 0


def card_brand(digits: str) -> str | None:
  for brand, prefixes, lengths in CARD_BRANDS:
    if len(digits) in lengths and digits.startswith(prefixes):
      return brand
  return None


def iban_ok(compact: str) -> bool:
  """The ISO 7064 mod-97 check: country and check digits moved to the end, letters as 10..35."""
  rearranged = compact[4:] + compact[:4]
  return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def ssn_ok(area: str, group: str, serial: str) -> bool:
  """Issuable: area not 000, 666 or 900-999; group not 00; serial not 0000; not a published one."""
  if area in ("000", "666") or area[0] == "9" or group == "00" or serial == "0000":
    return False
  return f"{area}-{group}-{serial}" not in PUBLISHED_SSNS


PESEL_WEIGHTS = (1, 3, 7, 9, 1, 3, 7, 9, 1, 3)
PESEL_CENTURY = {0: 1900, 20: 2000, 40: 2100, 60: 2200, 80: 1800}  # month offset -> century


def pesel_birth_date(pesel: str) -> datetime.date | None:
  """The birth date a PESEL encodes, or None when its checksum or its date is not valid."""
  digits = [int(c) for c in pesel]
  if (10 - sum(w * d for w, d in zip(PESEL_WEIGHTS, digits)) % 10) % 10 != digits[10]:
    return None
  month = int(pesel[2:4])
  offset = month - (month - 1) % 20 - 1 if month else -1
  if offset not in PESEL_CENTURY:
    return None
  try:
    return datetime.date(PESEL_CENTURY[offset] + int(pesel[:2]), month - offset, int(pesel[4:6]))
  except ValueError:
    return None


def find_emails(text: str) -> list[Span]:
  return [Span(m.start(), m.end(), "email", "e-mail address") for m in EMAIL.finditer(text)]


def find_cards(text: str) -> list[Span]:
  spans = []
  for m in CARD.finditer(text):
    digits = re.sub(r"\D", "", m.group())
    brand = card_brand(digits)
    if brand and luhn_ok(digits):
      spans.append(Span(m.start(), m.end(), "card", f"payment card ({brand}, Luhn check passes)"))
  return spans


def find_ibans(text: str) -> list[Span]:
  spans = []
  for m in IBAN_START.finditer(text):
    country = m.group(1)
    length = IBAN_LENGTHS.get(country)
    if length is None:
      continue
    end, compact = m.start(), ""
    while len(compact) < length and end < len(text):  # single spaces between groups allowed
      char = text[end]
      if char.isascii() and char.isalnum() and char.upper() == char:
        compact += char
      elif not (char == " " and compact and end + 1 < len(text) and text[end + 1] != " "):
        break
      end += 1
    boundary = end == len(text) or not text[end].isalnum()
    if len(compact) == length and boundary and iban_ok(compact):
      spans.append(Span(m.start(), end, "iban", f"IBAN ({country}, mod-97 check passes)"))
  return spans


def find_ssns(text: str) -> list[Span]:
  return [Span(m.start(), m.end(), "ssn", "US social security number (issuable range)")
          for m in SSN.finditer(text) if ssn_ok(m.group(1), m.group(3), m.group(4))]


def find_pesels(text: str) -> list[Span]:
  spans = []
  for m in PESEL.finditer(text):
    born = pesel_birth_date(m.group())
    if born is not None:
      spans.append(Span(m.start(), m.end(), "pesel",
                        f"Polish PESEL (checksum passes, encodes birth date {born.isoformat()})"))
  return spans


def find_phones(text: str, phone_region: str = "US") -> list[Span]:
  if not any(c.isdigit() for c in text):  # the matcher is slow; most strings have no digits
    return []
  matcher = phonenumbers.PhoneNumberMatcher(text, phone_region,
                                            leniency=phonenumbers.Leniency.VALID)
  return [Span(m.start, m.end, "phone",
               f"phone number ({phonenumbers.region_code_for_number(m.number) or 'international'})")
          for m in matcher]


# Earlier finders win where spans overlap: a card number is not also reported as a phone.
FINDERS = (find_cards, find_ibans, find_ssns, find_pesels, find_emails, find_phones)


def find_pii(text: str) -> list[Span]:
  return [span for finder in FINDERS for span in finder(text)]
