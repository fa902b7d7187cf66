"""``automodel new-plugin``: a ready plugin package from string templates (no torch import here).

The package has a pyproject with the ``automodel`` entry point, a plugin module that registers each
component lazily (``"module:attr"``), one stub module per kind with the call signature the core uses
(the stubs work as they are), a README, and tests built on :func:`automodel.testing.check_plugin`.
"""

from __future__ import annotations

import json
import keyword
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path

from automodel import __version__
from automodel.errors import AutomodelError
from automodel.kinds import KINDS as KIND_RECORDS


@dataclass(frozen=True)
class Stub:
    """The scaffold of one kind (its registration hook, noun and aliases come from :mod:`automodel.kinds`)."""

    module: str          # stub module name
    attr: str            # stub attribute ({cls} and {name} filled in)
    section: str         # how a config uses it ({name} filled in)
    stub: str            # module source

    @property
    def hook(self) -> str:
        return next(k.hook for k in KIND_RECORDS if STUBS.get(k.scaffold) is self)


_HEADER = '''"""{doc}"""

from __future__ import annotations

from typing import Any

'''

#: One stub per kind, keyed by its `new-plugin --kind` name (:attr:`automodel.kinds.Kind.scaffold`).
STUBS: dict[str, Stub] = {
    "loss": Stub("loss", "{cls}Loss", "loss: {{name: {name}}}", _HEADER + '''
class {cls}Loss:
    """Cross-entropy over label tokens: replace with your loss. Config: ``loss: {{name: {name}, label_smoothing: 0.1}}``.

    The factory (this class) is called as ``factory(**cfg)``; the object with the keyword arguments
    its ``__call__`` names, out of ``labels``, ``num_label_tokens``, ``logits`` (or ``hidden_states`` +
    ``lm_head_weight``), ``batch`` (the collated micro-batch), ``model`` and ``ctx`` (``**_`` takes
    them all). ``labels`` are already shifted, ``-100`` means ignore. Return the SUM of token losses
    divided by ``num_label_tokens`` (the label tokens of the whole global batch), so that any split
    into micro-batches and data-parallel ranks gives the same gradient. Optional: ``setup(model, ctx)``,
    called once before the optimizer is built (load a teacher model there).
    """

    uses_hidden_states = False  # True: receive hidden_states + lm_head_weight instead of logits

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def __call__(self, *, labels: Any, num_label_tokens: Any, logits: Any = None, **_: Any) -> Any:
        import torch.nn.functional as F

        total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                                reduction="sum", label_smoothing=self.label_smoothing)
        return total / num_label_tokens
'''),
    "dataset": Stub("dataset", "{name}_dataset", "dataset: {{name: {name}, num_samples: 256}}",
                    _HEADER + '''
def {name}_dataset(ctx: Any, tokenizer: Any, num_samples: int = 64, seed: int = 0) -> list[dict[str, list[int]]]:
    """Word-reversal examples (replace with your data). Config: ``dataset: {{name: {name}, num_samples: 256}}``.

    Called as ``factory(ctx, tokenizer, **cfg)``. Returns a map-style dataset (a list works) of dicts with
    ``input_ids`` and ``labels``: lists of int of equal length, NOT shifted, ``-100`` where no loss is
    taken (here: the prompt). Add BOS yourself if the model expects one (this does, as the builtins do);
    the loop pads, shifts and batches. ``ctx.output_dir`` is the run directory, ``ctx.rank`` this process.
    """
    import random
    import string

    rng = random.Random(seed)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    rows = []
    for _ in range(num_samples):
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 6)))
        prompt = bos + tokenizer(f"reverse {{word}}\\n", add_special_tokens=False)["input_ids"]
        answer = tokenizer(word[::-1], add_special_tokens=False)["input_ids"] + eos
        rows.append({{"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}})
    return rows
'''),
    "transform": Stub("transform", "{cls}Transform", "transforms: [{{name: {name}}}]",
                      _HEADER + '''
class {cls}Transform:
    """Freeze the input embeddings (replace with your transform). Config: ``transforms: [{{name: {name}}}]``.

    Called as ``factory(**cfg)``; ``apply(model, ctx) -> model`` runs in config order after the model is
    loaded and before any parallelizer. With ``ctx.meta_init`` the model is on the meta device: keep it
    there. Optional members (``export``, ``checkpoint_key``, ``init_weights``): automodel.contracts.Transform.
    """

    def __init__(self, freeze_embeddings: bool = True):
        self.freeze_embeddings = freeze_embeddings

    def apply(self, model: Any, ctx: Any) -> Any:
        if self.freeze_embeddings:
            model.get_input_embeddings().requires_grad_(False)
        return model
'''),
    "parallelizer": Stub("parallel", "{cls}Parallelizer", "parallel: [{{name: {name}}}]",
                         _HEADER + '''
class {cls}Parallelizer:
    """Data parallelism with DistributedDataParallel (replace with yours). Config: ``parallel: [{{name: {name}}}]``.

    Called as ``factory(**cfg)``; the object owns one mesh dimension ``dim`` (``dp_replicate``,
    ``dp_shard``, ``cp`` or ``tp``) of ``size`` ranks (``None``: the ranks the others leave) and
    ``apply(model, mesh, ctx) -> model`` parallelizes over ``mesh[dim]``. Data-parallel ones average
    gradients. Optional members (``meta_init``, ``param_device``, ``exclusive``, ``validate_model``):
    automodel.contracts.Parallelizer. ``automodel.testing.check_plugin(..., distributed=True)`` checks
    that 2 processes train like 1.
    """

    dim = "dp_replicate"
    exclusive = "DistributedDataParallel replicates a plain, unsharded model"

    def __init__(self, size: int | None = None):
        self.size = size

    def apply(self, model: Any, mesh: Any, ctx: Any) -> Any:
        from torch.nn.parallel import DistributedDataParallel

        model.to(ctx.device)
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, process_group=mesh[self.dim].get_group())
'''),
    "optimizer": Stub("optim", "{name}_optimizer", "optimizer: {{name: {name}, lr: 1.0e-3}}",
                      _HEADER + '''
def {name}_optimizer(params: Any, lr: float = 1.0e-3, momentum: float = 0.9, weight_decay: float = 0.0) -> Any:
    """SGD with momentum (replace with yours). Config: ``optimizer: {{name: {name}, lr: 1.0e-3}}``.

    Called as ``factory(params, **cfg)`` with the trainable parameters; returns a torch.optim.Optimizer.
    """
    import torch

    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
'''),
    "lr_scheduler": Stub("schedule", "{name}_schedule", "lr_scheduler: {{name: {name}, warmup_steps: 10}}",
                         _HEADER + '''
def {name}_schedule(optimizer: Any, total_steps: int, warmup_steps: int = 0) -> Any:
    """Linear warmup then constant (replace with yours). Config: ``lr_scheduler: {{name: {name}, warmup_steps: 10}}``.

    Called as ``factory(optimizer, total_steps=..., **cfg)``; stepped once per optimizer step.
    """
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup_steps + 1)))
'''),
    "checkpointer": Stub("checkpoint", "{cls}Checkpointer", "checkpoint: {{name: {name}}}",
                         _HEADER + '''
class {cls}Checkpointer:
    """One ``step_<N>.pt`` file per checkpoint with torch.save (one process, unsharded models only:
    replace with yours; the builtin ``default`` uses torch.distributed.checkpoint for any layout).
    Config: ``checkpoint: {{name: {name}}}``.

    Called as ``factory(ctx, **cfg)``. Every method is called on every rank. ``state`` holds
    ``model``, ``optimizer``, ``lr_scheduler`` and ``train_state``, each with state_dict/load_state_dict.
    Optional members (``save_final``, ``export_hf``, ``load_model``): automodel.contracts.Checkpointer.
    """

    def __init__(self, ctx: Any, dir: str | None = None, resume: bool = True):
        from pathlib import Path

        self.ctx = ctx
        self.dir = Path(dir) if dir else Path(ctx.output_dir) / "checkpoints"
        self.resume = resume

    def save(self, state: dict[str, Any], step: int) -> Any:
        import torch

        path = self.dir / f"step_{{step}}.pt"
        if self.ctx.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            torch.save({{key: obj.state_dict() for key, obj in state.items()}}, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)  # complete or absent
        return path

    def load(self, state: dict[str, Any]) -> int | None:
        import torch

        saved = sorted(self.dir.glob("step_*.pt"), key=lambda p: int(p.stem[5:])) if self.resume else []
        if not saved:
            return None
        data = torch.load(saved[-1], weights_only=False)
        for key, obj in state.items():
            obj.load_state_dict(data[key])
        return int(saved[-1].stem[5:])

    def export(self, model: Any, tokenizer: Any, out_dir: Any) -> Any:
        if self.ctx.is_main:
            model.save_pretrained(out_dir)
            tokenizer.save_pretrained(out_dir)
        return out_dir
'''),
    "launcher": Stub("launcher", "{cls}Launcher", "launcher: {{name: {name}}}", _HEADER + '''
class {cls}Launcher:
    """Start one training process with ``python -m automodel run`` (replace with yours: a scheduler, a
    container, a remote machine). Config: ``launcher: {{name: {name}}}``.

    Called as ``factory(**cfg)``; ``launch(job) -> exit code``. ``job.worker_command()`` and
    ``job.worker_env()`` are what a started process runs (the saved config, local plugins, and
    ``AUTOMODEL_LAUNCHED=1`` so that it trains instead of launching again). Optional members
    (``world_size``, ``preview``): automodel.contracts.Launcher.
    """

    world_size = 1

    def __init__(self, echo: bool = True):
        self.echo = echo

    def preview(self, job: Any) -> None:
        import sys

        print("dry run: would start", sys.executable, *job.worker_command(), flush=True)

    def launch(self, job: Any) -> int:
        import subprocess
        import sys

        if self.echo:
            print("{name}: starting", sys.executable, *job.worker_command(), flush=True)
        return subprocess.call([sys.executable, *job.worker_command()], env=job.worker_env())
'''),
    "logger": Stub("logger", "{cls}Logger", "loggers: [{{name: console}}, {{name: {name}}}]",
                   _HEADER + '''
class {cls}Logger:
    """Append one line per record to ``<output_dir>/{name}.log`` (replace with yours).
    Config: ``loggers: [{{name: console}}, {{name: {name}}}]``.

    Called as ``factory(ctx, **cfg)`` on the main rank only. ``log(metrics, step)`` receives training
    records (``loss``, ``grad_norm``, ``lr``, ``tokens_per_s``, ...) and, on validation steps, a separate
    validation-only record (``val_loss``, ``val_tokens``) for the same step. ``close()`` is called once
    at the end, also after an error.
    """

    def __init__(self, ctx: Any, filename: str = "{name}.log"):
        from pathlib import Path

        self.path = Path(ctx.output_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = self.path.open("a")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        kind = "validation" if "val_loss" in metrics and "loss" not in metrics else "train"
        values = " ".join(f"{{key}}={{value:.6g}}" if isinstance(value, float) else f"{{key}}={{value}}"
                          for key, value in sorted(metrics.items()))
        self.file.write(f"step={{step}} {{kind}} {{values}}\\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()
'''),
    "model_loader": Stub("model", "{name}_model", "model: {{name: {name}, pretrained: ./my-model}}",
                         _HEADER + '''
def {name}_model(ctx: Any, pretrained: str, dtype: str = "float32") -> tuple[Any, Any]:
    """A transformers causal LM and its tokenizer (replace with yours).
    Config: ``model: {{name: {name}, pretrained: ./my-model}}``.

    Called as ``factory(ctx, **cfg) -> (model, tokenizer)``. With ``ctx.meta_init`` (fsdp2 asked for it)
    build the model on the meta device and keep ``model.config.name_or_path`` pointing at the weights:
    the loop loads them after sharding.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    torch_dtype = getattr(torch, dtype)
    if ctx.meta_init:
        config = AutoConfig.from_pretrained(pretrained)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, torch_dtype=torch_dtype)
        model.config.name_or_path = pretrained
    else:
        model = AutoModelForCausalLM.from_pretrained(pretrained, torch_dtype=torch_dtype)
    return model, tokenizer


def _{name}_model_config(args: dict[str, Any]) -> dict[str, Any] | None:
    """The architecture before launch (what tp/ep's validate_model checks): config.json of a local
    ``pretrained`` directory, None for a hub id (checked on the loaded model then)."""
    from automodel.architecture import config_json_fields

    return config_json_fields(None, args.get("pretrained"))


{name}_model.model_config = _{name}_model_config  # type: ignore[attr-defined]


def _{name}_tokenizer_dir(args: dict[str, Any]) -> str | None:
    """Where the tokenizer files are, before launch (what distillation's vocabulary check and the chat
    dataset's template check read): a local ``pretrained`` directory, None for a hub id."""
    from automodel.architecture import local_dir

    return local_dir(args.get("pretrained"))


{name}_model.tokenizer_dir = _{name}_tokenizer_dir  # type: ignore[attr-defined]
'''),
}

