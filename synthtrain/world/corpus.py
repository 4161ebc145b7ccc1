"""``kind: builtin``: the project's deterministic synthetic-data generator of
instruction, knowledge and web records about the world of ``facts.py``, with
controlled flaws at the rates in ``sources.<name>.flaws`` (ground truth in
``meta.flaw``). Chunks are seeded one by one and generated in parallel
(docs/sources.md).
"""

import os
import random
from collections import Counter

import pyarrow as pa
from tqdm import tqdm

from synthtrain.world import tasks
from synthtrain.world.facts import Fact, World
from synthtrain.parallel import parallel_map
from synthtrain.params import BuiltinSource, Params
from synthtrain.records import SCHEMA, content_of, dump_meta, record_id

CHUNK = 5_000
PERSONAS = ["You are a helpful assistant.", "You are a patient tutor.", "You are an expert on the geography, history and nature of the world.",
            "You are a friendly assistant.", "You are a maths teacher.", "You are a knowledgeable librarian.", "You are a careful research assistant.",
            "You are an assistant for students.", ""]
STYLES = ["Keep answers short.", "Explain your reasoning step by step.", "Answer accurately and completely.", "Be brief and precise.",
          "Answer clearly.", "Use plain language.", ""]
INSTRUCTION_FAMILIES = ("fact_qa", "arithmetic", "word_problem", "string", "format", "rewrite")
INSTRUCTION_WEIGHTS = (0.3, 0.17, 0.15, 0.13, 0.15, 0.1)
KNOWLEDGE_FAMILIES = ("entity_lesson", "comparison_lesson", "arithmetic_lesson", "conversion_lesson", "sorting_lesson", "table_lesson")
KNOWLEDGE_WEIGHTS = (0.45, 0.15, 0.1, 0.1, 0.05, 0.15)
WEB_FAMILIES = ("forum", "blog", "product", "news")
INSTRUCTION_FLAWS = ("wrong_answer", "truncated", "repetition", "refusal", "off_topic")
REFUSALS = [
    "I'm sorry, but as an AI language model I cannot help with that request.",
    "I apologize, but I am not able to provide that information.",
    "As an AI, I don't have the ability to answer this question.",
    "I'm sorry, I can't assist with that.",
]
MENUS = ["Home | News | Forum | Shop | About | Contact", "Home > Articles > Science", "Menu ☰ Search 🔍 Log in Sign up",
         "HOME  ABOUT  BLOG  CONTACT", "Skip to content | Main menu | Accessibility"]
COOKIES = ["We use cookies to improve your experience. By continuing you accept our cookie policy. [Accept] [Settings]",
           "This site uses cookies. Learn more › OK", "🍪 Cookies help us deliver our services. Accept all | Reject all"]
FOOTERS = ["© {y} {site}. All rights reserved.", "Privacy Policy | Terms of Use | Sitemap", "Follow us on Facebook, Twitter and Instagram!",
           "Subscribe to our newsletter for the latest updates.", "Share: Facebook | Twitter | Email | Print"]
OPINIONS = ["I think that's right.", "Great post, thanks for sharing!", "Not sure about this, but it matches what I read.",
            "Can anyone confirm?", "My grandfather told me the same thing.", "Interesting — I never knew that.",
            "This is the best summary I've found.", "lol same", "Bookmarked for later."]
FILLER = ["Here’s what you need to know.", "Read on for the details.", "It’s a topic many readers ask about.",
          "We checked the facts for you.", "The answer might surprise you.", "Below we explain it in plain words."]
NEAR_DUPLICATE_MIN_WORDS = 80
SYNONYMS = {"is": "happens to be", "the": "that", "about": "roughly", "many": "numerous", "big": "large", "city": "town",
            "people": "folks", "lives": "dwells", "used": "employed", "country": "nation", "famous": "renowned",
            "First": "To begin,", "Then": "Next,", "Write": "Put down", "Add": "Sum", "so": "therefore", "live": "reside"}
GIBBERISH_LETTERS = "abcdefghijklmnopqrstuvwxyz      .,"


