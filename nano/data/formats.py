"""Rows in each source's real Hub schema -> the documents the model trains on.

Every reasoning source (GSM8K, MetaMathQA, OpenOrca, Open-Platypus, Orca-Math, CAMEL-Math, OpenSchnabeltier)
becomes one template, so that the whole reasoning half of the mix teaches thinking before answering:

    <|system|>                      (OpenOrca's system prompt, when the row has one)
    {system}
    <|user|>
    {question}
    <|assistant|>
    <think>
    {steps}
    </think>

    {final answer}
    <|end|>

The rule (`split_answer`): the response's reasoning goes inside <think>; after </think> comes its final answer,
exactly once. The statement the final answer is read from leaves the think block, and so does a last
sentence before it that only restates the same value (PRM-800K's "So the answer is 91." above its
`# Answer`); steps that compute the answer stay (GSM8K's "48+24 = 72 clips altogether"). The final answer
is, first match wins:
  1. `The answer is: X`, when the response states X as
     - a last block `# Answer` / `# Antwort` followed by X (PRM-800K rows of Open-Platypus, OpenSchnabeltier),
     - a last line `#### X` (GSM8K), `The answer is: X` (MetaMathQA), `Final answer: X`, `Answer: X`,
       `The correct answer is: X`, `Antwort: X` (any case; a trailing full stop is dropped),
     - the whole response being a choice letter, `B`, `(B)` or `B.` (ReClor rows of Open-Platypus),
     - a concluding sentence with a `\\boxed{X}`,
     - a concluding sentence that states exactly one `var = value` (X is `x = 2`) or exactly one number
       (X is that number, `89` from "So, the number is 89.");
  2. otherwise the response's own conclusion, verbatim: its last paragraph when it has several (a code
     block whole), else the last line of a paragraph of several lines if that line is prose, else its last
     sentence; a response that is one structured block (JSON, a list) is its own answer. Nothing is
     invented: no value is guessed and no line is left empty.
A marker with nothing after it (`The answer is:` alone) is not an answer: it is dropped and the rule
applies to the rest (a response that is nothing but such a marker is a bad row). When nothing is left for the think block (the response is only its answer: a choice
letter, one sentence, one number), the block holds NO_STEPS, a constant that says so. It is the non-empty
counterpart of the empty think block of hybrid-reasoning chat templates: the model learns that a direct
answer follows, and nothing about the question is made up (no restated question, no invented steps).

GSM8K's `<<48/2=24>>` calculator annotations are dropped. UltraChat conversations become alternating turns,
each assistant turn closed by `<|end|>`. Web text and code pass through. Formatters return the document
without BOS/EOS; the packer adds those.

A row that lacks a field its formatter needs, or has it null, empty or not text, raises BadRow (naming the
field); the stream skips and counts it (nano/data/streams.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

SPECIAL_TOKENS: tuple[str, ...] = ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<think>", "</think>")
NO_STEPS = "(no worked steps)"
"""The think block of a response that is only its answer."""

Row = Mapping[str, Any]


class BadRow(ValueError):
    """A row that cannot become a document (a required field missing, null, empty or not text)."""


_CALCULATOR = re.compile(r"<<[^<>]*>>")
_HEADING_ANSWER = re.compile(r"(?:^|\n)[ \t]*#{1,6}[ \t]*(?:answer|antwort)[ \t]*:?[ \t]*\n\s*(?P<x>[^\n]+?)\s*$",
                             re.IGNORECASE)
_ANSWER_LINE = re.compile(
    r"^\s*(?:####"
    r"|(?:(?:so|thus|hence|therefore),?\s+)?(?:the\s+)?(?:(?:final|correct|right)\s+)?answer(?:\s+is)?\s*[:：]"
    r"|(?:die\s+)?(?:(?:endgültige|richtige)\s+)?antwort(?:\s+(?:ist|lautet))?\s*[:：])"
    r"\s*(?P<x>.*?)\s*$",
    re.IGNORECASE,
)
_CHOICE = re.compile(r"^\(?(?P<x>[A-J])\)?[.:)]?$")
_BOXED = re.compile(r"\\boxed\{(?P<x>(?:[^{}]|\{(?:[^{}]|\{[^{}]*\})*\})*)\}")
_VALUE = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?"
_NUMBER = re.compile(rf"(?<![\w.,]){_VALUE}%?(?!\w)")
_VAR_VALUE = re.compile(rf"(?<![\w\\])(?P<x>[a-zA-Z](?:_\w+)?\s*=\s*{_VALUE})(?!\w|\.\d)")
# A full stop ends a sentence only when whitespace and a capital, digit, quote, `$` or `\\` follow.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[$\\A-ZÄÖÜ0-9])")
_WORD = re.compile(r"[^\W\d_]{2,}")
_ABBREVIATIONS = {"mr", "mrs", "ms", "dr", "prof", "st", "vs", "etc", "e.g", "i.e", "fig", "eq", "no", "approx",
                  "z", "b", "d", "h", "bzw", "ca", "nr", "vgl", "usw", "dh", "zb", "inkl", "evtl"}


# ----------------------------------------------------------------------------------------------- fields


def required(row: Row, name: str) -> str:
    """A text field the document cannot do without."""
    if name not in row:
        raise BadRow(f"field '{name}' is missing")
    value = row[name]
    if value is None:
        raise BadRow(f"field '{name}' is null")
    if not isinstance(value, str):
        raise BadRow(f"field '{name}' is {type(value).__name__}, not text")
    if not value.strip():
        raise BadRow(f"field '{name}' is empty")
    return value


def optional(row: Row, name: str) -> str:
    """A text field that may be missing, null or empty (a system prompt, Platypus' `input`)."""
    value = row.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRow(f"field '{name}' is {type(value).__name__}, not text")
    return (value or "").strip()


# ----------------------------------------------------------------------------------------------- the rule


def _sentence_start(text: str) -> int:
    """Where the last sentence of `text` starts (a line ending in ':' joins the line after it)."""
    line_start = text.rfind("\n") + 1
    start = line_start
    for match in _SENTENCE_END.finditer(text, line_start):
        before = text[line_start : match.start()].rstrip("\"')]")
        word = re.search(r"([\w.]+)\.$", before)
        if word and (word.group(1).lower() in _ABBREVIATIONS or (len(word.group(1)) == 1 and word.group(1).isalpha())
                     or before.strip()[:-1].isdigit()):
            continue  # "Mr. Jackson", "z. B. Die", a list item's "2. "
        start = match.end()
    if start == line_start and line_start > 0 and text[:line_start].rstrip().endswith(":"):
        return _sentence_start(text[:line_start].rstrip())
    return start


def _stated_value(sentence: str) -> str | None:
    """X when a concluding sentence states it: a `\\boxed{X}`, one `var = value`, or one number."""
    boxed = _BOXED.findall(sentence)
    if boxed:
        return boxed[-1].strip() or None
    pairs = _VAR_VALUE.findall(sentence)
    if len(pairs) == 1:
        return re.sub(r"\s*=\s*", " = ", pairs[0])
    if pairs:
        return None
    numbers = _NUMBER.findall(sentence)
    return numbers[0] if len(numbers) == 1 else None


def _stated(steps: str, value: str) -> tuple[str, str]:
    """(steps, `The answer is: value`), without a last sentence of the steps that only restates the value in
    words or as a `#### value` line (a last equation such as `x = 5` is a step and stays)."""
    start = _sentence_start(steps) if steps else 0
    last = steps[start:]
    restates = last.lstrip().startswith("####") or ("=" not in last and len(_WORD.findall(last)) >= 3)
    if steps and restates and _stated_value(last) == value:
        steps = steps[:start]
    return steps.strip(), f"The answer is: {value}"


def _conclusion(text: str) -> int:
    """Where a response's own conclusion starts: its last paragraph (a code fence kept whole), else the last line
    of a paragraph of several lines when that line is a sentence, else its last sentence; 0 = all of it."""
    paragraphs = re.split(r"(\n[ \t]*\n)", text)
    start = len(text) - len(paragraphs[-1])
    while paragraphs[-1].count("```") % 2 and len(paragraphs) > 2:  # inside a fence: take the whole block
        paragraphs = paragraphs[:-3] + ["".join(paragraphs[-3:])]
        start = len(text) - len(paragraphs[-1])
    if start > 0:
        return start
    if "\n" in text:
        line_start = text.rfind("\n") + 1
        return line_start if re.search(r"[.!?][\"')\]]*$", text) else 0
    return _sentence_start(text)


def split_answer(response: str) -> tuple[str, str]:
    """(steps, final answer line) of a free-form response, by the rule in the module docstring."""
    text = response.strip()
    heading = _HEADING_ANSWER.search(text)
    if heading and heading.group("x").strip():
        return _stated(text[: heading.start()].strip(), heading.group("x").strip())
    head, _, last_line = text.rpartition("\n")
    marker = _ANSWER_LINE.match(last_line)
    if marker:
        value = marker.group("x").strip().removesuffix(".").strip()
        if value:
            return _stated(head.strip(), value)
        if not head.strip():
            raise BadRow("the response is an answer marker with no answer")
        return split_answer(head)
    choice = _CHOICE.match(text)
    if choice:
        return "", f"The answer is: {choice.group('x')}"
    start = _sentence_start(text)
    value = _stated_value(text[start:])
    if value:
        return _stated(text[:start].strip(), value)
    start = _conclusion(text)
    return text[:start].strip(), text[start:].strip()


def chat_prompt(question: str) -> str:
    """A user turn and the start of the assistant's: how every reasoning document opens, and what a chat
    prompt to the trained model is (nano-generate --chat, the exported chat template)."""
    return f"<|user|>\n{question.strip()}\n<|assistant|>\n"


def reasoning(question: str, response: str, system: str = "") -> str:
    """The reasoning template around a question and its free-form response."""
    steps, answer = split_answer(response)
    head = f"<|system|>\n{system.strip()}\n" if system.strip() else ""
    return f"{head}{chat_prompt(question)}<think>\n{steps or NO_STEPS}\n</think>\n\n{answer}\n<|end|>"


# ----------------------------------------------------------------------------------------------- one per schema


def format_text(row: Row) -> str:
    return required(row, "text")


def format_the_stack(row: Row) -> str:
    return required(row, "content")


def format_gsm8k(row: Row) -> str:
    """question, answer ("... <<48/2=24>>24 ...\\n#### 72")."""
    return reasoning(required(row, "question"), _CALCULATOR.sub("", required(row, "answer")))


def format_metamathqa(row: Row) -> str:
    """query, response ("...\\nThe answer is: 72"), type, original_question."""
    return reasoning(required(row, "query"), required(row, "response"))


def format_openorca(row: Row) -> str:
    """id, system_prompt (may be empty), question, response."""
    return reasoning(required(row, "question"), required(row, "response"), optional(row, "system_prompt"))


def format_platypus(row: Row) -> str:
    """instruction, input (usually empty), output, data_source."""
    instruction, extra = required(row, "instruction").strip(), optional(row, "input")
    return reasoning(f"{instruction}\n\n{extra}" if extra else instruction, required(row, "output"))


def format_orca_math(row: Row) -> str:
    """question, answer (prose ending in a concluding sentence)."""
    return reasoning(required(row, "question"), required(row, "answer"))


def format_camel_math(row: Row) -> str:
    """role_1, topic;, sub_topic, message_1 (the problem), message_2 (the solution)."""
    return reasoning(required(row, "message_1"), required(row, "message_2"))


def format_schnabeltier(row: Row) -> str:
    """instruction, output and their German translations instruction_de, output_de (which we train on)."""
    return reasoning(required(row, "instruction_de"), required(row, "output_de"))


def format_ultrachat(row: Row) -> str:
    """id, data: alternating user / assistant utterances."""
    turns = row.get("data")
    if not isinstance(turns, list) or not turns:
        raise BadRow("field 'data' is " + ("missing" if "data" not in row else "not a non-empty list of turns"))
    parts = []
    for index, text in enumerate(turns):
        if not isinstance(text, str) or not text.strip():
            raise BadRow(f"field 'data' turn {index} is {'null' if text is None else 'empty or not text'}")
        parts.append(f"<|user|>\n{text.strip()}" if index % 2 == 0 else f"<|assistant|>\n{text.strip()}\n<|end|>")
    return "\n".join(parts)


FORMATTERS: dict[str, Callable[[Row], str]] = {
    "text": format_text,
    "the_stack": format_the_stack,
    "gsm8k": format_gsm8k,
    "metamathqa": format_metamathqa,
    "openorca": format_openorca,
    "platypus": format_platypus,
    "orca_math": format_orca_math,
    "camel_math": format_camel_math,
    "ultrachat": format_ultrachat,
    "schnabeltier": format_schnabeltier,
}
