"""Each source's rows, in the schema of its dataset card, and the exact text the model trains on."""

import re

import pytest

from nano.data.formats import FORMATTERS, NO_STEPS, BadRow, split_answer
from nano.data.sources import REGISTRY
from tests.data import real_rows as real

TEMPLATE = re.compile(r"^(?:<\|system\|>\n.+?\n)?<\|user\|>\n.+?\n<\|assistant\|>\n"
                      r"<think>\n(?P<think>.+?)\n</think>\n\n(?P<answer>.+)\n<\|end\|>$", re.DOTALL)


def fmt(source: str, row: dict) -> str:
    return FORMATTERS[REGISTRY[source].format](row)


def doc(question: str, think: str, answer: str, system: str = "") -> str:
    """The reasoning template, spelled out."""
    head = f"<|system|>\n{system}\n" if system else ""
    return f"{head}<|user|>\n{question}\n<|assistant|>\n<think>\n{think}\n</think>\n\n{answer}\n<|end|>"


def test_text_and_code_pass_through() -> None:
    assert fmt("fineweb_edu", real.FINEWEB_EDU[0]) == real.FINEWEB_EDU[0]["text"]
    assert fmt("culturax_de", real.CULTURAX_DE[0]) == real.CULTURAX_DE[0]["text"]
    assert fmt("the_stack_python", real.THE_STACK_PYTHON[0]) == real.THE_STACK_PYTHON[0]["content"]


def test_gsm8k_drops_calculator_annotations_and_reads_the_hashes() -> None:
    q = [row["question"] for row in real.GSM8K]
    assert [fmt("gsm8k", row) for row in real.GSM8K] == [
        doc(q[0], "Natalia sold 48/2 = 24 clips in May.\nNatalia sold 48+24 = 72 clips altogether in April and May.",
            "The answer is: 72"),
        doc(q[1], "Weng earns 12/60 = $0.2 per minute.\nWorking 50 minutes, she earned 0.2 x 50 = $10.",
            "The answer is: 10"),
        doc(q[2], "In the beginning, Betty has only 100 / 2 = $50.\nBetty's grandparents gave her 15 * 2 = $30.\n"
                  "This means, Betty needs 100 - 50 - 30 - 15 = $5 more.", "The answer is: 5"),
    ]


def test_metamathqa_moves_its_answer_and_the_sentence_restating_it_out_of_the_think_block() -> None:
    q = [row["query"] for row in real.METAMATHQA]
    assert [fmt("metamathqa", row) for row in real.METAMATHQA] == [
        doc(q[0], "The distance between two points $(x_1,y_1)$ and $(x_2,y_2)$ in the complex plane is given by the "
                  "formula $\\sqrt{(x_2-x_1)^2+(y_2-y_1)^2}$.\nIn this case, Joe's point is $(1,2)$ and Gracie's "
                  "point is $(-1,1)$.\nSo the distance between their points is $\\sqrt{((-1)-(1))^2+((1)-(2))^2}="
                  "\\sqrt{(-2)^2+(-1)^2}=\\sqrt{4+1}=\\sqrt{5}$.", "The answer is: \\sqrt{5}"),
        doc(q[1], "Each player requires a $25 jersey, a $15.20 pair of shorts, and a pair of socks priced at $6.80.\n"
                  "So the total cost for each player is $25 + $15.20 + $6.80 = $47.\nSince there are sixteen players "
                  "on the football team, the total cost for all of them is 16 * $47 = $752.", "The answer is: 752"),
        doc(q[2], "We want to find the value of $X$ in the given situation.\nWe are told that the volume of the "
                  "rectangular box is $X$ cubic feet.\nTo convert cubic feet to cubic yards, we need to divide by 27, "
                  "since there are 27 cubic feet in 1 cubic yard.\nSo, the volume of the box in cubic yards is:\n"
                  "$\\frac{X}{27}$\nGiven that the volume is 4 cubic yards, we can write:\n$4 = \\frac{X}{27}$\n"
                  "Multiplying both sides of the equation by 27 to eliminate the fraction, we get:\n$108 = X$",
            "The answer is: 108"),
    ]


def test_openorca_keeps_its_system_turn_and_answers_once() -> None:
    rows = real.OPENORCA
    assert [fmt("openorca", row) for row in rows] == [
        doc(rows[0]["question"], NO_STEPS, rows[0]["response"]),  # a structured answer is its own answer
        doc(rows[1]["question"], "Step 1: Identify the parts of the sentence.\nThe subject is \"the cat\", the verb is "
                                 "\"is sleeping\" and the place is \"on the sofa\".\n\nStep 2: Translate each part.\n"
                                 "\"The cat\" is \"Die Katze\", \"is sleeping\" is \"schläft\" and \"on the sofa\" is "
                                 "\"auf dem Sofa\".\n\nStep 3: Put the parts together in German word order.",
            "The translation is: \"Die Katze schläft auf dem Sofa.\"", system=rows[1]["system_prompt"]),
        doc(rows[2]["question"], NO_STEPS, "The answer is: C", system=rows[2]["system_prompt"]),
        doc(rows[3]["question"], "Mia needs 150 pencils and each pack holds 12 pencils. 150 / 12 = 12.5, so 12 packs "
                                 "are not enough. She has to round up to the next whole pack.",
            "The answer is: 13", system=rows[3]["system_prompt"]),
    ]


