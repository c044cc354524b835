"""Rebuild assets/demo/: one small file per seed source, in that source's Hub schema, from text that
packages installed here ship (Python's documentation and standard library, Debian's fortunes-de), plus
arithmetic problems generated with verified answers. Deterministic (seeded).

    apt-get install python3-doc fortunes-de
    python scripts/build_demo_corpus.py            # then: nano-tokenizer train ... (see assets/demo/README.md)
"""

from __future__ import annotations

import ast
import json
import random
import re
import sys
import sysconfig
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parents[1] / "assets" / "demo"
PY_DOCS = Path("/usr/share/doc/python3-doc/html/_sources")
FORTUNES = Path("/usr/share/games/fortunes/de")
rng = random.Random(1234)
TITLE = re.compile(r"^([=~*#^-])\1+$", re.MULTILINE)


def need(path: Path, package: str) -> None:
    if not path.is_dir():
        sys.exit(f"missing {path}: install it with `apt-get install {package}`")


def write_jsonl(name: str, rows: list[dict]) -> None:
    with open(OUT / name, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------------------------- real text


def doc_paragraphs(limit_bytes: int) -> list[dict]:
    """English prose: Python documentation sources (PSF license), cut into ~3 KB documents."""
    rows, total = [], 0
    for path in sorted(PY_DOCS.glob("*/*.rst.txt")):
        if path.parent.name not in {"tutorial", "howto", "faq", "library", "reference"}:
            continue
        text = path.read_text(encoding="utf-8", errors="ignore")
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if len(p.strip()) > 80 and not p.lstrip().startswith(("..", ":"))]
        for start in range(0, len(paragraphs), 6):
            doc = "\n\n".join(paragraphs[start : start + 6])
            rel = path.relative_to(PY_DOCS).as_posix().replace(".rst.txt", ".html")
            rows.append({"text": doc, "id": f"<pydoc:{rel}#{start}>", "url": f"https://docs.python.org/3.11/{rel}",
                         "language": "en"})
            total += len(doc)
        if total > limit_bytes:
            break
    return rows


def fortunes(limit_bytes: int) -> list[tuple[str, str]]:
    """German text: Debian's fortunes-de (GPL-2+), one (file, fortune) per entry."""
    items, total = [], 0
    for path in sorted(FORTUNES.glob("*.u8")):
        for entry in path.read_text(encoding="utf-8", errors="ignore").split("\n%\n"):
            entry = entry.strip()
            if 40 < len(entry) < 2000:
                items.append((path.stem, entry))
                total += len(entry)
    rng.shuffle(items)
    kept, size = [], 0
    for item in items:
        if size > limit_bytes:
            break
        kept.append(item)
        size += len(item[1])
    return kept


