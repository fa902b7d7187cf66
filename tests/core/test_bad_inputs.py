"""The bad-input corpus: every case is one row of CASES (a config, an override, a data file or a plugin
fault) and must end in a one-screen error: the expected exit code, the key path (or file/record) in the
first line, no traceback without --debug, and the error in under 2 s.

The cases run in this process through the CLI's own entry (``automodel.cli._main``), not 50 subprocesses.
``python tests/core/test_bad_inputs.py [PYTHONPATH-of-another-checkout]`` prints each case's first error
line (used to compare with an older version).
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

BASE_DATA = '{"question": "reverse abc", "answer": "cba"}\n' * 16
CHAT_DATA = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n' * 8


@dataclass
class Case:
    id: str
    needle: str  # must be in the first line of the error
    edit: Callable[[dict[str, Any], Path], Any] | None = None  # changes the config dict (may write files)
    args: tuple[str, ...] = ()  # overrides / extra CLI arguments
    text: bytes | str | None = None  # the config file's raw content instead of the dict
    files: dict[str, str | bytes] = field(default_factory=dict)  # written next to the config first
    commands: tuple[str, ...] = ("validate",)
    code: int = 2
    config_name: str = "config.yaml"


def _set(path: str, value: Any) -> Callable[[dict[str, Any], Path], None]:
    def edit(cfg: dict[str, Any], tmp: Path) -> None:
        node = cfg
        *parents, last = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value(tmp) if callable(value) else value
    return edit


def _drop(key: str) -> Callable[[dict[str, Any], Path], None]:
    return lambda cfg, tmp: cfg.pop(key)


BROKEN_PLUGIN = "import automodel\nraise RuntimeError('plugin exploded at import')\n"
RAISING_HOOK = ("from automodel import hookimpl\n\n@hookimpl\ndef register_losses(register):\n"
                "    raise ValueError('cannot register')\n")
BAD_SIGNATURE = ("from automodel import hookimpl\n\ndef loss_without_call():\n    return 1\n\n@hookimpl\n"
                 "def register_losses(register):\n    register('odd', 123)\n")

CASES: list[Case] = [
    # -- the config file -------------------------------------------------------------------------------
    Case("yaml-duplicate-top", "seed: duplicate key (line 1 and line 2)", text="seed: 1\nseed: 2\n", commands=("validate", "run")),
    Case("yaml-duplicate-nested", "optimizer.lr: duplicate key (line 2 and line 3)",
         text="optimizer:\n  lr: 1.0e-3\n  lr: 2.0e-3\n"),
    Case("yaml-not-utf8", "config.yaml: not UTF-8 text (byte 0xff at line 2", text=b"seed: 1\n# caf\xff\n", commands=("validate", "run")),
    Case("yaml-syntax", "invalid YAML (line", text="model: [unclosed\n"),
    Case("yaml-top-level-list", "the top level must be a mapping", text="- a\n- b\n"),
    Case("yaml-missing-file", "config file not found", config_name="nope.yaml"),
    Case("yaml-config-is-dir", "'CONFIG': File", config_name="adir"),
    # -- interpolation ---------------------------------------------------------------------------------
    Case("interp-unknown-resolver", "output_dir: unknown interpolation ${envv:HOME}", _set("output_dir", "${envv:HOME}/run")),
    Case("interp-unset-env", "model.tokenizer: environment variable AUTOMODEL_TEST_NOT_SET is not set",
         _set("model.tokenizer", "${env:AUTOMODEL_TEST_NOT_SET}")),
    Case("interp-unclosed", "dataset.prompt: unknown interpolation ${env:HOME", _set("dataset.prompt", "${env:HOME")),
    # -- overrides -------------------------------------------------------------------------------------
    Case("override-double-dot", "a..b: malformed override 'a..b=1'", args=("a..b=1",), commands=("validate", "run")),
    Case("override-leading-dot", ".lr: malformed override", args=(".lr=1",)),
    Case("override-trailing-dot", "optimizer.: malformed override", args=("optimizer.=1",)),
    Case("override-no-equals", "optimizer.lr: overrides look like key.path=value", args=("optimizer.lr",)),
    Case("override-no-key", "=3: an override needs a key before '='", args=("=3",)),
    Case("override-index-out-of-range", "~loggers.5: list index '5' is out of range", args=("~loggers.5",)),
    Case("override-delete-unset", "~optimizer.nope: cannot delete 'optimizer.nope'", args=("~optimizer.nope",)),
    Case("override-into-scalar", "seed.x: cannot index into a int", args=("seed.x=1",)),
    Case("override-wrong-type", "optimizer.lr: expected float, got str 'fast'", args=("optimizer.lr=fast",)),
    Case("override-bad-yaml-value", "parallel: the value", args=("parallel=[{name: fsdp2",)),
    # -- sections, keys, types -------------------------------------------------------------------------
    Case("section-typo", "step_schedular: unknown section", _set("step_schedular", {"max_steps": 3})),
    Case("key-typo", "optimizer.lerning_rate: unknown key", _set("optimizer.lerning_rate", 1e-3)),
    Case("missing-model", "model: missing required section", _drop("model")),
    Case("name-and-target", "loss: give either 'name' or '_target_'", _set("loss", {"name": "masked_ce", "_target_": "math.sqrt"})),
    Case("unknown-component", "unknown loss 'triton_ce'", _set("loss", {"name": "triton_ce"})),
    Case("bad-choice", "device: expected one of", _set("device", "gpu")),
    Case("batch-not-multiple", "step_scheduler.global_batch_size: 10 is not a multiple", _set("step_scheduler.global_batch_size", 10)),
    Case("negative-lr", "optimizer.lr: must be > 0", _set("optimizer.lr", -1e-3)),
    Case("val-without-data", "step_scheduler.val_every_steps: is set but there is no validation_dataset",
         _set("step_scheduler.val_every_steps", 2)),
    Case("clip-zero", "clip_grad_norm: must be > 0 or null", _set("clip_grad_norm", 0)),
    # -- the model -------------------------------------------------------------------------------------
    Case("heads-not-dividing", "model.config.num_attention_heads: 5 does not divide hidden_size 64",
         _set("model", {"name": "hf", "tokenizer": "TOKENIZER", "config": {
             "model_type": "llama", "hidden_size": 64, "num_attention_heads": 5, "num_hidden_layers": 1,
             "intermediate_size": 64, "vocab_size": 128}}), commands=("validate", "run")),
    Case("kv-heads-not-dividing", "model.config.num_key_value_heads: 3 does not divide num_attention_heads 4",
         _set("model", {"name": "hf", "tokenizer": "TOKENIZER", "config": {
             "model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 3,
             "num_hidden_layers": 1, "intermediate_size": 64, "vocab_size": 128}})),
    Case("model-path-missing", "model.pretrained: local path not found: ./no-such-model", _set("model.pretrained", "./no-such-model")),
    Case("model-float16", "model.dtype: float16 weights overflow", _set("model.dtype", "float16")),
    Case("model-both-sources", "(model, model.tokenizer)",
         _set("model.config", {"model_type": "llama"})),
    # -- output_dir ------------------------------------------------------------------------------------
    Case("output-dir-under-file", "output_dir: ", _set("output_dir", lambda t: str(t / "afile" / "run")),
         files={"afile": "x"}, commands=("validate", "run")),
    Case("output-dir-is-file", "output_dir: ", _set("output_dir", lambda t: str(t / "afile")), files={"afile": "x"}),
    # -- data ------------------------------------------------------------------------------------------
    Case("data-empty-dir", "dataset.path: ", _set("dataset.path", lambda t: str(t / "emptydir")), files={"emptydir/": ""},
         commands=("validate", "run")),
    Case("data-mock-seq-len-0", "dataset.seq_len: must be at least 2, got 0", _set("dataset", {"name": "mock", "seq_len": 0})),
    Case("data-mock-no-samples", "dataset.num_samples: must be at least 1, got 0", _set("dataset", {"name": "mock", "num_samples": 0})),
    Case("data-invalid-jsonl-line", "dataset.path: line 3 of bad.jsonl is not valid JSON",
         _set("dataset.path", lambda t: str(t / "bad.jsonl")),
         files={"bad.jsonl": BASE_DATA[:90] + '{"question": "x", "answer": }\n'}, commands=("validate", "run")),
    Case("data-jsonl-not-object", "dataset.path: line 2 of list.jsonl is a JSON list, not an object",
         _set("dataset.path", lambda t: str(t / "list.jsonl")), files={"list.jsonl": BASE_DATA[:45] + "[1, 2]\n"}),
    Case("data-jsonl-not-utf8", "dataset.path: line 1 of latin.jsonl is not UTF-8",
         _set("dataset.path", lambda t: str(t / "latin.jsonl")), files={"latin.jsonl": b'{"question": "caf\xe9", "answer": "x"}\n'}),
    Case("data-no-chat-template", "dataset.chat_template: is not set and the tokenizer at",
         _set("dataset", {"name": "chat", "path": "CHAT"}), files={"chat.jsonl": CHAT_DATA}, commands=("validate", "run")),
    Case("data-empty-file", "dataset.path: ", _set("dataset.path", lambda t: str(t / "empty.jsonl")), files={"empty.jsonl": ""}),
    Case("data-missing-column", "dataset.prompt: column 'instruction' is not in", _set("dataset.prompt", "instruction")),
    Case("data-unsupported-type", "dataset.path: unsupported file type '.txt'", _set("dataset.path", lambda t: str(t / "d.txt")),
         files={"d.txt": "hello"}),
    Case("data-file-missing", "dataset.path: data file not found: missing.jsonl", _set("dataset.path", "missing.jsonl")),
    Case("data-max-length", "dataset.max_length: must be at least 2, got 1", _set("dataset.max_length", 1)),
    # -- _target_ ------------------------------------------------------------------------------------
    Case("target-not-callable", "loss._target_: 'math.pi' is a float", _set("loss", {"_target_": "math.pi"})),
    Case("target-no-module", "loss._target_: cannot import module 'no_such_module_xyz'", _set("loss", {"_target_": "no_such_module_xyz.f"})),
    Case("target-no-attr", "loss._target_: module 'math' has no attribute 'nope'", _set("loss", {"_target_": "math.nope"})),
    Case("target-bad-args", "(launcher.cmd, launcher.command)", _set("launcher", {"_target_": "os.system", "cmd": "true"})),
    # -- checkpoint settings ---------------------------------------------------------------------------
    Case("ckpt-keep-zero", "checkpoint.keep_last: must be >= 1", _set("checkpoint.keep_last", 0)),
    Case("ckpt-resume-missing", "checkpoint.resume: '/no/such/ckpt' is neither", _set("checkpoint.resume", "/no/such/ckpt")),
    Case("ckpt-allow-not-bool", "checkpoint.allow_config_change: expected bool", _set("checkpoint.allow_config_change", "maybe")),
    # -- plugin faults ---------------------------------------------------------------------------------
    Case("plugin-missing-module", "no_such_plugin_mod", args=("--plugin", "no_such_plugin_mod")),
    Case("plugin-import-error", "badimport_plugin", args=("--plugin", "badimport_plugin"),
         files={"badimport_plugin.py": BROKEN_PLUGIN}),
    Case("plugin-hook-raises", "raising_hook_plugin", args=("--plugin", "raising_hook_plugin"),
         files={"raising_hook_plugin.py": RAISING_HOOK}),
    Case("plugin-in-config-missing", "no_such_cfg_plugin", _set("plugins", ["no_such_cfg_plugin"])),
    Case("plugin-bad-target", "odd", args=("--plugin", "badsig_plugin"), files={"badsig_plugin.py": BAD_SIGNATURE},
         edit=_set("loss", {"name": "odd"})),
]


def _base_config(shared: Path) -> dict[str, Any]:
    return {
        "seed": 1,
        "output_dir": "run",
        "model": {"name": "hf", "pretrained": str(shared / "tiny-llama")},
        "dataset": {"name": "instruction", "path": str(shared / "data.jsonl"), "prompt": "question", "response": "answer"},
        "optimizer": {"name": "adamw", "lr": 1.0e-3},
        "step_scheduler": {"global_batch_size": 8, "local_batch_size": 4, "max_steps": 2},
        "checkpoint": {"export_hf": False, "save_final": False},
        "loggers": [{"name": "jsonl"}],
    }


def prepare(case: Case, tmp: Path, shared: Path) -> list[str]:
    """Write the case's files and config under ``tmp``; return the CLI arguments after the command."""
    for name, content in case.files.items():
        target = tmp / name
        if name.endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
    path = tmp / case.config_name
    if case.config_name == "adir":
        path.mkdir()
    elif case.config_name == "config.yaml":
        if case.text is not None:
            path.write_bytes(case.text if isinstance(case.text, bytes) else case.text.encode())
        else:
            cfg = _base_config(shared)
            if case.edit:
                case.edit(cfg, tmp)
            text = yaml.safe_dump(cfg, sort_keys=False).replace("TOKENIZER", str(shared / "tiny-llama"))
            path.write_text(text.replace("CHAT", str(tmp / "chat.jsonl")))
    return [str(path), *case.args]