#: kinds that add hook functions to the plugin module instead of a registered component
EXTRA_KINDS = ("hook", "command")
#: `new-plugin --kind` names by kind, in the kinds' order (tests/core/test_kinds.py: one stub per kind).
KINDS: dict[str, Stub] = {k.scaffold: STUBS[k.scaffold] for k in KIND_RECORDS if k.scaffold in STUBS}
ALIASES = {**{alias: k.scaffold for k in KIND_RECORDS for alias in (k.name, *k.aliases)},
           "hooks": "hook", "lifecycle": "hook", "commands": "command"}

HOOK_FUNCTIONS = '''

@hookimpl
def on_train_start(ctx, model):
    """Lifecycle hooks run on every rank; act once with ctx.is_main."""
    ctx.print(f"{name}: training starts ({{ctx.world_size}} process(es), output in {{ctx.output_dir}})")


@hookimpl
def on_train_end(ctx, metrics):
    if ctx.is_main:
        import json

        (ctx.output_dir / "{name}_end.json").write_text(json.dumps({{"loss": metrics.get("loss")}}))
'''

COMMAND_MODULE = '''"""The ``automodel {command}`` command.

Declared in pyproject.toml as an entry point of the group ``automodel.commands``, so ``automodel --help``
lists it from the package metadata without importing this package, and ``automodel {command}`` imports
this module alone. Keep heavy imports (torch) inside the function.
"""

import click


@click.command(name="{command}")
def command() -> None:
    """Say hello from the {name} plugin (add your own options here)."""
    click.echo("hello from {name}")
'''


