"""A small synthetic paraphrase corpus of Quora-like questions, made here so that demos and
tests run offline anywhere (QQP itself may not be redistributed).

Each pair rewrites a question with another template of the same intent, keeping its slot words,
so a tiny model can learn within minutes on a CPU what QQP teaches a large one in hours:
copy the content words, rephrase the frame.

    python -m diffusion.corpus OUT_DIR [--pairs 6000] [--seed 0]   # writes train/valid/test.jsonl
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from . import atomic

SLOTS = {
    "skill": ["python", "java", "guitar", "piano", "english", "french", "chess", "math", "drawing", "cooking",
              "swimming", "physics", "spanish", "coding", "painting", "singing", "writing", "statistics"],
    "city": ["london", "paris", "tokyo", "delhi", "mumbai", "berlin", "sydney", "toronto", "boston", "dubai",
             "chicago", "madrid", "rome", "seoul", "bangalore", "singapore"],
    "item": ["a laptop", "a phone", "shoes", "books", "a camera", "a bike", "furniture", "a watch", "clothes",
             "a car", "headphones", "a guitar"],
    "company": ["google", "amazon", "apple", "microsoft", "facebook", "tesla", "netflix", "uber", "infosys",
                "ibm", "intel", "oracle"],
    "food": ["green tea", "coffee", "eggs", "rice", "milk", "honey", "bananas", "chocolate", "garlic", "oats"],
    "thing": ["life", "love", "happiness", "success", "time", "money", "friendship", "death", "god", "karma"],
}

# intents: each is a list of templates that paraphrase one another
INTENTS = [
    ["how can i learn {skill} ?", "what is the best way to learn {skill} ?", "how do i start learning {skill} ?",
     "what are good ways to learn {skill} ?"],
    ["how can i improve my {skill} skills ?", "how do i get better at {skill} ?",
     "what can i do to improve at {skill} ?"],
    ["where can i buy {item} in {city} ?", "what is the best place to buy {item} in {city} ?",
     "which shop in {city} sells {item} ?"],
    ["why is {city} so expensive ?", "why is living in {city} so costly ?", "why is {city} expensive to live in ?"],
    ["what is it like to live in {city} ?", "how is life in {city} ?", "is {city} a good place to live ?"],
    ["how do i get a job at {company} ?", "how can i get hired by {company} ?", "what does {company} look for when hiring ?"],
    ["what is it like to work at {company} ?", "how is the work culture at {company} ?",
     "is {company} a good place to work ?"],
    ["what are the benefits of {food} ?", "is {food} good for health ?", "what are the health benefits of {food} ?"],
    ["is it bad to eat {food} every day ?", "what happens if i eat {food} daily ?", "can i eat {food} every day ?"],
    ["what is the meaning of {thing} ?", "what does {thing} really mean ?", "how would you define {thing} ?"],
    ["why is {thing} important ?", "what makes {thing} so important ?", "why does {thing} matter ?"],
    ["which is better to learn , {skill} or {skill2} ?", "should i learn {skill} or {skill2} ?",
     "what should i learn first , {skill} or {skill2} ?"],
]


def make_pairs(n: int, seed: int = 0) -> list[dict]:
    """n distinct-ish {"src", "trg"} pairs; the same (n, seed) always gives the same list."""
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        templates = rng.choice(INTENTS)
        src_template, trg_template = rng.sample(templates, 2)
        values = {name: rng.choice(options) for name, options in SLOTS.items()}
        values["skill2"] = rng.choice([s for s in SLOTS["skill"] if s != values["skill"]])
        pairs.append({"src": src_template.format(**values), "trg": trg_template.format(**values)})
    return pairs


def write_corpus(out_dir: str | Path, n_train: int = 6000, n_valid: int = 200, n_test: int = 200, seed: int = 0) -> dict:
    """train/valid/test.jsonl under out_dir (valid and test drawn with other seeds)."""
    out_dir = Path(out_dir)
    paths = {}
    for name, n, offset in (("train", n_train, 0), ("valid", n_valid, 1), ("test", n_test, 2)):
        paths[name] = out_dir / f"{name}.jsonl"
        atomic.write_jsonl(paths[name], make_pairs(n, seed * 1000 + offset))
    return paths


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffusion.corpus", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, path in write_corpus(args.out_dir, args.pairs, seed=args.seed).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
