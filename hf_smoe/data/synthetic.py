"""A controlled, generated preference set with latent prompt categories (the paper's category-recovery setting, §5.1).

Everything here is **synthetic**: written from templates and slot fillers, seeded, deterministic. Four topically
distinct prompt categories (cooking, programming, health, travel) each have over a thousand distinct natural-language
prompts. Every prompt gets a few candidate responses that give the same advice but differ along four binary
style/content properties (`PROPERTIES`): detailed vs concise, formal vs casual, with vs without a concrete example,
with vs without a safety caveat. Each category has its own annotator whose preference is a fixed function of those
properties (`CATEGORIES[c]["weights"]`, scored by `preference_score`): cooking wants casual then concise,
programming formal then an example, health a caveat then formal, travel no caveat then casual. The rules conflict
(tone: cooking vs programming; caveat: health vs travel), so no single reward over the properties fits every
category while one reward per category does. The category is latent: it is only in the `category` column (and the
annotator id in `user`), never named in the prompt text.

`generate_preference_set` returns a `datasets.Dataset` in the common pair schema. Pairs are formed among the
candidate responses of each prompt, so the number of distinct (prompt, response) texts to embed stays small. See
docs/synthetic-data.md for the design, the defaults and the validation numbers.
"""

import itertools
import random

from datasets import Dataset

from ..errors import InputError
from .schema import PAIR_COLUMNS, PAIR_FEATURES

PROPERTIES = ("detailed", "formal", "example", "caveat")
"""Binary response properties: 1 = detailed / formal / has a concrete example / has a safety caveat;
0 = concise / casual / no example / no caveat."""

# Rule weights: +w rewards the property being 1, -w rewards it being 0. Every category has a primary property
# (weight 2) and a secondary one (weight 1): the primary decides whenever two responses differ on it, the secondary
# breaks the remaining cases, the other two properties are ignored (pairs they alone separate are not formed).
# The conflicts sit on the two properties whose wording is shared by all categories (tone, caveat): cooking wants
# casual, programming formal; health wants a caveat, travel none.
CATEGORIES = {
    "cooking": {
        "description": "home cooking: storing, reheating, seasoning and preparing dishes",
        "weights": {"formal": -2, "detailed": -1},
        "rule": "casual first, then concise (example and caveat do not matter)",
    },
    "programming": {
        "description": "software development: debugging, testing, structuring and maintaining code",
        "weights": {"formal": 2, "example": 1},
        "rule": "formal first, then with a concrete example (length and caveat do not matter)",
    },
    "health": {
        "description": "everyday health: mild symptoms, home care, prevention, when to worry",
        "weights": {"caveat": 2, "formal": 1},
        "rule": "with a safety caveat first, then formal (length and example do not matter)",
    },
    "travel": {
        "description": "trip planning: packing, getting around, timing, lodging, food",
        "weights": {"caveat": -2, "formal": -1},
        "rule": "without a caveat first, then casual (length and example do not matter)",
    },
}

# Tone is carried by how the answer opens; "{core}" is a bare verb phrase ("keep the chili in ..."). The openers and
# the caveats are shared by all categories and come in many wordings, so what a tone or a caveat looks like varies
# far more within a category than between categories.
FORMAL_OPENERS = ("I recommend that you {core}.", "It is advisable to {core}.", "The best approach is to {core}.",
                  "I would suggest that you {core}.", "It would be prudent to {core}.",
                  "The recommended practice is to {core}.", "In general, it is wise to {core}.",
                  "You may wish to {core}.")
CASUAL_OPENERS = ("Honestly, just {core}!", "Easy: just {core}.", "Oh, I'd just {core}!", "Just {core}, easy!",
                  "Yeah, just {core}.", "Ha, simple: {core}!", "Trust me, just {core}!", "No stress, just {core}.")
EXAMPLE_LEADS = ("For example, ", "For instance, ")
# The safety caveat is worded the same way in every category, so a reward cannot tell a wanted (health) caveat from
# an unwanted (travel) one by its words, only by the prompt it answers.
CAVEATS = ("Be careful, and ask an expert if unsure.", "Stay safe, and check with a professional.",
           "Take care, and get expert advice if in doubt.", "Please be careful, since every situation differs.",
           "Use caution, and seek expert help if needed.", "Safety first: ask a professional if unsure.",
           "Be cautious, and get a second opinion.", "Mind the risks, and ask an expert when unsure.")