def first_line(err: str) -> str:
    """The first line of an error, past click's usage lines ("Usage: ...", "Try ... --help")."""
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith(("Usage:", "Try '"))]
    return lines[0] if lines else ""


def invoke(args: list[str], cwd: Path) -> tuple[int, str, str, float]:
    """Run the CLI in this process: (exit code, stdout, stderr, seconds)."""
    import automodel.cli  # noqa: F401  (imported before the clock starts: the time is the command's)
    from automodel.testing import invoke_cli

    sys.path.insert(0, str(cwd))  # the case's --plugin modules live there
    start = time.perf_counter()
    try:
        code, out, err = invoke_cli(args, cwd)
    finally:
        sys.path.remove(str(cwd))
    return code, out, err, time.perf_counter() - start


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from automodel.testing import tiny_model

    d = tmp_path_factory.mktemp("bad_inputs")
    tiny_model(d)
    (d / "data.jsonl").write_text(BASE_DATA)
    return d


def test_the_corpus_is_large_and_unique() -> None:
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOMODEL_LOAD_PLUGINS", "")  # only the builtins (and the case's --plugin modules)
    monkeypatch.delenv("AUTOMODEL_TEST_NOT_SET", raising=False)
    monkeypatch.delenv("AUTOMODEL_DEBUG", raising=False)
    args = prepare(case, tmp_path, shared)
    for command in case.commands:
        code, out, err, seconds = invoke([command, *args], tmp_path)
        first = first_line(err)
        assert code == case.code, f"{command}: exit {code}, expected {case.code}\n{out}\n{err}"
        assert case.needle in first, f"{command}: first line lacks {case.needle!r}:\n{err}"
        assert "Traceback" not in err + out, err
        assert len(err.splitlines()) <= 25, err
        assert seconds < 2.0, f"{command}: {seconds:.2f} s to the error"
        assert not (tmp_path / "run").exists(), "nothing is written for a bad input"