def test_open_platypus_prm800k_choice_letter_prose_and_bare_value() -> None:
    rows = real.OPEN_PLATYPUS
    assert [fmt("open_platypus", row) for row in rows] == [
        doc(rows[0]["instruction"], "I know that vertical asymptotes occur when the denominator of a rational "
                                    "function is zero, and the numerator is not.\nSo I want to find the values of x "
                                    "that make $x^2+x-6=0$.\nI can factor this quadratic as $(x+3)(x-2)=0$.\nSo the "
                                    "solutions are $x=-3$ and $x=2$.\nThese are the two values of x that make the "
                                    "denominator zero, and the numerator is always 2, so these are the vertical "
                                    "asymptotes.\nTherefore, the graph has two vertical asymptotes.",
            "The answer is: 2"),
        doc(rows[1]["instruction"], NO_STEPS, "The answer is: B"),
        doc(rows[2]["instruction"], "A tortoise is a living thing.\nTortoises grow and respond to the world around "
                                    "them. They need food and water.\nA pushpin is not a living thing.",
            "Pushpins do not have all of the traits of living things. They do not grow or respond to the world around "
            "them. They do not need food or water."),
        doc(rows[3]["instruction"], NO_STEPS, "The answer is: 42"),
    ]


def test_open_platypus_appends_a_non_empty_input() -> None:
    row = {"instruction": "Solve for x.", "input": "2x + 1 = 7", "output": "Subtract 1: 2x = 6.\nSo x = 3.",
           "data_source": "MATH/PRM-800K"}
    assert fmt("open_platypus", row) == doc("Solve for x.\n\n2x + 1 = 7", "Subtract 1: 2x = 6.", "The answer is: x = 3")
    assert fmt("open_platypus", dict(row, input=None)) == doc("Solve for x.", "Subtract 1: 2x = 6.",
                                                              "The answer is: x = 3")


def test_orca_math_prose_endings() -> None:
    rows = real.ORCA_MATH
    got = [fmt("orca_math", row) for row in rows]
    body = rows[0]["answer"].split("\n\nSo, Mr. Jackson")[0]
    assert got[0] == doc(rows[0]["question"], body, "So, Mr. Jackson would have needed to secure approximately 20.07% "
                                                    "of the remaining unsecured votes to reach the victory threshold "
                                                    "of 51%.")  # two numbers: the sentence itself is the answer
    assert got[1] == doc(rows[1]["question"], rows[1]["answer"].removesuffix("\n\nSo, the number is 300."),
                         "The answer is: 300")
    assert got[2] == doc(rows[2]["question"], "To find the time it takes for the train to pass the man, we convert its "
                                              "speed from km/hr to m/s, because the length of the train is given in "
                                              "meters.\n\nSpeed in m/s = 54 * (1000 / 3600) = 15 m/s\n\nTime = "
                                              "Distance / Speed = 120 meters / 15 m/s = 8 seconds",
                         "The answer is: 8")


def test_camel_math_var_value_multiple_solutions_and_units() -> None:
    rows = real.CAMEL_MATH
    assert [fmt("camel_math", row) for row in rows] == [
        doc("Solve for x: 5x + 3 = 28", "To solve for x, we need to isolate x on one side of the equation. \n\n"
                                        "Step 1: Subtract 3 from both sides of the equation.\n5x + 3 - 3 = 28 - 3\n"
                                        "5x = 25\n\nStep 2: Divide both sides of the equation by 5.\n5x / 5 = 25 / 5\n"
                                        "x = 5", "The answer is: x = 5"),
        doc("Solve the quadratic equation: x^2 - 5x + 6 = 0",
            "To solve the quadratic equation x^2 - 5x + 6 = 0, we can factor the equation.\n\n(x - 2)(x - 3) = 0\n\n"
            "Now, we set each factor equal to zero and solve for x:\n\nx - 2 = 0  =>  x = 2\nx - 3 = 0  =>  x = 3",
            "So, the solutions to the equation are x = 2 and x = 3."),
        doc(rows[2]["message_1"], "To find the perimeter of a rectangle, we use the formula:\n\nPerimeter = 2(length + "
                                  "width)\n\nIn this case, the length is 8 cm and the width is 5 cm. So, we plug in "
                                  "the values:\n\nPerimeter = 2(8 + 5)\nPerimeter = 2(13)\nPerimeter = 26 cm",
            "The answer is: 26"),
    ]


