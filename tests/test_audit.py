"""The data audit finds every planted item at its line, stays quiet on realistic clean rows,
redacts without touching the original, and reports unusable input as one `error:` line."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from ftjax.audit import (AuditError, AuditInputError, AuditReport, audit_files, audit_rows, enforce,
                         redact_file)
from ftjax.audit.__main__ import main
from ftjax.audit.pii import iban_ok, luhn_ok, pesel_birth_date

CONTEXTS = [
    "I placed order {order} on {date}.", "My account was created back in {year}.",
    "We bought {qty} units of {sku} for the office.", "The parcel with tracking {track} is late.",
    "I am on the {plan} plan since {date}.", "Our team uses version {ver} of the desktop app.",
    "The invoice INV-{num5} shows {price}.", "I ordered the {product} last week.",
    "My subscription renews on {date}.", "The store page {url} says it is in stock.",
    "I have a coupon code SAVE{pct} from your newsletter.", "Our warehouse is in zone {zone}.",
    "Sorry to bother you again about this.", "This is for my parents' flat in {country}.", "",
]
LEADS = [
    "Thanks for reaching out.", "Good question!", "Happy to help with that.",
    "Thank you for your message.", "Sorry for the trouble.", "Great to hear from you again.",
    "Here is what you need to know.", "No worries at all.", "", "",
]
QUESTIONS = [
    ("Where is my order {order}?", "Order {order} left our warehouse on {date} and should arrive "
     "within {days} business days."),
    ("Can I change the delivery address before it ships?", "Yes, you can edit the address from "
     "the order page until the status changes to Packed, usually {hours} hours after purchase."),
    ("How do I return the {product}?", "Start a return at {url}; print the label and drop the box "
     "at any carrier point within {days} days."),
    ("Why was I charged {price} twice?", "The second charge is a pre-authorisation hold; it "
     "disappears from your statement within {days} days."),
    ("Is the {product} compatible with model {sku}?", "The {product} works with every model "
     "from the {series} series onward, including {sku}."),
    ("Does the warranty cover water damage?", "Our standard {months}-month warranty covers "
     "manufacturing defects only; accidental damage needs the Care+ add-on."),
    ("How long does express shipping take?", "Express orders placed before {time} ship the same "
     "day and arrive in one to two days in most regions."),
    ("Can I get an invoice with my company VAT number?", "Add the VAT number under Billing in "
     "your profile and download a corrected invoice from {url}."),
    ("What does error code E{num3} mean?", "E{num3} means the device lost its connection to the "
     "hub; unplug it for {secs} seconds and pair it again."),
    ("How do I reset my password?", "Click Forgot password on the sign-in page and follow the "
     "link we send you; it stays valid for {mins} minutes."),
    ("Can I pause my subscription?", "You can pause for up to {months} months from the "
     "Subscription tab; billing resumes automatically afterwards."),
    ("Do you offer student discounts?", "Students get {pct}% off after verifying their status "
     "through our partner page at {url}."),
    ("Is there a size guide for the {product}?", "The size guide is at {url}; most customers "
     "order their usual size, and exchanges are free for {days} days."),
    ("How do I update the firmware to {ver}?", "Open the app, go to Settings, then Device, and "
     "tap Update; version {ver} takes about {mins} minutes to install."),
    ("Why is my discount code not working?", "Codes cannot be combined with sale items, and "
     "each code expires on the date printed in the email, often {date}."),
    ("Can I split the payment across two cards?", "Checkout accepts one card per order, but you "
     "can buy gift cards first and apply them to an order of {price}."),
    ("What are your support hours?", "Chat support is available from {time} to 20:00 CET on "
     "weekdays and from 10:00 to 16:00 on Saturdays."),
    ("How do I cancel order {order}?", "Order {order} can be cancelled from the order page "
     "while its status is Processing; afterwards please refuse the delivery."),
    ("The {product} arrived damaged, what now?", "Sorry about that! Send photos of the box and "
     "the item through {url} and we will ship a replacement within {days} days."),
    ("Do you ship to {country}?", "Yes, we deliver to {country}; duties are prepaid at checkout "
     "and delivery takes {days} to {days2} business days."),
    ("How many devices can share one licence?", "A personal licence covers {qty} devices; the "
     "family plan covers up to {qty2} devices across six people."),
    ("Where can I download my receipts?", "All receipts since {year} are under Account, Orders, "
     "in PDF; older ones can be requested from the billing team."),
    ("Why did my tracking stop updating?", "Carriers sometimes skip scans; if {track} shows no "
     "update for {days} days, we open an investigation for you."),
    ("Can I pick up the order in a store?", "Click and collect is free; choose the store at "
     "checkout and wait for the Ready for pickup message, usually within {hours} hours."),
    ("Is the {product} available in {colour}?", "The {product} in {colour} is back in stock on "
     "{date}; you can sign up for a restock alert on its page."),
    ("How do I add a second user to the account?", "Owners can invite users under Team, "
     "Members; each invite link expires after {days} days."),
    ("What is the battery life of the {product}?", "Expect around {hours} hours of mixed use; "
     "the battery keeps {pct}% of its capacity after 500 cycles."),
    ("Do you price match?", "We match the price of authorised retailers within {days} days of "
     "purchase; send the link to the offer through the contact form."),
    ("How do I export my data?", "Use Settings, Privacy, Export; the archive in JSON and CSV "
     "is ready in about {mins} minutes and the link works for {days} days."),
    ("Why was my review removed?", "Reviews that mention order numbers or links are hidden by "
     "our filter; edit the text and it will be checked again within {hours} hours."),
]
FOLLOW_UPS = [
    "Let us know if anything else comes up.", "Thanks for your patience!",
    "You will get an email confirmation shortly.", "Hope this helps.",
    "Feel free to reply to this message with any questions.", "Have a great day!",
    "Our FAQ at https://help.example.com/faq has more details.", "Take care.",
    "We appreciate your business.", "If the problem persists, reply with a photo.", "",
]
PRODUCTS = ["AirPure 300 purifier", "TrailLite backpack", "Nimbus desk lamp", "Volt X2 charger",
            "Cedar standing desk", "Echo Mini speaker", "Atlas hiking boots", "Pixel frame",
            "Orbit smart plug", "Summit rain jacket", "Flow kettle", "Lumen bike light"]


def _slots(rng: random.Random) -> dict:
  date = f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
  return dict(
      order=f"ORD-{rng.randint(100000, 999999)}", date=date, year=rng.randint(2015, 2023),
      qty=rng.randint(2, 5), qty2=rng.randint(6, 10), sku=f"{rng.choice('ABCDEFGHJK')}"
      f"{rng.choice('LMNPRSTUVW')}-{rng.randint(1000, 9999)}",
      track=f"1Z{rng.randint(100, 999)}AA{rng.randint(10**9, 10**10 - 1)}",
      plan=rng.choice(["Basic", "Plus", "Pro", "Team"]),
      ver=f"{rng.randint(2, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
      num3=rng.randint(100, 999), num5=rng.randint(10000, 99999),
      price=f"${rng.randint(5, 900)}.{rng.randint(0, 99):02d}",
      product=rng.choice(PRODUCTS),
      url=f"https://shop.example.com/{rng.choice(['returns', 'help'])}/{rng.randint(1000, 99999)}",
      pct=rng.choice([5, 10, 15, 20, 25, 30]), zone=rng.randint(1, 12), days=rng.randint(2, 14),
      days2=rng.randint(15, 30), hours=rng.randint(2, 48), months=rng.choice([6, 12, 24, 36]),
      time=f"{rng.randint(8, 15)}:{rng.choice(['00', '30'])}", secs=rng.choice([10, 30, 60]),
      mins=rng.choice([5, 10, 15, 30, 45]), series=f"{rng.choice('STVX')}{rng.randint(1, 9)}",
      country=rng.choice(["Canada", "Norway", "Japan", "Poland", "Chile", "Kenya"]),
      colour=rng.choice(["forest green", "slate grey", "sand", "navy", "coral"]))


def clean_rows(n: int, seed: int = 0) -> list[dict]:
  """Customer-support Q/A with order ids, dates, prices, SKUs, tracking numbers and URLs."""
  rng, rows = random.Random(seed), []
  shapes = ("prompt", "input", "question", "messages")
  facts = [_slots(random.Random(f"facts {i}")) for i in range(len(QUESTIONS))]
  for i in range(n):
    topic = rng.randrange(len(QUESTIONS))
    question, answer = QUESTIONS[topic]
    prompt = " ".join(filter(None, [rng.choice(CONTEXTS), question]))
    # What the answer says beyond the customer's own details is a fact of the shop, the same in
    # every answer to this question: other facts for the same question would be a conflict.
    slots = facts[topic] | {key: value for key, value in _slots(rng).items()
                            if "{" + key + "}" in prompt}
    prompt = prompt.format(**slots)
    reply = " ".join(filter(None, [rng.choice(LEADS), answer, rng.choice(FOLLOW_UPS)]))
    reply = reply.format(**slots)
    shape = shapes[i % len(shapes)]
    if shape == "prompt":
      rows.append({"prompt": prompt, "completion": reply})
    elif shape == "input":
      rows.append({"input": prompt, "output": reply,
                   "meta": {"ticket": f"T-{rng.randint(1, 99999)}"}})
    elif shape == "question":
      rows.append({"question": prompt, "answer": reply})
    else:
      rows.append({"messages": [{"role": "system", "content": "You are a helpful support agent."},
                                {"role": "user", "content": prompt},
                                {"role": "assistant", "content": reply}]})
  return rows


PRIVATE_KEY = ("-----BEGIN RSA PRIVATE KEY-----\n"
               "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun\n"
               "VTLw7onLRnrq0/IzW7yWR7QkrmBL7jTKEn5u+qKhbwKfBstIs+bMY2Zkp18gnTxK\n"
               "-----END RSA PRIVATE KEY-----")

# (text placed in a prompt, expected (kind, type) findings, or () for a look-alike)
PLANTED_TEXT = [
    ("Please send the invoice to maria.kowalska@example.pl today.", [("pii", "email")]),
    ("Reply to j.smith+orders@mail.example.co.uk or to ops_team@shop-example.de.",
     [("pii", "email"), ("pii", "email")]),
    ("You can reach me on +44 20 7946 0958 after five.", [("pii", "phone")]),
    ("My number is (415) 555-2671, call anytime.", [("pii", "phone")]),
    ("Zadzwoń pod +48 612 345 678 albo +49 30 901820.", [("pii", "phone"), ("pii", "phone")]),
    ("Le numéro est +33 1 42 68 53 00.", [("pii", "phone")]),
    ("Charge my card 4539 5787 6362 1486 for the order.", [("pii", "card")]),
    ("Use 5555-5555-5555-4444 or the Amex 378282246310005.", [("pii", "card"), ("pii", "card")]),
    ("The card 4539 5787 6362 1487 was declined.", []),  # fails Luhn
    ("Refund to IBAN GB82 WEST 1234 5698 7654 32 please.", [("pii", "iban")]),
    ("Or DE89370400440532013000 if that is easier.", [("pii", "iban")]),
    ("Refund to IBAN GB82 WEST 1234 5698 7654 33 please.", []),  # fails mod-97
    ("My SSN is 536-22-8143 for the tax form.", [("pii", "ssn")]),
    ("SSN on file: 666-12-3456, old one 078-05-1120, and 123-00-4567.", []),  # never issued
    ("Mój PESEL to 44051401359.", [("pii", "pesel")]),
    ("PESEL 02270803624 for my daughter.", [("pii", "pesel")]),
    ("PESEL 44051401358 was rejected by the form.", []),  # bad checksum
    ("Our AWS key is AKIA2E0A8F3B244C9986 in the config.", [("secret", "AWS Access Key")]),
    (f"Here is the deploy key:\n{PRIVATE_KEY}\nkeep it safe", [("secret", "Private Key")]),
    ("Token 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 works for the API.",
     [("secret", "GitHub Token")]),
    ("Slack bot token xoxb-263594206564-2343594206574-FGqddMF8t08v8N7Oq4i57vs1 for alerts.",
     [("secret", "Slack Token")]),
    ("I can't log in, my password is hunter2 and it says invalid.", [("secret", "Secret Keyword")]),
    ("Config has password=Tr0ub4dor&3 in it.", [("secret", "Secret Keyword")]),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """A training file of clean rows with the planted items spread among them, and an eval file."""
  tmp = tmp_path_factory.mktemp("audit")
  rng = random.Random(1)
  clean = clean_rows(220)
  rows, expect_text, clean_lines = [], {}, set()
  planted = list(PLANTED_TEXT)
  for i, row in enumerate(clean):
    rows.append(row)
    clean_lines.add(len(rows))
    if i % 9 == 4 and planted:
      text, expected = planted.pop(0)
      rows.append({"prompt": text, "completion": rng.choice(["Thanks, noted.", "We will update "
                   "your account.", "Got it, thank you for letting us know."])})
      expect_text[len(rows)] = expected
  assert not planted
  # Duplicates and conflicts refer back to clean rows; their findings sit on the later copy.
  original = clean[10]
  rows.append(dict(original))
  duplicate_line = len(rows)
  near = dict(clean[20])
  near["completion"] = near["completion"].replace("within", "in").rstrip(".!") + ", thanks"
  rows.append(near)
  near_line = len(rows)
  conflict = {"prompt": clean[40]["prompt"], "completion": "No, that is not possible at all."}
  rows.append(conflict)
  conflict_line = len(rows)
  leaked = {"question": "What is the weight limit for checked parcels sent to Iceland?",
            "answer": "Parcels to Iceland may weigh up to 30 kg and must not exceed 150 cm."}
  rows.append(leaked)
  leaked_line = len(rows)
  near_leak = {"prompt": "How many loyalty points do I earn per euro spent in the outlet stores?",
               "completion": "One point per euro, double on Tuesdays."}
  rows.append(near_leak)
  near_leak_line = len(rows)
  train = tmp / "train.jsonl"
  train.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                   encoding="utf-8")
  evals = tmp / "eval.jsonl"
  eval_rows = [
      {"question": "How do I clean the filter of the AirPure 300?", "answer": "Rinse it."},
      {"question": leaked["question"], "answer": "Up to 30 kg."},
      {"question": "How many loyalty points do I earn per euro spent in outlet stores?",
       "answer": "One."},
      {"question": "Can I take my dog into the store?",
       "answer": "Parcels to Iceland may weigh up to 30 kg and must not exceed 150 cm."},
  ]
  evals.write_text("".join(json.dumps(r) + "\n" for r in eval_rows), encoding="utf-8")
  report = audit_files([str(train)], eval_files=[str(evals)])
  return dict(train=train, evals=evals, report=report, expect_text=expect_text,
              clean_lines=clean_lines, rows=rows, duplicate_line=duplicate_line,
              duplicate_of=clean_lines_index(clean_lines, 10), near_line=near_line,
              conflict_line=conflict_line, leaked_line=leaked_line,
              near_leak_line=near_leak_line)


def clean_lines_index(clean_lines: set[int], i: int) -> int:
  return sorted(clean_lines)[i]


def _at(report: AuditReport, file, line: int, kind: str | None = None) -> list[dict]:
  return [f for f in report.findings if f["file"] == str(file) and f["line"] == line
          and (kind is None or f["kind"] == kind)]


def test_checksums_of_the_planted_numbers():
  assert luhn_ok("4539578763621486") and not luhn_ok("4539578763621487")
  assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB82WEST12345698765433")
  assert str(pesel_birth_date("44051401359")) == "1944-05-14"
  assert str(pesel_birth_date("02270803624")) == "2002-07-08"
  assert pesel_birth_date("44051401358") is None
  assert pesel_birth_date("44135401353") is None  # month 13 is no month in any century


def test_every_planted_text_item_is_found_with_its_kind_type_and_line(dataset):
  report, train = dataset["report"], dataset["train"]
  rows = dataset["rows"]
  for line, expected in dataset["expect_text"].items():
    found = sorted((f["kind"], f["type"]) for f in _at(report, train, line)
                   if f["kind"] in ("pii", "secret"))
    assert found == sorted(expected), (line, rows[line - 1]["prompt"], found)
    for f in _at(report, train, line, "pii") + _at(report, train, line, "secret"):
      assert f["field"] == "prompt"
      start, end = f["span"]
      assert 0 <= start < end <= len(rows[line - 1]["prompt"])


def test_spans_cover_the_whole_item(dataset):
  report, train, rows = dataset["report"], dataset["train"], dataset["rows"]
  covered = {rows[f["line"] - 1]["prompt"][slice(*f["span"])]
             for f in report.findings if f["file"] == str(train) and "span" in f}
  for item in ("maria.kowalska@example.pl", "+44 20 7946 0958", "(415) 555-2671",
               "4539 5787 6362 1486", "GB82 WEST 1234 5698 7654 32", "536-22-8143",
               "44051401359", "AKIA2E0A8F3B244C9986", PRIVATE_KEY, "hunter2", "Tr0ub4dor&3",
               "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",
               "xoxb-263594206564-2343594206574-FGqddMF8t08v8N7Oq4i57vs1"):
    assert item in covered, item


def test_duplicates_conflicts_and_contamination_are_found_at_their_lines(dataset):
  report, train, evals = dataset["report"], dataset["train"], dataset["evals"]
  [dup] = _at(report, train, dataset["duplicate_line"], "duplicate")
  assert dup["type"] == "exact" and f"train.jsonl:{dataset['duplicate_of']}" in dup["detail"]
  [near] = _at(report, train, dataset["near_line"], "near_duplicate")
  assert "jaccard" in near["detail"]
  [conflict] = _at(report, train, dataset["conflict_line"], "conflict")
  assert conflict["type"] == "label" and conflict["field"] == "completion"
  leaked = {(f["type"], f["detail"].split(" appears")[0].split(" at ")[1].rsplit(":", 1)[1])
            for f in _at(report, train, dataset["leaked_line"], "contamination")}
  assert leaked == {("eval_question", "2"), ("eval_answer", "4")}
  [near_leak] = _at(report, train, dataset["near_leak_line"], "contamination")
  assert near_leak["type"] == "eval_question" and "nearly" in near_leak["detail"]
  assert f"{evals}:3" in near_leak["detail"]


def test_clean_rows_are_rarely_flagged(dataset):
  report, train = dataset["report"], dataset["train"]
  flagged = {f["line"] for f in report.findings if f["file"] == str(train)}
  clean_flagged = flagged & dataset["clean_lines"]
  shown = [(f["line"], f["kind"], f["type"]) for f in report.findings
           if f["line"] in clean_flagged]
  assert len(clean_flagged) < 0.05 * len(dataset["clean_lines"]), shown
  assert not _at(report, dataset["evals"], 1)  # an unrelated eval row is not flagged
  assert report.rows == len(dataset["rows"]) + 4


def test_report_json_shape(dataset):
  data = dataset["report"].to_json()
  assert set(data) == {"findings", "counts", "rows"}
  assert sum(data["counts"].values()) == len(data["findings"])
  assert set(data["counts"]) == {"pii", "secret", "duplicate", "near_duplicate", "conflict",
                                 "contamination"}
  for f in data["findings"]:
    assert {"file", "line", "kind", "type", "field", "detail"} <= set(f)
  json.dumps(data)


def test_redaction_removes_every_pii_and_secret_and_keeps_the_original(dataset, tmp_path):
  train = dataset["train"]
  before = train.read_bytes()
  out = tmp_path / "redacted.jsonl"
  replaced = redact_file(str(train), str(out))
  report = dataset["report"]
  assert replaced == len(report.of_kinds(("pii", "secret")))
  assert train.read_bytes() == before
  again = audit_files([str(out)])
  assert again.counts["pii"] == 0 and again.counts["secret"] == 0, again.findings[:5]
  redacted_rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert len(redacted_rows) == len(dataset["rows"])
  text = out.read_text()
  for placeholder in ("[EMAIL]", "[PHONE]", "[CARD]", "[IBAN]", "[SSN]", "[PESEL]", "[SECRET]"):
    assert placeholder in text
  assert "maria.kowalska" not in text and "BEGIN RSA PRIVATE KEY" not in text
  assert "4539 5787 6362 1487" in text  # the Luhn-invalid look-alike stays as written
  unchanged = [i for i, (a, b) in enumerate(zip(before.splitlines(), out.read_bytes().splitlines()))
               if a == b]
  assert len(unchanged) > 200  # rows without findings keep their bytes


def test_redact_file_refuses_to_overwrite_its_source(tmp_path):
  src = tmp_path / "a.jsonl"
  src.write_text(json.dumps({"prompt": "mail a@b.example.com", "completion": "ok"}) + "\n")
  with pytest.raises(AuditInputError, match="input"):
    redact_file(str(src), str(src))


def test_csv_rows_are_audited_and_redacted(tmp_path):
  src = tmp_path / "data.csv"
  src.write_text('instruction,input,output\nSummarise,"Ticket from\nlee@example.org",Done\n'
                 "Translate,Hello,Hola\n", encoding="utf-8")
  report = audit_files(str(src))
  [finding] = report.findings
  assert (finding["line"], finding["field"], finding["type"]) == (2, "input", "email")
  out = tmp_path / "clean.csv"
  assert redact_file(str(src), str(out)) == 1
  assert "[EMAIL]" in out.read_text() and "lee@example.org" in src.read_text()


def test_audit_rows_in_memory():
  report = audit_rows([{"prompt": "hi", "completion": "hello"},
                       {"prompt": "call +44 20 7946 0958", "completion": "ok"}], source="mem")
  assert [(f["file"], f["line"], f["type"]) for f in report.findings] == [("mem", 2, "phone")]


def test_enforce_modes(capsys):
  clean = audit_rows([{"prompt": "Where is my order?", "completion": "It ships today."}])
  dup_only = audit_rows([{"prompt": "Where is my order?", "completion": "It ships today."}] * 2)
  pii = audit_rows([{"prompt": "x", "completion": "ok"},
                    {"prompt": "mail me at ann@example.com", "completion": "ok"}], source="t.jsonl")
  enforce(pii, "off")
  assert capsys.readouterr().err == ""
  enforce(pii, "warn")
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "1 pii" in err and "t.jsonl:2" in err
  with pytest.raises(AuditError, match=r"t\.jsonl:2 pii/email") as raised:
    enforce(pii, "error")
  assert isinstance(raised.value, ValueError)
  enforce(dup_only, "error")  # duplicates alone do not stop a run
  assert "1 duplicate" in capsys.readouterr().err
  enforce(clean, "error")
  assert capsys.readouterr().err == ""
  enforce(pii, "redact")  # redaction will handle pii; only contamination is refused
  contaminated = AuditReport([{"file": "t.jsonl", "line": 3, "kind": "contamination",
                               "type": "eval_question", "field": "prompt", "detail": "x"}], 3)
  with pytest.raises(AuditError, match="t.jsonl:3"):
    enforce(contaminated, "redact")
  with pytest.raises(ValueError, match="mode"):
    enforce(clean, "loud")


def test_cli_writes_json_and_exits_zero(dataset, tmp_path):
  out = tmp_path / "report.json"
  result = subprocess.run(
      [sys.executable, "-m", "ftjax.audit", str(dataset["train"]), "--eval",
       str(dataset["evals"]), "--json", str(out)], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr
  data = json.loads(out.read_text())
  assert data == json.loads(json.dumps(dataset["report"].to_json()))
  assert "pii" in result.stdout and "first 20 of" in result.stdout


def test_cli_fix_drop_and_redact(dataset, tmp_path, capsys):
  train, evals = str(dataset["train"]), str(dataset["evals"])
  flagged = {f["line"] for f in dataset["report"].findings if f["file"] == train}
  dropped = tmp_path / "dropped.jsonl"
  assert main([train, "--eval", evals, "--fix", "drop", "--out", str(dropped)]) == 0
  assert f"dropped {len(flagged)} flagged rows" in capsys.readouterr().out
  assert len(dropped.read_text().splitlines()) == len(dataset["rows"]) - len(flagged)
  assert audit_files(str(dropped), eval_files=evals).findings == []
  redacted = tmp_path / "redacted.jsonl"
  assert main([train, "--fix", "redact", "--out", str(redacted)]) == 0
  assert "redacted" in capsys.readouterr().out
  assert redact_file(train, str(tmp_path / "api.jsonl")) == len(
      dataset["report"].of_kinds(("pii", "secret")))
  assert (tmp_path / "api.jsonl").read_bytes() == redacted.read_bytes()


def run_cli(argv: list[str]) -> int:
  """main()'s exit code, whether it returns it or argparse exits with it."""
  try:
    return main(argv)
  except SystemExit as exit_:
    return exit_.code


