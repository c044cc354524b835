"""What changed between a checkpoint's resolved config and this run's, and whether the resume may go on.

Three kinds of change, by key:
- fixed: the checkpoint cannot continue under it. The parameters' shapes or names (model.flavor,
  n_kv_heads, tie_embeddings: the optimizer state would not even load), or what the saved data position
  refers to (job.seed and data.shuffle_buffer order the documents, data.num_workers splits them, the set
  of sources, the held-out documents); the data loader refuses the latter too, with the same keys named.
- guarded: the run can continue, but the model or the data stream becomes another one (any other model
  key such as rope_theta, training.seq_len, the tokenizer, a source's weight, files or schema). Refused
  unless listed in `checkpoint.allow_changes`, which is how a deliberate change (a longer context, a new
  mix for the last phase) is made.
- harmless: everything else (log frequency, max_steps, learning rate, parallelism...); printed only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from nano.config import ConfigError, parse_toml

_SHAPES = "sets the parameters' shapes or names, so the weights and optimizer state cannot load"
_ORDER = "orders the documents the saved data position refers to"
FIXED: dict[str, str] = {
    "model.flavor": _SHAPES,
    "model.n_kv_heads": _SHAPES,
    "model.tie_embeddings": _SHAPES,
    "job.seed": _ORDER,
    "data.shuffle_buffer": _ORDER,
    "data.num_workers": "splits the documents among loader workers, one saved position each",
    "validation.documents_per_source": "decides which documents are held out and which training has read",
}
GUARDED_PREFIXES = ("model.", "training.seq_len", "data.tokenizer", "data.sources.")
GUARDED_WHY = "changes the model or the data it reads next"


@dataclass(frozen=True)
class Change:
    key: str
    before: Any
    after: Any
    kind: str  # "fixed", "guarded" or "harmless"
    why: str = ""

    def describe(self) -> str:
        line = f"{self.key}: {_show(self.before)} -> {_show(self.after)}"
        return f"{line} ({self.why})" if self.why else line


_ABSENT = object()


def _show(value: Any) -> str:
    return "(absent)" if value is _ABSENT else json.dumps(value)


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        full = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict):
            flat.update(flatten(value, full))
        else:
            flat[full] = value
    return flat


def _active_sources(flat: dict[str, Any]) -> set[str]:
    """Sources with a weight > 0: the ones the data loader mixes (weight 0 drops a source)."""
    return {key.split(".")[2] for key, value in flat.items()
            if key.startswith("data.sources.") and key.endswith(".weight") and value > 0}


def config_changes(saved_toml: str, current_toml: str) -> list[Change]:
    """Every key whose value differs, classified."""
    saved = flatten(parse_toml(saved_toml, "the checkpoint's config.toml"))
    current = flatten(parse_toml(current_toml, "this run's resolved config"))
    changes = []
    for key in sorted(saved.keys() | current.keys()):
        before, after = saved.get(key, _ABSENT), current.get(key, _ABSENT)
        if before == after:
            continue
        if key in FIXED:
            changes.append(Change(key, before, after, "fixed", FIXED[key]))
        elif key.startswith(GUARDED_PREFIXES):
            changes.append(Change(key, before, after, "guarded", GUARDED_WHY))
        else:
            changes.append(Change(key, before, after, "harmless"))
    before, after = _active_sources(saved), _active_sources(current)
    added, removed = after - before, before - after
    if added or removed:
        what = ", ".join([f"+{name}" for name in sorted(added)] + [f"-{name}" for name in sorted(removed)])
        changes.append(Change("data.sources", "(the saved list)", what, "fixed",
                              "the saved data position holds one entry per source mixed"))
    return changes


def allowed(key: str, allow: list[str]) -> bool:
    return any(key == entry or key.startswith(entry + ".") for entry in allow)


def check_resume_config(saved_toml: str, current_toml: str, allow: list[str], where: str) -> list[Change]:
    """Raise ConfigError naming every change the resume cannot take; return all changes (for the log)."""
    changes = config_changes(saved_toml, current_toml)
    fixed = [c for c in changes if c.kind == "fixed"]
    blocked = [c for c in changes if c.kind == "guarded" and not allowed(c.key, allow)]
    if fixed or blocked:
        lines = [f"  {c.describe()}; no setting allows this" for c in fixed]
        lines += [f"  {c.describe()}; allow it with --checkpoint.allow_changes {c.key}" for c in blocked]
        raise ConfigError(
            f"cannot resume from {where} with this config:\n" + "\n".join(lines) + "\n"
            "Set these back to the checkpoint's values, or start a new run in another folder (--job.dump_folder) "
            "or over these checkpoints (--checkpoint.resume never --checkpoint.overwrite)."
        )
    return changes
