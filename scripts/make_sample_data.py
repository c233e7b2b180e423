"""Write the small sample the project ships (examples/: corpus, instructions, prompts and questions).

The text is generated here from templates: simple arithmetic, the order of days and months, and short
colour/animal sentences, so a tiny model can visibly learn it in a few minutes on a CPU. Deterministic.
The same sentences in Chinese (``corpus_zh.txt``, ``prompts_zh.txt``) are the second language of the quickstart's
vocabulary-extension step.
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


ZH_NUMBERS = ["零", "一", "二", "三", "四", "五", "六", "七", "八", "九", "十", "十一", "十二", "十三", "十四", "十五",
              "十六", "十七", "十八"]
ZH_DAYS = ["星期一", "星期二", "星期三", "星期四", "星期五", "星期六", "星期日"]
ZH_MONTHS = ["一月", "二月", "三月", "四月", "五月", "六月", "七月", "八月", "九月", "十月", "十一月", "十二月"]
ZH_ANIMALS = ["猫", "狗", "马", "兔子", "狐狸", "猫头鹰", "鸭子", "山羊"]
ZH_COLOURS = ["红色", "蓝色", "绿色", "黄色", "白色", "黑色", "棕色", "灰色"]
ZH_PLACES = ["花园", "谷仓", "河边", "森林", "厨房", "田野", "山上", "市场"]


def sentence_zh(rng: random.Random) -> str:
    """One of the English templates' sentences, in Chinese."""
    kind = rng.randrange(4)
    if kind == 0:
        a, b = rng.randrange(10), rng.randrange(9)
        return f"{ZH_NUMBERS[a]}加{ZH_NUMBERS[b]}等于{ZH_NUMBERS[a + b]}。"
    if kind == 1:
        i = rng.randrange(7)
        return f"{ZH_DAYS[i]}在{ZH_DAYS[(i + 1) % 7]}之前。"
    if kind == 2:
        i = rng.randrange(12)
        return f"{ZH_MONTHS[i]}之后是{ZH_MONTHS[(i + 1) % 12]}。"
    return f"{rng.choice(ZH_COLOURS)}的{rng.choice(ZH_ANIMALS)}走到了{rng.choice(ZH_PLACES)}。"


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
    parser.add_argument("--documents_zh", type=int, default=1000)
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
    rng_zh = random.Random(20261126)
    docs_zh = ["".join(sentence_zh(rng_zh) for _ in range(rng_zh.randint(3, 8))) for _ in range(args.documents_zh)]
    (out / "corpus_zh.txt").write_text("\n".join(docs_zh) + "\n", encoding="utf-8")
    prompts_zh = ["星期一在", "三加四等于", "三月之后是", "红色的狐狸走到了"]
    (out / "prompts_zh.txt").write_text("\n".join(prompts_zh) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
