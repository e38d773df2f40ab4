"""Writes an invented customer-service domain (the company Quillory) as JSONL files.

  python data/make_support_domain.py --out_dir data/support [--seed 0]

Quillory, its products and every fact about them (prices, warranties, button names, return
windows, ...) are made up, so a pretrained model cannot know them: an answer has to come from
fine-tuning or from retrieval. Answers follow a house style (`style.json`), some questions are
answered in no document (the model should decline), and a few documents get a changed fact
(`updates.jsonl`) to measure knowledge updates. The generated `README.md` lists every file.

Pure standard library, deterministic in `--seed`, and fast (well under a second).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from pathlib import Path

COMPANY = "Quillory"
STYLE_PATTERN = r"^Hi there! .+ Anything else\? — Quillory Care$"
STYLE_INSTRUCTION = ("Start every answer with 'Hi there!', give the answer in one short sentence, "
                     "and end with 'Anything else? — Quillory Care'.")
DECLINE = "I'm sorry, our documentation does not cover that."
UPDATE_NOTE = "This page was updated with new details."
WORDS = (40, 120)  # words per document: short enough for a 135M model's context


def house(sentence: str) -> str:
  """`sentence` in the house style."""
  return f"Hi there! {sentence} Anything else? — Quillory Care"


def _number(rng: random.Random, lo: int, hi: int, step: int = 1, avoid: tuple = (5,)) -> int:
  """A number in [lo, hi] that is no multiple of any of `avoid`: round values are easy to guess."""
  while True:
    n = rng.randrange(lo, hi + 1, step)
    if all(n % a for a in avoid):
      return n


def _fee(rng: random.Random, lo: int, hi: int) -> str:
  return f"${rng.randint(lo, hi)}.{_number(rng, 5, 95, 5, avoid=(50,)):02d}"


COLOURS = ["Harbor Teal", "Dune Grey", "Fjord Blue", "Moss Green", "Pebble White", "Clay Rose",
           "Heather Plum", "Saffron Gold", "Cedar Brown", "Glacier Mint", "Lagoon Navy",
           "Ember Red"]
LIGHTS = ["amber", "violet", "cyan", "magenta"]
BUTTONS = ["Zeta", "Orbit", "Lumen", "Kestrel", "Pivot", "Halo", "Nimbus", "Rook", "Vesper",
           "Wisp", "Fathom", "Sprig", "Lark", "Marlo"]
SERIAL_PLACES = ["inside the battery door", "behind the front cover", "under the mounting clip",
                 "on the back of the base"]

# How each kind of fact draws a fresh invented value (the gold answer string).
VALUES = {
    "price": lambda r: f"${_number(r, 101, 499)}",
    "warranty": lambda r: f"{_number(r, 13, 47, avoid=(5, 6))} months",
    "battery_hours": lambda r: f"{_number(r, 7, 61)} hours",
    "battery_days": lambda r: f"{_number(r, 6, 19)} days",
    "runtime_minutes": lambda r: f"{_number(r, 53, 167)} minutes",
    "colour": lambda r: r.choice(COLOURS),
    "kettle_capacity": lambda r: f"{_number(r, 1110, 1890, 10, avoid=(50,))} ml",
    "bin_capacity": lambda r: f"{_number(r, 310, 790, 10, avoid=(50,))} ml",
    "range_m": lambda r: f"{_number(r, 13, 97)} metres",
    "max_watts": lambda r: f"{_number(r, 1210, 3580, 10, avoid=(50,))} watts",
    "filter_weeks": lambda r: f"{_number(r, 7, 41)} weeks",
    "power_bank_capacity": lambda r: f"{_number(r, 5100, 26900, 100, avoid=(1000,))} mAh",
    "weight_g": lambda r: f"{_number(r, 180, 940)} grams",
    "button": lambda r: f"{r.choice(BUTTONS)} button",
    "hold_seconds": lambda r: f"{_number(r, 3, 29)} seconds",
    "press_times": lambda r: f"{_number(r, 3, 9)} times",
    "light": lambda r: r.choice(LIGHTS),
    "descale_minutes": lambda r: f"{_number(r, 11, 49)} minutes",
    "serial_place": lambda r: r.choice(SERIAL_PLACES),
    "register_days": lambda r: f"{_number(r, 17, 89, avoid=(5, 7))} days",
    "return_window": lambda r: f"{_number(r, 17, 67, avoid=(5, 7))} days",
    "restocking_fee": lambda r: _fee(r, 6, 19),
    "standard_days": lambda r: f"{_number(r, 3, 9)} business days",
    "standard_fee": lambda r: _fee(r, 3, 9),
    "express_fee": lambda r: _fee(r, 11, 24),
    "express_cutoff": lambda r: f"{r.randint(1, 4)}:{_number(r, 10, 50, 5, avoid=(30,)):02d} pm",
    "free_threshold": lambda r: f"${_number(r, 31, 89)}",
    "points_per_dollar": lambda r: f"{_number(r, 2, 9)} points",
    "points_voucher": lambda r: f"{_number(r, 310, 990, 10, avoid=(100,))} points",
    "points_expiry": lambda r: f"{_number(r, 13, 35, avoid=(5, 6))} months",
    "price_match_days": lambda r: f"{_number(r, 11, 40, avoid=(5, 7))} days",
    "refund_days": lambda r: f"{_number(r, 4, 14)} business days",
    "repair_fee": lambda r: f"${_number(r, 41, 97)}",
    "repair_days": lambda r: f"{_number(r, 6, 19)} days",
    "trade_in_credit": lambda r: f"${_number(r, 21, 79)}",
    "student_percent": lambda r: f"{_number(r, 11, 29)} percent",
    "gift_wrap_fee": lambda r: _fee(r, 2, 7),
    "phone_open": lambda r: f"{r.randint(6, 8)}:{_number(r, 10, 50, 5, avoid=(30,)):02d} am",
    "cancel_minutes": lambda r: f"{_number(r, 17, 58)} minutes",
    "shield_price": lambda r: f"${_number(r, 19, 59)}",
    "shield_months": lambda r: f"{_number(r, 13, 35, avoid=(5, 6))} months",
}

# Per kind of fact: the document sentence ("doc", product pages and policies only), question
# templates for training ("train", 3 sampled per fact) and a disjoint held-out pool ("heldout",
# 1 per fact) so no evaluation phrasing is ever trained on, and reply sentences ("reply").
# Placeholders: {p} product, {task}/{tasking} a procedure ("pair"/"pairing"), {a} the answer.
KINDS = {
    "price": {
        "doc": "The {p} costs {a}.",
        "train": ["How much does the {p} cost?", "What is the price of the {p}?",
                  "How much is the {p}?", "What does the {p} sell for?",
                  "How much do I pay for the {p}?"],
        "heldout": ["If I want to buy the {p}, how much money do I need?",
                    "What price does Quillory charge for the {p}?"],
        "reply": ["The {p} costs {a}.", "The {p} is priced at {a}."]},
    "warranty": {
        "doc": "Every {p} comes with a warranty of {a}.",
        "train": ["How long is the warranty on the {p}?", "What is the warranty period of the {p}?",
                  "How long does the {p} warranty last?", "For how long is the {p} under warranty?",
                  "What warranty does the {p} have?"],
        "heldout": ["If my {p} breaks, for how many months am I covered?",
                    "How much time does the guarantee on a {p} give me?"],
        "reply": ["The {p} has a warranty of {a}.", "The {p} is covered for {a}."]},
    "battery_hours": {
        "doc": "On a full charge, the battery lasts {a}.",
        "train": ["How long does the {p} battery last?", "What is the battery life of the {p}?",
                  "How many hours does the {p} run on one charge?",
                  "How long can I use the {p} before charging it?",
                  "What is the {p} battery life on a full charge?"],
        "heldout": ["After I charge the {p} fully, how long will it keep working?",
                    "How much use do I get from one charge of the {p}?"],
        "reply": ["The {p} battery lasts {a} on a full charge.",
                  "The {p} runs for {a} on one charge."]},
    "battery_days": {
        "doc": "One charge keeps the band running for {a}.",
        "train": ["How long does the {p} battery last?",
                  "How many days does the {p} run on one charge?",
                  "What is the battery life of the {p}?",
                  "How long can I wear the {p} before charging it?",
                  "How many days of battery does the {p} have?"],
        "heldout": ["After a full charge, how long until my {p} needs power again?",
                    "How many days can the {p} go between charges?"],
        "reply": ["The {p} runs for {a} on one charge.", "The {p} battery lasts {a}."]},
    "runtime_minutes": {
        "doc": "It cleans for {a} before it goes back to its dock.",
        "train": ["How long can the {p} clean on one charge?", "What is the run time of the {p}?",
                  "How many minutes does the {p} run before charging?",
                  "How long does the {p} battery last?",
                  "How long does the {p} clean before it docks?"],
        "heldout": ["If I start the {p} with a full battery, how long will it keep cleaning?",
                    "How much cleaning time do I get from one charge of the {p}?"],
        "reply": ["The {p} cleans for {a} on one charge.",
                  "The {p} runs for {a} before it docks."]},
    "colour": {
        "doc": "The {p} comes in one colour only: {a}.",
        "train": ["What colour is the {p}?", "Which colour does the {p} come in?",
                  "What colour can I get the {p} in?", "In what colour is the {p} sold?",
                  "What is the colour of the {p}?"],
        "heldout": ["If I order a {p}, what colour will it be?",
                    "What shade does Quillory make the {p} in?"],
        "reply": ["The {p} comes in {a}.", "The {p} is sold in {a} only."]},
    "kettle_capacity": {
        "doc": "It holds up to {a} of water.",
        "train": ["How much water does the {p} hold?", "What is the capacity of the {p}?",
                  "How much water fits in the {p}?", "How big is the {p}?",
                  "What is the water capacity of the {p}?"],
        "heldout": ["If I fill the {p} to the top, how much water is in it?",
                    "What volume of water can I boil in the {p}?"],
        "reply": ["The {p} holds up to {a} of water.", "The {p} has a capacity of {a}."]},
    "bin_capacity": {
        "doc": "Its dust bin holds {a}.",
        "train": ["How much does the dust bin of the {p} hold?",
                  "What is the dust bin capacity of the {p}?", "How big is the {p} dust bin?",
                  "How much dirt fits in the {p} bin?", "What size is the bin in the {p}?"],
        "heldout": ["Before I must empty it, how much can the {p} bin take?",
                    "What volume of dust does the {p} collect in its bin?"],
        "reply": ["The {p} dust bin holds {a}.", "The bin of the {p} holds {a}."]},
    "range_m": {
        "doc": "It works at a range of up to {a}.",
        "train": ["What is the range of the {p}?", "How far does the {p} reach?",
                  "How far away can I be from the {p}?", "What is the maximum range of the {p}?",
                  "How many metres does the {p} reach?"],
        "heldout": [
            "How much distance can there be between me and the {p} before it stops working?",
            "Up to what distance does the {p} keep its connection?"],
        "reply": ["The {p} has a range of up to {a}.", "The {p} reaches up to {a}."]},
    "max_watts": {
        "doc": "It can power devices of up to {a}.",
        "train": ["What is the maximum load of the {p}?", "How much power can the {p} handle?",
                  "How many watts can the {p} take?", "What is the power limit of the {p}?",
                  "What is the highest wattage for the {p}?"],
        "heldout": ["What is the biggest device power I can plug into the {p}?",
                    "Up to how much power can I run through the {p}?"],
        "reply": ["The {p} can handle up to {a}.", "The {p} has a limit of {a}."]},
    "filter_weeks": {
        "doc": "Its filter should be changed every {a}.",
        "train": ["How often should I change the filter in the {p}?",
                  "How long does the {p} filter last?", "When do I replace the {p} filter?",
                  "What is the filter life of the {p}?", "How many weeks does a {p} filter last?"],
        "heldout": ["After how long does the {p} need a new filter?",
                    "How frequently does the filter of the {p} need replacing?"],
        "reply": ["The {p} filter should be changed every {a}.",
                  "Change the {p} filter every {a}."]},
    "power_bank_capacity": {
        "doc": "It stores {a} of charge.",
        "train": ["What is the capacity of the {p}?", "How much charge does the {p} store?",
                  "How many mAh is the {p}?", "How big is the battery in the {p}?",
                  "What is the battery capacity of the {p}?"],
        "heldout": ["How much energy can the {p} hold when it is full?",
                    "What size of battery is inside the {p}?"],
        "reply": ["The {p} stores {a}.", "The {p} has a capacity of {a}."]},
    "weight_g": {
        "doc": "It weighs {a}.",
        "train": ["How much does the {p} weigh?", "What is the weight of the {p}?",
                  "How heavy is the {p}?",
                  "How many grams is the {p}?",
                  "What does the {p} weigh?"],
        "heldout": ["If I put the {p} on a scale, what will it show?",
                    "How light or heavy is the {p}?"],
        "reply": ["The {p} weighs {a}.", "The {p} has a weight of {a}."]},
    "button": {
        "train": ["Which button do I use to {task} the {p}?",
                  "What button do I need to {task} the {p}?",
                  "Which button is used for {tasking} the {p}?",
                  "What is the button for {tasking} the {p}?",
                  "To {task} the {p}, which button is it?"],
        "heldout": ["I want to {task} my {p}. Which button should I use?",
                    "When I {task} the {p}, what button do I use?"],
        "reply": ["To {task} the {p}, use the {a}.", "Use the {a} to {task} the {p}."]},
    "hold_seconds": {
        "train": ["How long do I hold the button to {task} the {p}?",
                  "For how many seconds do I hold the button to {task} the {p}?",
                  "How many seconds must I hold the button when {tasking} the {p}?",
                  "What is the hold time for {tasking} the {p}?",
                  "How long should I press and hold to {task} the {p}?"],
        "heldout": ["I want to {task} my {p}. How long do I keep the button down?",
                    "When I {task} the {p}, for how much time do I keep pressing the button?"],
        "reply": ["To {task} the {p}, hold the button for {a}.",
                  "Hold the button for {a} to {task} the {p}."]},
    "press_times": {
        "train": ["How many times do I press the button to {task} the {p}?",
                  "How many presses does it take to {task} the {p}?",
                  "How often do I press the button when {tasking} the {p}?",
                  "What number of presses is needed for {tasking} the {p}?",
                  "How many times must I press to {task} the {p}?"],
        "heldout": ["I want to {task} my {p}. How many presses of the button do I need?",
                    "When I {task} the {p}, how many times should I tap the button?"],
        "reply": ["To {task} the {p}, press the button {a}.",
                  "Press the button {a} to {task} the {p}."]},
    "light": {
        "train": ["What colour does the light turn when {tasking} the {p}?",
                  "Which colour does the light show when I {task} the {p}?",
                  "What colour is the light when {tasking} the {p}?",
                  "What light colour do I see when I {task} the {p}?",
                  "Which light colour comes on when {tasking} the {p}?"],
        "heldout": ["I want to {task} my {p}. What colour will the light change to?",
                    "While {tasking} the {p}, which colour should the lamp on it show?"],
        "reply": ["When you {task} the {p}, the light turns {a}.",
                  "The light turns {a} when you {task} the {p}."]},
    "descale_minutes": {
        "train": ["How long does it take to descale the {p}?",
                  "How many minutes does descaling the {p} take?",
                  "How long does the {p} descaling cycle run?"],
        "heldout": ["If I start descaling my {p} now, how long until it is done?"],
        "reply": ["Descaling the {p} takes {a}."]},
    "serial_place": {
        "train": ["Where is the serial number on the {p}?",
                  "Where can I find the {p} serial number?",
                  "Where is the {p} serial number printed?"],
        "heldout": ["I need to register my {p}. Where do I look for its serial number?"],
        "reply": ["The {p} serial number is printed {a}."]},
    "register_days": {
        "train": ["How long do I have to register a Quillory product?",
                  "Within how many days must I register my Quillory product?",
                  "What is the deadline to register a new Quillory product?"],
        "heldout": ["After buying something from Quillory, how soon should I register it?"],
        "reply": ["Please register your product within {a} of purchase."]},
    "return_window": {
        "doc": "You can return any item within {a} of delivery.",
        "train": ["How many days do I have to return an item to Quillory?",
                  "What is the Quillory return window?",
                  "How long do I have to return a Quillory product?"],
        "heldout": [
            "If I change my mind about an order, how long can I wait before sending it back?"],
        "reply": ["You can return any item within {a} of delivery."]},
    "restocking_fee": {
        "doc": "Opened items have a restocking fee of {a}.",
        "train": ["What is the restocking fee for opened items?",
                  "How much does Quillory charge to restock an opened item?",
                  "What fee do I pay when I return an opened item?"],
        "heldout": ["If I send back something I already opened, how much will it cost me?"],
        "reply": ["Opened items have a restocking fee of {a}."]},
    "standard_days": {
        "doc": "Standard shipping takes {a}.",
        "train": ["How long does standard shipping take?",
                  "How many business days is standard shipping?",
                  "When will my order arrive with standard shipping?"],
        "heldout": ["If I pick the normal delivery option, how long until my parcel comes?"],
        "reply": ["Standard shipping takes {a}."]},
    "standard_fee": {
        "doc": "Standard shipping costs {a} per order.",
        "train": ["How much does standard shipping cost?", "What is the fee for standard shipping?",
                  "What do I pay for standard shipping?"],
        "heldout": ["What is the charge for the normal delivery option on an order?"],
        "reply": ["Standard shipping costs {a} per order."]},
    "express_fee": {
        "doc": "Express shipping costs {a} per order.",
        "train": ["How much does express shipping cost?", "What is the fee for express shipping?",
                  "What is the price of express delivery?"],
        "heldout": ["If I want my parcel fast, what do I pay for the quickest delivery option?"],
        "reply": ["Express shipping costs {a} per order."]},
    "express_cutoff": {
        "doc": "Express orders placed before {a} ship the same day.",
        "train": ["What is the cut-off time for same-day express shipping?",
                  "By what time must I order for express shipping the same day?",
                  "Before what time do express orders ship the same day?"],
        "heldout": [
            "What is the latest I can place a quick delivery order and still have it sent today?"],
        "reply": ["Express orders placed before {a} ship the same day."]},
    "free_threshold": {
        "doc": "Orders over {a} ship for free.",
        "train": ["How much do I need to spend for free shipping?",
                  "What is the minimum order for free shipping?",
                  "When is shipping free at Quillory?"],
        "heldout": ["What order total lets me skip the delivery charge?"],
        "reply": ["Orders over {a} ship for free."]},
    "points_per_dollar": {
        "doc": "Members earn {a} for every dollar they spend.",
        "train": ["How many loyalty points do I earn per dollar?",
                  "How many points do I get for each dollar I spend?",
                  "What is the points rate of Quillory Circle?"],
        "heldout": ["If I spend one dollar at Quillory, how many reward points will I collect?"],
        "reply": ["Quillory Circle members earn {a} for every dollar they spend."]},
    "points_voucher": {
        "doc": "You can swap {a} for a store voucher.",
        "train": ["How many points do I need for a store voucher?",
                  "How many loyalty points buy a voucher?",
                  "What does a Quillory Circle voucher cost in points?"],
        "heldout": ["How many reward points must I save up before I can get a voucher?"],
        "reply": ["You can swap {a} for a store voucher."]},
    "points_expiry": {
        "doc": "Points expire after {a} without a purchase.",
        "train": ["When do loyalty points expire?", "How long do Quillory Circle points last?",
                  "After how long do my points run out?"],
        "heldout": ["If I stop shopping at Quillory, how long until my reward points disappear?"],
        "reply": ["Points expire after {a} without a purchase."]},
    "price_match_days": {
        "doc": "If you find a lower price within {a} of purchase, we refund the difference.",
        "train": ["How long does the price match promise last?",
                  "Within how many days can I ask for a price match?",
                  "What is the price match period?"],
        "heldout": [
            "I saw my item cheaper after I bought it. How long do I have to claim the difference?"],
        "reply": ["You can ask for a price match within {a} of purchase."]},
    "refund_days": {
        "doc": "Refunds reach your account within {a} after we receive the item.",
        "train": ["How long does a refund take?", "When will I get my refund?",
                  "How many business days until my refund arrives?"],
        "heldout": [
            "Once you get my returned item, how long before the money is back in my account?"],
        "reply": ["Refunds reach your account within {a} after we receive the item."]},
    "repair_fee": {
        "doc": "Repairs outside the warranty cost a flat fee of {a}.",
        "train": ["How much is an out-of-warranty repair?",
                  "What is the repair fee after the warranty ends?",
                  "What does Quillory charge to repair a product out of warranty?"],
        "heldout": ["My warranty is over and my device broke. What will fixing it cost?"],
        "reply": ["Repairs outside the warranty cost a flat fee of {a}."]},
    "repair_days": {
        "doc": "Most repairs are finished within {a}.",
        "train": ["How long does a repair take?",
                  "How many days does Quillory need to repair a product?",
                  "What is the repair turnaround time?"],
        "heldout": ["If I send my device in to be fixed, when will it be ready?"],
        "reply": ["Most repairs are finished within {a}."]},
    "trade_in_credit": {
        "doc": "Trade in any old smart home device and get {a} of store credit.",
        "train": ["How much credit do I get for a trade-in?",
                  "What is the trade-in credit at Quillory?",
                  "How much is my old device worth in a trade-in?"],
        "heldout": ["If I hand over an old smart device, what store credit will Quillory give me?"],
        "reply": ["A trade-in gives you {a} of store credit."]},
    "student_percent": {
        "doc": "Students get {a} off every order.",
        "train": ["How big is the student discount?", "What discount do students get?",
                  "How much off do students get at Quillory?"],
        "heldout": ["I am at university. What reduction can I get on my order?"],
        "reply": ["Students get {a} off every order."]},
    "gift_wrap_fee": {
        "doc": "Gift wrapping costs {a} per item.",
        "train": ["How much does gift wrapping cost?", "What is the fee for gift wrapping?",
                  "What do I pay to have an item gift wrapped?"],
        "heldout": ["I am buying a present. What is the charge to wrap it?"],
        "reply": ["Gift wrapping costs {a} per item."]},
    "phone_open": {
        "doc": "The phone line opens at {a} every day.",
        "train": ["What time does the support phone line open?",
                  "When does the Quillory phone line open?",
                  "What time can I start calling Quillory Care?"],
        "heldout": ["What is the earliest I can ring the Quillory help line?"],
        "reply": ["The phone line opens at {a} every day."]},
    "cancel_minutes": {
        "doc": "You can cancel an order within {a} of placing it.",
        "train": ["How long do I have to cancel an order?",
                  "How many minutes do I have to cancel my order?",
                  "What is the time limit to cancel an order?"],
        "heldout": ["I just ordered by mistake. How soon must I call it off?"],
        "reply": ["You can cancel an order within {a} of placing it."]},
    "shield_price": {
        "doc": "Quillory Shield costs {a} per year.",
        "train": ["How much does Quillory Shield cost?", "What is the price of Quillory Shield?",
                  "What does the Quillory Shield plan cost per year?"],
        "heldout": ["What is the yearly charge for the extra protection plan?"],
        "reply": ["Quillory Shield costs {a} per year."]},
    "shield_months": {
        "doc": "It adds {a} of cover on top of the normal warranty.",
        "train": ["How much extra cover does Quillory Shield add?",
                  "How long does Quillory Shield extend the warranty?",
                  "How many months does Quillory Shield add?"],
        "heldout": ["If I buy the extra protection plan, how much longer am I covered?"],
        "reply": ["Quillory Shield adds {a} of cover."]},
}

# (name, introduction, two own filler sentences, the two facts of its product page)
PRODUCTS = [
    ("Vantor Hub 2", "The Vantor Hub 2 is a smart home hub. It links your Quillory lights, plugs "
     "and sensors in one app.", ["It sits on a shelf and needs no tools to set up.",
                                 "The hub updates itself at night while you sleep."],
     ["price", "warranty"]),
    ("Brisa Kettle", "The Brisa Kettle is an electric kettle with a glass body.",
     ["A soft ring of light glows while the water heats.",
      "It switches off by itself when the water boils."], ["price", "kettle_capacity"]),
    ("Lumo Desk Lamp", "The Lumo Desk Lamp is a slim lamp for desks and bedside tables.",
     ["You can dim the light with a slide on the base.",
      "The arm bends so you can point the light where you need it."], ["price", "colour"]),
    ("Tessel Headset", "The Tessel Headset is a wireless headset with soft ear cups.",
     ["It folds flat to fit in a bag.", "A touch panel on the right cup controls music and calls."],
     ["battery_hours", "price"]),
    ("Corvo Speaker", "The Corvo Speaker is a portable speaker with a cloth cover.",
     ["A strap on the side makes it easy to carry.",
      "You can pair two Corvo Speakers for stereo sound."], ["battery_hours", "range_m"]),
    ("Nimra Smart Plug", "The Nimra Smart Plug lets you switch a lamp or a fan on and off from "
     "your phone.", ["You can set timers in the Quillory app.",
                     "The plug remembers its settings after a power cut."], ["price", "max_watts"]),
    ("Pellow Air Purifier", "The Pellow Air Purifier cleans the air in bedrooms and offices.",
     ["It has a quiet night mode.", "A small light shows when the air is clean."],
     ["price", "filter_weeks"]),
    ("Orvik Robot Vacuum",
    "The Orvik Robot Vacuum cleans floors on its own and returns to its dock.",
     ["It finds its way around chairs and rugs.", "You can start a clean from the Quillory app."],
     ["runtime_minutes", "bin_capacity"]),
    ("Saffa Blender", "The Saffa Blender is a strong blender for smoothies and soups.",
     ["The jug is easy to clean under the tap.", "It has a safety lock on the lid."],
     ["price", "warranty"]),
    ("Dravo Power Bank", "The Dravo Power Bank charges phones and tablets on the go.",
     ["It has two ports, so you can charge two devices at once.",
      "A row of small lights shows how much charge is left."], ["power_bank_capacity", "price"]),
    ("Kelby Video Doorbell", "The Kelby Video Doorbell shows you who is at the door on your phone.",
     ["It fits most front doors.", "You can talk to visitors through the app."],
     ["colour", "warranty"]),
    ("Wendro Thermostat",
    "The Wendro Thermostat controls your heating from the wall or your phone.",
     ["It learns when you are usually at home.", "The round screen is easy to read."],
     ["price", "colour"]),
    ("Mirel Fitness Band", "The Mirel Fitness Band counts your steps and tracks your sleep.",
     ["The strap is soft and easy to swap.", "You can see your steps in the Quillory app."],
     ["battery_days", "colour"]),
    ("Tarsi Coffee Grinder",
    "The Tarsi Coffee Grinder grinds beans for filter coffee and espresso.",
     ["A dial on the front sets how fine the grind is.",
      "The bean cup lifts off for easy cleaning."], ["price", "weight_g"]),
    ("Ulmo Baby Monitor", "The Ulmo Baby Monitor has a camera for the nursery and a parent unit "
     "with a screen.", ["The camera has night vision.",
                        "The parent unit plays a soft alert when your baby cries."],
     ["range_m", "battery_hours"]),
    ("Fenna Hair Dryer", "The Fenna Hair Dryer is a compact hair dryer for home and travel.",
     ["It comes with a narrow nozzle for smooth styling.",
      "The handle folds down to fit in a bag."], ["weight_g", "price"]),
    ("Gorran Webcam", "The Gorran Webcam is a sharp webcam for video calls.",
     ["It clips onto the top of any screen.", "A slide cover keeps the lens private."],
     ["price", "warranty"]),
    ("Halvy Bike Light", "The Halvy Bike Light is a bright front light for bicycles.",
     ["It clips onto the handlebar without tools.", "It has a steady mode and a flashing mode."],
     ["battery_hours", "colour"]),
]

# (product, task, tasking, numbered steps with {field} slots, fields drawn, fields that are facts)
PROCEDURES = [
    ("Vantor Hub 2", "pair", "pairing",
     "1. Plug the Vantor Hub 2 into a wall socket. 2. Open the Quillory app on your phone. "
     "3. Hold the {button} for {hold_seconds}. 4. Wait until the light blinks. "
     "5. Follow the steps in the app.", ["button", "hold_seconds"], ["button", "hold_seconds"]),
    ("Tessel Headset", "pair", "pairing",
     "1. Turn the Tessel Headset on. 2. Press the {button} on the left ear cup. "
     "3. When the light turns {light}, pick Tessel Headset on your phone. "
     "4. Play a song to check the sound.", ["button", "light"], ["button", "light"]),
    ("Orvik Robot Vacuum", "reset", "resetting",
     "1. Switch the Orvik Robot Vacuum on. 2. Take it off its dock. "
     "3. Hold the {button} for {hold_seconds}. 4. Wait for a short sound. "
     "5. Put it back on the dock.", ["button", "hold_seconds"], ["button", "hold_seconds"]),
    ("Corvo Speaker", "reset", "resetting",
     "1. Turn the Corvo Speaker on. 2. Press the {button} {press_times}. "
     "3. Wait until the speaker plays a chime. 4. Pair it again with your phone.",
     ["button", "press_times"], ["button", "press_times"]),
    ("Brisa Kettle", "descale", "descaling",
     "1. Fill the Brisa Kettle to the line with water and a little vinegar. "
     "2. Press the {button}. 3. Wait while the cycle runs. It takes {descale_minutes}. "
     "4. Empty the kettle and rinse it twice.", ["button", "descale_minutes"],
     ["button", "descale_minutes"]),
    ("Wendro Thermostat", "register", "registering",
     "1. Take the Wendro Thermostat off the wall. 2. Find the serial number. It is printed "
     "{serial_place}. 3. Open the Quillory app and tap Register. 4. Type in the serial number.",
     ["serial_place"], ["serial_place"]),
    ("Nimra Smart Plug", "reset", "resetting",
     "1. Plug the Nimra Smart Plug into a socket. 2. Hold the {button} for {hold_seconds}. "
     "3. Let go when the light turns {light}. 4. Add the plug again in the Quillory app.",
     ["button", "hold_seconds", "light"], ["hold_seconds", "light"]),
    ("Mirel Fitness Band", "pair", "pairing",
     "1. Charge the Mirel Fitness Band for a short while. 2. Open the Quillory app and tap Add "
     "Device. 3. Press the {button} on the side of the band {press_times}. "
     "4. Type the code from the band screen into the app.", ["button", "press_times"],
     ["button", "press_times"]),
    ("Pellow Air Purifier", "reset the filter light on", "resetting the filter light on",
     "1. Turn the Pellow Air Purifier off. 2. Fit the new filter and close the cover. "
     "3. Turn it back on. 4. Hold the {button} for {hold_seconds}. 5. The filter light goes out.",
     ["button", "hold_seconds"], ["button", "hold_seconds"]),
    ("Kelby Video Doorbell", "update", "updating",
     "1. Make sure the Kelby Video Doorbell is online. 2. Open the Quillory app and tap Update. "
     "3. Do not remove the doorbell while it works. 4. The light turns {light} when the update "
     "is done.", ["light"], ["light"]),
    ("Dravo Power Bank", "check the charge of", "checking the charge of",
     "1. Press the {button} {press_times}. 2. The lights on the side show how full the Dravo "
     "Power Bank is. 3. Each light stands for a quarter of the charge.",
     ["button", "press_times"], ["button"]),
    ("Ulmo Baby Monitor", "pair", "pairing",
     "1. Switch on the camera and the parent unit. 2. Hold the {button} on the camera for "
     "{hold_seconds}. 3. Wait until both screens show a tick. 4. Place the camera near the cot.",
     ["button", "hold_seconds"], ["hold_seconds"]),
    ("Quillory product", "register", "registering",
     "1. Go to the Quillory Care website. 2. Sign in or make an account. 3. Enter the serial "
     "number of your product. 4. Press Save. Please register within {register_days} of purchase "
     "to get updates.", ["register_days"], ["register_days"]),
    ("Gorran Webcam", "reset", "resetting",
     "1. Unplug the Gorran Webcam. 2. Hold the {button} on the back. 3. Plug the webcam back "
     "in while you hold it. 4. Let go after {hold_seconds}.", ["button", "hold_seconds"],
     ["button"]),
]

# (id, title, introduction, own filler sentences, facts)
POLICIES = [
    ("returns", "Return policy", "Quillory wants you to be happy with every order.",
     ["Items must come back with all their parts.", "Start a return from your orders page."],
     ["return_window", "restocking_fee"]),
    ("standard-shipping", "Standard shipping", "Standard shipping is our everyday delivery option.",
     ["You get a tracking link by email when your parcel leaves our warehouse."],
     ["standard_days", "standard_fee"]),
    ("express-shipping", "Express shipping", "Express shipping is our fastest delivery option.",
     ["Express parcels travel with a tracked courier."], ["express_fee", "express_cutoff"]),
    ("free-shipping", "Free shipping", "Many Quillory orders ship for free.",
     ["Free shipping uses the standard delivery option.",
      "The total is counted after any discount."], ["free_threshold"]),
    ("loyalty", "Quillory Circle loyalty program", "Quillory Circle is our free loyalty program.",
     ["You can see your points on your account page."], ["points_per_dollar", "points_voucher"]),
    ("points-expiry", "When Quillory Circle points expire",
     "Quillory Circle points do not last forever.",
     ["Any purchase resets the clock on all your points.",
      "We send an email reminder before your points expire."], ["points_expiry"]),
    ("price-match", "Price match promise", "Quillory promises a fair price.",
     ["Send us a link to the lower price and your order number.",
      "The item must be the same model and sold by a real shop."], ["price_match_days"]),
    ("refunds", "Refunds", "Refunds go back to the card you paid with.",
     ["We email you when the refund is sent.", "Your bank may show the refund a little later."],
     ["refund_days"]),
    ("repairs", "Repairs", "Quillory Care can repair most of our products.",
     ["Pack the item well before you send it."], ["repair_fee", "repair_days"]),
    ("trade-in", "Trade-in program", "You can trade in an old device when you buy something new.",
     ["The old device must still switch on.", "We recycle every device we take back."],
     ["trade_in_credit"]),
    ("student-discount", "Student discount", "Quillory supports students.",
     ["Confirm your student email once on your account page.",
      "The discount cannot be added to other codes."], ["student_percent"]),
    ("gift-wrap", "Gift wrapping", "Any item can be sent as a gift.",
     ["You can add a short handwritten note.", "Prices are hidden on the gift receipt."],
     ["gift_wrap_fee"]),
    ("support-hours", "Contacting Quillory Care", "Quillory Care helps you by phone and by chat.",
     ["Chat is open on our website.", "Have your order number ready when you call."],
     ["phone_open"]),
    ("order-cancel", "Cancelling an order", "Sometimes people order by mistake.",
     ["After that, the order is packed and you must return it instead.",
      "Cancel from your orders page or ask Quillory Care."], ["cancel_minutes"]),
    ("quillory-shield", "Quillory Shield protection plan",
     "Quillory Shield is an extra protection plan for your devices.",
     ["It covers drops and spills."], ["shield_price", "shield_months"]),
]

# Filler sentences: no numbers and no checkable facts, so retrieval cannot key on them.
PRODUCT_FILLER = [
    "Quillory designs its products in a small studio by the harbour.",
    "Every unit is tested before it leaves our warehouse.",
    "The box includes a short quick start card.",
    "You can find more guides in the Quillory Care help centre.",
    "Customers often say they like its simple design.",
    "Wipe it with a soft dry cloth to keep it clean.",
    "It works well with other Quillory products.",
    "Our team tried it in real homes before launch.",
]
POLICY_FILLER = [
    "These rules apply to orders from the Quillory website.",
    "Our team reviews this policy often to keep it fair.",
    "You can find all our policies in the help centre.",
    "Questions about this policy can go to Quillory Care.",
    "Thank you for shopping with Quillory.",
    "Please read this page before you place an order.",
]
PROCEDURE_FILLER = [
    "If a step fails, start again from the first step.",
    "Keep your phone close while you follow these steps.",
    "Make sure the Quillory app is up to date first.",
    "You do not need any tools for this.",
    "Ask Quillory Care if you get stuck.",
    "These steps take only a short time.",
]

# Which facts the update changes: (document id, fact kind).
UPDATES = [
    ("product-vantor-hub-2", "price"),
    ("product-tessel-headset", "battery_hours"),
    ("product-saffa-blender", "warranty"),
    ("policy-returns", "return_window"),
    ("policy-standard-shipping", "standard_fee"),
    ("howto-reset-orvik-robot-vacuum", "hold_seconds"),
    ("policy-student-discount", "student_percent"),
]

# In-domain questions that no document answers: the model should decline. Two disjoint sets with
# different topics: one to evaluate on, one to train the decline on.
UNANSWERABLE = [
    "Is the Vantor Hub 2 waterproof?",
    "Can the Brisa Kettle go in the dishwasher?",
    "How much does the Vantor Hub 3 cost?",
    "What is the price of the Quillory Smart Fridge?",
    "Does Quillory ship to Iceland?",
    "Can I pay for my Quillory order with a gift card?",
    "Does the Lumo Desk Lamp have a USB port?",
    "How loud is the Corvo Speaker at full volume?",
    "What size is the screen on the Mirel Fitness Band?",
    "Does the Saffa Blender come with a travel cup?",
    "Who founded Quillory?",
    "How many stores does Quillory have?",
    "Does the Orvik Robot Vacuum mop floors?",
    "Can I rent a Pellow Air Purifier instead of buying it?",
    "How much does the Quillory Solar Charger weigh?",
    "Can I control the Wendro Thermostat with my voice?",
]
DECLINE_TRAIN = [
    "Can I charge the Tessel Headset on a wireless pad?",
    "Does the Gorran Webcam have a built-in microphone?",
    "How much does the Corvo Speaker Mini cost?",
    "When will the Quillory Smart Oven be released?",
    "Does Quillory deliver on Sundays?",
    "Can I change the delivery address after I order?",
    "Who is the chief executive of Quillory?",
    "Where is the Quillory head office?",
    "Does the Fenna Hair Dryer have a cool shot setting?",
    "Can the Tarsi Coffee Grinder grind spices?",
    "Does the Kelby Video Doorbell record at night?",
    "Is there a Quillory app for smart watches?",
    "Does the Halvy Bike Light come with a spare mount?",
    "Can I buy spare blades for the Saffa Blender?",
    "Does Quillory sell refurbished products?",
    "Can I book a home installation with Quillory?",
]

# Easy general-knowledge questions a small instruct model usually gets right: checks that
# fine-tuning on Quillory does not erase what the model already knew.
GENERAL = [
    ("What is the capital of France?", "Paris"),
    ("How many days are in a week?", "7"),
    ("What color is the sky on a clear day?", "blue"),
    ("What is 2 + 3?", "5"),
    ("What is the largest planet in our solar system?", "Jupiter"),
    ("At what temperature in Celsius does water freeze?", "0"),
    ("How many legs does a spider have?", "8"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What color is grass?", "green"),
    ("What is 10 minus 4?", "6"),
    ("How many months are in a year?", "12"),
    ("What is the opposite of hot?", "cold"),
    ("How many hours are in a day?", "24"),
    ("How many legs does a dog have?", "4"),
    ("What is the capital of Italy?", "Rome"),
    ("Which planet do we live on?", "Earth"),
    ("Who wrote Romeo and Juliet?", "Shakespeare"),
    ("What color is a ripe banana?", "yellow"),
    ("What is 3 times 3?", "9"),
    ("How many minutes are in an hour?", "60"),
    ("What is the capital of Spain?", "Madrid"),
    ("In which direction does the sun rise?", "east"),
    ("What is the largest ocean on Earth?", "Pacific"),
    ("Which animal says moo?", "cow"),
    ("What is the capital of Germany?", "Berlin"),
    ("What is 5 + 5?", "10"),
    ("What is the star at the centre of our solar system called?", "Sun"),
    ("What color is snow?", "white"),
    ("What is the chemical formula of water?", "H2O"),
    ("What is the tallest animal in the world?", "giraffe"),
    ("What is the capital of the United Kingdom?", "London"),
    ("What do bees make?", "honey"),
    ("How many sides does a triangle have?", "3"),
    ("What is frozen water called?", "ice"),
]


def _slug(text: str) -> str:
  return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _amount(value: str) -> float:
  return float(re.search(r"\d+(?:\.\d+)?", value).group())


def _draw(rng: random.Random, kind: str, taken: list[str], old: str | None = None) -> str:
  """A fresh value for `kind` that is no substring of a value already taken (nor the reverse):
  otherwise substring scoring could credit one fact's answer to another ("7 days" in "17 days").
  Replacing `old`, it also differs by at least 30%, so an update is a clear change."""
  for _ in range(1000):
    value = VALUES[kind](rng)
    low = value.lower()
    if old is not None and abs(_amount(value) - _amount(old)) < 0.3 * _amount(old):
      continue
    if not any(low in t or t in low for t in taken):
      taken.append(low)
      return value
  raise ValueError(f"ran out of distinct values for {kind!r}")


def _specs(rng: random.Random) -> list[dict]:
  """Every document as a template with {field} slots, before any value is drawn."""
  specs = []
  for name, intro, own, kinds in PRODUCTS:
    facts = [KINDS[k]["doc"].replace("{a}", "{" + k + "}") for k in kinds]
    extra = rng.sample(PRODUCT_FILLER, 2)
    parts = [intro, own[0], facts[0], own[1], facts[1], *extra]
    specs.append({"id": f"product-{_slug(name)}", "title": name, "template": " ".join(parts),
                  "ctx": {"p": name, "task": "", "tasking": ""}, "fields": kinds, "facts": kinds})
  for name, task, tasking, steps, fields, facts in PROCEDURES:
    what = "a Quillory product" if name == "Quillory product" else f"the {name}"
    title = f"How to {task} {what}"
    extra = rng.sample(PROCEDURE_FILLER, 2)
    parts = [f"Follow these steps to {task} {what}.", steps, *extra]
    specs.append({"id": f"howto-{_slug(task.split()[0])}-{_slug(name)}", "title": title,
                  "template": " ".join(parts), "ctx": {"p": name, "task": task, "tasking": tasking},
                  "fields": fields, "facts": facts})
  for slug, title, intro, own, kinds in POLICIES:
    facts = [KINDS[k]["doc"].replace("{a}", "{" + k + "}") for k in kinds]
    extra = rng.sample(POLICY_FILLER, 2)
    parts = [intro, facts[0], *own, *facts[1:], *extra]
    specs.append({"id": f"policy-{slug}", "title": title, "template": " ".join(parts),
                  "ctx": {"p": COMPANY, "task": "", "tasking": ""}, "fields": kinds,
                  "facts": kinds})
  return specs


def _render(spec: dict, values: dict[str, str]) -> str:
  return spec["template"].format(p=spec["ctx"]["p"], **values)


def _check(docs: list[dict], facts: list[dict]):
  """Fails loudly on a document of the wrong length or an answer that is not in exactly its own
  document: such a fact could not be checked, or could be confused with another."""
  for doc in docs:
    n = len(doc["text"].split())
    if not WORDS[0] <= n <= WORDS[1]:
      raise ValueError(f"document {doc['id']} has {n} words, outside {WORDS}")
  for fact in facts:
    holders = [d["id"] for d in docs if fact["answer"].lower() in d["text"].lower()]
    if holders != [fact["doc_id"]]:
      raise ValueError(f"answer {fact['answer']!r} of {fact['doc_id']} is in documents {holders}")


def _keep(specs: list[dict], num_docs: int, seed: int) -> list[dict]:
  """`num_docs` of the documents: every document an update changes, then a seeded sample of
  the others, in their order (a separate random stream: the full domain is unchanged)."""
  if not num_docs or num_docs >= len(specs):
    return specs
  updated = {doc_id for doc_id, _ in UPDATES}
  others = [s["id"] for s in specs if s["id"] not in updated]
  keep = updated | set(random.Random(f"keep:{seed}").sample(others, num_docs - len(updated)))
  return [s for s in specs if s["id"] in keep]


def _candidates(facts: list[dict], seed: int, n: int = 3) -> dict[int, list[str]]:
  """Per fact: up to `n` answers of other facts of the same kind (a separate random stream).
  An answer that names one of them besides its gold lists values instead of answering."""
  rng = random.Random(f"candidates:{seed}")
  out = {}
  for i, fact in enumerate(facts):
    same = [f["answer"] for f in facts if f["kind"] == fact["kind"] and f is not fact]
    out[i] = rng.sample(same, min(n, len(same)))
  return out


def build(seed: int = 0, num_docs: int = 0) -> dict[str, object]:
  """Every output file's content, by file name: a list of rows (JSONL), a dict or a string.
  `num_docs` (0: all) keeps that many documents and their facts: a smaller domain."""
  rng = random.Random(seed)
  taken: list[str] = []
  specs = _keep(_specs(rng), num_docs, seed)
  docs, facts = [], []
  for spec in specs:
    spec["values"] = {field: _draw(rng, field, taken) for field in spec["fields"]}
    docs.append({"id": spec["id"], "title": spec["title"], "text": _render(spec, spec["values"])})
    for kind in spec["facts"]:
      facts.append({"doc_id": spec["id"], "kind": kind, "ctx": spec["ctx"],
                    "answer": spec["values"][kind]})
  _check(docs, facts)

  train, evaluation = [], []
  candidates = _candidates(facts, seed)
  for number, fact in enumerate(facts):
    kind, ctx = KINDS[fact["kind"]], fact["ctx"]
    fact["asks"] = [(q.format(**ctx), rng.choice(kind["reply"]))
                    for q in rng.sample(kind["train"], 3)]
    fact["held"] = rng.choice(kind["heldout"]).format(**ctx)
    for ask, reply in fact["asks"]:
      train.append({"input": ask, "output": house(reply.format(a=fact["answer"], **ctx)),
                    "doc_id": fact["doc_id"], "answer": fact["answer"]})
    row = {"input": fact["held"], "answer": fact["answer"], "doc_id": fact["doc_id"]}
    if candidates[number]:
      row["candidates"] = candidates[number]
    evaluation.append(row)

  by_id = {spec["id"]: spec for spec in specs}
  updates, update_train, update_eval, changed = [], [], [], {}
  for doc_id, kind in UPDATES:
    spec = by_id[doc_id]
    fact = next(f for f in facts if f["doc_id"] == doc_id and f["kind"] == kind)
    new = _draw(rng, kind, taken, old=fact["answer"])
    values = dict(spec["values"], **{kind: new})
    updates.append({"id": doc_id, "text": f"{_render(spec, values)} {UPDATE_NOTE}",
                    "title": spec["title"]})
    # Same questions and reply wording as in train.jsonl: only the fact changes.
    for ask, reply in fact["asks"]:
      update_train.append({"input": ask, "output": house(reply.format(a=new, **fact["ctx"])),
                           "doc_id": doc_id, "answer": new})
    update_eval.append({"input": fact["held"], "answer": new, "doc_id": doc_id})
    changed[fact["held"]] = new
  # After the update every current answer (new or untouched) is still in exactly its document.
  patched = {u["id"]: u for u in updates}
  _check([patched.get(d["id"], d) for d in docs],
         [dict(f, answer=changed.get(f["held"], f["answer"])) for f in facts])

  unchanged_eval = [row for row in evaluation if row["input"] not in changed]
  unanswerable = [{"input": q} for q in UNANSWERABLE]
  decline = [{"input": q, "output": house(DECLINE)} for q in DECLINE_TRAIN]
  general = [{"input": q, "answer": a} for q, a in GENERAL]
  style = {"pattern": STYLE_PATTERN, "instruction": STYLE_INSTRUCTION,
           "examples_note": (f"Use re.search(pattern, answer.strip()). An answer: "
                             f"{train[0]['output']!r}. A decline: {house(DECLINE)!r}; a decline "
                             f"contains 'does not cover'.")}
  files = {
      "docs.jsonl": docs, "train.jsonl": train, "eval.jsonl": evaluation,
      "unanswerable.jsonl": unanswerable, "train_decline.jsonl": decline,
      "general.jsonl": general, "updates.jsonl": updates, "update_train.jsonl": update_train,
      "update_eval.jsonl": update_eval, "unchanged_eval.jsonl": unchanged_eval, "style.json": style,
  }
  files["README.md"] = _readme(files, seed, len(facts), num_docs)
  return files


def _readme(files: dict[str, object], seed: int, num_facts: int, num_docs: int = 0) -> str:
  about = {
      "docs.jsonl": '`{"id", "title", "text"}`: product pages, how-to steps and policies, '
                    f"{WORDS[0]}-{WORDS[1]} words, 1-2 facts each ({num_facts} facts) plus filler",
      "train.jsonl": '`{"input", "output", "doc_id", "answer"}`: 3 phrasings per fact, answered '
                     "in house style",
      "eval.jsonl": '`{"input", "answer", "doc_id", "candidates"}`: 1 held-out phrasing per '
                    "fact, from a template pool never used in training; `candidates`: answers "
                    "of other facts of the same kind (naming one besides the gold is wrong)",
      "unanswerable.jsonl": '`{"input"}`: in-domain questions no document answers (the model '
                            "should decline)",
      "train_decline.jsonl": '`{"input", "output"}`: other uncovered questions (disjoint topics) '
                             "with a house-style decline",
      "general.jsonl": '`{"input", "answer"}`: easy general knowledge, to check nothing is '
                       "forgotten",
      "updates.jsonl": '`{"id", "text", "title"}`: documents rewritten with one changed fact '
                       "(same id)",
      "update_train.jsonl": "the train questions of each changed fact, with the new answer",
      "update_eval.jsonl": "the held-out question of each changed fact, with the new answer",
      "unchanged_eval.jsonl": "the eval rows of facts the update did not touch",
      "style.json": "the house style: `pattern`, `instruction`, `examples_note`",
  }
  rows = [f"| `{name}` | {len(content) if name.endswith('.jsonl') else '-'} | {about[name]} |"
          for name, content in files.items()]
  table = "\n".join(["| file | rows | content |", "|---|---|---|", *rows])
  size = f", {num_docs} documents" if num_docs else ""
  flag = f" --num_docs {num_docs}" if num_docs else ""
  folder = "data/support_small" if num_docs else "data/support"
  return f"""# Quillory support domain

