"""Verifiable tasks over the built-in world: arithmetic, word problems, string
tasks and format-constrained tasks, each with a worked solution and an exact
answer. The training generator and the held-out evaluation set both draw from
here; they differ only in the phrasings they use (``heldout=True`` picks the
phrasings reserved for evaluation).

Every solution that has a single answer ends with the line ``Final answer: X``.
"""

import json
import random

from synthtrain.world.facts import EVAL_QUESTIONS, Fact, World

PLACES = ["ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands"]

ARITHMETIC_ASKS = {
    False: ["What is {expr}?", "Calculate {expr}.", "Compute {expr}.", "Find the value of {expr}.", "Solve: {expr} = ?"],
    True: ["Work out {expr} for me.", "Please evaluate {expr}."],
}
STRING_ASKS = {
    "reverse": {False: ["Reverse the word '{w}'.", "Write '{w}' backwards.", "Spell '{w}' in reverse order."],
                True: ["What do you get when you write the letters of '{w}' from last to first?"]},
    "count": {False: ["How many times does the letter '{c}' appear in '{w}'?", "Count the letter '{c}' in the word '{w}'."],
              True: ["In the word '{w}', how often can you find the letter '{c}'?"]},
    "sort": {False: ["Sort these words alphabetically: {ws}.", "Put these words in alphabetical order: {ws}."],
             True: ["Arrange the following words from A to Z: {ws}."]},
}
ONE_WORD = {False: ["Answer in one word.", "Reply with a single word.", "Use one word only."], True: ["Give just one word as your answer."]}
BULLETS = {False: ["List exactly {n} facts about {e} as bullet points.", "Give exactly {n} bullet points about {e}."],
           True: ["Write a bulleted list with precisely {n} items describing {e}."]}
JSON_ASKS = {False: ["Reply with a JSON object with the keys {keys} describing {e}.", "Describe {e} as JSON with keys {keys}."],
             True: ["Return only a JSON object about {e} that has exactly these keys: {keys}."]}


def add_steps(a: int, b: int) -> list[str]:
    steps, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        total = x + y + carry
        place = PLACES[min(i, len(PLACES) - 1)]
        steps.append(f"Add the {place}: {x} + {y}" + (f" + {carry} carried" if carry else "") + f" = {total}. Write {total % 10}" + (", carry 1." if total >= 10 else "."))
        carry = total // 10
    if carry:
        steps.append("Write the final carry 1 in front.")
    return steps


def multiply_steps(a: int, b: int) -> list[str]:
    steps, partials = [], []
    for i, digit in enumerate(str(b)[::-1]):
        partial = a * int(digit) * 10**i
        partials.append(partial)
        steps.append(f"Multiply {a} by {digit}" + (f" {PLACES[i]}" if i else "") + f": {partial}.")
    if len(partials) > 1:
        steps.append(f"Add the partial products: {' + '.join(map(str, partials))} = {sum(partials)}.")
    return steps


def arithmetic(rng: random.Random, level: int, heldout: bool = False) -> tuple[str, str, str]:
    """Returns (question, worked solution, answer)."""
    if level == 1:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        expr, answer, steps = f"{a} + {b}", a + b, add_steps(a, b)
    elif level == 2:
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        if rng.random() < 0.5:
            expr, answer, steps = f"{a} + {b}", a + b, add_steps(a, b)
        else:
            a, b = max(a, b), min(a, b)
            expr, answer = f"{a} - {b}", a - b
            steps = [f"Subtract: {a} - {b} = {a - b}.", f"Check by adding back: {a - b} + {b} = {a}."]
    elif level == 3:
        a, b = rng.randint(12, 999), rng.randint(2, 99)
        expr, answer, steps = f"{a} × {b}", a * b, multiply_steps(a, b)
    else:
        a, b, c = rng.randint(100, 9999), rng.randint(100, 9999), rng.randint(10, 999)
        expr, answer = f"{a} + {b} - {c}", a + b - c
        steps = [f"First add: {a} + {b}."] + add_steps(a, b) + [f"So {a} + {b} = {a + b}.", f"Then subtract {c}: {a + b} - {c} = {answer}."]
    question = rng.choice(ARITHMETIC_ASKS[heldout]).format(expr=expr)
    if level == 4:
        question += " Show each step."
    return question, "\n".join(steps + [f"Final answer: {answer}"]), str(answer)