# Per category: the slot fillers ({item}), optional context sentences put before the question, and question
# types. A question type has two phrasings of the question and the answer parts: `core` (the advice),
# `detail` (the why, added when detailed) and `example` (a concrete instance, added when with example).
_TOPICS = {
    "cooking": {
        "items": ("lasagna", "chili", "roast chicken", "risotto", "fried rice", "lentil soup", "stir-fried noodles",
                  "mac and cheese", "pulled pork", "vegetable curry", "beef stew", "tomato sauce", "meatloaf",
                  "paella", "chicken soup", "shepherd's pie"),
        "contexts": ("", "I'm making dinner for friends this weekend. ", "I meal-prep every Sunday. ",
                     "I'm still finding my way around the kitchen. "),
        "questions": (
            {"ask": ("How should I store leftover {item}?", "How long does leftover {item} keep in the fridge?"),
             "core": "cool the {item} fast and keep it sealed for three days",
             "detail": "A tight lid keeps bacteria out.",
             "example": "a shallow box cools in half an hour."},
            {"ask": ("What's the best way to reheat {item}?", "How do I reheat {item} without ruining it?"),
             "core": "reheat the {item} slowly with a splash of water",
             "detail": "Gentle heat stops the bottom from scorching.",
             "example": "two spoonfuls of water per bowl."},
            {"ask": ("How can I make my {item} taste less bland?", "My {item} always tastes flat, what am I missing?"),
             "core": "salt the {item} in stages and finish it with lemon",
             "detail": "Salt lifts flavor and acid brightens it.",
             "example": "a pinch of salt and half a lemon."},
            {"ask": ("How do I scale up {item} for a big dinner party?",
                     "Can I make {item} for twelve people without it going wrong?"),
             "core": "cook the {item} in two batches, not one giant pot",
             "detail": "Smaller batches cook evenly.",
             "example": "two pans for six each beat one for twelve."},
            {"ask": ("Can I freeze {item} and still have it taste good?", "What's the right way to freeze {item}?"),
             "core": "freeze the {item} flat in bags with the air pressed out",
             "detail": "Flat bags thaw fast and avoid freezer burn.",
             "example": "a labeled bag keeps for three months."},
            {"ask": ("How far ahead can I prepare {item} for a party?", "Can I make {item} the day before I serve it?"),
             "core": "make the {item} a day ahead and reheat it",
             "detail": "The flavors blend overnight.",
             "example": "cook it Friday and serve it Saturday."},
            {"ask": ("How do I keep my {item} from drying out?", "Why does my {item} always come out dry?"),
             "core": "take the {item} off the heat early and rest it covered",
             "detail": "The cover traps the moisture.",
             "example": "pull it five minutes early under foil."},
            {"ask": ("Is there a lighter way to make {item}?", "How can I cut the fat in my {item}?"),
             "core": "use less butter in the {item} and add vegetables",
             "detail": "Vegetables keep it filling with less fat.",
             "example": "swap half the butter for olive oil."},
        ),
    },
    "programming": {
        "items": ("Python script", "JavaScript web app", "Go service", "Rust command-line tool", "Java backend",
                  "C++ game engine", "TypeScript frontend", "Rails app", "Android app", "Django site", "Node.js API",
                  "iOS app", "C# desktop app", "Bash script", "data pipeline", "React dashboard"),
        "contexts": ("", "I'm maintaining an older codebase at work. ", "I'm a junior developer. ",
                     "This is for a side project. "),
        "questions": (
            {"ask": ("How do I find out why my {item} is so slow?",
                     "My {item} got really slow after the last change, where do I start?"),
             "core": "profile the {item} and fix the slowest function first",
             "detail": "Most slowdowns come from one hot spot.",
             "example": "one loop may spend all its time parsing dates."},
            {"ask": ("How should I write tests for my {item}?",
                     "What's a sensible way to add unit tests to my {item}?"),
             "core": "write small unit tests for the parts that change most",
             "detail": "They catch regressions on every commit.",
             "example": "test that an empty cart costs zero."},
            {"ask": ("How do I track down a bug that only happens sometimes in my {item}?",
                     "My {item} fails randomly and I can't reproduce it, any tips?"),
             "core": "log the inputs and timing around the failing code",
             "detail": "Random bugs depend on timing or rare inputs.",
             "example": "log the request ID on every error."},
            {"ask": ("What's a clean way to handle errors in my {item}?",
                     "How should my {item} deal with errors without crashing?"),
             "core": "catch errors at the edges and show clear messages",
             "detail": "This keeps the core logic simple.",
             "example": "if the config is missing, print its path."},
            {"ask": ("Where should my {item} keep API keys and passwords?",
                     "Is it okay to put passwords directly in the code of my {item}?"),
             "core": "load secrets from environment variables, not the code",
             "detail": "Code gets shared, but the environment does not.",
             "example": "read the password from DB_PASSWORD."},
            {"ask": ("How can I make my {item} easier to read and maintain?",
                     "My {item} has turned into a mess, how do I clean it up?"),
             "core": "split the {item} into small, clearly named functions",
             "detail": "Small pieces are easier to test and change.",
             "example": "split main into load_data and save_report."},
            {"ask": ("How should I organize the folders in my {item}?", "What's a good folder layout for my {item}?"),
             "core": "group the files of the {item} by feature, not by type",
             "detail": "Related code then stays together.",
             "example": "keep all user code in one users folder."},
            {"ask": ("How do I keep the libraries in my {item} up to date safely?",
                     "Should I update all the dependencies of my {item} at once?"),
             "core": "pin versions and update one library at a time",
             "detail": "Then you know which update broke something.",
             "example": "bump the HTTP library alone, then run the tests."},
        ),
    },
    "health": {
        "items": ("a sore throat", "lower back pain", "a tension headache", "seasonal allergies", "a sprained ankle",
                  "heartburn", "a mild fever", "a stiff neck", "dry, itchy skin", "a lingering cough",
                  "leg cramps at night", "tired eyes from screens", "a blocked nose", "knee pain after running",
                  "an upset stomach", "sore muscles after the gym"),
        "contexts": ("", "I'm in my thirties and usually fit. ", "This has been bothering me lately. ",
                     "I'd rather avoid medication if I can. "),
        "questions": (
            {"ask": ("What can I do at home to ease {item}?", "Are there simple home remedies for {item}?"),
             "core": "rest, drink plenty of fluids and take it easy",
             "detail": "Mild symptoms usually settle with rest.",
             "example": "two early nights and some warm drinks."},
            {"ask": ("How can I stop {item} from coming back?", "What habits help prevent {item}?"),
             "core": "note when it starts and change the likeliest trigger",
             "detail": "Patterns point to sleep, food or stress.",
             "example": "if it follows late nights, sleep earlier."},
            {"ask": ("When should I worry about {item}?", "How do I know if {item} is something serious?"),
             "core": "watch for high fever, severe pain or no improvement",
             "detail": "Those signs point to more than a minor problem.",
             "example": "pain that wakes you at night."},
            {"ask": ("Is it okay to exercise with {item}?", "Should I skip the gym if I have {item}?"),
             "core": "keep moving gently and skip hard workouts for now",
             "detail": "Light movement helps recovery.",
             "example": "a short walk is fine, leg day can wait."},
            {"ask": ("Can what I eat and drink make a difference with {item}?", "Does diet help with {item}?"),
             "core": "drink more water, eat regular meals and skip alcohol",
             "detail": "Steady meals and fluids support recovery.",
             "example": "swap evening wine for herbal tea."},
            {"ask": ("Could stress be making {item} worse?", "Is there a link between stress and {item}?"),
             "core": "lower your stress with good sleep and slow breathing",
             "detail": "Stress raises tension, which worsens symptoms.",
             "example": "five minutes of slow breathing before bed."},
            {"ask": ("How can I sleep better while dealing with {item}?",
                     "What helps me get a good night's rest with {item}?"),
             "core": "keep a regular bedtime and a cool, dark room",
             "detail": "A steady routine helps the body recover.",
             "example": "lights out at eleven, phone outside."},
            {"ask": ("How long does {item} usually last?", "How many days should {item} take to go away?"),
             "core": "expect it to ease within a few days of self-care",
             "detail": "Minor problems peak early and then fade.",
             "example": "most people feel better by day three."},
        ),
    },
    "travel": {
        "items": ("Lisbon", "Tokyo", "Iceland", "Mexico City", "the Scottish Highlands", "Bali", "New York", "Morocco",
                  "Vienna", "Patagonia", "Vietnam", "Cape Town", "Prague", "the Amalfi Coast", "Seoul", "Peru"),
        "contexts": ("", "I'm planning a trip for next spring. ", "I'm going with my partner. ",
                     "We're on a tight budget. "),
        "questions": (
            {"ask": ("What should I pack for a week in {item}?", "I'm packing for {item} next month, what do I need?"),
             "core": "pack light layers and good walking shoes",
             "detail": "Layers handle changing weather.",
             "example": "a rain jacket and one warm sweater."},
            {"ask": ("How do I get around {item} without a car?",
                     "Is public transport a good way to get around {item}?"),
             "core": "use buses and trains in {item} with a day pass",
             "detail": "Passes cost less than single tickets.",
             "example": "a three-day pass pays off after six rides."},
            {"ask": ("What's the best time of year to visit {item}?", "When should I go to {item} for good weather?"),
             "core": "visit {item} in spring or early autumn",
             "detail": "The weather is mild and crowds are smaller.",
             "example": "late April or late September."},
            {"ask": ("How do I find affordable places to stay in {item}?", "Where can I sleep cheaply in {item}?"),
             "core": "book a guesthouse a bit outside the center",
             "detail": "Outer areas cost less and feel more local.",
             "example": "three stops out can save a third."},
            {"ask": ("How many days do I need in {item}?", "Is a long weekend enough time for {item}?"),
             "core": "plan four or five days in {item}",
             "detail": "That leaves time for one slow day.",
             "example": "two days of sights and one day trip."},
            {"ask": ("How can I avoid the tourist crowds in {item}?",
                     "Are there quiet spots in {item} away from the crowds?"),
             "core": "see the famous spots in {item} early in the morning",
             "detail": "Tour groups arrive mid-morning.",
             "example": "be at the main viewpoint by eight."},
            {"ask": ("What local food should I try in {item}?", "How do I find good local food in {item}?"),
             "core": "eat where locals queue and try the lunch menus",
             "detail": "Lunch menus are the best value.",
             "example": "a set lunch costs half the dinner price."},
            {"ask": ("Is {item} a good place to visit with young kids?", "How do I plan a family trip to {item}?"),
             "core": "plan one main activity a day and rest after lunch",
             "detail": "Kids cope better with a slow pace.",
             "example": "the aquarium in the morning, then a nap."},
        ),
    },
}