def _names(name: str) -> tuple[str, str, str, str]:
    """(plugin/entry point name, distribution, package, class prefix) from NAME or automodel-NAME."""
    base = re.sub(r"^automodel[-_]", "", name.strip().lower()).replace("-", "_")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", base) or keyword.iskeyword(base):
        raise AutomodelError(f"new-plugin: '{name}' is not a usable plugin name: use letters, digits and '_' or '-', "
                             "starting with a letter (e.g. focal_loss)")
    cls = "".join(part.capitalize() for part in base.split("_"))
    return base, f"automodel-{base.replace('_', '-')}", f"automodel_{base}", cls


def normalize_kinds(kinds: list[str]) -> list[str]:
    out = []
    for kind in kinds:
        for k in kind.split(","):
            k = ALIASES.get(k.strip().lower().replace("-", "_"), k.strip().lower().replace("-", "_"))
            if k not in KINDS and k not in EXTRA_KINDS:
                from automodel.errors import did_you_mean

                close = did_you_mean(k, [*KINDS, *EXTRA_KINDS])
                raise AutomodelError(f"new-plugin: unknown kind '{k}'" + (f"; did you mean '{close}'?" if close else "")
                                     + f" Kinds: {', '.join([*KINDS, *EXTRA_KINDS])}")
            if k not in out:
                out.append(k)
    return out