class CorpusGenerator:
    def __init__(self, params: Params, source: str):
        self.world = World(params.world)
        self.source = source
        self.params: BuiltinSource = params.sources[source]
        shares = self.params.shares
        self.categories = ("instruction", "knowledge", "web")
        self.category_weights = (shares.instruction, shares.knowledge, shares.web)
        # A flaw that needs a category with no share (refusals in a web-only source) is not injected.
        impossible = set(INSTRUCTION_FLAWS) if shares.instruction == 0 else set()
        impossible |= {"boilerplate_only"} if shares.web == 0 else set()
        impossible |= {"gibberish"} if shares.knowledge + shares.web == 0 else set()
        self.flaws = [(name, rate) for name, rate in self.params.flaws.model_dump().items() if rate > 0 and name not in impossible]
        self.phrasings = self.world.phrasings

    # --- instruction ----------------------------------------------------------
    def turn(self, rng: random.Random, family: str, level: int) -> tuple[str, str, str | None]:
        """One exchange of a family: (user, assistant, final answer or None)."""
        world = self.world
        if family == "fact_qa":
            fact = rng.choice(world.qa_facts or world.facts)
            answer = fact.statement(rng, self.phrasings)
            if level >= 2:
                more = rng.choice(world.facts_of(fact.entity))
                if more.attribute != fact.attribute:
                    answer += " " + more.statement(rng, self.phrasings)
            return fact.question(rng, self.phrasings), answer, fact.value
        if family == "arithmetic":
            return tasks.arithmetic(rng, level)
        if family == "word_problem":
            return tasks.word_problem(rng, world, level)
        if family == "string":
            return tasks.string_task(rng, world, level)
        if family == "format":
            instruction, response, check = tasks.format_task(rng, world, level)
            return instruction, response, check.get("answer")
        # rewrite
        fact = rng.choice(world.facts)
        sentence = fact.statement(rng, self.phrasings)
        how = rng.randrange(3)
        if how == 0:
            ask, out = f"Rewrite this sentence in capital letters: {sentence}", sentence.upper()
        elif how == 1:
            ask, out = f"Rewrite this sentence as a question: {sentence}", fact.question(rng, self.phrasings)
        else:
            out = next((o for o in (fact.statement(rng, self.phrasings) for _ in range(4)) if o != sentence), sentence)
            ask = f"Say this another way: {sentence}"
        if level >= 3:
            ask += " Keep it to one sentence."
        return ask, out, None

    def instruction(self, rng: random.Random, family: str, level: int) -> tuple[list[dict], dict]:
        """A chat whose last exchange is of ``family``; harder levels add earlier
        exchanges of any family, as a multi-turn conversation. Also returns the
        last exchange's final answer, which the flaws corrupt."""
        families = [rng.choices(INSTRUCTION_FAMILIES, INSTRUCTION_WEIGHTS)[0] for _ in range(rng.randint(0, level - 2) if level >= 3 else 0)]
        messages = []
        system = f"{rng.choice(PERSONAS)} {rng.choice(STYLES)}".strip()
        if system and rng.random() < 0.7:
            messages.append({"role": "system", "content": system})
        for turn_family in families + [family]:
            user, assistant, answer = self.turn(rng, turn_family, level)
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        return messages, {"answer": answer}

    # --- knowledge ------------------------------------------------------------
    def knowledge(self, rng: random.Random, family: str) -> str:
        world, p = self.world, self.phrasings
        if family == "entity_lesson":
            entity = rng.choice(world.entities)
            facts = world.facts_of(entity)
            rng.shuffle(facts)
            related = [Fact(world.by_name[f.value], a, v) for f in facts if f.value in world.by_name
                       for a, v in world.by_name[f.value].facts.items() if rng.random() < 0.5]
            lines = [rng.choice([f"Lesson: {entity.name}", f"Chapter {rng.randint(1, 40)}. {entity.name}", f"About {entity.name}"])]
            lines.append(" ".join(f.statement(rng, p) for f in facts + related))
            if entity.qa:
                fact = rng.choice(facts)
                lines.append(f"Exercise: {fact.question(rng, p)}\nSolution: {fact.statement(rng, p)}")
            return "\n\n".join(lines)
        if family == "comparison_lesson":
            attribute = rng.choice(["population", "founded", "born", "lifespan", "melting_point"])
            kind = {"population": "country", "founded": "country", "born": "person", "lifespan": "species", "melting_point": "substance"}[attribute]
            a, b = rng.sample(world.by_kind[kind], 2) if len(world.by_kind[kind]) > 1 else [world.by_kind[kind][0]] * 2
            fa, fb = Fact(a, attribute, a.facts[attribute]), Fact(b, attribute, b.facts[attribute])
            bigger = a if int(fa.value) >= int(fb.value) else b
            change = rng.randint(2, 500)
            return (f"Comparing {a.name} and {b.name}\n\n{fa.statement(rng, p)} {fb.statement(rng, p)} "
                    f"The difference is {abs(int(fa.value) - int(fb.value))}, so {bigger.name} has the larger value.\n"
                    f"Exercise: add {change} to the value for {a.name}.\nSolution: {fa.value} + {change} = {int(fa.value) + change}.")
        if family == "arithmetic_lesson":
            level = rng.randint(1, 4)
            question, solution, answer = tasks.arithmetic(rng, level)
            method = ["To add numbers in columns, line up the digits and add from the ones place, carrying when a column reaches ten.",
                      "To subtract, take the smaller number away from the larger, then check by adding back.",
                      "To multiply by a number with several digits, multiply by each digit in turn and add the partial products.",
                      "For a longer sum, do one operation at a time from left to right."][level - 1]
            return f"Worked example: {question}\n\n{method}\n\n{solution}"
        if family == "conversion_lesson":
            unit, small, factor = rng.choice([("kilometres", "metres", 1000), ("hours", "minutes", 60), ("kilograms", "grams", 1000),
                                               ("days", "hours", 24), ("metres", "centimetres", 100)])
            x, y = rng.randint(2, 999), rng.randint(2, 999)
            return (f"Converting {unit} to {small}\n\nOne of {unit} equals {factor} {small}, so multiply by {factor}.\n"
                    f"Example: {x} {unit} = {x} × {factor} = {x * factor} {small}.\n"
                    f"Exercise: convert {y} {unit} to {small}.\nSolution: {y} × {factor} = {y * factor} {small}.")
        if family == "sorting_lesson":
            words = rng.sample(world.words, min(len(world.words), rng.randint(3, 7)))
            return (f"Sorting words alphabetically\n\nCompare the first letters; if they are equal, compare the next ones.\n"
                    f"Unsorted: {', '.join(words)}.\nSorted: {', '.join(sorted(words))}.")
        kind = rng.choice(["country", "person", "species", "substance"])
        rows = rng.sample(world.by_kind[kind], min(len(world.by_kind[kind]), rng.randint(2, 5)))
        shared = [a for a in rows[0].facts if all(a in r.facts for r in rows)]
        attributes = rng.sample(shared, rng.randint(min(2, len(shared)), len(shared)))
        table = ["| name | " + " | ".join(attributes) + " |", "|" + "---|" * (len(attributes) + 1)]
        table += ["| " + " | ".join([r.name] + [r.facts[a] for a in attributes]) + " |" for r in rows]
        row, attribute = rng.choice(rows), rng.choice(attributes)
        lesson = ("Reading a table\n\n" + "\n".join(table) + f"\n\nTo read a value, find the row of {row.name} and the column "
                  f"'{attribute}'. {Fact(row, attribute, row.facts[attribute]).statement(rng, p)}")
        numeric = [a for a in attributes if row.facts[a].lstrip("-").isdigit()]
        if numeric:
            a, k = rng.choice(numeric), rng.randint(2, 9)
            lesson += f"\nExercise: multiply the {a} of {row.name} by {k}.\nSolution: {row.facts[a]} × {k} = {int(row.facts[a]) * k}."
        return lesson

    # --- web ------------------------------------------------------------------
    def web(self, rng: random.Random, family: str, boilerplate_only: bool = False) -> str:
        world, p = self.world, self.phrasings
        site = rng.choice(world.by_kind["city"]).name + rng.choice([" Times", " Forum", " Shop", " Daily", " Blog", "Online"])
        head = [rng.choice(MENUS)] + ([rng.choice(COOKIES)] if rng.random() < 0.5 else [])
        foot = rng.sample(FOOTERS, rng.randint(1, 3))
        foot = [line.format(y=rng.randint(2005, 2025), site=site) for line in foot]
        if boilerplate_only:
            seo = rng.choice(world.words)
            return "\n".join(head + [f"best {seo} | cheap {seo} | {seo} online | buy {seo}"] * rng.randint(1, 3) + foot + rng.sample(MENUS, 2))
        entity = rng.choice(world.entities)
        facts = [f.statement(rng, p) for f in rng.sample(world.facts_of(entity), rng.randint(1, len(entity.facts)))]
        date = f"{rng.randint(1, 28)} {rng.choice(['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'])} {rng.randint(2005, 2025)}"
        if family == "forum":
            body = [f"Re: question about {entity.name}", f"Posted by user{rng.randint(1, 99999)} » {date}", " ".join(facts)]
            body += [f"Reply by user{rng.randint(1, 99999)}: {rng.choice(OPINIONS)}" for _ in range(rng.randint(1, 4))]
        elif family == "blog":
            body = [f"Everything about {entity.name} ({date} · {rng.randint(2, 12)} min read)", rng.choice(FILLER), " ".join(facts), rng.choice(FILLER)]
        elif family == "product":
            body = [f"{entity.name} – official guide, {rng.choice(['paperback', 'poster', 'map', 'e-book'])} edition",
                    f"★★★★☆ ({rng.randint(1, 999)} reviews) · Price: {rng.randint(3, 300)} coins", "Description: " + " ".join(facts),
                    "Add to cart | Add to wishlist"]
        else:
            body = [f"{site} — news about {entity.name}", date, " ".join(facts), f"Reporting by {rng.choice(world.by_kind['person']).name}."]
        if rng.random() < 0.3:
            seo = entity.name
            body.append(f"{seo} facts, {seo} history, {seo} guide, best {seo} information")
        return "\n".join(head + body + foot)

    # --- flaws ----------------------------------------------------------------
    def corrupt(self, rng: random.Random, flaw: str, messages: list[dict], extra: dict, donor: list[dict] | None) -> list[dict]:
        """Apply an instruction flaw to the last assistant turn."""
        messages = [dict(m) for m in messages]
        reply = messages[-1]
        if flaw == "wrong_answer":
            answer = extra["answer"]
            if answer.lstrip("-").isdigit():
                wrong = str(int(answer) + rng.choice([-1, 1]) * rng.randint(1, 9 + abs(int(answer)) // 10))
            else:
                wrong = answer[::-1] if len(set(answer)) > 1 else answer + "s"
            at = reply["content"].rfind(answer)  # the final answer is stated last
            if at >= 0:
                reply["content"] = reply["content"][:at] + wrong + reply["content"][at + len(answer):]
        elif flaw == "truncated":
            words = reply["content"].split(" ")
            if len(words) < 3:
                words = (reply["content"] + " because it is the answer that I will now explain in more detail").split(" ")
            reply["content"] = " ".join(words[: max(1, int(len(words) * rng.uniform(0.3, 0.7)))]).rstrip(".")
        elif flaw == "repetition":
            sentence = reply["content"].split("\n")[0]
            reply["content"] = reply["content"] + ("\n" + sentence) * rng.randint(6, 15)
        elif flaw == "refusal":
            reply["content"] = rng.choice(REFUSALS)
        elif flaw == "off_topic":
            reply["content"] = donor[-1]["content"]
        return messages

    # --- one chunk ------------------------------------------------------------
    def chunk(self, index: int, count: int) -> tuple[pa.Table, Counter, Counter]:
        """``count`` records from the chunk's own seed, with their counts by category and by flaw."""
        rng = random.Random(self.params.seed * 1_000_003 + index)
        columns = {name: [] for name in SCHEMA.names}
        # Recent clean records to copy; near duplicates copy only long ones, so
        # that a few edits leave them near (5-word-shingle Jaccard >= 0.8).
        recent = {"exact_duplicate": [], "near_duplicate": []}
        flaw_names = [f for f, _ in self.flaws]
        flaw_cum = [sum(r for _, r in self.flaws[: i + 1]) for i in range(len(self.flaws))]
        categories, flaws = Counter(), Counter()
        for _ in range(count):
            u = rng.random()
            flaw = next((flaw_names[i] for i, c in enumerate(flaw_cum) if u < c), None)
            if flaw in recent and not recent[flaw]:
                flaw = None
            messages = text = None
            if flaw in ("exact_duplicate", "near_duplicate"):
                category, messages, text, meta = rng.choice(recent[flaw])
                meta = dict(meta, flaw=flaw, duplicate_of=record_id(messages, text))
                if flaw == "near_duplicate":
                    messages, text = self.near_duplicate(rng, messages, text)
            elif flaw in INSTRUCTION_FLAWS:
                category = "instruction"
                families = ("fact_qa", "arithmetic", "word_problem", "string") if flaw == "wrong_answer" else INSTRUCTION_FAMILIES
                family, level = rng.choice(families), rng.randint(1, 4)
                messages, extra = self.instruction(rng, family, level)
                donor = self.instruction(rng, rng.choice(INSTRUCTION_FAMILIES), level)[0] if flaw == "off_topic" else None
                messages = self.corrupt(rng, flaw, messages, extra, donor)
                meta = {"family": family, "level": level, "flaw": flaw}
            elif flaw == "boilerplate_only":
                category, family = "web", rng.choice(WEB_FAMILIES)
                text, meta = self.web(rng, family, boilerplate_only=True), {"family": family, "flaw": flaw}
            elif flaw == "gibberish":
                category = rng.choices(("knowledge", "web"), self.category_weights[1:])[0]
                text = "".join(rng.choice(GIBBERISH_LETTERS) for _ in range(rng.randint(80, 600)))
                meta = {"family": "gibberish", "flaw": flaw}
            else:
                category, messages, text, meta = self.clean(rng)
                if flaw == "mojibake":
                    messages, text = mojibake(messages, text)
                    meta = dict(meta, flaw=flaw)
                else:
                    long_enough = len(content_of(messages, text).split()) >= NEAR_DUPLICATE_MIN_WORDS
                    for pool in ("exact_duplicate", "near_duplicate") if long_enough else ("exact_duplicate",):
                        recent[pool].append((category, messages, text, meta))
                        if len(recent[pool]) > 200:
                            recent[pool].pop(rng.randrange(len(recent[pool])))
            meta.setdefault("flaw", None)
            meta["generator"] = "builtin"
            categories[category] += 1
            if flaw:
                flaws[flaw] += 1
            columns["id"].append(record_id(messages, text))
            columns["source"].append(self.source)
            columns["category"].append(category)
            columns["messages"].append(messages)
            columns["text"].append(text)
            columns["meta"].append(dump_meta(meta))
        return pa.Table.from_pydict(columns, schema=SCHEMA), categories, flaws

    def clean(self, rng: random.Random):
        category = rng.choices(self.categories, self.category_weights)[0]
        if category == "instruction":
            family, level = rng.choices(INSTRUCTION_FAMILIES, INSTRUCTION_WEIGHTS)[0], rng.randint(1, 4)
            messages, _ = self.instruction(rng, family, level)
            return category, messages, None, {"family": family, "level": level}
        if category == "knowledge":
            family = rng.choices(KNOWLEDGE_FAMILIES, KNOWLEDGE_WEIGHTS)[0]
            return category, None, self.knowledge(rng, family), {"family": family}
        family = rng.choice(WEB_FAMILIES)
        return category, None, self.web(rng, family), {"family": family}

    def near_duplicate(self, rng: random.Random, messages, text):
        """A paraphrase (a few words replaced by synonyms) or a few word edits
        (delete, repeat or swap a neighbour) in the longest part."""
        def edit(s: str) -> str:
            words = s.split(" ")
            edits = max(1, len(words) // 100)
            synonyms = [i for i, w in enumerate(words) if w in SYNONYMS]
            if synonyms and rng.random() < 0.5:
                for i in rng.sample(synonyms, min(len(synonyms), edits)):
                    words[i] = SYNONYMS[words[i]]
                return " ".join(words)
            for _ in range(edits):
                spoken = [i for i, w in enumerate(words) if w.strip()]  # edits of "" would vanish in normalisation
                i = rng.choice(spoken)
                op = rng.randrange(3)
                if op == 0 and len(spoken) > 1:
                    del words[i]
                elif op == 1 or spoken[0] == i or words[spoken[spoken.index(i) - 1]] == words[i]:
                    words.insert(i, words[i])
                else:  # swap with the previous, different word
                    j = spoken[spoken.index(i) - 1]
                    words[i], words[j] = words[j], words[i]
            return " ".join(words)

        if text is not None:
            return None, edit(text)
        messages = [dict(m) for m in messages]
        longest = max(range(len(messages)), key=lambda i: len(messages[i]["content"]))
        messages[longest]["content"] = edit(messages[longest]["content"])
        return messages, None


def mojibake(messages, text):
    """UTF-8 bytes read as Windows-1252, the classic 'â€™' corruption; ASCII-only
    text first gets typographic quotes and dashes so the damage is visible."""
    def garble(s: str) -> str:
        s = s.replace("'", "’").replace(" - ", " – ").replace(". ", ". — ", 1)
        if s.isascii():
            s = s.replace(" ", " – ", 1) if " " in s else s + "…"
        return s.encode("utf-8").decode("cp1252", errors="replace")

    if text is not None:
        return None, garble(text)
    return [{"role": m["role"], "content": garble(m["content"]) if m["role"] == "assistant" else m["content"]} for m in messages], None


def generate(params: Params, source: str, sink, workers: int = 0) -> tuple[Counter, Counter]:
    """Write ``max_samples`` records to ``sink`` (a RecordWriter); returns the
    counts by category and by flaw."""
    total = params.sources[source].max_samples
    jobs = [(i, min(CHUNK, total - i * CHUNK)) for i in range((total + CHUNK - 1) // CHUNK)]
    workers = workers or os.cpu_count() or 1
    categories, flaws = Counter(), Counter()
    generator = CorpusGenerator(params, source)
    with tqdm(total=total, unit="rec", desc=f"builtin {source}", mininterval=1) as bar:
        for table, chunk_categories, chunk_flaws in parallel_map(lambda job: generator.chunk(*job), jobs, workers):
            sink.write_table(table)
            categories += chunk_categories
            flaws += chunk_flaws
            bar.update(table.num_rows)
    return categories, flaws
