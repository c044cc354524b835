"""DCP checkpoints -> Hugging Face folders that `transformers` loads as nano runs them: weights, tokenizer, chat."""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import subprocess
import sys
import weakref
from pathlib import Path

import pytest
import torch

from nano.checkpoint.export import (
    ExportError,
    export_checkpoint,
    hf_name,
    plan_shards,
    read_checkpoint_info,
    write_safetensors,
)
from nano.data.formats import FORMATTERS
from nano.data.tokenizer import Tokenizer
from nano.generate import load
from nano.models.llama import Transformer
from tests.checkpoint.checkpoints import SMALL, TOKENIZER, make_checkpoint
from tests.distributed import REPO_ROOT, free_port

transformers = pytest.importorskip("transformers")


def nano_model_from(step_dir: Path) -> Transformer:
    """A plain single-process model restored from a DCP step folder saved under any mesh."""
    return load(step_dir, torch.device("cpu")).model


def nano_greedy(model: Transformer, prompt: torch.Tensor, new_tokens: int, stop: set[int]) -> list[int]:
    tokens = prompt.clone()
    with torch.no_grad():
        for _ in range(new_tokens):
            nxt = int(model(tokens)[0, -1].argmax())
            tokens = torch.cat([tokens, torch.tensor([[nxt]])], dim=1)
            if nxt in stop:
                break
    return tokens[0, prompt.shape[1]:].tolist()


def assert_transformers_matches_nano(step_dir: Path, out: Path) -> None:
    export_checkpoint(step_dir, out, dtype="fp32")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    nano = nano_model_from(step_dir)
    vocab = read_checkpoint_info(step_dir).args.vocab_size
    tokens = torch.randint(0, vocab, (2, 48), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, nano(tokens), rtol=1e-5, atol=1e-5)
    prompt = tokens[:1, :8]
    stop = set(hf.generation_config.eos_token_id)
    expected = nano_greedy(nano, prompt, 20, stop)
    generated = hf.generate(prompt, max_new_tokens=20, do_sample=False)[0, 8:].tolist()
    assert generated == expected and len(expected) >= 1


def test_single_process_checkpoint_loads_in_transformers(tmp_path: Path) -> None:
    assert_transformers_matches_nano(make_checkpoint(tmp_path / "ckpt"), tmp_path / "hf")


