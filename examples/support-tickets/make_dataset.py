"""Writes the small labelled support-ticket dataset shipped with headstart (train.csv, test.csv, new.txt).

Five intents, sentences composed from hand-written templates and fillers; deterministic (seed 7).
Run: python examples/support-tickets/make_dataset.py
"""

import csv
import random
from pathlib import Path

HERE = Path(__file__).parent

TEMPLATES = {
    "billing": [
        "I was charged twice for my {plan} subscription this month.",
        "Why did my {plan} bill go up by {amount} without any notice?",
        "Can I get a refund for the {amount} you took from my card yesterday?",
        "The invoice for {month} shows a charge I don't recognise.",
        "Please cancel the automatic renewal, I don't want to be billed again.",
        "My credit card was declined but I still see a pending charge of {amount}.",
        "How do I change the card you bill for my {plan} plan?",
        "I need a VAT invoice for the payment I made in {month}.",
        "You billed me {amount} after I had already cancelled.",
        "Is there a discount if I switch the {plan} plan to yearly billing?",
        "the payment failed but money left my account, what is going on",
        "refund please, I was billed for a {plan} plan I never ordered",
    ],
    "shipping": [
        "My order #{order} still hasn't arrived after {days} days.",
        "The tracking number for order #{order} doesn't work.",
        "Can you ship my {item} to a different address?",
        "The parcel was delivered to the wrong house.",
        "How long does delivery to {city} usually take?",
        "My {item} arrived damaged, the box was crushed.",
        "The courier says the package is lost somewhere near {city}.",
        "Is express delivery available for the {item} I ordered?",
        "I received someone else's package instead of my {item}.",
        "Order #{order} shows delivered but there is nothing at my door.",
        "when will my {item} be dispatched? it's been {days} days",
        "can I pick up order #{order} from a store in {city} instead of delivery",
    ],
    "technical": [
        "The app crashes every time I open the {feature} screen.",
        "I get error {code} when I try to sync my data.",
        "The {feature} page keeps loading forever on my phone.",
        "Since the last update the {feature} button does nothing.",
        "Uploading a file fails with a timeout after a few seconds.",
        "The website shows a blank white page in {browser}.",
        "Notifications stopped working on my {device}.",
        "Export to PDF produces an empty file.",
        "The app drains my {device} battery really fast since version {version}.",
        "I can't connect to the server, it says error {code}.",
        "search in the {feature} section returns nothing even for exact names",
        "dark mode breaks the layout of the {feature} screen in {browser}",
    ],
    "account": [
        "I forgot my password and the reset email never arrives.",
        "How do I change the email address on my account?",
        "Please delete my account and all my personal data.",
        "My account was locked after too many login attempts.",
        "I want to add a second user to my {plan} account.",
        "Someone logged into my account from {city}, I think I was hacked.",
        "How can I turn on two-factor authentication?",
        "I can't log in with my Google account anymore.",
        "Can I merge my two accounts into one?",
        "Please change the name on my profile, it is misspelled.",
        "the verification code by sms never comes to my {device}",
        "how do I download a copy of all the data on my account",
    ],
    "feedback": [
        "I love the new {feature} screen, great job!",
        "It would be nice to have a dark mode in the {feature} section.",
        "Your support agent {name} was incredibly helpful, thank you.",
        "The new design is confusing, I liked the old {feature} better.",
        "Please add an export to spreadsheet option.",
        "Great product, I have recommended it to all my friends in {city}.",
        "The {feature} feature saves me hours every week.",
        "I wish the app supported more languages.",
        "Honestly the best {item} I have bought this year.",
        "Suggestion: let us reorder items in the {feature} list by dragging.",
        "just wanted to say thanks to {name} for the quick answer",
        "the onboarding could be shorter, too many steps before the {feature} screen",
    ],
}

FILLERS = {
    "plan": ["Basic", "Pro", "Team", "Family", "Premium", "Starter"],
    "amount": ["$12", "$49.99", "€20", "£7.50", "$199", "€5"],
    "month": ["January", "March", "June", "September", "October", "December"],
    "order": ["48213", "99120", "10387", "55510", "73001", "26480"],
    "days": ["5", "10", "14", "three", "twenty", "8"],
    "item": ["headphones", "blender", "desk lamp", "running shoes", "phone case", "backpack"],
    "city": ["Lisbon", "Toronto", "Osaka", "Berlin", "Nairobi", "São Paulo"],
    "feature": ["dashboard", "calendar", "reports", "settings", "inbox", "analytics"],
    "code": ["500", "E-1042", "403", "0x80070005", "NET-12", "429"],
    "browser": ["Firefox", "Safari", "Chrome", "Edge"],
    "device": ["iPhone", "Android tablet", "Pixel", "laptop", "smartwatch"],
    "version": ["4.2", "5.0.1", "3.9", "6.1"],
    "name": ["Maria", "Tom", "Aiko", "Kwame", "Lena"],
}


OPENERS = ["", "", "", "Hi, ", "Hello team, ", "Urgent: ", "Quick question: ", "Good morning. "]
CLOSERS = ["", "", "", " Thanks.", " Please help.", " Thank you in advance!", " Any idea?", " Regards, Sam"]


def fill(template: str, rng: random.Random) -> str:
    text = template.format(**{k: rng.choice(v) for k, v in FILLERS.items()})
    opener = rng.choice(OPENERS)
    if opener:
        text = opener + text[0].lower() + text[1:]
    return text + rng.choice(CLOSERS)


def main() -> None:
    rng = random.Random(7)
    rows = []
    for label, templates in TEMPLATES.items():
        texts = set()
        while len(texts) < 60:
            texts.add(fill(rng.choice(templates), rng))
        rows += [(t, label) for t in sorted(texts)]
    rng.shuffle(rows)
    split = int(len(rows) * 0.75)
    for name, part in (("train.csv", rows[:split]), ("test.csv", rows[split:])):
        with open(HERE / name, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["text", "label"])
            writer.writerows(part)
    new = [fill(rng.choice(TEMPLATES[label]), rng) for label in TEMPLATES]
    (HERE / "new.txt").write_text("\n".join(new) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
