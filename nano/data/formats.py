"""Rows in each source's real Hub schema -> the documents the model trains on.

Reasoning and instruction rows become one chat template, so the model learns to think step by step:

    <|user|>
    {question}
    <|assistant|>
    <think>
    {steps}
    </think>

    The answer is: {answer}
    <|end|>

The answer line is written only when the row states its final answer in a form we can read without
guessing: GSM8K's `#### answer`, MetaMathQA's `The answer is: answer`, and for free-form responses
(Orca-Math, CAMEL, Platypus, OpenOrca, OpenSchnabeltier) a last line of the form `The answer is: X`,
`Final answer: X` or `Answer: X` (any case), or a final `\\boxed{X}`. Otherwise nothing is invented:
the response follows `<|assistant|>` directly, with no think block (`plain_answer`).
An OpenOrca system prompt, when present, comes first as a `<|system|>` turn. UltraChat conversations
become alternating turns, each assistant turn closed by `<|end|>`. Web text and code pass through.
Formatters return the document without BOS/EOS; the packer adds those.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

SPECIAL_TOKENS: tuple[str, ...] = ("<|user|>", "<|assistant|>", "<|system|>", "<|end|>", "<think>", "</think>")

Row = Mapping[str, Any]

_CALCULATOR = re.compile(r"<<[^<>]*>>")
_ANSWER_LINE = re.compile(r"^\s*(?:the\s+(?:final\s+)?answer\s+is|final\s+answer|answer)\s*[:：]\s*(.+?)\s*$", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")


def reasoning(question: str, steps: str, answer: str, system: str = "") -> str:
    head = f"<|system|>\n{system.strip()}\n" if system.strip() else ""
    return (
        f"{head}<|user|>\n{question.strip()}\n<|assistant|>\n<think>\n{steps.strip()}\n</think>\n\n"
        f"The answer is: {answer.strip()}\n<|end|>"
    )


def plain_answer(question: str, response: str, system: str = "") -> str:
    head = f"<|system|>\n{system.strip()}\n" if system.strip() else ""
    return f"{head}<|user|>\n{question.strip()}\n<|assistant|>\n{response.strip()}\n<|end|>"


def final_answer(response: str) -> str | None:
    """The stated final answer of a free-form response, or None when it is not stated unambiguously."""
    lines = [line for line in response.strip().splitlines() if line.strip()]
    if lines:
        match = _ANSWER_LINE.match(lines[-1])
        if match:
            return match.group(1).rstrip(".")
    boxed = _BOXED.findall(response)
    return boxed[-1].strip() if boxed else None


def response_with_answer(question: str, response: str, system: str = "") -> str:
    answer = final_answer(response)
    if answer is None:
        return plain_answer(question, response, system)
    return reasoning(question, response, answer, system)


def format_text(row: Row) -> str:
    return row["text"]


def format_the_stack(row: Row) -> str:
    return row["content"]


def format_gsm8k(row: Row) -> str:
    steps, _, answer = row["answer"].rpartition("####")
    return reasoning(row["question"], _CALCULATOR.sub("", steps), answer)


def format_metamathqa(row: Row) -> str:
    steps, marker, answer = row["response"].rpartition("The answer is:")
    if not marker:
        return plain_answer(row["query"], row["response"])
    return reasoning(row["query"], steps, answer)


def format_openorca(row: Row) -> str:
    return response_with_answer(row["question"], row["response"], row.get("system_prompt") or "")


def format_platypus(row: Row) -> str:
    question = row["instruction"] if not (row.get("input") or "").strip() else f"{row['instruction']}\n\n{row['input']}"
    return response_with_answer(question, row["output"])


def format_orca_math(row: Row) -> str:
    return response_with_answer(row["question"], row["answer"])


def format_camel_math(row: Row) -> str:
    return response_with_answer(row["message_1"], row["message_2"])


def format_ultrachat(row: Row) -> str:
    turns = []
    for index, text in enumerate(row["data"]):
        turns.append(f"<|user|>\n{text.strip()}" if index % 2 == 0 else f"<|assistant|>\n{text.strip()}\n<|end|>")
    return "\n".join(turns)


def format_schnabeltier(row: Row) -> str:
    return response_with_answer(row["instruction_de"], row["output_de"])


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