def preference_score(category: str, properties) -> int:
    """The category annotator's score of a response with `properties` (a dict or a sequence in `PROPERTIES` order,
    values 0/1): sum over the rule's properties of |weight| * (value if weight > 0 else 1 - value), i.e. |weight|
    points for each wanted property level. Higher is preferred."""
    if not isinstance(properties, dict):
        properties = dict(zip(PROPERTIES, properties))
    return sum(abs(weight) * (properties[name] if weight > 0 else 1 - properties[name])
               for name, weight in CATEGORIES[category]["weights"].items())


def prompt_capacity(category: str) -> int:
    """How many distinct prompts the templates of `category` can produce."""
    topic = _TOPICS[category]
    return len(topic["items"]) * len(topic["contexts"]) * sum(len(q["ask"]) for q in topic["questions"])


def _all_prompts(category: str) -> list:
    """Every (prompt text, question type, slot filler) of a category, in a fixed order."""
    topic = _TOPICS[category]
    return [(context + ask.format(item=item), question, item)
            for question in topic["questions"] for ask in question["ask"]
            for item in topic["items"] for context in topic["contexts"]]


def render_response(category: str, question: dict, item: str, properties, rng: random.Random) -> str:
    """The answer to `question` about `item` with the given `PROPERTIES` values (dict or sequence)."""
    if not isinstance(properties, dict):
        properties = dict(zip(PROPERTIES, properties))
    core = question["core"].format(item=item)
    openers = FORMAL_OPENERS if properties["formal"] else CASUAL_OPENERS
    parts = [rng.choice(openers).format(core=core)]
    if properties["detailed"]:
        parts.append(question["detail"])
    if properties["example"]:
        parts.append(rng.choice(EXAMPLE_LEADS) + question["example"].format(item=item))
    if properties["caveat"]:
        parts.append(rng.choice(CAVEATS))
    return " ".join(parts)