def test_openschnabeltier_uses_the_german_columns() -> None:
    rows = real.OPENSCHNABELTIER
    assert [fmt("openschnabeltier", row) for row in rows] == [
        doc("Wie viele vertikale Asymptoten hat der Graph von $y=\\frac{2}{x^2+x-6}$?",
            "Ich weiß, dass vertikale Asymptoten auftreten, wenn der Nenner einer rationalen Funktion Null ist und "
            "der Zähler nicht.\nAlso möchte ich die Werte von x finden, für die $x^2+x-6=0$ gilt.\nIch kann diese "
            "quadratische Gleichung als $(x+3)(x-2)=0$ faktorisieren.\nDie Lösungen sind also $x=-3$ und $x=2$.\n"
            "Daher hat der Graph zwei vertikale Asymptoten.", "The answer is: 2"),
        doc(rows[1]["instruction_de"], NO_STEPS, "The answer is: B"),
        doc("Wähle das Lebewesen aus.\nA: Schildkröte\nB: Reißzwecke",
            "Eine Schildkröte ist ein Lebewesen.\nSchildkröten wachsen und reagieren auf ihre Umwelt. Sie brauchen "
            "Nahrung und Wasser.\nEine Reißzwecke ist kein Lebewesen.",
            "Reißzwecken haben nicht alle Merkmale von Lebewesen. Sie wachsen nicht und brauchen weder Nahrung noch "
            "Wasser."),
    ]


def test_ultrachat_alternates_turns() -> None:
    data = real.ULTRACHAT[0]["data"]
    assert fmt("ultrachat", real.ULTRACHAT[0]) == (
        f"<|user|>\n{data[0]}\n<|assistant|>\n{data[1]}\n<|end|>\n"
        f"<|user|>\n{data[2]}\n<|assistant|>\n{data[3]}\n<|end|>"
    )


@pytest.mark.parametrize("source", real.REASONING)
def test_every_real_reasoning_row_has_one_think_block_and_one_answer(source: str) -> None:
    for row in real.ROWS[source]:
        match = TEMPLATE.match(fmt(source, row))
        assert match, row
        think, answer = match.group("think"), match.group("answer")
        assert think.strip() and answer.strip()
        assert "The answer is:" not in think and answer.strip() not in think  # the answer is stated once, after
        assert think.count("<think>") == 0 and answer.count("</think>") == 0


@pytest.mark.parametrize(
    ("response", "steps", "answer"),
    [
        ("Steps.\nThe answer is: 42", "Steps.", "The answer is: 42"),
        ("Steps.\nFinal answer: x = 2.", "Steps.", "The answer is: x = 2"),
        ("Steps.\nThe correct answer is: B. Dogs", "Steps.", "The answer is: B. Dogs"),
        ("Die Summe ist 5 + 3.\nAntwort: 8", "Die Summe ist 5 + 3.", "The answer is: 8"),
        ("Half of it is \\boxed{\\frac{1}{2}}.", "", "The answer is: \\frac{1}{2}"),
        ("Steps one.\nThe answer is:", "", "Steps one."),  # an empty marker is dropped, not trained on
        ("It rains. So the street is wet.", "It rains.", "So the street is wet."),
        ("Mr. Smith has 3 apples. Dr. Jones gives him 4. So Mr. Smith has 7 apples.", "Mr. Smith has 3 apples. "
         "Dr. Jones gives him 4.", "The answer is: 7"),
        ("Seen 3 times, counted 4 times.", "", "Seen 3 times, counted 4 times."),  # two numbers: no value is picked
        ("Yes.", "", "Yes."),
    ],
)
def test_split_answer(response: str, steps: str, answer: str) -> None:
    assert split_answer(response) == (steps, answer)


@pytest.mark.parametrize(("source", "field"), [
    ("fineweb_edu", "text"), ("the_stack_python", "content"), ("gsm8k", "answer"), ("gsm8k", "question"),
    ("metamathqa", "response"), ("openorca", "response"), ("open_platypus", "output"), ("orca_math", "answer"),
    ("camel_math", "message_2"), ("openschnabeltier", "output_de"),
])
@pytest.mark.parametrize(("value", "problem"), [(None, "null"), ("", "empty"), ("  \n", "empty"), (7, "int, not text"),
                                                (..., "missing")])
def test_a_missing_null_or_empty_field_is_a_bad_row(source: str, field: str, value, problem: str) -> None:
    row = dict(real.ROWS[source][0])
    if value is ...:
        del row[field]
    else:
        row[field] = value
    with pytest.raises(BadRow, match=f"field '{field}' is {problem}"):
        fmt(source, row)


@pytest.mark.parametrize("data", [None, [], ["Hi", None], ["Hi", "  "]])
def test_a_broken_ultrachat_conversation_is_a_bad_row(data) -> None:
    with pytest.raises(BadRow, match="field 'data'"):
        fmt("ultrachat", {"id": "1", "data": data})


def test_optional_fields_may_be_null() -> None:
    row = dict(real.OPENORCA[2], system_prompt=None)
    assert fmt("openorca", row).startswith("<|user|>\n")


def test_a_bare_answer_marker_is_a_bad_row() -> None:
    with pytest.raises(BadRow, match="answer marker with no answer"):
        fmt("metamathqa", {"query": "What is 2+3?", "response": "The answer is: "})


def test_every_registry_format_exists() -> None:
    assert {spec.format for spec in REGISTRY.values()} <= set(FORMATTERS)