def create(name: str, kinds: list[str], directory: Path) -> Path:
    """Write the package ``directory/automodel-NAME`` and return its path."""
    plugin, dist, package, cls = _names(name)
    kinds = normalize_kinds(kinds)
    root = Path(directory) / dist
    if root.exists():
        raise AutomodelError(f"new-plugin: {root} already exists; choose another name or --dir")
    src = root / "src" / package
    src.mkdir(parents=True)
    (root / "tests").mkdir()
    fill = {"name": plugin, "cls": cls, "package": package, "dist": dist, "command": plugin.replace("_", "-")}

    components = [k for k in kinds if k in KINDS]
    init = [f'"""automodel plugin {dist}: {", ".join(kinds)}.\n\nKeep this module light: it is imported by every '
            f'`automodel` command. Register components as\n"module:attr" strings so torch loads only when one is used.\n"""'
            + ("\n\nfrom automodel import hookimpl\n" if set(kinds) - {"command"} else "\n")]
    for kind in components:
        spec = KINDS[kind]
        attr = spec.attr.format(**fill)
        noun = kind.replace("_", " ")
        (src / f"{spec.module}.py").write_text(spec.stub.format(doc=f"The {plugin} {kind.replace('_', ' ')}.", **fill))
        init.append(f'\n\n@hookimpl\ndef {spec.hook}(register):\n'
                    f'    register("{plugin}", "{package}.{spec.module}:{attr}", description="{plugin}: {noun} stub (say here what it does)")\n')
    if "hook" in kinds:
        init.append(HOOK_FUNCTIONS.format(**fill))
    if "command" in kinds:
        (src / "commands.py").write_text(COMMAND_MODULE.format(**fill))
        fill["commands_ep"] = (f'\n# `automodel {fill["command"]}`: listed by `automodel --help` without importing the plugin\n'
                               f'[project.entry-points."automodel.commands"]\n{fill["command"]} = "{package}.commands:command"\n')
    (src / "__init__.py").write_text("".join(init))
    (root / "pyproject.toml").write_text(_pyproject(fill))
    (root / "README.md").write_text(_readme(fill, kinds))
    (root / "tests" / f"test_{package}.py").write_text(_tests(fill, kinds))
    return root