# Word-problem scenarios. Each has training phrasings and held-out phrasings of
# the same situation (False / True), as facts have: evaluation asks familiar
# situations in unfamiliar words.
SCENARIOS = {
    "jars": {
        False: ["{person} sells {n} jars of {substance} in {city} at {price} coins each.",
                "At the market in {city}, {person} sold {n} jars of {substance} for {price} coins a jar."],
        True: ["In {city}, {person} has {n} jars of {substance} to sell, each for {price} coins, and sells them all."],
    },
    "crates": {
        False: ["A boat on the {river} carries {a} crates. At {city} it unloads {b} crates and loads {c} more.",
                "A river boat with {a} crates stops at {city}, where {b} crates come off and {c} go on."],
        True: ["There are {a} crates on a boat travelling the {river}. In {city}, {b} crates are taken off and {c} are put on."],
    },
    "train": {
        False: ["A train leaves {city} for {other} at {speed} kilometres per hour and travels for {hours} hours.",
                "Going from {city} to {other}, a train runs for {hours} hours at {speed} kilometres per hour."],
        True: ["For {hours} hours a train moves at {speed} kilometres per hour on its way from {city} to {other}."],
    },
}


def word_problem(rng: random.Random, world: World, level: int, heldout: bool = False) -> tuple[str, str, str]:
    person = rng.choice(world.by_kind["person"]).name
    city, other = rng.sample(world.by_kind["city"], 2) if len(world.by_kind["city"]) > 1 else [world.by_kind["city"][0]] * 2
    substance = rng.choice(world.by_kind["substance"]).name
    scenario = rng.choice(list(SCENARIOS))
    say = rng.choice(SCENARIOS[scenario][heldout])
    if scenario == "jars":
        n, price = rng.randint(2, 40), rng.randint(2, 60)
        text = say.format(person=person, n=n, substance=substance, city=city.name, price=price)
        steps, total = [f"Earnings from the jars: {n} × {price} = {n * price} coins."], n * price
        question = f"How many coins does {person} earn?"
        if level >= 2:
            cost = rng.randint(1, total)
            text += f" The stall costs {cost} coins to rent."
            steps.append(f"Subtract the rent: {total} - {cost} = {total - cost} coins.")
            total -= cost
            question = f"How many coins does {person} keep?"
    elif scenario == "crates":
        a, b, c = rng.randint(20, 500), rng.randint(1, 19), rng.randint(1, 200)
        text = say.format(river=city.facts["river"], a=a, b=b, c=c, city=city.name)
        steps, total = [f"After unloading: {a} - {b} = {a - b}.", f"After loading: {a - b} + {c} = {a - b + c}."], a - b + c
        question = "How many crates are on board now?"
        if level >= 2:
            d = rng.randint(1, total)
            text += f" At {other.name} it unloads {d} crates."
            steps.append(f"After {other.name}: {total} - {d} = {total - d}.")
            total -= d
    else:
        speed, hours = rng.randint(20, 120), rng.randint(2, 9)
        text = say.format(city=city.name, other=other.name, speed=speed, hours=hours)
        steps, total = [f"Distance = speed × time = {speed} × {hours} = {speed * hours} kilometres."], speed * hours
        question = "How many kilometres does it travel?"
        if level >= 2:
            extra = rng.randint(1, 50)
            text += f" Then it travels {extra} more kilometres on a branch line."
            steps.append(f"Add the branch line: {total} + {extra} = {total + extra} kilometres.")
            total += extra
    if level >= 3:
        groups = rng.choice([2, 3, 4, 5])
        total_even = total - total % groups
        if total_even != total:
            steps.append(f"Keep a multiple of {groups}: {total} - {total % groups} = {total_even}.")
        text += f" The result, rounded down to a multiple of {groups}, is split into {groups} equal parts."
        steps.append(f"Each part: {total_even} / {groups} = {total_even // groups}.")
        total = total_even // groups
        question = "How big is each part?"
    if level >= 4:
        question += " Explain your reasoning step by step."
    return f"{text} {question}", "\n".join(steps + [f"Final answer: {total}"]), str(total)


