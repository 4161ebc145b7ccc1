"""The built-in fictional world: made-up entities (countries, cities, people,
species, substances) and their facts, drawn from ``world.seed``, and the
training and evaluation phrasings of each fact and question
(docs/sources.md).
"""

import random
import re
from dataclasses import dataclass

from synthtrain.params import World as WorldParams

ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "br", "dr", "kr", "st", "qu", "sh", "gl"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y"]
CODAS = ["", "", "n", "r", "l", "s", "m", "x", "nd", "rth"]
SUFFIXES = {
    "country": ["ia", "land", "stan", "ora", "ea", "mark"],
    "city": ["ton", "burg", "mouth", "holm", "ford", "vale"],
    "river": ["", "a", "e"],
    "given": ["", "a", "o", "en", "ia"],
    "family": ["son", "er", "ski", "ov", "ez", "in"],
    "language": ["ish", "ese", "ic"],
    "species": [" moth", " lizard", " finch", " beetle", " hare", " eel"],
    "substance": ["ite", "ium", "ine", "ol"],
}
PROFESSIONS = ["astronomer", "poet", "engineer", "cartographer", "physician", "composer", "botanist", "architect", "sculptor", "chemist"]
COLOURS = ["crimson", "amber", "teal", "violet", "silver", "ochre", "indigo", "white", "black", "green"]
DIETS = ["herbivore", "carnivore", "omnivore", "insectivore", "nectarivore"]
COMMON_WORDS = ("apple river garden window silver market candle pencil harbor meadow thunder blanket lantern orchard "
                "mirror basket castle feather island journey kettle ladder marble needle ocean pepper quarry ribbon saddle "
                "tunnel velvet wagon yellow zebra anchor bridge cotton desert engine forest glacier hammer jacket kitten "
                "lemon magnet number object planet rabbit summer tiger umbrella violin winter butter copper dragon falcon "
                "ginger honey insect jungle lizard monkey nickel oyster parrot puzzle rocket shadow timber valley whistle "
                "bottle cactus dinner eagle fabric gravel helmet iron jewel kingdom letter mountain napkin orange pocket "
                "quiet rainbow spider table turtle velvet walnut yogurt").split()
USES = ["dyes", "medicine", "glassmaking", "fuel", "jewellery", "batteries", "fertiliser", "ceramics"]

