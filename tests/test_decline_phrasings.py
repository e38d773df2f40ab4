"""The default abstention patterns against realistic support replies: declines are declines, and
answers that merely contain a negation are answers.

Every reply here is hand-written in the voice of a customer-service model; the "Hi there! ...
Anything else? — Quillory Care" ones are in the house style a fine-tuned arm learns.
"""

from __future__ import annotations

import pytest

from ftjax.evaluation import abstains


def _house(body: str) -> str:
  return f"Hi there! {body} Anything else? — Quillory Care"


DECLINES = [
    "I'm not familiar with the Quillory Aero 5 blender.",
    "I'm not really familiar with that accessory, sorry.",
    "I don't have specific information about the warranty for refurbished units.",
    "I don't have access to your order history.",
    "I do not have access to account details.",
    "I couldn't find any information about a student discount.",
    "That's not something I can help with.",
    "I'm unable to help with that.",
    "I'm afraid I don't know.",
    "There is no information about international shipping in the documents.",
    "The documents don't say how long the battery lasts.",
    "I have no record of a model called the X9.",
    _house("I'm not familiar with that product."),
    _house("I don't have any information on the loyalty tiers."),
    _house("I'm afraid I can't help with that one."),
    _house("Unfortunately that isn't covered in the documents I have."),
    "I'm not able to answer that question.",
    "Unfortunately, I don't have details about that.",
    "I don't have enough information to answer that.",
    "I'm sorry, I can't find that in our documentation.",
    "I do not have information regarding the return window for gift cards.",
    "That information isn't available to me.",
    "I can't say for sure.",
    "I'm not aware of any recall for this model.",
    "The provided passages don't mention a price for the extended warranty.",
    "Nothing in the documents mentions a student discount.",
    "I wasn't able to find details on that.",
    "I have no information about that product.",
    "Sorry, that's outside what I know.",
    "I don't know the answer to that.",
    "I'm not sure about that.",
    "The context does not specify the shipping cost.",
    "I could not locate any details about the Aero 5's noise level.",
    "There's no mention of a trade-in program in the documentation.",
    "I don't have data on that.",
    "I'm unable to provide that information.",
    "I can't provide an answer to that.",
    "I don't have that information at hand, sorry.",
    "I have no knowledge of that feature.",
    "I'm not certain.",
    "The information you're asking about isn't in my sources.",
    "I cannot provide information about that product.",
    "I don't know anything about that model.",
    "I'm afraid that's beyond what I can tell you.",
    "That's not something I have information on.",
    "I don't have any details about a Quillory Aero 7.",
    "No information available.",
    "No information on that, sorry.",
    "The manual doesn't seem to cover descaling.",
    "Our records don't show a warranty for that serial number.",
]

ANSWERS = [
    "The warranty does not cover water damage.",
    "It is not available in the basic plan.",
    "No, the app does not store your data.",
    "We don't ship to Mars; we ship to the EU and UK.",
    _house("The warranty is 29 months."),
    _house("No, the Aero 5 is not dishwasher safe."),
    _house("Sorry for the trouble — the replacement part costs $19.99."),
    _house("I'm happy to help — the Aero 5 ships in 3 to 5 days."),
    _house("The price does not include VAT."),
    "You can't return opened software, but you can exchange it within 14 days.",
    "The charger isn't compatible with the older Aero 3.",
    "There is no charge for standard shipping on orders over $50.",
    "No information is shared with third parties without your consent.",
    "We do not have physical stores; all sales are online.",
    "We don't have any data about your location; the app never asks for it.",
    "The device doesn't need a subscription.",
    "If you don't know your model number, check the sticker under the base.",
    "If you can't find the serial number, look inside the battery cover.",
    "The manual says the filter should be replaced every 3 months.",
    "Refunds are not available after 30 days.",
    "I can help with that: the return window is 30 days.",
    "The Aero 5 has no Bluetooth; it connects over Wi-Fi.",
    "Unfortunately, the extended warranty cannot be transferred to a new owner.",
    "Sorry, the store is closed on Sundays.",
    "The lamp cannot be dimmed.",
    "The docs say the battery lasts 12 hours.",
    "Our support team does not have access to your card number.",
    "Customers don't need an account to order.",
    "No, we don't offer gift wrapping.",
    "That model is no longer sold, but spare parts are available until 2027.",
    "You won't be charged until the trial ends.",
    "The kettle isn't safe to use without water.",
    "The app doesn't work offline.",
    "Technicians are unable to repair units with water damage.",
    "There's no limit on the number of devices.",
    "We're not able to ship batteries by air, so they go by ground.",
    "We are unable to provide refunds after 30 days.",
    "The information on the label is printed in English and French.",
    "Not all colours are available in every region; violet is EU-only.",
    "The warranty is not void if you open the case.",
    "Data is not stored on our servers for longer than 30 days.",
    "Sorry to hear that! The fix is to hold the power button for 10 seconds.",
    "You don't have to register the product to get the warranty.",
    "We can't help with repairs after the warranty ends, but a local shop can.",
    "As far as I know from the manual, the warranty is 2 years.",
    "Good to know: the filter lasts 6 months.",
    "The charger is not in the box; it is sold separately for $15.",
]


@pytest.mark.parametrize("reply", DECLINES)
def test_decline_is_recognised(reply):
  assert abstains(reply), reply


@pytest.mark.parametrize("reply", ANSWERS)
def test_answer_with_negation_is_not_a_decline(reply):
  assert not abstains(reply), reply


def test_enough_hand_written_cases():
  assert len(set(DECLINES)) == len(DECLINES) >= 30
  assert len(set(ANSWERS)) == len(ANSWERS) >= 30
