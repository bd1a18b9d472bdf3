#!/usr/bin/env python3
"""Deterministic synthetic prompt/response pairs for `causal train` (docs/training.md).

  --task reverse   the prompt is a list of 3-8 words, the response the same words in reverse order
                   (the from-scratch attention-mask experiment: knowing how far a word is from the end of the
                   prompt is what reversing needs)
  --task json      the prompt is one sentence about a person, the response that person as fixed-shape JSON:
                   {"name": "...", "age": N} (the fine-tuning demonstration on the default model)

Writes DIR/train.jsonl and DIR/eval.jsonl, one {"prompt", "response"} object a line (plus "system" when --system is
given). The same --seed gives the same files byte for byte; the eval prompts never occur in the training file.
Python standard library only.
"""
import argparse
import json
import os
import random

WORDS = """apple river stone cloud tiger green table window music paper forest candle silver ocean garden
rabbit yellow winter summer mountain pencil bottle orange purple castle dragon planet rocket button mirror
violin basket carpet ladder pepper tomato lemon cherry falcon monkey parrot jacket pillow saddle hammer
anchor bridge circle island meadow""".split()

FIRST = """Anna Ben Carla David Elena Farid Grace Hugo Ines Jonas Kira Liam Maya Nils Olga Pedro Quinn Rosa
Sami Tara Umar Vera Omar Yara Zoe Marco Lena Felix Nora Ivan Alma Bruno Chloe Emil Frida Hanna Igor Julia
Karl Luca""".split()
LAST = """Smith Novak Garcia Kim Rossi Weber Silva Khan Dubois Jensen Moreau Costa Fischer Lopez Nakamura Berg
Ortiz Meyer Petrov Santos Keller Brown Walsh Haddad Laine Romero Bauer Olsen Ricci Varga""".split()
CITIES = "Lisbon Oslo Madrid Vienna Dublin Prague Porto Lyon Zurich Krakow Tallinn Valencia Bergen Turin Ghent".split()
JOBS = "a teacher|a nurse|an engineer|a baker|a pilot|a painter|a chemist|a librarian|a carpenter|a chef".split("|")

SENTENCES = [
    "{name} is {age} years old and lives in {city}.",
    "At {age}, {name} works as {job} in {city}.",
    "{name}, aged {age}, moved to {city} last spring.",
    "Meet {name}: {job} from {city}, {age} years young.",
    "{name} turned {age} this year and still lives in {city}.",
    "In {city}, {name} ({age}) is known as {job}.",
    "{name} has worked as {job} since school and is {age} now.",
    "Our new neighbour {name} is {age} and comes from {city}.",
    "The form says: {name}, {age}, {job}, {city}.",
    "{name} celebrated birthday number {age} in {city}.",
]


def reverse_pair(rng):
    words = rng.sample(WORDS, rng.randint(3, 8))
    return " ".join(words), " ".join(reversed(words))


def json_pair(rng):
    name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    age = rng.randint(18, 89)
    text = rng.choice(SENTENCES).format(name=name, age=age, city=rng.choice(CITIES), job=rng.choice(JOBS))
    # json.dumps with the default separators: {"name": "Anna Smith", "age": 34}
    return text, json.dumps({"name": name, "age": age})


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", choices=["reverse", "json"], required=True)
    ap.add_argument("--train", type=int, default=300, help="training pairs")
    ap.add_argument("--eval", type=int, default=30, help="evaluation pairs (prompts not in the training set)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--system", help='a system message for every pair (e.g. "" for an empty one)')
    ap.add_argument("--out", required=True, help="output directory")
    a = ap.parse_args()
    rng = random.Random(f"{a.task}:{a.seed}")
    make = reverse_pair if a.task == "reverse" else json_pair
    seen, pairs = set(), []
    while len(pairs) < a.train + a.eval:
        p, r = make(rng)
        if p in seen:
            continue
        seen.add(p)
        pairs.append((p, r))
    os.makedirs(a.out, exist_ok=True)
    for name, part in (("train", pairs[: a.train]), ("eval", pairs[a.train:])):
        path = os.path.join(a.out, name + ".jsonl")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for p, r in part:
                o = {"prompt": p, "response": r}
                if a.system is not None:
                    o["system"] = a.system
                f.write(json.dumps(o, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        print(f"{path}: {len(part)} pairs")


if __name__ == "__main__":
    main()
