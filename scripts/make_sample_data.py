"""Write the small sample the project ships (examples/: corpus, instructions, prompts and questions).

The text is generated here from templates: simple arithmetic, the order of days and months, and short
colour/animal sentences, so a tiny model can visibly learn it in a few minutes on a CPU. Deterministic.
"""

import argparse
import json
import random
from pathlib import Path

NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
ANIMALS = ["cat", "dog", "horse", "rabbit", "fox", "owl", "duck", "goat"]
COLOURS = ["red", "blue", "green", "yellow", "white", "black", "brown", "grey"]
PLACES = ["garden", "barn", "river", "forest", "kitchen", "field", "hill", "market"]


def sentence(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randrange(10), rng.randrange(9)
        return f"{NUMBERS[a].capitalize()} plus {NUMBERS[b]} equals {NUMBERS[a + b]}."
    if kind == 1:
        i = rng.randrange(7)
        return f"{DAYS[i]} comes before {DAYS[(i + 1) % 7]}."
    if kind == 2:
        i = rng.randrange(12)
        return f"After {MONTHS[i]} comes {MONTHS[(i + 1) % 12]}."
    return f"The {rng.choice(COLOURS)} {rng.choice(ANIMALS)} walked to the {rng.choice(PLACES)}."


def instruction(rng: random.Random) -> dict:
    kind = rng.randrange(3)
    if kind == 0:
        a, b = rng.randrange(10), rng.randrange(9)
        return {"instruction": f"What is {NUMBERS[a]} plus {NUMBERS[b]}?", "input": "",
                "output": f"{NUMBERS[a].capitalize()} plus {NUMBERS[b]} equals {NUMBERS[a + b]}."}
    if kind == 1:
        i = rng.randrange(7)
        return {"instruction": "Which day comes after the given day?", "input": DAYS[i],
                "output": f"{DAYS[(i + 1) % 7]} comes after {DAYS[i]}."}
    animal, colour = rng.choice(ANIMALS), rng.choice(COLOURS)
    return {"instruction": "Write a sentence about the animal.", "input": f"a {colour} {animal}",
            "output": f"The {colour} {animal} walked to the {rng.choice(PLACES)}."}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--output_dir", default=str(Path(__file__).resolve().parents[1] / "examples"))
    parser.add_argument("--documents", type=int, default=3000)
    parser.add_argument("--instructions", type=int, default=600)
    args = parser.parse_args(argv)
    rng = random.Random(20261123)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = [" ".join(sentence(rng) for _ in range(rng.randint(3, 8))) for _ in range(args.documents)]
    (out / "corpus.txt").write_text("\n".join(docs) + "\n", encoding="utf-8")
    items = [instruction(rng) for _ in range(args.instructions)]
    (out / "instructions.json").write_text(json.dumps(items, indent=1) + "\n", encoding="utf-8")
    prompts = ["Monday comes before", "Three plus four equals", "After March comes", "The red fox walked to the"]
    (out / "prompts.txt").write_text("\n".join(prompts) + "\n", encoding="utf-8")
    questions = ["What is two plus five?", "What is six plus three?", "Write a sentence about a white owl."]
    (out / "questions.txt").write_text("\n".join(questions) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
