import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from nano.config import (
    ALIASES,
    ConfigError,
    JobConfig,
    Source,
    field_docs,
    grad_accum_steps,
    help_text,
    load_config,
    to_toml,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted((REPO / "train_configs").glob("*.toml"))


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(config: Path, tmp_path: Path) -> None:
    cfg = load_config(["--config", str(config)])
    again = load_config(["--config", write(tmp_path, to_toml(cfg))])
    assert again == cfg


def test_toml_round_trip_keeps_every_changed_value(tmp_path: Path) -> None:
    cfg = load_config([
        "--training.seq_len", "512", "--optimizer.lr", "1e-3", "--model.tie_embeddings",
        "--lr_scheduler.decay_type", "wsd", "--data.sources.mine.hub_id", "me/data",
        "--data.sources.mine.format", "text", "--data.sources.mine.data_files", "a.jsonl,b.parquet",
    ])
    again = load_config(["--config", write(tmp_path, to_toml(cfg))])
    assert again == cfg
    assert again.data.sources["mine"] == Source(hub_id="me/data", format="text", data_files=["a.jsonl", "b.parquet"])


def test_toml_values_and_nested_tables(tmp_path: Path) -> None:
    path = write(tmp_path, """
[training]
seq_len = 128
max_grad_norm = 2      # an int is accepted for a float field

[data.sources.gsm8k]
weight = 3
data_files = ["x.jsonl"]
""")
    cfg = load_config(["--config", path])
    assert cfg.training.seq_len == 128
    assert cfg.training.max_grad_norm == 2.0 and isinstance(cfg.training.max_grad_norm, float)
    # A [data.sources] table is the whole mix: the seed's other sources are gone.
    assert list(cfg.data.sources) == ["gsm8k"]
    assert cfg.data.sources["gsm8k"].weight == 3.0


def test_cli_overrides_convert_types_and_beat_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[training]\nseq_len = 128\n")
    cfg = load_config([
        "--config", path, "--training.seq_len", "64", "--optimizer.weight_decay=0.05",
        "--compile.enable", "--metrics.no-enable_tensorboard", "--checkpoint.enable=false",
        "--data.sources.gsm8k.weight", "0",
    ])
    assert cfg.training.seq_len == 64
    assert cfg.optimizer.weight_decay == 0.05
    assert cfg.compile.enable is True
    assert cfg.metrics.enable_tensorboard is False
    assert cfg.checkpoint.enable is False
    assert cfg.data.sources["gsm8k"].weight == 0.0
    assert cfg.data.sources["fineweb_edu"].weight == JobConfig().data.sources["fineweb_edu"].weight


@pytest.mark.parametrize(
    ("alias", "value", "section", "key", "expected"),
    [
        ("--resume", None, "checkpoint", "resume", "required"),
        ("--max-steps", "50000", "training", "max_steps", 50000),
        ("--batch-size", "4", "training", "micro_batch_size", 4),
        ("--learning-rate", "1e-4", "optimizer", "lr", 1e-4),
        ("--no-push", None, "hub", "push", False),
    ],
)
def test_seed_aliases(alias, value, section, key, expected, tmp_path: Path) -> None:
    base = write(tmp_path, '[hub]\npush = true\nrepo_id = "me/nano"\n')
    argv = ["--config", base, alias] + ([value] if value is not None else [])
    assert getattr(getattr(load_config(argv), section), key) == expected
    assert alias in ALIASES


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--training.seq_lne", "3"], "did you mean 'training.seq_len'"),
        (["--trainig.seq_len", "3"], "did you mean 'training.seq_len'"),
        (["--data.sources.gsm8k.wieght", "1"], "did you mean 'data.sources.gsm8k.weight'"),
        (["--training.seq_len", "abc"], "training.seq_len: expected int"),
        (["--training.max_grad_norm", "x"], "training.max_grad_norm: expected float"),
        (["--lr_scheduler.decay_type", "cos"], "lr_scheduler.decay_type: 'cos' is not one of"),
        (["--training.micro_batch_size", "3"], "training.global_batch_size (128) must be divisible"),
        (["--parallelism.tensor_parallel_degree", "2"], "must equal the world size (1)"),
        (["--training.seq_len", "0"], "training.seq_len must be > 0"),
        (["--hub.push"], "hub.repo_id must look like 'user/name' when hub.push is on, got ''"),
        (["--hub.push", "--hub.repo_id", "nano"], "hub.repo_id must look like 'user/name'"),
        (["--hub.push", "--hub.repo_id", "me/nano", "--hub.every_n_saves", "0"], "hub.every_n_saves must be >= 1"),
        (["--hub.push", "--hub.repo_id", "me/nano", "--hub.path_in_repo", "ckpt/{epoch}"],
         "hub.path_in_repo 'ckpt/{epoch}': only {step} may be used"),
        (["--checkpoint.async_mode", "process"], "checkpoint.async_mode: 'process' is not one of"),
        (["--hub.push", "--hub.repo_id", "me/nano", "--checkpoint.no-enable"], "checkpoint.enable is false"),
        (["--config", "does/not/exist.toml"], "config file not found: does/not/exist.toml"),
        (["stray"], "unexpected argument 'stray'"),
        (["--compile.enabl"], "unknown key 'compile.enabl' (did you mean 'compile.enable'?)"),
        (["--data.sources"], "'data.sources' is a table"),
    ],
)
def test_bad_input_names_the_key(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(argv)
    assert message in str(err.value)


def test_unknown_key_in_toml_names_it(tmp_path: Path) -> None:
    path = write(tmp_path, "[optimizer]\nlearning_rate = 1e-3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optimizer.learning_rate'"):
        load_config(["--config", path])
    path = write(tmp_path, "[optimiser]\nlr = 1e-3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'optimiser' \(did you mean 'optimizer'\?\)"):
        load_config(["--config", path])
    path = write(tmp_path, "[training]\nseq_len = 1.5\n")
    with pytest.raises(ConfigError, match=r"training.seq_len: expected int, got 1.5"):
        load_config(["--config", path])


def test_grad_accum_follows_the_data_parallel_degree() -> None:
    cfg = load_config([])
    assert grad_accum_steps(cfg, world_size=1) == 16
    assert grad_accum_steps(cfg, world_size=8) == 2
    cfg.parallelism.tensor_parallel_degree = 2
    assert grad_accum_steps(cfg, world_size=8) == 4


def test_help_lists_every_key_with_type_default_and_doc() -> None:
    text = help_text()
    for section in dataclasses.fields(JobConfig):
        cls = type(getattr(JobConfig(), section.name))
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert f"--{section.name}.{f.name} " in text
            assert docs[f.name] and docs[f.name] in text, f"{section.name}.{f.name} has no docstring"
    assert "--training.micro_batch_size int (default: 8)" in text


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nano.train", *args], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_cli_exit_code_2_and_message_on_unknown_key() -> None:
    proc = run_cli("--config", "train_configs/debug_model.toml", "--training.max_step", "5")
    assert proc.returncode == 2
    assert "unknown key 'training.max_step' (did you mean 'training.max_steps'?)" in proc.stderr


def test_cli_help_lists_keys() -> None:
    proc = run_cli("--help")
    assert proc.returncode == 0
    assert "--optimizer.lr float" in proc.stdout and "--resume" in proc.stdout


def test_cli_requires_a_config_file() -> None:
    proc = run_cli("--max-steps", "5")
    assert proc.returncode == 2
    assert "--config FILE is required" in proc.stderr