An invented customer-service domain: the company {COMPANY}, its products and policies. Every fact
is made up, so a pretrained model cannot know it; it must come from fine-tuning or retrieval.
Generated by `data/make_support_domain.py` (seed {seed}{size}); do not edit by hand. Regenerate
with

    python data/make_support_domain.py --out_dir {folder} --seed {seed}{flag}

{table}

House style: `re.search(pattern, answer.strip())` with pattern `{STYLE_PATTERN}`.
Instruction for prompting: {STYLE_INSTRUCTION}
Declines say "{DECLINE}" in the same style.

Every gold answer appears in its own document and in no other, and no answer is a substring of
another, so substring scoring cannot credit one fact's answer to another.
"""


def write(files: dict[str, object], out: Path):
  out.mkdir(parents=True, exist_ok=True)
  for name, content in files.items():
    if name.endswith(".jsonl"):
      text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in content)
    elif name.endswith(".json"):
      text = json.dumps(content, ensure_ascii=False, indent=2) + "\n"
    else:
      text = content
    (out / name).write_text(text, encoding="utf-8")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out_dir", default="data/support")
  parser.add_argument("--num_docs", type=int, default=0,
                      help="keep this many documents (every updated one included); 0: all")
  args = parser.parse_args(argv)
  files = build(args.seed, args.num_docs)
  out = Path(args.out_dir)
  write(files, out)
  counts = ", ".join(f"{len(rows)} {name[:-6]}" for name, rows in files.items()
                     if name.endswith(".jsonl"))
  print(f"wrote {counts} to {out}")


if __name__ == "__main__":
  main()