def _pyproject(fill: dict[str, str]) -> str:
    major, minor = (int(x) for x in __version__.split(".")[:2])
    return f'''[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "{fill["dist"]}"
version = "0.1.0"
description = "automodel plugin: {fill["name"]}"
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["automodel-core>={major}.{minor},<{major}.{minor + 1}"]

[project.optional-dependencies]
test = ["pytest>=8"]

# how automodel finds the plugin: NAME = the module with the @hookimpl functions
[project.entry-points.automodel]
{fill["name"]} = "{fill["package"]}"
{fill.get("commands_ep", "")}
[tool.setuptools.packages.find]
where = ["src"]
'''


def _readme(fill: dict[str, str], kinds: list[str]) -> str:
    uses = "\n".join(f"    {KINDS[k].section.format(**fill).replace('{{', '{').replace('}}', '}')}" for k in kinds if k in KINDS)
    extra = ""
    if "hook" in kinds:
        extra += f"\nIts lifecycle hooks print a line at the start of training and write `{fill['name']}_end.json` at the end.\n"
    if "command" in kinds:
        extra += f"\nIt adds the command `automodel {fill['command']}`.\n"
    return f"""# {fill["dist"]}

An [automodel](https://github.com/) plugin providing: {", ".join(kinds)}.

```bash
pip install -e '.[test]'     # [test]: pytest, for the tests below
automodel plugins            # lists {fill["name"]} and what it registers
automodel plugins --check    # imports it and checks every factory against its kind
pytest                       # the tests: automodel.testing.check_plugin and more
```

In a config:

```yaml
{textwrap.dedent(uses) if uses else "# (no component: hooks only)"}
```
{extra}
The stubs in `src/{fill["package"]}/` work as they are; replace their bodies with yours and keep the
signatures (the core calls each kind as its docstring says). Writing a plugin: docs/writing-plugins.md.
"""


def _tests(fill: dict[str, str], kinds: list[str]) -> str:
    registers = {
        {"loss": "losses", "dataset": "datasets", "transform": "model_transforms", "parallelizer": "parallelizers",
         "optimizer": "optimizers", "lr_scheduler": "lr_schedulers", "checkpointer": "checkpointers",
         "launcher": "launchers", "logger": "loggers", "model_loader": "model_loaders"}[k]: [fill["name"]]
        for k in kinds if k in KINDS
    }
    needs_model = "model_loader" in kinds
    fixture = "tiny_model_dir" if needs_model else ""
    args = f'args={{"{fill["name"]}": {{"pretrained": str(tiny_model_dir)}}}}' if needs_model else ""
    out = f'''"""Tests of {fill["dist"]}: the conformance kit, the listing, {"and a short training run" if "hook" in kinds else "and more of yours"}."""

import json

from automodel.testing import check_plugin, run_cli


def test_conformance({fixture}):
    report = check_plugin("{fill["name"]}"{", " + args if args else ""})
    print(report)
    assert len(report.checked) == {len(registers)}


def test_listed_by_automodel_plugins():
    listing = json.loads(run_cli("plugins", "--json").stdout)
    me = [p for p in listing if p["name"] == "{fill["name"]}"][0]
    assert me["error"] is None and me["registers"] == {json.dumps(registers)}
'''
    if "hook" in kinds:
        out += f'''

def test_hooks_run_during_training(tmp_path, automodel_config):
    cfg = automodel_config(step_scheduler={{"global_batch_size": 4, "local_batch_size": 4, "max_steps": 2}})
    out = run_cli("run", cfg, cwd=tmp_path).stdout
    assert "{fill["name"]}: training starts" in out
    assert json.loads((tmp_path / "run" / "{fill["name"]}_end.json").read_text())["loss"] > 0
'''
    if "command" in kinds:
        out += f'''

def test_command():
    assert run_cli("{fill["command"]}").stdout.strip() == "hello from {fill["name"]}"
    assert "{fill["command"]}" in run_cli("--help").stdout  # listed without importing the plugin
'''
    return out
