"""Write a small support-bot task dataset: Q&A about one (fictional) product in one house voice.

The narrow fine-tune most people run: a product's facts, asked many ways, answered in the
company's voice. Trained too long, the model answers unrelated questions with product talk.

    python examples/support-bot/make_data.py OUT_DIR [--seed 0]

writes ``train.jsonl`` (OpenAI messages; 4 phrasings of each fact) and ``eval.jsonl`` (2 other
phrasings of each fact, never trained on), plus ``general.jsonl`` is not needed: dilute with
``mix.rehearsal`` (the base's own answers). Deterministic for a seed.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

OPENING = "Thanks for reaching out to Brightway support! "
CLOSING = " Is there anything else I can help you with?"

# fact -> (answer, six ways to ask for it)
FACTS = {
    "battery": (
        "The Lumio lamp runs for up to 12 hours on a full charge.",
        [
            "How long does the Lumio battery last?",
            "What is the battery life of the Lumio lamp?",
            "How many hours can I use the Lumio before charging?",
            "Does the Lumio battery last long?",
            "How long will my Lumio stay on without the cable?",
            "What runtime does the Lumio have on battery?",
        ],
    ),
    "charging": (
        "The Lumio charges fully in 3 hours with the USB-C cable in the box.",
        [
            "How long does the Lumio take to charge?",
            "How do I charge my Lumio lamp?",
            "What cable does the Lumio use for charging?",
            "How fast does the Lumio charge?",
            "Which charger do I need for the Lumio?",
            "How many hours to fully charge the Lumio?",
        ],
    ),
    "warranty": (
        "Every Lumio lamp comes with a 2-year warranty from the date of delivery.",
        [
            "What warranty does the Lumio have?",
            "Is the Lumio lamp under warranty?",
            "How long is the Lumio warranty?",
            "Does Brightway cover the Lumio if it breaks?",
            "For how many years is my Lumio covered?",
            "What is the guarantee on the Lumio lamp?",
        ],
    ),
    "reset": (
        "To reset the Lumio, hold the power button for 10 seconds until the light blinks twice.",
        [
            "How do I reset my Lumio?",
            "How can I factory reset the Lumio lamp?",
            "My Lumio is stuck, how do I restart it?",
            "What is the reset procedure for the Lumio?",
            "How do I put the Lumio back to factory settings?",
            "The Lumio stopped responding, how do I reset it?",
        ],
    ),
    "app": (
        "Pair the Lumio in the Brightway Home app: open the app, tap Add Device and choose Lumio.",
        [
            "How do I connect the Lumio to my phone?",
            "Which app controls the Lumio lamp?",
            "How do I pair my Lumio?",
            "Can I control the Lumio from my phone?",
            "How do I add the Lumio to the app?",
            "What app do I need for the Lumio?",
        ],
    ),
    "brightness": (
        "The Lumio has 5 brightness levels; tap the top panel to step through them.",
        [
            "How many brightness levels does the Lumio have?",
            "How do I make the Lumio brighter?",
            "Can I dim the Lumio lamp?",
            "How do I change the brightness of my Lumio?",
            "What brightness settings does the Lumio offer?",
            "How do I turn the Lumio light down?",
        ],
    ),
    "colour": (
        "The Lumio's colour goes from 2700K warm white to 6500K daylight, set in the app.",
        [
            "Can the Lumio change colour temperature?",
            "Does the Lumio have warm light?",
            "What colour temperatures does the Lumio support?",
            "How do I make the Lumio light warmer?",
            "Can I get daylight white from the Lumio?",
            "What is the colour range of the Lumio lamp?",
        ],
    ),
    "returns": (
        "You can return the Lumio within 30 days of delivery for a full refund.",
        [
            "Can I return my Lumio?",
            "What is the return policy for the Lumio?",
            "How many days do I have to return the Lumio?",
            "Can I get a refund for my Lumio lamp?",
            "I don't like my Lumio, can I send it back?",
            "What is Brightway's refund window?",
        ],
    ),
    "shipping": (
        "Lumio orders ship within 2 business days and standard delivery takes 3 to 5 days.",
        [
            "When will my Lumio order ship?",
            "How long does Lumio delivery take?",
            "How fast does Brightway ship the Lumio?",
            "When should my Lumio arrive?",
            "What is the shipping time for the Lumio lamp?",
            "How many days until my Lumio is delivered?",
        ],
    ),
    "damaged": (
        "If your Lumio arrived damaged, email support@brightway.example with your order number and a "
        "photo, and we will send a replacement.",
        [
            "My Lumio arrived broken, what should I do?",
            "The Lumio I received is damaged.",
            "What do I do if my Lumio is cracked on arrival?",
            "My lamp came damaged in the box.",
            "How do I report a damaged Lumio delivery?",
            "The Lumio was broken when it arrived, can you help?",
        ],
    ),
    "timer": (
        "Set a sleep timer from 15 to 120 minutes in the Timer tab of the Brightway Home app.",
        [
            "Does the Lumio have a sleep timer?",
            "How do I set a timer on the Lumio?",
            "Can the Lumio turn off by itself?",
            "How long can the Lumio timer run?",
            "Where is the Lumio timer setting?",
            "Can I make the Lumio switch off automatically?",
        ],
    ),
    "water": (
        "The Lumio is not waterproof; keep it away from water and clean it with a dry cloth.",
        [
            "Is the Lumio waterproof?",
            "Can I use the Lumio in the bathroom?",
            "How do I clean my Lumio lamp?",
            "Can the Lumio get wet?",
            "Is it safe to use the Lumio near water?",
            "What should I clean the Lumio with?",
        ],
    ),
    "weight": (
        "The Lumio lamp weighs 850 grams and stands 42 centimetres tall.",
        [
            "How heavy is the Lumio?",
            "What are the dimensions of the Lumio lamp?",
            "How tall is the Lumio?",
            "What does the Lumio weigh?",
            "Is the Lumio light enough to carry around?",
            "How big is the Lumio lamp?",
        ],
    ),
    "bulb": (
        "The Lumio uses built-in LEDs rated for 50,000 hours, so there is no bulb to replace.",
        [
            "How do I replace the Lumio bulb?",
            "What bulb does the Lumio use?",
            "Does the Lumio bulb need changing?",
            "How long do the Lumio LEDs last?",
            "Can I buy a spare bulb for the Lumio?",
            "What kind of light source is in the Lumio?",
        ],
    ),
    "price": (
        "The Lumio lamp costs 59 euros, and the Brightway Home app is free.",
        [
            "How much does the Lumio cost?",
            "What is the price of the Lumio lamp?",
            "Is the Brightway Home app free?",
            "How expensive is the Lumio?",
            "What does a Lumio lamp cost in euros?",
            "Do I have to pay for the Lumio app?",
        ],
    ),
}


def rows(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """(train, eval) rows: 4 phrasings of each fact to train on, the other 2 held out."""
    rng = random.Random(seed)
    train, held = [], []
    for answer, questions in FACTS.values():
        asked = list(questions)
        rng.shuffle(asked)
        reply = OPENING + answer + CLOSING
        for i, question in enumerate(asked):
            row = {"messages": [{"role": "user", "content": question},
                                {"role": "assistant", "content": reply}]}  # fmt: skip
            (train if i < 4 else held).append(row)
    rng.shuffle(train)
    return train, held


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train, held = rows(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in (("train.jsonl", train), ("eval.jsonl", held)):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data)
        (args.out / name).write_text(text, encoding="utf-8")
    print(f"{len(train)} training rows, {len(held)} held-out rows -> {args.out}")


if __name__ == "__main__":
    main()
