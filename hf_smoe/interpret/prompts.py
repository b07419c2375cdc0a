"""The describer's and the judge's prompts (Fig. 4 and Fig. 5, word for word, and a shorter judge question that
small judges read better), filled with prompt texts, and the reading of the describer's answer.

Everything here is text in, text out: which model answers is the generators' business, what the answers mean for
the experts is `describe`'s and `fidelity`'s.
"""

import re

from ..errors import InputError
from ..features import as_messages

# Fig. 4, word for word; the paper prints it as running text, the line breaks here restore its sections.
DESCRIBER_PROMPT = """Task Overview
You are a machine learning researcher analyzing a sparse mixture-of-experts reward model. The model contains a \
router that assigns each input prompt to one or more experts. You are trying to understand what feature of the input \
prompt causes a specific expert to receive high routing weight. Each dataset example consists only of a user prompt. \
These prompts were selected because this expert was strongly activated for them, meaning the router assigned this \
expert a high weight. Your goal is to identify the common feature shared by these prompts, and to describe this \
feature as a concise, natural language concept.

Instructions
First, inspect each prompt and consider what concrete property it has.
Then, synthesize the single feature that is most consistently shared across the prompts.
The feature should describe the input prompt itself, not the model, the router, or the expert.
For example, the common feature might be:
"asks for emotionally supportive advice"
"requests factual explanation of a technical concept"
"asks for creative writing or brainstorming"
"contains a safety-sensitive or potentially harmful request"
"asks for evaluation of competing options"
If the prompts do not share a clear topic, focus on the type of user intent, task format, reasoning style, domain, \
constraint, or interaction pattern that best explains why the expert fires.

Additional Rules
Rules about the feature you identify:
The feature should be objective and concrete.
Err on the side of being concise.
The feature should be an attribute that could be present in an individual prompt.
Do not refer to "the expert", "the router", "activation", or "these examples" in the final answer.
Do not use vague descriptions such as "is helpful", "is complex", or "is high quality".
Avoid overly broad concepts such as "general question" unless no more specific feature is apparent.
If the shared feature is a negation, describe it directly, e.g., "does not specify a concrete task or goal".

Prompts
----------------
{examples}
----------------

Output
Do not output anything besides the feature.
Output exactly one description, starting with "-" and surrounded by quotes.
Your response is:-\""""

# The describer's templates by name: "paper" is Fig. 4; "short" asks the same question in a few lines without example
# features, which small local describers copy instead of reading the prompts, and ends where the feature begins.
DESCRIBER_PROMPTS = {"paper": DESCRIBER_PROMPT,
                     "short": "Here are {count} user prompts that share one feature: a topic, a domain, a requested "
                              "style or tone, a kind of task, or a constraint.\n\n{examples}\n\nWhat feature do "
                              "all of these prompts share that most other prompts do not have? Write it as one short "
                              "phrase of at most 12 words that could be said of any single one of them, and nothing "
                              "else."}

# Fig. 5, word for word.
JUDGE_PROMPT = """You are a binary classifier. Task:
Determine whether the input text expresses the feature described below.
Feature description:
{description}
Input text:
{input_text}
Decision rule:
Answer YES if the input text clearly matches or expresses the feature description.
Answer NO otherwise.
Output format:
Return exactly one token: YES or NO.
Answer:"""

# The judge's templates by name: "paper" is Fig. 5; "question" puts the feature first and asks about the quoted prompt
# directly, which small local judges separate better on P(YES) (their YES threshold then needs calibrating).
JUDGE_PROMPTS = {"paper": JUDGE_PROMPT,
                 "question": 'Feature: {description}\n\nUser prompt:\n"""\n{input_text}\n"""\n\n'
                             "Does the user prompt have the feature? Answer YES or NO."}

# Character budgets of one prompt (its beginning and end are kept): 20 examples must fit a small describer's context.
DESCRIBER_EXAMPLE_CHARS = 600
JUDGE_EXAMPLE_CHARS = 1500


def prompt_text(prompt) -> str:
    """A prompt as the LLMs read it: a single user message as its text, a conversation as `Role: text` lines."""
    messages = as_messages(prompt)
    if len(messages) == 1:
        return messages[0]["content"].strip()
    return "\n".join(f"{message['role'].capitalize()}: {message['content'].strip()}" for message in messages)


def shorten(text: str, max_chars: int) -> str:
    """`text` within `max_chars`, keeping its beginning and its end (a conversation's last turn matters most)."""
    if len(text) <= max_chars:
        return text
    half = (max_chars - 5) // 2
    return text[:half].rstrip() + " ... " + text[len(text) - half:].lstrip()


def describer_prompt(examples, variant: str = "paper") -> str:
    """The describer's `variant` template (Fig. 4 by default) filled with `examples` (prompt texts), numbered."""
    listed = "\n\n".join(f"Prompt {i}:\n{shorten(text, DESCRIBER_EXAMPLE_CHARS)}"
                         for i, text in enumerate(examples, start=1))
    return describer_template(variant).replace("{count}", str(len(examples))).replace("{examples}", listed)


def describer_template(variant: str) -> str:
    """The describer's template named `variant`."""
    return template("describer_prompt", DESCRIBER_PROMPTS, variant)