def stdlib_sources(limit_bytes: int) -> list[dict]:
    """Python code: the standard library's own modules (PSF license)."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    rows, total = [], 0
    for path in sorted(lib.rglob("*.py")):
        relative = path.relative_to(lib).as_posix()
        content = path.read_text(encoding="utf-8", errors="ignore")
        # Short modules only, so that code does not crowd out the other sources' tokens in the small demo.
        if "test" in relative or "site-packages" in relative or not 1000 < len(content) < 6000:
            continue
        rows.append({"content": content, "max_stars_repo_path": f"Lib/{relative}", "max_stars_repo_name": "python/cpython",
                     "lang": "Python", "ext": "py", "size": len(content.encode())})
        total += len(content)
        if total > limit_bytes:
            break
    return rows


def module_summaries() -> list[tuple[str, str, list[tuple[str, str, str]]]]:
    """(module, a docstring paragraph, [(kind, name, docstring)] of its public functions and classes) for each
    public standard-library module, packages included."""
    lib = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for path in sorted(lib.rglob("*.py")):
        relative = path.relative_to(lib).with_suffix("").as_posix()
        module = relative.removesuffix("/__init__").replace("/", ".")
        if "test" in relative or "site-packages" in relative or "idlelib" in relative or "._" in f".{module}":
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
        except SyntaxError:
            continue
        doc = ast.get_docstring(tree)
        if not doc or len(doc) < 60:
            continue
        # The first paragraph that is neither a reST title ("ast\n~~~") nor the bare module name: usually its purpose.
        summary = next((p.strip() for p in doc.split("\n\n") if len(p.strip()) >= 20 and not TITLE.search(p)
                        and p.strip() != module), None)
        if summary is None:
            continue
        defs = [("function" if isinstance(n, ast.FunctionDef) else "class", n.name, ast.get_docstring(n).strip())
                for n in tree.body
                if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_") and ast.get_docstring(n)]
        out.append((module, summary, defs))
    return out


# --------------------------------------------------------------------------------------------- generated math

NAMES = ["Anna", "Ben", "Carla", "David", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Lena"]
ITEMS = [("apples", "basket", "baskets"), ("marbles", "bag", "bags"), ("books", "shelf", "shelves"),
         ("pencils", "box", "boxes"), ("stamps", "album", "albums")]


def word_problem() -> tuple[str, list[tuple[str, str, int]], int]:
    """A two-step problem: (question, [(explanation, expression, value)], answer)."""
    name, (item, holder, holders_word) = rng.choice(NAMES), rng.choice(ITEMS)
    holders, per, extra = rng.randint(2, 9), rng.randint(3, 25), rng.randint(1, 40)
    total = holders * per
    question = (f"{name} has {holders} {holders_word} with {per} {item} in each {holder}, and buys {extra} more {item}. "
                f"How many {item} does {name} have now?")
    steps = [(f"{name} starts with {holders} {holders_word} of {per} {item}", f"{holders}*{per}", total),
             (f"After buying {extra} more, {name} has", f"{total}+{extra}", total + extra)]
    return question, steps, total + extra


def gsm8k_rows(n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        q, steps, answer = word_problem()
        lines = [f"{text}: {expr} = <<{expr}={value}>>{value}." for text, expr, value in steps]
        rows.append({"question": q, "answer": "\n".join(lines) + f"\n#### {answer}"})
    return rows


def metamath_rows(n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        q, steps, answer = word_problem()
        body = " ".join(f"{text} {expr} = {value}." for text, expr, value in steps)
        rows.append({"query": q, "response": f"{body}\nThe answer is: {answer}", "type": "GSM_Rephrased",
                     "original_question": q})
    return rows


def orca_math_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        q, steps, answer = word_problem()
        body = "\n".join(f"{text} {expr} = {value}." for text, expr, value in steps)
        # Half state the answer on a last line (extractable), half only in prose (no answer line is invented).
        end = f"\nThe answer is: {answer}" if i % 2 == 0 else f"\nSo the result is {answer}."
        rows.append({"question": q, "answer": body + end})
    return rows


def camel_rows(n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        a, c = rng.randint(2, 30), rng.randint(1, 50)
        x = rng.randint(-20, 20)
        rhs = a * x + c
        rows.append({
            "role_1": "Mathematician_RoleType.ASSISTANT", "topic;": "Algebra", "sub_topic": "Solving linear equations",
            "message_1": f"Solve for x: {a}x + {c} = {rhs}",
            "message_2": f"Subtract {c} from both sides: {a}x = {rhs - c}.\nDivide both sides by {a}: x = {x}.\n"
                         f"Check: {a}*({x}) + {c} = {rhs}, so the solution is correct.\n\\boxed{{{x}}}",
        })
    return rows


def platypus_rows(n: int) -> list[dict]:
    rows = []
    for _ in range(n):
        k = rng.randint(3, 40)
        rows.append({
            "instruction": f"What is the sum of the first {k} positive odd numbers?",
            "input": "",
            "output": f"The sum of the first n odd numbers is n^2, because each new odd number 2n-1 extends an "
                      f"(n-1)x(n-1) square to an n x n square. With n = {k} the sum is {k}^2 = {k * k}.\n"
                      f"Answer: {k * k}",
            "data_source": "generated",
        })
    return rows


# --------------------------------------------------------------------------------------------- generated dialogue


def openorca_rows(summaries) -> list[dict]:
    """A question per module (answered by its docstring summary) and per public function (by its docstring)."""
    systems = ["", "You are a helpful assistant who explains Python clearly.",
               "You are an AI assistant. Answer the question using the documentation."]
    pairs = []
    for mod, summary, defs in summaries:
        pairs.append((f"What is the Python standard library module `{mod}` for?", summary))
        pairs += [(f"What does the function `{mod}.{name}` do?", doc) for kind, name, doc in defs if kind == "function"]
    return [{"id": f"demo.{i}", "system_prompt": systems[i % 3], "question": question, "response": response}
            for i, (question, response) in enumerate(pairs)]


def ultrachat_rows(summaries) -> list[dict]:
    """Three-turn dialogues about a module: what it is for, what it offers, and one of its definitions in full."""
    rows = []
    for i, (mod, summary, defs) in enumerate(summaries):
        if not defs:
            continue
        listing = "\n".join(f"- {kind} `{name}`: {doc.splitlines()[0]}" for kind, name, doc in defs[:8])
        kind, name, doc = defs[0]
        rows.append({"id": str(i), "data": [
            f"Can you tell me about Python's `{mod}` module?", summary,
            "Which functions and classes does it offer?", f"Some of its public definitions:\n{listing}",
            f"What does the {kind} `{name}` do exactly?", doc,
        ]})
    return rows


def schnabeltier_rows(items) -> list[dict]:
    asks = {"sprichworte": "Nenne mir ein Sprichwort.", "zitate": "Nenne mir ein Zitat.", "witze": "Erzähl mir einen Witz."}
    return [{"instruction_de": asks.get(topic, f"Erzähl mir etwas zum Thema „{topic}“."), "output_de": text}
            for topic, text in items]


def main() -> None:
    need(PY_DOCS, "python3-doc")
    need(FORTUNES, "fortunes-de")
    OUT.mkdir(parents=True, exist_ok=True)
    summaries = module_summaries()
    german = fortunes(900_000)
    split = len(german) * 2 // 3
    write_jsonl("fineweb_edu.jsonl", doc_paragraphs(900_000))
    write_jsonl("culturax_de.jsonl", [{"text": t, "timestamp": "", "url": f"debian:fortunes-de/{f}", "source": "fortunes-de"}
                                      for f, t in german[:split]])
    pq.write_table(pa.Table.from_pylist(stdlib_sources(700_000)), OUT / "the_stack_python.parquet")
    write_jsonl("gsm8k.jsonl", gsm8k_rows(1500))
    (OUT / "metamathqa.json").write_text(json.dumps(metamath_rows(1500), ensure_ascii=False, indent=0))
    write_jsonl("openorca.jsonl", openorca_rows(summaries))
    write_jsonl("open_platypus.jsonl", platypus_rows(800))
    write_jsonl("orca_math.jsonl", orca_math_rows(1500))
    write_jsonl("camel_math.jsonl", camel_rows(1200))
    write_jsonl("ultrachat.jsonl", ultrachat_rows(summaries))
    write_jsonl("openschnabeltier.jsonl", schnabeltier_rows(german[split:]))
    for path in sorted(OUT.glob("*.*")):
        print(f"{path.name:28s} {path.stat().st_size / 1e3:8.0f} KB")


if __name__ == "__main__":
    main()