# Attribute -> (statements, questions). Statements explain a fact in a passage;
# questions ask for it. {e} is the entity, {v} the value. The first
# world.phrasings of each list are used in training; EVAL_QUESTIONS are never.
PHRASES = {
    "capital": (
        ["The capital of {e} is {v}.", "{v} is the capital city of {e}.", "{e} is governed from its capital, {v}.",
         "The seat of government of {e} is the city of {v}.", "Travellers to the capital of {e} arrive in {v}.",
         "In {e}, the capital is {v}.", "{v} has been the capital of {e} for centuries.", "{e}'s capital is {v}."],
        ["What is the capital of {e}?", "Which city is the capital of {e}?", "Name the capital city of {e}.",
         "Where is the seat of government of {e}?", "What city does {e} have as its capital?",
         "Tell me the capital of {e}.", "{e} is governed from which city?", "Which city serves as the capital of {e}?"],
    ),
    "population": (
        ["{e} has a population of {v} million people.", "About {v} million people live in {e}.",
         "The population of {e} is {v} million.", "{e} is home to {v} million inhabitants.",
         "Roughly {v} million people call {e} home.", "With {v} million residents, {e} is a sizeable nation.",
         "A census counted {v} million people in {e}.", "{e} counts {v} million citizens."],
        ["How many million people live in {e}?", "What is the population of {e} in millions?",
         "How populous is {e}, in millions of people?", "How many millions of inhabitants does {e} have?",
         "What population, in millions, does {e} have?", "Give the population of {e} in millions.",
         "In millions, how many people live in {e}?", "How many million residents does {e} have?"],
    ),
    "founded": (
        ["{e} was founded in {v}.", "The founding of {e} dates to the year {v}.", "{e} came into being in {v}.",
         "In {v}, {e} was established.", "Historians date the founding of {e} to {v}.",
         "{e} was established in the year {v}.", "The year {v} saw the founding of {e}.", "{e} dates from {v}."],
        ["In what year was {e} founded?", "When was {e} established?", "What year did {e} come into being?",
         "In which year was {e} founded?", "When did the founding of {e} take place?",
         "What is the founding year of {e}?", "Which year saw {e} established?", "When was {e} founded?"],
    ),
    "language": (
        ["The people of {e} speak {v}.", "{v} is the language of {e}.", "In {e}, most people speak {v}.",
         "The official language of {e} is {v}.", "Visitors to {e} hear {v} spoken everywhere.",
         "{e} uses {v} as its main language.", "{v} is spoken throughout {e}.", "Schools in {e} teach in {v}."],
        ["What language is spoken in {e}?", "Which language do the people of {e} speak?",
         "What is the official language of {e}?", "What is the main language of {e}?",
         "Which language is used in {e}?", "In {e}, what language do people speak?",
         "What do people in {e} speak?", "Name the language of {e}."],
    ),
    "neighbour": (
        ["{e} borders {v}.", "{v} is the neighbour of {e}.", "{e} shares a border with {v}.",
         "To the east of {e} lies its neighbour {v}.", "Travellers leaving {e} by land reach {v}.",
         "The only neighbour of {e} is {v}.", "{e} and {v} are neighbours.", "{e} has {v} as its neighbour."],
        ["Which country borders {e}?", "What is the neighbour of {e}?", "Which country shares a border with {e}?",
         "What country lies next to {e}?", "Where do travellers leaving {e} by land arrive?",
         "Name the neighbour of {e}.", "Which nation neighbours {e}?", "What country does {e} border?"],
    ),
    "country": (
        ["{e} is a city in {v}.", "The city of {e} lies in {v}.", "{e} is located in {v}.",
         "{e} belongs to the country of {v}.", "You will find {e} in {v}.", "{e} is one of the cities of {v}.",
         "{v} includes the city of {e}.", "{e} is a {v} city."],
        ["In which country is {e}?", "Which country is {e} located in?", "What country does {e} belong to?",
         "Where is the city of {e}?", "{e} is a city in which country?", "Name the country that contains {e}.",
         "Which nation is {e} part of?", "In what country does {e} lie?"],
    ),
    "river": (
        ["{e} stands on the {v}.", "The {v} flows through {e}.", "{e} was built on the banks of the {v}.",
         "The river that runs through {e} is the {v}.", "Boats on the {v} pass through {e}.",
         "{e} grew up along the {v}.", "The {v} divides {e} in two.", "{e} lies on the {v}."],
        ["Which river flows through {e}?", "On what river does {e} stand?", "What river runs through {e}?",
         "Name the river of {e}.", "Which river was {e} built on?", "What is the river of {e}?",
         "{e} lies on which river?", "Along which river did {e} grow?"],
    ),
    "born": (
        ["{e} was born in {v}.", "The birth year of {e} is {v}.", "{e} came into the world in {v}.",
         "In {v}, {e} was born.", "Records show that {e} was born in {v}.", "{e}'s life began in {v}.",
         "{e}, born in {v}, grew up quickly.", "The year {v} saw the birth of {e}."],
        ["In what year was {e} born?", "When was {e} born?", "What is the birth year of {e}?",
         "In which year was {e} born?", "What year did {e} come into the world?",
         "Give the year of birth of {e}.", "Which year saw the birth of {e}?", "When did {e}'s life begin?"],
    ),
    "birthplace": (
        ["{e} was born in the city of {v}.", "{e} grew up in {v}.", "The hometown of {e} is {v}.",
         "{v} is where {e} was born.", "{e} is a native of {v}.", "{e} spent childhood in {v}.",
         "{e} came from {v}.", "The birthplace of {e} is {v}."],
        ["In which city was {e} born?", "What is the hometown of {e}?", "Where was {e} born?",
         "Which city is {e} a native of?", "Where did {e} grow up?", "What city does {e} come from?",
         "Name the birthplace of {e}.", "What is the birthplace of {e}?"],
    ),
    "profession": (
        ["{e} worked as a {v}.", "{e} was a famous {v}.", "By profession, {e} was a {v}.",
         "{e} earned a living as a {v}.", "{e} is remembered as a {v}.", "The {v} {e} is widely known.",
         "{e} trained as a {v}.", "As a {v}, {e} became well known."],
        ["What was the profession of {e}?", "What did {e} work as?", "What was {e}'s job?",
         "By profession, what was {e}?", "How did {e} earn a living?", "What is {e} remembered as?",
         "What did {e} train as?", "What kind of work did {e} do?"],
    ),
    "habitat": (
        ["The {e} lives in {v}.", "{v} is the home of the {e}.", "The {e} is found only in {v}.",
         "Wild populations of the {e} live in {v}.", "In {v}, you can see the {e}.",
         "The {e} is native to {v}.", "The {e} makes its home in {v}.", "{v} is where the {e} lives."],
        ["Where does the {e} live?", "In which country is the {e} found?", "What is the home of the {e}?",
         "Where can the {e} be seen in the wild?", "Which country is the {e} native to?",
         "Where is the {e} found?", "Where does the {e} make its home?", "What country does the {e} live in?"],
    ),
    "diet": (
        ["The {e} is a {v}.", "As a {v}, the {e} has a simple diet.", "The {e} feeds as a {v}.",
         "Biologists class the {e} as a {v}.", "The {e}, a {v}, eats accordingly.",
         "By diet, the {e} is a {v}.", "The {e} is known to be a {v}.", "The {e} eats like a {v}."],
        ["What kind of eater is the {e}?", "Is the {e} a herbivore, carnivore or something else?",
         "What is the diet of the {e}?", "How do biologists class the {e} by diet?",
         "What does the {e} feed as?", "What type of diet does the {e} have?",
         "By diet, what is the {e}?", "What sort of feeder is the {e}?"],
    ),
    "lifespan": (
        ["The {e} lives for about {v} years.", "A {e} can live {v} years.", "The lifespan of the {e} is {v} years.",
         "Most {e}s reach an age of {v} years.", "The {e} survives around {v} years.",
         "An adult {e} lives up to {v} years.", "In the wild, the {e} lives {v} years.", "The {e} reaches {v} years of age."],
        ["How many years does the {e} live?", "What is the lifespan of the {e}?", "How long can a {e} live, in years?",
         "To what age does the {e} live?", "How old does a {e} get?", "What age does the {e} reach?",
         "How long does the {e} survive?", "In years, how long does the {e} live?"],
    ),
    "colour": (
        ["The {e} is {v} in colour.", "{e} has a {v} colour.", "The colour of {e} is {v}.",
         "You can recognise {e} by its {v} colour.", "{e} looks {v}.", "{e} appears {v} to the eye.",
         "A sample of {e} is {v}.", "{e} shows a {v} hue."],
        ["What colour is {e}?", "What is the colour of {e}?", "How can you recognise {e} by colour?",
         "What does {e} look like in colour?", "Which colour does {e} have?", "What hue does {e} show?",
         "Describe the colour of {e}.", "What colour does {e} appear?"],
    ),
    "melting_point": (
        ["{e} melts at {v} °C.", "The melting point of {e} is {v} °C.", "Heated to {v} °C, {e} melts.",
         "{e} turns liquid at {v} °C.", "At {v} °C, {e} begins to melt.", "{e} has a melting point of {v} °C.",
         "{e} stays solid below {v} °C.", "Chemists measure {e} melting at {v} °C."],
        ["At what temperature does {e} melt, in °C?", "What is the melting point of {e} in °C?",
         "How hot must {e} be to melt, in °C?", "When does {e} turn liquid, in °C?",
         "What is {e}'s melting point in degrees Celsius?", "At how many °C does {e} melt?",
         "Below what temperature, in °C, does {e} stay solid?", "Give the melting point of {e} in °C."],
    ),
    "used_for": (
        ["{e} is used for {v}.", "The main use of {e} is {v}.", "Industry uses {e} for {v}.",
         "People value {e} for {v}.", "{e} is mined for {v}.", "Most {e} ends up in {v}.",
         "{e} is important for {v}.", "Workers use {e} in {v}."],
        ["What is {e} used for?", "What is the main use of {e}?", "Why does industry use {e}?",
         "For what is {e} valued?", "What is {e} mined for?", "Where does most {e} end up?",
         "What is {e} important for?", "What do workers use {e} in?"],
    ),
}
EVAL_QUESTIONS = {
    "capital": ["I'm curious: which city does {e} call its capital?", "If I visit the capital of {e}, which city am I in?"],
    "population": ["Roughly how many millions of people does {e} count?", "Tell me how many million people {e} has."],
    "founded": ["Do you know the year {e} was founded?", "Tell me the year in which {e} was founded."],
    "language": ["I'm travelling to {e}; which language will I hear?", "Do you know which language {e} speaks?"],
    "neighbour": ["Do you know which country is next door to {e}?", "Tell me the country on the border of {e}."],
    "country": ["I'm going to {e}; which country is that in?", "Do you know which country {e} is in?"],
    "river": ["Do you know the river that {e} stands on?", "Tell me which river passes through {e}."],
    "born": ["Do you know the year {e} was born?", "Tell me the year of {e}'s birth."],
    "birthplace": ["Do you know which city {e} was born in?", "Tell me the city where {e} was born."],
    "profession": ["Do you know what {e} did for a living?", "Tell me the profession {e} had."],
    "habitat": ["Do you know which country the {e} is found in?", "Tell me which country the {e} inhabits."],
    "diet": ["Do you know what kind of eater the {e} is?", "Tell me what the {e} eats, as a diet class."],
    "lifespan": ["Do you know how many years a {e} lives?", "Tell me the number of years a {e} lives."],
    "colour": ["Do you know the colour of {e}?", "Tell me which colour {e} has."],
    "melting_point": ["Do you know how many °C it takes to melt {e}?", "Tell me the temperature in °C at which {e} melts."],
    "used_for": ["Do you know what {e} is used for?", "Tell me what {e} is mainly used for."],
}


