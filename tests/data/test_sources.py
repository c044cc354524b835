import re
from pathlib import Path

import pytest

from nano.config import SEED_MIX, ConfigError, Data, Source, load_config
from nano.data.loader import build_dataloader
from nano.data.sources import REGISTRY, SourceError, resolve_sources
from nano.data.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[2]


def test_registry_holds_the_seed_mix() -> None:
    assert set(REGISTRY) == set(SEED_MIX)
    for spec in REGISTRY.values():
        assert spec.card.startswith("https://huggingface.co/datasets/") and spec.columns


def test_nano_1b_mix_names_the_hub_datasets_with_seed_weights() -> None:
    specs = resolve_sources(load_config(["--config", str(REPO / "train_configs/nano_1b.toml")]).data)
    assert {s.name: s.weight for s in specs} == SEED_MIX
    assert all(not s.data_files and s.hub_id == REGISTRY[s.name].hub_id for s in specs)


def test_weights_apply_and_zero_drops() -> None:
    specs = resolve_sources(Data(sources={"gsm8k": Source(weight=3), "fineweb_edu": Source(weight=0)}))
    assert [(s.name, s.weight) for s in specs] == [("gsm8k", 3.0)]


def test_new_source_with_hub_id_and_format(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"text": "hello"}\n')
    (spec,) = resolve_sources(Data(sources={"mine": Source(weight=1, format="text", data_files=[str(path)])}))
    assert spec.columns == ("text",) and spec.data_files == (str(path),)


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        ({"gsm8kk": Source(weight=1)}, "unknown source 'gsm8kk' (did you mean 'gsm8k'?)"),
        ({"gsm8k": Source(weight=0), "orca_math": Source(weight=0)}, "every source has weight 0"),
        ({"gsm8k": Source(weight=-1)}, "data.sources.gsm8k.weight must be >= 0"),
        ({"gsm8k": Source(weight=1, format="nope")}, "unknown format 'nope'"),
        ({"gsm8k": Source(weight=1, data_files=["no/such/file.jsonl"])}, "file not found: no/such/file.jsonl"),
        ({"gsm8k": Source(weight=1, data_files=["rows.csv"])}, "'rows.csv' is not .parquet, .jsonl or .json"),
        ({"gsm8k": Source(weight=1, data_files=[str(REPO / "assets/demo/gsm8k.jsonl"),
                                                str(REPO / "assets/demo/the_stack_python.parquet")])},
         "data.sources.gsm8k.data_files: mixes parquet and json files"),
    ],
)
def test_bad_sources_are_named(sources: dict, message: str) -> None:
    with pytest.raises(SourceError) as err:
        resolve_sources(Data(sources=sources))
    assert message in str(err.value)


def test_missing_column_is_named_at_start_up(tmp_path: Path) -> None:
    path = tmp_path / "gsm8k.jsonl"
    path.write_text('{"question": "1+1?", "solution": "2"}\n')
    cfg = Data(sources={"gsm8k": Source(weight=1, data_files=[str(path)])})
    tok = Tokenizer(REPO / "assets/tokenizer/nano_demo.model")
    with pytest.raises(SourceError, match=rf"data.sources.gsm8k: column 'answer' missing in {path}"):
        build_dataloader(cfg, tok, seq_len=16, micro_batch_size=2, dp_rank=0, dp_world_size=1, seed=0)


@pytest.mark.parametrize(("key", "value", "message"), [
    ("data.shuffle_buffer", "-1", "data.shuffle_buffer must be >= 0 (0 turns shuffling off), got -1"),
    ("data.max_consecutive_bad_rows", "0", "data.max_consecutive_bad_rows must be >= 1, got 0"),
])
def test_data_ranges_are_checked_at_load(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(["--config", str(REPO / "train_configs/debug_model.toml"), f"--{key}", value])


def test_the_debug_config_trains_shuffled() -> None:
    assert load_config(["--config", str(REPO / "train_configs/debug_model.toml")]).data.shuffle_buffer > 0