def template(field: str, templates: dict, variant: str) -> str:
    """The template named `variant` of `templates`; an unknown name is refused, naming `field`, before any model
    runs."""
    if variant not in templates:
        raise InputError(f"{field}: unknown variant {variant!r}; choose from {', '.join(templates)}.")
    return templates[variant]


def judge_template(variant: str) -> str:
    """The judge's template named `variant`."""
    return template("judge_prompt", JUDGE_PROMPTS, variant)


def judge_prompt(description: str, text: str, variant: str = "paper") -> str:
    """The judge's `variant` template (Fig. 5 by default) for one (description, prompt); filled by replacement, as
    prompt texts may hold braces."""
    return judge_template(variant).replace("{description}", description).replace(
        "{input_text}", shorten(text, JUDGE_EXAMPLE_CHARS))


def parse_description(raw: str) -> tuple[str, bool]:
    """(description, followed_format) from a describer's answer.

    Fig. 4 ends inside the answer format (`-"`), so a model that follows it writes `-"feature"`, or continues with
    `feature"`. On the first non-empty line: `-"..."` anywhere wins; otherwise leading labels (`The feature you
    identified is:`, repeated or not) are dropped, then a quote at the start opens the description, a text before the
    first quote is the description when the quotes are odd in number (the closing one), and the first quoted span when
    they are even. A line without quotes (a model that ignores the format) is taken whole, without list markers,
    surrounding quotes and a final period.
    """
    line = next((line for line in raw.strip().splitlines() if line.strip(" -*\"'")), "").strip()
    quoted = re.search(r'-\s*"([^"]+)"', line)
    if quoted:
        return _clean(quoted.group(1)), True
    while (label := re.match(r'"?[^":]*:\s*', line)) and line[label.end():].strip(' "'):
        line = line[label.end():]
    if '"' not in line:
        return _clean(line), False
    if line.startswith('"'):
        return _clean(line[1:].split('"')[0]), True
    parts = line.split('"')
    return _clean(parts[0] if len(parts) % 2 == 0 else parts[1]), True


def _clean(text: str) -> str:
    text = " ".join(text.strip().lstrip("-*• ").strip("\"'*` ").rstrip(".").split())
    for lead_in in LEAD_INS:  # "Each of these prompts shares the feature of being a business style" -> "a business..."
        text = lead_in.sub("", text, count=1)
    return text


# What a describer writes before the feature when it answers in a sentence about the prompts.
LEAD_INS = (re.compile(r"^(?:each|all|every|these)\s+(?:one\s+)?(?:of\s+)?(?:these\s+|the\s+)?(?:user\s+)?prompts?\s+"
                       r"(?:all\s+)?(?=\w)", re.IGNORECASE),
            re.compile(r"^(?:(?:shares?|has|have)\s+(?:the|a)\s+(?:common\s+|shared\s+)?feature\s*(?:of\s+)?"
                       r"(?:being\s+)?|"
                       r"(?:the\s+)?(?:common\s+|shared\s+)?feature(?:\s+shared)?(?:\s+by\s+(?:these|all)\s+prompts)?"
                       r"\s+is\s*:?\s*)(?=\w)", re.IGNORECASE))

# A describer that answers one of the prompts, or talks about the prompts instead of naming a feature.
ANSWER_OPENINGS = re.compile(r"^(?:sure|certainly|of course|here (?:is|are)|i (?:am|can|will|would)|as an ai|"
                             r"\d+[.)])\b", re.IGNORECASE)
META_WORDS = re.compile(r"\b(?:these prompts|other prompts|the prompts|the expert|the router|these examples|"
                        r"activation)\b", re.IGNORECASE)
MAX_DESCRIPTION_WORDS = 20
COPIED_WORDS = 4  # a run of this many words shared with the instructions (or all of a shorter description) is copied
ECHOED_WORDS = 6  # a run of this many words shared with one of the shown prompts is copied from it


def description_problem(description: str, examples, variant: str = "paper") -> str | None:
    """What makes a parsed description not a description of the shown `examples`, in words, or None: empty, copied
    from the `variant` template's own text (its instructions or its example features), copied from one of the
    prompts, an answer to a prompt (an answer's opening or more than 20 words), or a sentence about the prompts,
    the expert or the router rather than a feature of a prompt."""
    words = _words(description)
    if not words:
        return "empty answer"
    instructions = set(_runs(_words(describer_template(variant)), min(COPIED_WORDS, len(words))))
    if any(run in instructions for run in _runs(words, min(COPIED_WORDS, len(words)))):
        return "copies the instructions"
    shown = {run for text in examples for run in _runs(_words(text), ECHOED_WORDS)}
    if any(run in shown for run in _runs(words, ECHOED_WORDS)):
        return "copies a prompt"
    if ANSWER_OPENINGS.match(description) or len(words) > MAX_DESCRIPTION_WORDS:
        return "answers a prompt instead of describing"
    if META_WORDS.search(description):
        return "speaks of the prompts or the model, not of a feature"
    return None


def _words(text: str) -> list:
    """The words of `text` cut to their first 5 letters, so a copy with another ending ("emotional supportive
    advice") still matches."""
    return [word[:5] for word in re.findall(r"[a-z0-9']+", text.lower())]


def _runs(words: list, n: int) -> list:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
