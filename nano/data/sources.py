"""The registry of the seed's 11 sources, and the config -> validated source list step.

Each entry names the Hub dataset, the columns its formatter reads and the card those columns were
checked against. A `[data.sources.NAME]` table can reweight or drop (weight 0) an entry, point it at
local parquet/jsonl/json files in the same schema, or add a new source (hub_id + format).
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from nano.config import Data
from nano.data.formats import FORMATTERS

LOCAL_FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}


class SourceError(ValueError):
    """A source that cannot be read as configured: raised at start-up, or mid-run by a source whose rows have all
    been unusable for data.max_consecutive_bad_rows rows (train.py prints it and exits with code 2)."""


@dataclass(frozen=True)
class SourceSpec:
    name: str
    hub_id: str
    subset: str | None
    split: str
    format: str
    columns: tuple[str, ...]
    gated: bool
    card: str
    data_dir: str | None = None
    weight: float = 0.0
    data_files: tuple[str, ...] = ()

    @property
    def origin(self) -> str:
        """Where rows come from, for error messages."""
        return ", ".join(self.data_files) if self.data_files else f"hub:{self.hub_id}"


def _spec(name: str, hub_id: str, subset: str | None, fmt: str, columns: tuple[str, ...], card: str, **kw) -> SourceSpec:
    return SourceSpec(name=name, hub_id=hub_id, subset=subset, split=kw.pop("split", "train"), format=fmt,
                      columns=columns, gated=kw.pop("gated", False), card=card, **kw)


# Columns: what each dataset's card lists (`dataset_info.features` or its data-fields section). Where the card
# text did not show them, they were checked on copies that keep the schema or on code that loads the dataset
# (named below); the formatter reads only `columns`, and check_columns() names any mismatch at start-up.
REGISTRY: dict[str, SourceSpec] = {
    s.name: s
    for s in (
        # text, id, dump, url, file_path, language, language_score, token_count, score, int_score
        # (seen on subsets keeping the schema: TEL-LLM/fineweb-edu-1M, abideen/fineweb-edu-100k)
        _spec("fineweb_edu", "HuggingFaceFW/fineweb-edu", None, "text", ("text",),
              "https://huggingface.co/datasets/HuggingFaceFW/fineweb-edu"),
        # text, timestamp, url, source (four-two-labs/culturax-nord keeps the schema); gated: accept the card's terms
        _spec("culturax_de", "uonlp/CulturaX", "de", "text", ("text",),
              "https://huggingface.co/datasets/uonlp/CulturaX", gated=True),
        # content, size, lang, ext, hexsha, max_{stars,forks,issues}_repo_{path,name,...}, avg_line_length, ...
        # (the card's "Data Fields"); gated; one folder per language, streamed with data_dir="data/python"
        _spec("the_stack_python", "bigcode/the-stack-dedup", None, "the_stack", ("content",),
              "https://huggingface.co/datasets/bigcode/the-stack-dedup", gated=True, data_dir="data/python"),
        # question, answer ("... <<48/2=24>> ... #### 72"); config main (parquet main/train-*)
        _spec("gsm8k", "openai/gsm8k", "main", "gsm8k", ("question", "answer"),
              "https://huggingface.co/datasets/openai/gsm8k"),
        # type, query, original_question, response ("... The answer is: 72"); one JSON file (MetaMathQA-395K.json);
        # columns as on upb-nlp/MetaMathQA-dedup
        _spec("metamathqa", "meta-math/MetaMathQA", None, "metamathqa", ("query", "response"),
              "https://huggingface.co/datasets/meta-math/MetaMathQA"),
        # id, system_prompt, question, response (as on ctuning/MLPerf-OpenOrca and other OpenOrca subsets)
        _spec("openorca", "Open-Orca/OpenOrca", None, "openorca", ("system_prompt", "question", "response"),
              "https://huggingface.co/datasets/Open-Orca/OpenOrca"),
        # input, output, instruction (card's dataset_info), data_source (added in a later revision)
        _spec("open_platypus", "garage-bAInd/Open-Platypus", None, "platypus", ("instruction", "input", "output"),
              "https://huggingface.co/datasets/garage-bAInd/Open-Platypus"),
        # question, answer (the card's dataset_info: 200,035 train rows in parquet data/train-*)
        _spec("orca_math", "microsoft/orca-math-word-problems-200k", None, "orca_math", ("question", "answer"),
              "https://huggingface.co/datasets/microsoft/orca-math-word-problems-200k"),
        # role_1, topic; (sic), sub_topic, message_1 (problem), message_2 (solution), as on rhgt1996/camel_math_split
        _spec("camel_math", "camel-ai/math", None, "camel_math", ("message_1", "message_2"),
              "https://huggingface.co/datasets/camel-ai/math"),
        # id, data (a list of alternating user/assistant utterances; the card's "Dataset Structure"), train_*.jsonl
        _spec("ultrachat", "stingning/ultrachat", None, "ultrachat", ("data",),
              "https://huggingface.co/datasets/stingning/ultrachat"),
        # German translation of Open-Platypus (LeoLM's model card): instruction/output with *_de counterparts.
        # Not confirmed on the card itself; instruction_de/output_de are what code loading this dataset reads
        # (e.g. flozi00/nlp-data-experiments, datas/schnabeltier.py); check_columns names any mismatch at start-up.
        _spec("openschnabeltier", "LeoLM/OpenSchnabeltier", None, "schnabeltier", ("instruction_de", "output_de"),
              "https://huggingface.co/datasets/LeoLM/OpenSchnabeltier"),
    )
}

# The columns each formatter reads, for sources added from the config.
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {spec.format: spec.columns for spec in REGISTRY.values()}


def resolve_sources(cfg: Data) -> list[SourceSpec]:
    """Merge the config over the registry and validate it; returns the sources with weight > 0."""
    resolved = []
    for name, src in cfg.sources.items():
        where = f"data.sources.{name}"
        if src.weight < 0:
            raise SourceError(f"{where}.weight must be >= 0, got {src.weight}")
        base = REGISTRY.get(name)
        if base is None and not (src.hub_id or src.data_files) or base is None and not src.format:
            hint = difflib.get_close_matches(name, REGISTRY, n=1)
            raise SourceError(
                f"{where}: unknown source '{name}'"
                + (f" (did you mean '{hint[0]}'?)" if hint else "")
                + f"; known: {', '.join(REGISTRY)}. A new source needs hub_id (or data_files) and format."
            )
        fmt = src.format or base.format  # type: ignore[union-attr]
        if fmt not in FORMATTERS:
            raise SourceError(f"{where}.format: unknown format '{fmt}'; choose one of {', '.join(FORMATTERS)}")
        for path in src.data_files:
            if Path(path).suffix not in LOCAL_FORMATS:
                raise SourceError(f"{where}.data_files: '{path}' is not .parquet, .jsonl or .json")
            if not Path(path).is_file():
                raise SourceError(f"{where}.data_files: file not found: {path}")
        if len({LOCAL_FORMATS[Path(path).suffix] for path in src.data_files}) > 1:
            raise SourceError(f"{where}.data_files: mixes parquet and json files; use one format per source")
        if src.weight == 0:
            continue
        if base is None:
            base = SourceSpec(name=name, hub_id=src.hub_id, subset=None, split="train", format=fmt,
                              columns=FORMAT_COLUMNS.get(fmt, ("text",)), gated=False, card="")
        resolved.append(dataclasses.replace(
            base,
            hub_id=src.hub_id or base.hub_id,
            subset=src.subset or base.subset,
            split=src.split or base.split,
            format=fmt,
            columns=FORMAT_COLUMNS.get(fmt, base.columns),
            weight=float(src.weight),
            data_files=tuple(src.data_files),
        ))
    if not resolved:
        raise SourceError("data.sources: every source has weight 0 (or none is listed); give at least one a weight > 0")
    return resolved


def check_columns(spec: SourceSpec, column_names: Iterable[str], where: str = "") -> None:
    """Fail at start-up, naming the source, column and file, when rows lack what the formatter reads."""
    present = set(column_names)
    missing = [c for c in spec.columns if c not in present]
    if missing:
        raise SourceError(
            f"data.sources.{spec.name}: column '{missing[0]}' missing in {where or spec.origin} "
            f"(format '{spec.format}' reads {', '.join(spec.columns)}; the rows have {', '.join(sorted(present))})"
        )