def generate_preference_set(num_prompts: int = 360, *, seed: int = 0, label_noise: float = 0.1,
                            responses_per_prompt: int = 5) -> Dataset:
    """A synthetic, seeded preference set with latent prompt categories (category recovery, paper §5.1).

    `num_prompts` distinct prompts, spread evenly over the categories of `CATEGORIES` (the first categories get one
    more when it does not divide); each gets `responses_per_prompt` candidate responses with distinct property
    vectors, and every pair of them that the category's rule (`preference_score`) does not tie becomes a row,
    labelled by the category's annotator and then flipped with probability `label_noise`. Rows of one prompt are
    contiguous and prompts come in a seeded order with the categories interleaved, so a contiguous split never
    shares a prompt across splits and keeps the categories balanced.

    Returns:
        `datasets.Dataset` with columns `prompt` (`[{"role": "user", "content": ...}]`), `chosen`, `rejected`,
        `category` (latent, for evaluation only), `attribute` (None), `criterion` (None), `user` (the annotator id,
        `"annotator-<category>"`).
    """
    if not 0.0 <= label_noise <= 1.0:
        raise InputError(f"label_noise: {label_noise} is not a probability in [0, 1].")
    if not 2 <= responses_per_prompt <= 2 ** len(PROPERTIES):
        raise InputError(f"responses_per_prompt: {responses_per_prompt} must be between 2 and "
                         f"{2 ** len(PROPERTIES)} (the number of distinct property combinations).")
    names = list(CATEGORIES)
    if num_prompts < len(names):
        raise InputError(f"num_prompts: {num_prompts} is fewer than the {len(names)} categories.")
    rng = random.Random(seed)
    counts = [num_prompts // len(names) + (index < num_prompts % len(names)) for index in range(len(names))]
    drawn = {}
    for name, count in zip(names, counts):
        pool = _all_prompts(name)
        if count > len(pool):
            raise InputError(f"num_prompts: {num_prompts} needs {count} {name} prompts but its templates give "
                             f"only {len(pool)} distinct ones.")
        drawn[name] = rng.sample(pool, count)
    # Interleave categories (round-robin over a per-round shuffled order) so any prefix is balanced.
    order = []
    for round_index in range(max(counts)):
        round_names = [name for name, count in zip(names, counts) if round_index < count]
        rng.shuffle(round_names)
        order.extend((name, drawn[name][round_index]) for name in round_names)
    combos = list(itertools.product((0, 1), repeat=len(PROPERTIES)))
    rows = {column: [] for column in PAIR_COLUMNS}
    for name, (text, question, item) in order:
        drawn_combos = rng.sample(combos, responses_per_prompt)
        while len({preference_score(name, combo) for combo in drawn_combos}) == 1:  # all tied: no pair, redraw
            drawn_combos = rng.sample(combos, responses_per_prompt)
        candidates = [(combo, render_response(name, question, item, combo, rng)) for combo in drawn_combos]
        for (first, first_text), (second, second_text) in itertools.combinations(candidates, 2):
            first_score, second_score = preference_score(name, first), preference_score(name, second)
            if first_score == second_score:
                continue
            chosen, rejected = (first_text, second_text) if first_score > second_score else (second_text, first_text)
            if rng.random() < label_noise:
                chosen, rejected = rejected, chosen
            rows["prompt"].append([{"role": "user", "content": text}])
            rows["chosen"].append(chosen)
            rows["rejected"].append(rejected)
            rows["category"].append(name)
            rows["attribute"].append(None)
            rows["criterion"].append(None)
            rows["user"].append(f"annotator-{name}")
    return Dataset.from_dict(rows, features=PAIR_FEATURES)