@pytest.fixture(scope="module")
def parallel_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Checkpoints written by the trainer on 2 gloo ranks: FSDP (dp 2) and tensor parallel (tp 2)."""
    runs = {}
    for name, extra in {"fsdp": ["--training.micro_batch_size", "4"],
                        "tp": ["--parallelism.tensor_parallel_degree", "2"]}.items():
        folder = tmp_path_factory.mktemp(name)
        env = {**os.environ, "NGPU": "2", "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())}
        proc = subprocess.run(
            ["./run_train.sh", "--config", "train_configs/debug_model.toml", "--max-steps", "2",
             "--checkpoint.interval", "2", "--job.dump_folder", str(folder), "--training.seq_len", "64", "--validation.no-enable",
             *extra],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs[name] = folder / "checkpoints" / "step-2"
    return runs


@pytest.mark.parametrize("mesh", ["fsdp", "tp"])
def test_sharded_trainer_checkpoint_loads_in_transformers(parallel_runs: dict[str, Path], mesh: str,
                                                          tmp_path: Path) -> None:
    assert_transformers_matches_nano(parallel_runs[mesh], tmp_path / "hf")


def test_tied_embeddings_export_ties_the_head(tmp_path: Path) -> None:
    step_dir = make_checkpoint(tmp_path / "ckpt", dataclasses.replace(SMALL, tie_embeddings=True))
    assert_transformers_matches_nano(step_dir, tmp_path / "hf")
    from safetensors import safe_open

    with safe_open(tmp_path / "hf" / "model.safetensors", "pt") as f:
        assert "lm_head.weight" not in f.keys() and "model.embed_tokens.weight" in f.keys()
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["tie_word_embeddings"] is True


def test_large_models_are_sharded_with_an_index(tmp_path: Path) -> None:
    step_dir = make_checkpoint(tmp_path / "ckpt")
    export_checkpoint(step_dir, tmp_path / "hf", dtype="fp32", max_shard_bytes=1_000_000)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files == sorted(p.name for p in (tmp_path / "hf").glob("model-*.safetensors"))
    assert not (tmp_path / "hf" / "model.safetensors").exists()
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    tokens = torch.randint(0, SMALL.vocab_size, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(tokens).logits, nano_model_from(step_dir)(tokens), rtol=1e-5, atol=1e-5)


def test_default_export_is_bf16_with_the_checkpoint_facts(tmp_path: Path) -> None:
    step_dir = make_checkpoint(tmp_path / "ckpt", step=7)
    out = export_checkpoint(tmp_path / "ckpt", tmp_path / "hf")  # the checkpoint folder: its newest step
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["vocab_size"] == SMALL.vocab_size
    assert (config["hidden_size"], config["num_key_value_heads"], config["intermediate_size"]) == (64, 2, 160)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert hf.dtype == torch.bfloat16
    nano = nano_model_from(step_dir)
    torch.testing.assert_close(hf.model.embed_tokens.weight, nano.tok_embeddings.weight.to(torch.bfloat16), rtol=0, atol=0)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: mit\n") and "step 7" in card and "1,234" in card and "7.5000" in card
    assert "openai/gsm8k" in card and "python -m nano.train --config x" in card
    generation = json.loads((out / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [2, Tokenizer(TOKENIZER).special_ids["<|end|>"]]


def test_the_model_cards_usage_example_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = export_checkpoint(make_checkpoint(tmp_path / "ckpt"), tmp_path / "hf")
    example = (out / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    assert f"from_pretrained({str(out)!r})" in example
    exec(compile(example, "model card", "exec"), {})
    assert capsys.readouterr().out.startswith("<s><|user|>\nWhat is 15% of 80?\n<|assistant|>\n")


def test_tokenizer_and_chat_template_reproduce_the_training_format(tmp_path: Path) -> None:
    out = export_checkpoint(make_checkpoint(tmp_path / "ckpt"), tmp_path / "hf")
    ours = Tokenizer(TOKENIZER)
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    documents = []
    for source, fmt in [("gsm8k", "gsm8k"), ("openorca", "openorca"), ("ultrachat", "ultrachat"),
                        ("openschnabeltier", "schnabeltier"), ("fineweb_edu", "text"), ("culturax_de", "text")]:
        with open(REPO_ROOT / "assets" / "demo" / f"{source}.jsonl") as rows:
            documents += [FORMATTERS[fmt](json.loads(next(rows))) for _ in range(15)]
    for doc in documents:
        assert theirs(doc).input_ids == [ours.bos_id, *ours.encode(doc)], doc[:200]
        assert theirs.decode(ours.encode(doc)) == doc

    with open(REPO_ROOT / "assets" / "demo" / "ultrachat.jsonl") as rows:
        row = json.loads(next(rows))
    turns = [{"role": "user" if i % 2 == 0 else "assistant", "content": text} for i, text in enumerate(row["data"])]
    assert theirs.apply_chat_template(turns, tokenize=False) == "<s>" + FORMATTERS["ultrachat"](row)

    row = {"system_prompt": "You are a helpful assistant.", "question": "What is 15% of 80?",
           "response": "15% is 0.15, and 0.15 × 80 = 12.\nThe answer is: 12"}
    doc = FORMATTERS["openorca"](row)
    assistant = doc.split("<|assistant|>\n", 1)[1].removesuffix("\n<|end|>")
    chat = [{"role": "system", "content": row["system_prompt"]}, {"role": "user", "content": row["question"]}]
    assert theirs.apply_chat_template([*chat, {"role": "assistant", "content": assistant}], tokenize=False) == "<s>" + doc
    prompt = theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert prompt == "<s>" + doc.split("<|assistant|>\n", 1)[0] + "<|assistant|>\n"
    assert theirs(prompt, add_special_tokens=False).input_ids == [ours.bos_id, *ours.encode(prompt[len("<s>"):])]


def test_weights_stream_one_tensor_at_a_time(tmp_path: Path) -> None:
    """write_safetensors drops each tensor before asking for the next: memory stays near one tensor."""
    alive: list[weakref.ref] = []
    shapes = [torch.Size([256, 64]), torch.Size([64]), torch.Size([128, 128])]

    def make(shape: torch.Size, value: float) -> torch.Tensor:
        tensor = torch.full(shape, value)
        alive.append(weakref.ref(tensor))
        return tensor

    def tensors():
        for i, shape in enumerate(shapes):
            gc.collect()
            assert all(ref() is None for ref in alive), "an earlier tensor is still referenced"
            yield make(shape, float(i))

    write_safetensors(tmp_path / "w.safetensors", ["a", "b", "c"], shapes, torch.bfloat16, tensors())
    from safetensors.torch import load_file

    loaded = load_file(tmp_path / "w.safetensors")
    for i, (name, shape) in enumerate(zip("abc", shapes)):
        assert loaded[name].dtype == torch.bfloat16 and loaded[name].shape == shape and bool((loaded[name] == i).all())


def test_shards_are_consecutive_and_bounded() -> None:
    assert plan_shards([4, 4, 4, 10, 1], max_shard_bytes=8) == [[0, 1], [2], [3], [4]]
    assert plan_shards([1, 2, 3], max_shard_bytes=100) == [[0, 1, 2]]


def test_every_native_weight_has_a_transformers_name() -> None:
    names = [hf_name(key) for key in Transformer(SMALL).state_dict()]
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=SMALL.vocab_size, hidden_size=SMALL.dim, intermediate_size=SMALL.ffn_hidden_dim,
        num_hidden_layers=SMALL.n_layers, num_attention_heads=SMALL.n_heads, num_key_value_heads=SMALL.n_kv_heads))
    assert sorted(names) == sorted(hf.state_dict())
    with pytest.raises(ExportError, match="no Hugging Face name for weight 'layers.0.extra.weight'"):
        hf_name("layers.0.extra.weight")


def test_bad_checkpoints_are_named(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="neither a DCP step folder"):
        export_checkpoint(tmp_path, tmp_path / "out")
    step_dir = make_checkpoint(tmp_path / "ckpt")
    (step_dir / ".complete").unlink()
    with pytest.raises(ExportError, match=r"no \.complete: only complete checkpoints"):
        export_checkpoint(step_dir, tmp_path / "out")
    proc = subprocess.run([sys.executable, "-m", "nano.checkpoint.export", str(tmp_path / "nothing"), str(tmp_path / "o")],
                          capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 2 and "error:" in proc.stderr and "neither a DCP step folder" in proc.stderr