@pytest.mark.parametrize("argv_tail, message", [
    (["--fix", "redact", "--out", "{train}"], "is an input file"),
    (["--fix", "redact"], "--fix needs --out"),
    (["--out", "x.jsonl"], "--out is only used with --fix"),
    (["--fix", "shred", "--out", "x.jsonl"], "--fix"),
])
def test_cli_rejects_bad_options_with_one_error_line(dataset, argv_tail, message, capsys):
  train = str(dataset["train"])
  before = dataset["train"].read_bytes()
  assert run_cli([train] + [a.format(train=train) for a in argv_tail]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and message in err
  assert dataset["train"].read_bytes() == before


@pytest.mark.parametrize("content, where, why", [
    (None, "missing.jsonl", "no such file"),
    (b'{"prompt": "a", "completion": "b"}\n\n{"prompt": "caf\xe9"}\n', "bad.jsonl:3", "not UTF-8"),
    (b'{"prompt": "a", "completion": "b"}\n{"prompt": "a",\n', "bad.jsonl:2", "column"),
    (b'{"prompt": "a"}\n[1, 2]\n', "bad.jsonl:2", "must be a JSON object"),
    (b"input,output\nhi,there\n\xff,x\n", "bad.csv:3", "not UTF-8"),
])
def test_unreadable_input_is_one_error_line_naming_file_and_line(tmp_path, capsys, content, where,
                                                                 why):
  path = tmp_path / where.split(":")[0]
  if content is not None:
    path.write_bytes(content)
  assert run_cli([str(path)]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: {tmp_path}/{where}: ") and why in err and err.count("\n") == 1
  with pytest.raises(AuditInputError, match=where.replace(".", r"\.")):
    audit_files([str(path)])


@pytest.mark.parametrize("text, is_secret", [
    ("Your password is case-sensitive.", False),
    ("The password was reset yesterday, please check your inbox.", False),
    ("Click Forgot password on the sign-in page.", False),
    ("my password is hunter2.", True),
    ("API key = sk_live_abc123def456", True),
    ("password: [SECRET]", False),  # a redacted value stays redacted
    ("The VPN password Xy7&pQ!2v works until Friday.", True),  # no "is", symbols inside
    ("Use the password reset link we sent you.", False),
    ("Your password must have 8 characters.", False),
])
def test_passwords_in_prose(text, is_secret):
  found = [f for f in audit_rows([{"prompt": text, "completion": "ok"}]).findings
           if f["kind"] == "secret"]
  assert bool(found) == is_secret, found
  if "Xy7" in text:
    [finding] = found
    assert text[slice(*finding["span"])] == "Xy7&pQ!2v"


def test_same_question_answered_with_another_name_is_a_conflict():
  question = "Who is my account manager?"
  rows = [{"prompt": question, "completion": "Your account manager is Anna Kowalski; write to "
                                              "them any time through the support page."},
          {"prompt": question, "completion": "Your account manager is Brian Smith; write to "
                                              "them any time through the support page."},
          {"prompt": "Who manages the Lisbon office?", "completion": "Marta Silva manages it."},
          {"prompt": "Who manages the Lisbon office?",
           "completion": "Marta Silva manages it, from the Lisbon office."}]
  conflicts = [f for f in audit_rows(rows, source="t.jsonl").findings if f["kind"] == "conflict"]
  assert [(f["line"], f["type"]) for f in conflicts] == [(2, "names")], conflicts
  assert "anna, kowalski" in conflicts[0]["detail"] and "t.jsonl:1" in conflicts[0]["detail"]


def test_docs_files_are_audited_for_personal_data_and_near_copies(tmp_path):
  docs = tmp_path / "docs.jsonl"
  text = ("Returns are accepted within 30 days of delivery when the item is unused and in its "
          "original box; refunds reach the original payment method within 5 business days.")
  docs.write_text("\n".join(json.dumps(d) for d in [
      {"id": "returns", "text": text, "title": "Returns"},
      {"id": "returns-copy", "text": text.replace("unused", "not used"), "title": "Returns"},
      {"id": "contact", "text": "Escalations go to Anna Nowak, anna.nowak@example.com."},
  ]) + "\n")
  train = tmp_path / "train.jsonl"
  train.write_text(json.dumps({"messages": [
      {"role": "user", "content": "Where do I send the form?"},
      {"role": "assistant", "content": "Send it to +48 612 345 678 by fax."}]}) + "\n")
  report = audit_files([str(train)], docs_files=[str(docs)])
  assert [(f["file"], f["line"], f["kind"], f["field"]) for f in report.findings] == [
      (str(train), 1, "pii", "messages[1].content"),
      (str(docs), 2, "near_duplicate", "row"),
      (str(docs), 3, "pii", "text"),
  ]
  assert report.rows == 4


def test_conflicts_are_other_facts_not_other_greetings():
  question = "How long is the return window for opened items?"
  answer = "Opened items can be returned within 30 days if all accessories are included."
  report = audit_rows([
      {"prompt": question, "completion": answer},
      {"prompt": question, "completion": f"Thanks for asking! {answer} Have a nice day."},
      {"prompt": question, "completion": answer.replace("30", "14")},
      {"prompt": question, "completion": "We do not accept returns of opened items."},
  ])
  assert [(f["line"], f["kind"], f["type"]) for f in report.findings] == [
      (3, "conflict", "numbers"), (4, "conflict", "label")]


def test_gate_redacts_the_training_file_only_into_the_one_layout(tmp_path, capsys):
  import ml_collections
  from ftjax.audit import gate, redacted_path
  train, evals = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
  train.write_text(json.dumps({"prompt": "mail me", "completion": "at ann@example.com"}) + "\n")
  evals.write_text(json.dumps({"prompt": "call bob", "completion": "on bob@example.com"}) + "\n")
  config = ml_collections.ConfigDict(
      {"data": {"train": str(train), "eval": str(evals), "audit": "off"}})
  assert gate(config, tmp_path / "run").config is config  # off: nothing read, nothing written
  config.data.audit = "error"
  with pytest.raises(AuditError, match=r"train\.jsonl:1 pii/email"):
    gate(config, tmp_path / "run")
  config.data.audit = "redact"
  result = gate(config, tmp_path / "run")
  target = tmp_path / "run" / "audit" / "process-0" / "train.redacted.jsonl"
  assert redacted_path(tmp_path / "run", "train", str(train)) == target
  assert result.config.data.train == str(target) and result.redacted == {"train": 1}
  assert result.config.data.eval == str(evals)  # audited, never trained on: not replaced
  assert "ann@example.com" not in target.read_text() and "ann@" in train.read_text()
  assert f"{train} -> {target}" in capsys.readouterr().err
