"""The builtin datasets on the small files of tests/data: chat (template generation mask and the prefix-diff
fallback agree), instruction (column mapping, templates, answer-only loss), squad, hellaswag (accuracy),
truncation, packing, the tokenization cache, and the errors on bad input. Nothing downloads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from automodel import config
from automodel.builtin import datasets as D
from automodel.context import Context
from automodel.errors import AutomodelError, ConfigError
from automodel.plugins import load_plugins
from automodel.testing import char_tokenizer, write_task_data

DATA = Path(__file__).resolve().parents[1] / "data"
CHAT = str(DATA / "chat.jsonl")
SQUAD = str(DATA / "squad.jsonl")
HELLASWAG = str(DATA / "hellaswag.jsonl")

# A chat template for the char tokenizer, with {% generation %} blocks, and the same without them.
WITH_GENERATION = (
    "{% for m in messages %}{{ m.role }}: "
    "{% if m.role == 'assistant' %}{% generation %}{{ m.content }}</s>{{ '\\n' }}{% endgeneration %}"
    "{% else %}{{ m.content }}{{ '\\n' }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)
WITHOUT_GENERATION = WITH_GENERATION.replace("{% generation %}", "").replace("{% endgeneration %}", "")


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


@pytest.fixture
def ctx():
    return Context(device=torch.device("cpu"))


@pytest.fixture
def cache(tmp_path):
    return str(tmp_path / "hf-cache")


def trained_text(tok, example) -> str:
    """The label tokens of an example as text, '_' for tokens without loss."""
    return "".join(tok.decode([i]) if lab != -100 else "_" for i, lab in zip(example["input_ids"], example["labels"]))


# --------------------------------------------------------------------------------------------------
# chat
# --------------------------------------------------------------------------------------------------


def test_chat_loss_is_on_assistant_turns_only_with_and_without_generation_blocks(tok, ctx, cache):
    native = D.chat(ctx, tok, CHAT, chat_template=WITH_GENERATION, cache_dir=cache)
    fallback = D.chat(ctx, tok, CHAT, chat_template=WITHOUT_GENERATION, cache_dir=cache)
    assert len(native) == len(fallback) == 32
    for i in range(len(native)):
        assert native[i] == fallback[i], f"example {i}"
    rows = [json.loads(line) for line in Path(CHAT).read_text().splitlines()]
    for i in (0, 1, 2):  # one, two and three turns; example 0 has a system prompt
        answers = [m["content"] for m in rows[i]["messages"] if m["role"] == "assistant"]
        trained = [part for part in trained_text(tok, native[i]).split("_") if part]
        assert trained == [a + "</s>\n" for a in answers]
        assert tok.decode(native[i]["input_ids"]).startswith("system: you reverse words." if i == 0 else "user: reverse")


def test_chat_system_prompt_train_on_all_and_a_tokenizer_template(tok, ctx, cache):
    tok2 = char_tokenizer()
    tok2.chat_template = WITHOUT_GENERATION
    data = D.chat(ctx, tok2, CHAT, system_prompt="be brief.", limit=3, cache_dir=cache)
    texts = [tok.decode(data[i]["input_ids"]) for i in range(3)]
    assert texts[0].startswith("system: you reverse words.")  # has its own system message: kept
    assert texts[1].startswith("system: be brief.\nuser: reverse")
    everything = D.chat(ctx, tok2, CHAT, train_on="all", limit=3, cache_dir=cache)
    assert everything[1]["labels"] == everything[1]["input_ids"]


def test_chat_errors_name_the_fix(tok, ctx, cache, tmp_path):
    with pytest.raises(AutomodelError, match="no chat template; set dataset.chat_template"):
        D.chat(ctx, tok, CHAT, cache_dir=cache)
    with pytest.raises(AutomodelError, match=r"column\(s\) \['conversation'\] not found .* its columns are \['messages', 'id'\]"):
        D.chat(ctx, tok, CHAT, messages="conversation", chat_template=WITH_GENERATION, cache_dir=cache)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "robot", "content": "hi"}]}) + "\n")
    with pytest.raises(AutomodelError, match="unknown chat role 'robot'"):
        D.chat(ctx, tok, str(bad), chat_template=WITH_GENERATION, cache_dir=cache)


# --------------------------------------------------------------------------------------------------
# instruction, squad
# --------------------------------------------------------------------------------------------------


def test_instruction_column_mapping_template_and_answer_only_loss(tok, ctx, cache, tmp_path):
    path = tmp_path / "alpaca.jsonl"
    path.write_text("".join(json.dumps({"instruction": f"reverse {w}", "input": "now", "output": w[::-1]}) + "\n"
                            for w in ("abc", "hello", "xyz")))
    data = D.instruction(ctx, tok, str(path), prompt="instruction", response="output",
                         prompt_template="{prompt}, {input}:", cache_dir=cache)
    assert tok.decode(data[1]["input_ids"]) == "<s>reverse hello, now:olleh</s>"
    assert trained_text(tok, data[1]) == "_" * len("<s>reverse hello, now:".replace("<s>", "_")) + "olleh</s>"
    full = D.instruction(ctx, tok, str(path), prompt="instruction", response="output", answer_only_loss=False, cache_dir=cache)
    assert full[0]["labels"] == [-100] + full[0]["input_ids"][1:]
    with pytest.raises(AutomodelError, match=r"column\(s\) \['question'\] not found .* its columns are \['instruction', 'input', 'output'\]"):
        D.instruction(ctx, tok, str(path), prompt="question", response="output", cache_dir=cache)


def test_truncate_or_drop_long_samples_counted_and_empty_after_filtering(tok, ctx, cache, tmp_path, capsys):
    path = write_task_data(tmp_path / "d.jsonl", n=40)  # "reverse abc" -> "cba": 13 to 21 tokens
    kept = D.instruction(ctx, tok, str(path), prompt="question", response="answer", max_length=16, cache_dir=cache)
    line = capsys.readouterr().out
    n_long = sum(1 for i in range(len(kept)) if len(kept[i]["input_ids"]) == 16)
    assert n_long > 0 and all(len(kept[i]["input_ids"]) <= 16 for i in range(len(kept)))
    assert "longer than max_length=16 truncated" in line and "40 examples" in line

    dropped = D.instruction(ctx, tok, str(path), prompt="question", response="answer", max_length=16, truncation="drop", cache_dir=cache)
    line = capsys.readouterr().out
    assert len(dropped) < 40 and f"-> {len(dropped)} sequences" in line and "longer than max_length=16 dropped" in line
    with pytest.raises(AutomodelError, match="all 40 examples .* were dropped .*keep no response token after truncation to max_length=3"):
        D.instruction(ctx, tok, str(path), prompt="question", response="answer", max_length=3, cache_dir=cache)


def test_squad_answers_and_unanswerable_examples(tok, ctx, cache, capsys):
    data = D.squad(ctx, tok, SQUAD, prompt_template="{context}\nq: {question}\na: ", cache_dir=cache)
    assert "32 examples" in capsys.readouterr().out
    assert len(data) == 28  # 4 unanswerable ones dropped: nothing to learn
    text = tok.decode(data[0]["input_ids"])
    assert text.startswith("<s>the dog is green.") and text.endswith("q: what color is the cow?\na: red</s>")
    assert trained_text(tok, data[0]).strip("_") == "red</s>"


def test_packing_a_dataset_logs_its_efficiency_and_keeps_every_token(tok, ctx, cache, capsys):
    plain = D.chat(ctx, tok, CHAT, chat_template=WITH_GENERATION, max_length=256, cache_dir=cache)
    capsys.readouterr()
    packed = D.chat(ctx, tok, CHAT, chat_template=WITH_GENERATION, max_length=256, packing=True, cache_dir=cache)
    line = capsys.readouterr().out
    assert f"packed into {len(packed)} rows of 256 tokens: packing efficiency {packed.efficiency:.3f}" in line
    assert len(packed) < len(plain) and packed.efficiency > 0.8
    tokens = sorted(t for i in range(len(plain)) for t in plain[i]["input_ids"])
    assert sorted(t for i in range(len(packed)) for t in packed[i]["input_ids"]) == tokens


def test_tokenization_is_cached_and_parallel(tok, ctx, cache, capsys):
    first = D.chat(ctx, tok, CHAT, chat_template=WITH_GENERATION, cache_dir=cache)
    assert "tokenized in" in capsys.readouterr().out
    again = D.chat(ctx, tok, CHAT, chat_template=WITH_GENERATION, cache_dir=cache)
    assert "from the tokenization cache" in capsys.readouterr().out
    assert list(again["input_ids"]) == list(first["input_ids"])
    other = D.chat(ctx, tok, CHAT, chat_template=WITHOUT_GENERATION, max_length=100, num_proc=2, cache_dir=cache)
    assert "2 processes" in capsys.readouterr().out  # another template or max_length: not the cached result
    assert len(other) == 32


def test_streaming_dataset_yields_the_same_samples(tok, ctx, cache):
    stream = D.chat(ctx, tok, CHAT, chat_template=WITH_GENERATION, streaming=True, cache_dir=cache)
    mapped = D.chat(ctx, tok, CHAT, chat_template=WITH_GENERATION, cache_dir=cache)
    got = list(stream)
    assert [g["input_ids"] for g in got] == [mapped[i]["input_ids"] for i in range(len(mapped))]
    assert [g["labels"] for g in got] == [mapped[i]["labels"] for i in range(len(mapped))]


def test_the_tokenized_datasets_end_with_the_pipeline_keys_and_share_their_defaults():
    # the keys stay explicit in each signature (the config schema); Pipeline.of reads them by name
    import inspect

    keys = [k for k in D.Pipeline.__dataclass_fields__ if k != "name"]
    params = [inspect.signature(f).parameters for f in (D.instruction, D.chat, D.squad)]
    for k in keys:
        assert all(k in p for p in params), k
        assert len({(p[k].default, p[k].annotation) for p in params}) == 1, k
    assert keys[-1] == "limit" and all(list(p)[-1] == "limit" for p in params)
    for f in (D.instruction, D.chat, D.squad, D.hellaswag):  # file_dataset gave each the shared checks
        assert f.path_args == ("path", "cache_dir")
        assert f.validate_args({"path": CHAT, "limit": 0}) == [("limit", "must be at least 1, got 0", "")]


# --------------------------------------------------------------------------------------------------
# hellaswag
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def reference_accuracy(model, tok, rows) -> tuple[float, float]:
    """Independent scoring: each ending unpadded, without an attention mask."""
    right_sum = right_mean = 0
    for r in rows:
        ctx_ids = [tok.bos_token_id] + tok.encode(r["ctx"], add_special_tokens=False)
        ends = [tok.encode(" " + e, add_special_tokens=False) for e in r["endings"]]
        sums, means = [], []
        for end in ends:
            ids = torch.tensor([ctx_ids + end])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            lp = logp[len(ctx_ids) - 1 :].gather(-1, ids[0, len(ctx_ids) :, None]).sum()
            sums.append(float(lp))
            means.append(float(lp) / len(end))
        right_sum += int(max(range(4), key=sums.__getitem__) == int(r["label"]))
        right_mean += int(max(range(4), key=means.__getitem__) == int(r["label"]))
    return right_sum / len(rows), right_mean / len(rows)


def test_hellaswag_evaluate_reports_accuracy_and_splits_over_ranks(tok, ctx, cache, model):
    data = D.hellaswag(ctx, tok, HELLASWAG, batch_size=3, limit=20, cache_dir=cache)
    assert len(data) == 20
    result = data.evaluate(model, ctx)
    rows = [json.loads(line) for line in Path(HELLASWAG).read_text().splitlines()][:20]
    acc, acc_norm = reference_accuracy(model, tok, rows)
    assert result == {"val_accuracy": pytest.approx(acc), "val_accuracy_norm": pytest.approx(acc_norm), "val_examples": 20}

    parts = [data.evaluate(model, Context(device=torch.device("cpu"), dp_rank=r, dp_size=3)) for r in range(3)]
    assert [h["val_examples"] for h in parts] == [7, 7, 6]
    assert sum(h["val_accuracy"] * h["val_examples"] for h in parts) == pytest.approx(acc * 20)

    item = data[0]  # also a plain LM example: context then the right ending, loss on the ending
    assert tok.decode(item["input_ids"]) == "<s>" + rows[0]["ctx"] + " " + rows[0]["endings"][int(rows[0]["label"])]
    assert trained_text(tok, item).strip("_") == " " + rows[0]["endings"][int(rows[0]["label"])]


def test_hellaswag_bad_label_and_missing_column(tok, ctx, cache, tmp_path):
    bad = tmp_path / "h.jsonl"
    bad.write_text(json.dumps({"ctx": "a", "endings": ["b", "c"], "label": "7"}) + "\n")
    with pytest.raises(AutomodelError, match="label 7 does not index its 2 endings"):
        D.hellaswag(ctx, tok, str(bad), cache_dir=cache)
    with pytest.raises(AutomodelError, match=r"its columns are \['ind', 'ctx', 'endings', 'label'\]"):
        D.hellaswag(ctx, tok, HELLASWAG, context="context", cache_dir=cache)


# --------------------------------------------------------------------------------------------------
# validation before launch
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plugins():
    return load_plugins(entry_points=False)


def problems(dataset, plugins, model_dir="unused") -> str:
    raw = {"model": {"name": "hf", "pretrained": model_dir}, "dataset": dataset}
    with pytest.raises(ConfigError) as e:
        config.validate(raw, plugins, source="cfg.yaml")
    return str(e.value)


def test_config_validation_before_launch(plugins, tiny_model_dir):
    err = problems({"name": "chat", "path": CHAT, "truncation": "cut"}, plugins, str(tiny_model_dir))
    assert "dataset.truncation: expected one of 'truncate', 'drop', got str 'cut'" in err
    err = problems({"name": "chat", "path": CHAT, "messages": "conv"}, plugins, str(tiny_model_dir))
    assert "dataset.messages: column 'conv' is not in" in err and "its columns are: messages, id" in err
    err = problems({"name": "hellaswag", "path": HELLASWAG, "label": "gold"}, plugins, str(tiny_model_dir))
    assert "dataset.label: column 'gold' is not in" in err and "ctx, endings, label" in err
    err = problems({"name": "squad", "path": SQUAD, "prompt_template": "{passage} {question}"}, plugins, str(tiny_model_dir))
    assert "dataset.prompt_template: unknown field(s) {passage}" in err
    err = problems({"name": "instruction", "path": SQUAD, "prompt": "question", "response": "id",
                    "prompt_template": "{ctx}: {prompt}"}, plugins, str(tiny_model_dir))
    assert "{ctx} name no column" in err and "context" in err
    cfg = config.validate({"model": {"name": "hf", "pretrained": str(tiny_model_dir)},
                          "dataset": {"name": "chat", "path": CHAT, "packing": True, "truncation": "drop",
                                      "chat_template": WITH_GENERATION}}, plugins).config  # the tiny tokenizer has none
    assert cfg["dataset"]["truncation"] == "drop"
    err = problems({"name": "chat", "path": CHAT}, plugins, str(tiny_model_dir))  # found before the model is built
    assert "dataset.chat_template: is not set and the tokenizer at" in err and "has no chat template" in err
