"""Single-process policies: activation checkpointing, compile, float8 (emulated), mesh validation, memory."""

import dataclasses
import sys

import pytest
import torch

from nano.config import ConfigError, Float8, load_config
from nano.models.llama import FLAVORS, Transformer
from nano.parallel.dims import ParallelDims
from nano.parallel.memory import check_fits, estimate_peak_memory, loss_bytes
from nano.parallel.parallelize import apply_ac, apply_compile, apply_float8, parallelize
from nano.train import forward_backward
from tests.tiny import TINY, batches, reference_model, train


def grads_after_one_step(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    tokens = batches(0)
    forward_backward(model, [{"input": tokens[:, :-1], "label": tokens[:, 1:]}], torch.device("cpu"))
    return {name.replace("_checkpoint_wrapped_module.", ""): p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("mode", ["full", "selective_layer", "selective_op"])
def test_activation_checkpointing_gives_the_same_gradients(mode: str) -> None:
    expected = grads_after_one_step(reference_model())
    model = reference_model()
    plan = apply_ac(model, mode, every_n_layers=2)
    wrapped = [n for n, m in model.layers.named_children() if type(m).__name__ == "CheckpointWrapper"]
    assert wrapped == (["0"] if mode == "selective_layer" else ["0", "1"]), plan
    got = grads_after_one_step(model)
    assert set(got) == set(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    assert list(model.state_dict()) == list(reference_model().state_dict())  # checkpoint keys stay native


def test_compile_per_block_matches_eager() -> None:
    eager, compiled = reference_model(), reference_model()
    apply_ac(compiled, "full", every_n_layers=1)
    apply_compile(compiled)
    torch.testing.assert_close(torch.stack(train(compiled, steps=2)), torch.stack(train(eager, steps=2)),
                               rtol=1e-4, atol=1e-5)
    assert list(compiled.state_dict()) == list(eager.state_dict())


@pytest.mark.parametrize("recipe", ["tensorwise", "rowwise"])
def test_float8_emulation_converts_the_expected_linears_and_trains(recipe: str) -> None:
    pytest.importorskip("torchao")
    # ffn 120 is not a multiple of 16: the FFN linears must stay in high precision, like the output head.
    args = dataclasses.replace(TINY, ffn_hidden_dim=120)
    model = reference_model(args)
    apply_float8(model, Float8(enable=True, recipe=recipe, emulate=True), "cpu")
    converted = {n for n, m in model.named_modules() if type(m).__name__ == "Float8Linear"}
    assert converted == {f"layers.{i}.attention.{w}" for i in range(2) for w in ("wq", "wk", "wv", "wo")}
    losses = torch.stack(train(model, steps=3))
    reference = torch.stack(train(reference_model(args), steps=3))
    assert torch.isfinite(losses).all()
    torch.testing.assert_close(losses, reference, rtol=0.05, atol=0.05)


def test_float8_without_emulation_needs_a_capable_gpu() -> None:
    with pytest.raises(ConfigError, match="float8 training needs an H100-class GPU"):
        apply_float8(reference_model(), Float8(enable=True), "cpu")


def test_single_process_plan_has_no_wrappers() -> None:
    cfg = load_config([])
    dims = ParallelDims.from_config(cfg.parallelism, 1)
    assert dims.build_mesh("cpu") is None and not dims.fsdp_enabled
    with torch.device("meta"):
        model = Transformer(TINY)
    assert parallelize(model, dims, None, cfg, "cpu")[-1] == "no policies: plain single-device model"
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())


@pytest.mark.parametrize(
    ("argv", "world", "message"),
    [
        (["--parallelism.tensor_parallel_degree", "3"], 4, "must equal the world size (4)"),
        (["--parallelism.data_parallel_shard_degree", "3"], 4, "must equal the world size (4)"),
        (["--parallelism.data_parallel_replicate_degree", "0"], 2, "data_parallel_replicate_degree must be >= 1"),
    ],
)
def test_bad_mesh_is_refused_at_load(argv: list[str], world: int, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(["--training.global_batch_size", "96", "--training.micro_batch_size", "1", *argv], world_size=world)


def test_heads_must_divide_by_the_tensor_parallel_degree() -> None:
    cfg = load_config(["--parallelism.tensor_parallel_degree", "3", "--training.micro_batch_size", "1",
                       "--training.global_batch_size", "2"], world_size=6)
    dims = ParallelDims.from_config(cfg.parallelism, 6)
    with pytest.raises(ConfigError, match=r"tensor_parallel_degree \(3\) must divide the model's n_heads \(16\)"):
        dims.validate_model(n_heads=16, n_kv_heads=16)


def test_memory_estimate_orders_the_checkpointing_modes_and_refuses_what_cannot_fit() -> None:
    args = dataclasses.replace(FLAVORS["nano_1b"], vocab_size=32064)
    cfg = load_config(["--model.flavor", "nano_1b"])
    dims = ParallelDims.from_config(cfg.parallelism, 1)
    totals = {}
    for mode in ("none", "selective_op", "full"):
        cfg.activation_checkpoint.mode = mode
        totals[mode] = estimate_peak_memory(args, cfg, dims)
    assert totals["full"].total < totals["selective_op"].total < totals["none"].total
    assert totals["full"].params == 4 * 1_244_489_728  # fp32 master weights
    sharded = estimate_peak_memory(args, cfg, ParallelDims.from_config(cfg.parallelism, 8))
    assert sharded.optimizer == totals["full"].optimizer // 8
    check_fits(args, cfg, dims, device_memory=80 * 2**30)
    cfg.activation_checkpoint.mode = "none"
    with pytest.raises(ConfigError, match="lower --batch-size"):
        check_fits(args, cfg, dims, device_memory=24 * 2**30)


def test_a_config_that_does_not_fit_names_the_largest_micro_batch_that_does() -> None:
    """The seed's one-GPU settings (micro-batch 8 x 2048, full AC, bf16) need ~23.5 GiB: over 95% of a 24 GiB
    card. Micro-batch 4 keeps the global batch of 128 in 32 accumulation steps and fits."""
    args = dataclasses.replace(FLAVORS["nano_1b"], vocab_size=32064)
    cfg = load_config(["--config", "train_configs/nano_1b.toml", "--activation_checkpoint.mode", "full"])
    one_gpu = ParallelDims.from_config(cfg.parallelism, 1)
    with pytest.raises(ConfigError, match=r"micro_batch_size 4 fits: 21\.\d GiB") as refused:
        check_fits(args, cfg, one_gpu, device_memory=24 * 2**30)
    assert "exceeds 95% of the device's 24.0 GiB" in str(refused.value)
    cfg.training.micro_batch_size = 4
    check_fits(args, cfg, one_gpu, device_memory=24 * 2**30)


def test_the_chunked_loss_holds_one_chunk_of_logits_and_tensor_parallel_all_of_them() -> None:
    args = dataclasses.replace(FLAVORS["nano_1b"], vocab_size=32064)
    cfg = load_config(["--model.flavor", "nano_1b", "--activation_checkpoint.mode", "full"])
    one_gpu = ParallelDims.from_config(cfg.parallelism, 1)
    tokens = cfg.training.micro_batch_size * cfg.training.seq_len
    chunked = loss_bytes(args, cfg, one_gpu)
    assert loss_bytes(args, cfg, one_gpu, chunked=False) - chunked > 8 * tokens * args.vocab_size

    # Only one chunk of logits is alive: more tokens add hidden-state gradients (tokens x dim), not logits.
    cfg.training.micro_batch_size *= 2
    assert loss_bytes(args, cfg, one_gpu) - chunked <= tokens * args.dim * 16 < tokens * args.vocab_size * 2

    # Tensor parallel applies the head as a module: the logits exist, split over the ranks by loss parallel.
    cfg = load_config(["--model.flavor", "nano_1b", "--parallelism.tensor_parallel_degree", "2",
                       "--training.global_batch_size", "8"], world_size=2)
    tp = ParallelDims.from_config(cfg.parallelism, 2)
    assert loss_bytes(args, cfg, tp) == loss_bytes(args, cfg, tp, chunked=False)
    materialised = loss_bytes(args, cfg, tp)
    cfg.parallelism.enable_loss_parallel = True
    assert loss_bytes(args, cfg, tp) < materialised * 0.55


def test_tied_embeddings_are_refused_when_sharded() -> None:
    with torch.device("meta"):
        model = Transformer(dataclasses.replace(TINY, tie_embeddings=True))
    sharded = ParallelDims(dp_replicate=1, dp_shard=2, tp=1, world_size=2)
    with pytest.raises(ConfigError, match="model.tie_embeddings works on one process only"):
        parallelize(model, sharded, None, load_config([]), "cpu")


def test_float8_without_torchao_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchao.float8", None)  # as if the [float8] extra were not installed
    with pytest.raises(ConfigError, match=r"float8.enable needs torchao: pip install -e '.\[float8\]'"):
        apply_float8(reference_model(), Float8(enable=True, emulate=True), "cpu")