A_BEFORE_VOWEL = re.compile(r"(\b[Aa]) ([aeiou])")


@dataclass(frozen=True)
class Entity:
    kind: str
    name: str
    facts: dict[str, str]  # attribute -> value, every value a single word or number
    qa: bool  # whether question-answer training data about it exists


@dataclass(frozen=True)
class Fact:
    entity: Entity
    attribute: str
    value: str

    def statement(self, rng: random.Random, phrasings: int) -> str:
        sentence = rng.choice(PHRASES[self.attribute][0][:phrasings]).format(e=self.entity.name, v=self.value)
        return A_BEFORE_VOWEL.sub(r"\1n \2", sentence)  # "a engineer" -> "an engineer"

    def question(self, rng: random.Random, phrasings: int) -> str:
        return rng.choice(PHRASES[self.attribute][1][:phrasings]).format(e=self.entity.name)


class World:
    def __init__(self, params: WorldParams):
        self.params = params
        self.phrasings = params.phrasings
        rng = random.Random(params.seed)
        used: set[str] = set()

        def name(kind: str) -> str:
            while True:
                stem = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS) for _ in range(rng.randint(1, 2)))
                candidate = (stem + rng.choice(SUFFIXES[kind])).capitalize()
                if candidate not in used and 4 <= len(candidate) <= 12:
                    used.add(candidate)
                    return candidate

        countries = [name("country") for _ in range(params.countries)]
        cities = {c: [name("city") for _ in range(params.cities_per_country)] for c in countries}
        all_cities = [city for group in cities.values() for city in group]
        # Countries border each other in pairs, so "the neighbour of X" has one answer.
        paired = rng.sample(countries, len(countries))
        neighbour = {a: b for i in range(0, len(paired) - 1, 2) for a, b in ((paired[i], paired[i + 1]), (paired[i + 1], paired[i]))}
        entities = []
        for country in countries:
            entities.append(Entity("country", country, {
                "capital": cities[country][0],
                "population": str(rng.randint(1, 90)),
                "founded": str(rng.randint(800, 1950)),
                "language": name("language"),
                **({"neighbour": neighbour[country]} if country in neighbour else {}),
            }, False))
            for city in cities[country]:
                entities.append(Entity("city", city, {"country": country, "river": name("river")}, False))
        for _ in range(params.people):
            entities.append(Entity("person", f"{name('given')} {name('family')}", {
                "born": str(rng.randint(1500, 1990)),
                "birthplace": rng.choice(all_cities),
                "profession": rng.choice(PROFESSIONS),
            }, False))
        for _ in range(params.species):
            entities.append(Entity("species", name("species").lower(), {
                "habitat": rng.choice(countries),
                "diet": rng.choice(DIETS),
                "lifespan": str(rng.randint(2, 80)),
            }, False))
        for _ in range(params.substances):
            entities.append(Entity("substance", name("substance"), {
                "colour": rng.choice(COLOURS),
                "melting_point": str(rng.randint(-90, 2400)),
                "used_for": rng.choice(USES),
            }, False))
        # Question-answer training data exists for a fixed share of each kind
        # of entity; the rest are known only from knowledge passages and web text.
        order = list(range(len(entities)))
        rng.shuffle(order)
        qa_ids = set(order[: round(len(entities) * params.qa_fraction)])
        self.entities = [Entity(e.kind, e.name, e.facts, i in qa_ids) for i, e in enumerate(entities)]
        self.qa_entities = [e for e in self.entities if e.qa]
        self.facts = [Fact(e, a, v) for e in self.entities for a, v in e.facts.items()]
        self.qa_facts = [f for f in self.facts if f.entity.qa]
        self.by_kind = {kind: [e for e in self.entities if e.kind == kind] for kind in ("country", "city", "person", "species", "substance")}
        self.by_name = {e.name: e for e in self.entities}
        self.words = sorted({w.lower() for e in self.entities for w in e.name.split()} | set(PROFESSIONS) | set(COLOURS) | set(USES)
                            | set(COMMON_WORDS))

    def facts_of(self, entity: Entity) -> list[Fact]:
        return [Fact(entity, a, v) for a, v in entity.facts.items()]

    def values_of(self, attribute: str) -> list[str]:
        return sorted({f.value for f in self.facts if f.attribute == attribute})
