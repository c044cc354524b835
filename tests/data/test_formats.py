"""Each source's rows, in the schema of its dataset card, and the exact text the model trains on."""

import pytest

from nano.data.formats import FORMATTERS, final_answer
from nano.data.sources import REGISTRY


def fmt(source: str, row: dict) -> str:
    return FORMATTERS[REGISTRY[source].format](row)


def test_fineweb_edu_passes_text_through() -> None:
    row = {"text": "Photosynthesis turns light into chemical energy.\n\nIt happens in chloroplasts.",
           "id": "<urn:uuid:1>", "url": "https://example.org", "score": 3.1, "int_score": 3}
    assert fmt("fineweb_edu", row) == row["text"]


def test_culturax_passes_text_through() -> None:
    row = {"text": "Der frühe Vogel fängt den Wurm.", "timestamp": "2021/01/01", "url": "https://x.de", "source": "mC4"}
    assert fmt("culturax_de", row) == "Der frühe Vogel fängt den Wurm."


def test_the_stack_passes_content_through() -> None:
    row = {"content": "def add(a, b):\n    return a + b\n", "lang": "Python", "max_stars_repo_path": "m.py"}
    assert fmt("the_stack_python", row) == "def add(a, b):\n    return a + b\n"


def test_gsm8k_drops_calculator_annotations_and_takes_the_answer_after_hashes() -> None:
    row = {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
                    "How many clips did Natalia sell altogether in April and May?",
        "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
                  "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72",
    }
    assert fmt("gsm8k", row) == (
        "<|user|>\nNatalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?\n<|assistant|>\n<think>\n"
        "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.\n"
        "</think>\n\nThe answer is: 72\n<|end|>"
    )


def test_metamathqa_takes_the_answer_after_the_answer_is() -> None:
    row = {"type": "MATH_AnsAug", "original_question": "What is 2+3?", "query": "What is 2+3?",
           "response": "Adding 2 and 3 gives 5.\nThe answer is: 5"}
    assert fmt("metamathqa", row) == (
        "<|user|>\nWhat is 2+3?\n<|assistant|>\n<think>\nAdding 2 and 3 gives 5.\n</think>\n\nThe answer is: 5\n<|end|>"
    )


def test_openorca_keeps_the_system_prompt_and_invents_no_answer() -> None:
    row = {"id": "niv.242684", "system_prompt": "You are an AI assistant. Explain step by step.",
           "question": "Is the sky blue on a clear day?", "response": "Yes. Sunlight scatters off air molecules."}
    assert fmt("openorca", row) == (
        "<|system|>\nYou are an AI assistant. Explain step by step.\n<|user|>\nIs the sky blue on a clear day?\n"
        "<|assistant|>\nYes. Sunlight scatters off air molecules.\n<|end|>"
    )
    no_system = dict(row, system_prompt="", response="Rayleigh scattering favours short wavelengths.\nAnswer: yes")
    assert fmt("openorca", no_system) == (
        "<|user|>\nIs the sky blue on a clear day?\n<|assistant|>\n<think>\n"
        "Rayleigh scattering favours short wavelengths.\nAnswer: yes\n</think>\n\nThe answer is: yes\n<|end|>"
    )


def test_platypus_joins_instruction_and_input_and_reads_a_boxed_answer() -> None:
    row = {"instruction": "Solve for x.", "input": "2x + 1 = 7",
           "output": "Subtract 1: 2x = 6. Divide by 2: x = \\boxed{3}.", "data_source": "MATH/PRM-800K"}
    assert fmt("open_platypus", row) == (
        "<|user|>\nSolve for x.\n\n2x + 1 = 7\n<|assistant|>\n<think>\nSubtract 1: 2x = 6. Divide by 2: x = \\boxed{3}.\n"
        "</think>\n\nThe answer is: 3\n<|end|>"
    )


def test_orca_math_without_a_stated_answer_is_plain() -> None:
    row = {"question": "A box has 3 rows of 4 eggs. How many eggs?", "answer": "3 rows of 4 eggs is 3 * 4 = 12 eggs."}
    assert fmt("orca_math", row) == (
        "<|user|>\nA box has 3 rows of 4 eggs. How many eggs?\n<|assistant|>\n3 rows of 4 eggs is 3 * 4 = 12 eggs.\n<|end|>"
    )


def test_camel_math_uses_message_1_and_message_2() -> None:
    row = {"role_1": "Mathematician_RoleType.ASSISTANT", "topic;": "Algebra", "sub_topic": "Linear equations",
           "message_1": "Solve 3x = 12.", "message_2": "Divide both sides by 3.\nThe final answer is: 4."}
    assert fmt("camel_math", row) == (
        "<|user|>\nSolve 3x = 12.\n<|assistant|>\n<think>\nDivide both sides by 3.\nThe final answer is: 4.\n"
        "</think>\n\nThe answer is: 4\n<|end|>"
    )


def test_ultrachat_alternates_turns() -> None:
    row = {"id": "0", "data": ["Hi, what is RoPE?", "A rotary position embedding.", "Who proposed it?", "Su et al., 2021."]}
    assert fmt("ultrachat", row) == (
        "<|user|>\nHi, what is RoPE?\n<|assistant|>\nA rotary position embedding.\n<|end|>\n"
        "<|user|>\nWho proposed it?\n<|assistant|>\nSu et al., 2021.\n<|end|>"
    )


def test_openschnabeltier_uses_the_german_columns() -> None:
    row = {"instruction": "What is 2+2?", "output": "4", "instruction_de": "Was ist 2+2?",
           "output_de": "Zwei plus zwei ergibt vier.\nAntwort: 4"}
    assert fmt("openschnabeltier", row) == (
        "<|user|>\nWas ist 2+2?\n<|assistant|>\nZwei plus zwei ergibt vier.\nAntwort: 4\n<|end|>"
    )


@pytest.mark.parametrize(
    ("response", "answer"),
    [("Steps.\nThe answer is: 42", "42"), ("Steps.\nFinal answer: x = 2.", "x = 2"), ("so \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
     ("The answer is 42 because reasons.", None), ("Answer: yes\nbut then more text", None)],
)
def test_final_answer_only_when_stated(response: str, answer: str | None) -> None:
    assert final_answer(response) == answer


def test_every_registry_format_exists() -> None:
    assert {spec.format for spec in REGISTRY.values()} <= set(FORMATTERS)