def string_task(rng: random.Random, world: World, level: int, heldout: bool = False) -> tuple[str, str, str]:
    word = rng.choice(world.words)
    task = ("reverse", "count", "sort", "sort")[min(level, 4) - 1] if rng.random() < 0.7 else rng.choice(("reverse", "count", "sort"))
    if task == "reverse":
        answer = word[::-1]
        steps = [f"The letters of '{word}' are {', '.join(word)}.", f"Read from last to first: {', '.join(answer)}."]
        question = rng.choice(STRING_ASKS["reverse"][heldout]).format(w=word)
    elif task == "count":
        letter = rng.choice(word) if rng.random() < 0.8 else rng.choice("aeiou")
        positions = [str(i + 1) for i, c in enumerate(word) if c == letter]
        answer = str(len(positions))
        steps = [f"Spell '{word}': {', '.join(word)}.", f"'{letter}' appears at positions {', '.join(positions)}." if positions else f"'{letter}' does not appear."]
        question = rng.choice(STRING_ASKS["count"][heldout]).format(c=letter, w=word)
    else:
        words = rng.sample(world.words, min(len(world.words), 2 + level))
        answer = ", ".join(sorted(words))
        steps = [f"Compare the words letter by letter: {', '.join(sorted(words))}."]
        question = rng.choice(STRING_ASKS["sort"][heldout]).format(ws=", ".join(words))
    return question, "\n".join(steps + [f"Final answer: {answer}"]), answer


def fact_question(rng: random.Random, fact: Fact, phrasings: int, heldout: bool = False) -> str:
    if heldout:
        return rng.choice(EVAL_QUESTIONS[fact.attribute]).format(e=fact.entity.name)
    return fact.question(rng, phrasings)


def format_task(rng: random.Random, world: World, level: int, heldout: bool = False) -> tuple[str, str, dict]:
    """Returns (instruction, response, check), where check says how a response is verified."""
    entity = rng.choice(world.qa_entities if not heldout and world.qa_entities else world.entities)
    facts = world.facts_of(entity)
    kind = rng.choice(("one_word", "bullets", "json"))
    if kind == "one_word":
        fact = rng.choice(facts)
        instruction = f"{fact_question(rng, fact, world.phrasings, heldout)} {rng.choice(ONE_WORD[heldout])}"
        return instruction, fact.value, {"kind": "one_word", "answer": fact.value}
    if kind == "bullets":
        n = min(len(facts), 1 + level if level < 3 else len(facts))
        chosen = rng.sample(facts, n)
        instruction = rng.choice(BULLETS[heldout]).format(n=n, e=entity.name)
        return instruction, "\n".join(f"- {f.statement(rng, world.phrasings)}" for f in chosen), {"kind": "bullets", "count": n}
    chosen = sorted(rng.sample(facts, min(len(facts), 1 + min(level, 3))), key=lambda f: f.attribute)
    keys = ["name"] + [f.attribute for f in chosen]
    instruction = rng.choice(JSON_ASKS[heldout]).format(e=entity.name, keys=", ".join(keys))
    obj = {"name": entity.name, **{f.attribute: f.value for f in chosen}}
    return instruction, json.dumps(obj), {"kind": "json", "keys": keys, "values": obj}
