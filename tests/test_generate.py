"""nano-generate: the KV cache changes nothing, sampling follows its settings, text streams in whole characters,
--chat answers in the chat format and stops at <|end|>, and a DCP step folder and its export generate the same."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from nano.checkpoint.export import (
    CHAT_TEMPLATE,
    export_checkpoint,
    hf_name,
    native_name,
)
from nano.data.formats import chat_prompt
from nano.generate import (
    SamplingParams,
    TextStream,
    encode_prompt,
    generate,
    load,
    main,
    pick,
)
from nano.models.llama import FLAVORS, Transformer, padded_vocab_size
from tests.chat_model import CHATS, TOK, save_checkpoint, trained_model

CPU = torch.device("cpu")


def debug_model() -> Transformer:
    torch.manual_seed(0)
    model = Transformer(dataclasses.replace(FLAVORS["debug"], vocab_size=padded_vocab_size(TOK.vocab_size)))
    model.init_weights()
    return model.eval()


def test_greedy_generation_with_the_kv_cache_equals_recomputing_the_sequence() -> None:
    model = debug_model()
    prompt = encode_prompt(TOK, "The water cycle moves water between the oceans, the air and the land.")
    cached = list(generate(model, prompt, 40, vocab_size=TOK.vocab_size))
    recomputed = list(generate(model, prompt, 40, vocab_size=TOK.vocab_size, use_cache=False))
    assert cached == recomputed and len(cached) == 40
    # Not by luck of wide margins: every step's logits agree.
    cache, tokens = model.new_cache(), prompt + cached
    with torch.no_grad():
        full = model(torch.tensor([tokens]))
        steps = [model(torch.tensor([prompt]), cache=cache)] + [model(torch.tensor([[t]]), cache=cache) for t in cached]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-4)


def test_sampling_settings() -> None:
    logits = torch.tensor([0.0, 3.0, 2.9, 1.0, -1.0])
    draw = lambda params, seed: pick(logits, params, torch.Generator().manual_seed(seed))
    assert draw(SamplingParams(temperature=0.0), 0) == 1
    assert {draw(SamplingParams(temperature=1.0, top_k=1), s) for s in range(20)} == {1}
    assert {draw(SamplingParams(temperature=1.0, top_k=2), s) for s in range(200)} == {1, 2}
    # p = 0.5: token 1 alone holds ~0.46 of the mass, so the nucleus is tokens 1 and 2.
    assert {draw(SamplingParams(temperature=1.0, top_p=0.5), s) for s in range(200)} == {1, 2}
    assert {draw(SamplingParams(temperature=1.0), s) for s in range(400)} == {0, 1, 2, 3, 4}
    assert [draw(SamplingParams(temperature=1.0), s) for s in range(30)] == \
        [draw(SamplingParams(temperature=1.0), s) for s in range(30)]  # seeded: the same draws again


def test_text_streams_in_whole_characters() -> None:
    text = "Grüße 🙂 und 你好!"
    ids = TOK.encode(text)
    assert len(ids) > len(text) // 2 and any(TOK.decode([i]) == "\ufffd" for i in ids)  # byte pieces in there
    stream = TextStream(TOK)
    pieces = [stream.add(token) for token in ids] + [stream.finish()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_chat_prompt_is_what_the_exported_chat_template_renders(tmp_path: Path) -> None:
    jinja2 = pytest.importorskip("jinja2")
    rendered = jinja2.Template(CHAT_TEMPLATE).render(
        messages=[{"role": "user", "content": " What is 15% of 80? "}], add_generation_prompt=True,
        bos_token=TOK.sp.id_to_piece(TOK.bos_id))
    assert rendered == TOK.sp.id_to_piece(TOK.bos_id) + chat_prompt(" What is 15% of 80? ")


def test_hf_names_map_back_to_native_names() -> None:
    for native in Transformer(dataclasses.replace(FLAVORS["debug"], n_layers=2)).state_dict():
        assert native_name(hf_name(native)) == native


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoints")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("user", "reply"), list(CHATS.items()))
def test_chat_replies_after_the_assistant_tag_and_stops_at_end(checkpoint: Path, capsys, user: str,
                                                               reply: str) -> None:
    code, out, err = run_cli(capsys, "--checkpoint", str(checkpoint), "--prompt", user, "--chat",
                             "--temperature", "0", "--max-new-tokens", "60")
    assert code == 0, err
    assert out == reply + "\n\n"  # the reply (its own newline before <|end|>), then the line end; nothing after
    generated = int(re.search(r"\[(\d+) tokens in", err).group(1))  # type: ignore[union-attr]
    assert generated == len(TOK.encode(reply + "\n")) < 60  # stopped at <|end|>, not at the limit


def test_a_plain_prompt_is_continued_after_itself(checkpoint: Path, capsys) -> None:
    code, out, _ = run_cli(capsys, "--checkpoint", str(checkpoint.parent), "--prompt", "<|user|>\nHi\n<|assistant|>\n",
                           "--temperature", "0", "--max-new-tokens", "8")
    assert code == 0 and out.startswith("<|user|>\nHi\n<|assistant|>\nHello there")


def test_a_step_folder_and_its_export_generate_the_same(checkpoint: Path, tmp_path: Path, capsys) -> None:
    exported = export_checkpoint(checkpoint, tmp_path / "hf", dtype="fp32")
    from_dcp, from_export = load(checkpoint, CPU), load(exported, CPU)
    for name, value in from_dcp.model.state_dict().items():
        assert torch.equal(from_export.model.state_dict()[name], value), name
    prompt = encode_prompt(TOK, chat_prompt("Hi"))
    params = SamplingParams(temperature=1.5, top_k=50, top_p=0.95)  # hot: many tokens are candidates
    samples = [list(generate(loaded.model, prompt, 30, params, vocab_size=TOK.vocab_size,
                             generator=torch.Generator().manual_seed(5))) for loaded in (from_dcp, from_export)]
    assert samples[0] == samples[1] and len(samples[0]) == 30
    outputs = [run_cli(capsys, "--checkpoint", str(path), "--prompt", "Hi", "--seed", "3", "--temperature", "1.5")
               for path in (checkpoint, exported)]
    assert outputs[0][0] == outputs[1][0] == 0 and outputs[0][1] == outputs[1][1]


def test_unusable_checkpoints_are_named(tmp_path: Path, capsys) -> None:
    code, _, err = run_cli(capsys, "--checkpoint", str(tmp_path / "missing"), "--prompt", "x")
    assert code == 2 and f"--checkpoint {tmp_path / 'missing'}: no such file or folder" in err
    code, _, err = run_cli(capsys, "--checkpoint", str(tmp_path), "--prompt", "x")
    assert code == 2 and f"{tmp_path} is neither a DCP step folder" in err


def test_the_trained_model_answers_its_chats() -> None:
    """The helper model the CLI tests use has learnt its chats; if this fails, those tests cannot pass."""
    model = trained_model()
    end = TOK.special_ids["<|end|>"]
    for user, reply in CHATS.items():
        ids = list(generate(model, encode_prompt(TOK, chat_prompt(user)), 40, vocab_size=TOK.vocab_size,
                            stop_ids=[end]))
        assert TOK.decode(ids) == reply + "\n"