def test_debug_shows_the_traceback(tmp_path: Path, shared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from automodel.cli import _main

    monkeypatch.setenv("AUTOMODEL_LOAD_PLUGINS", "")
    args = prepare(CASES[0], tmp_path, shared)
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        _main(["validate", *args], debug=True)
    assert e.value.code == 2 and "Traceback" in err.getvalue()
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        _main(["validate", *args], debug=False)
    # a config problem has no traceback worth reading: no --debug hint (a component's failure has one)
    assert e.value.code == 2 and "error:" in err.getvalue() and "--debug" not in err.getvalue()


if __name__ == "__main__":  # print each case's first error line (to compare versions)
    import tempfile

    from automodel.testing import tiny_model

    os.environ["AUTOMODEL_LOAD_PLUGINS"] = ""
    with tempfile.TemporaryDirectory() as d:
        shared_dir = Path(d) / "shared"
        shared_dir.mkdir()
        tiny_model(shared_dir)
        (shared_dir / "data.jsonl").write_text(BASE_DATA)
        for case in CASES:
            tmp = Path(d) / case.id
            tmp.mkdir()
            try:
                code, out, err, seconds = invoke([case.commands[0], *prepare(case, tmp, shared_dir)], tmp)
            except BaseException as e:  # noqa: BLE001 - an older version may crash outright
                code, err, seconds = -1, f"CRASH {type(e).__name__}: {e}", 0.0
            lines = err.strip().splitlines()
            at = next((i for i, ln in enumerate(lines) if ln.startswith(("error:", "Error:"))), None)
            first = lines[at] if at is not None else (lines[0] if lines else "(no error)")
            if at is not None and first.endswith(":") and at + 1 < len(lines):
                first += " " + lines[at + 1].strip()  # an older version's "N problems in FILE:" header
            if "Traceback" in err:
                first = "TRACEBACK ... " + (lines[-1] if lines else "")
            print(f"{case.id:28s} exit={code:<3} {seconds:5.2f}s  {first[:150]}")
