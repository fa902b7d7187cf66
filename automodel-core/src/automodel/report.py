"""``automodel report RUN_DIR...``: the curves of one or more runs in one self-contained HTML page.

The page holds everything it shows: the plots are SVG drawn here, the few lines of JavaScript (switch the
x axis between optimizer steps and tokens seen; read the values under the pointer) are inline, and nothing
is fetched when it is opened. ``--png`` also draws a static image with matplotlib (optional dependency).

Reads, per run directory: ``metrics.jsonl`` (or the jsonl logger's ``path``), ``config.yaml``,
``summary.json`` (written at the end of a finished run), the checkpoint directory and ``hf/``.
No torch import.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from automodel import __version__
from automodel import summary as summary_mod
from automodel.errors import AutomodelError

#: (metric, title) in page order; a metric no run logged is left out. Others found in the records follow.
METRICS = [
    ("loss", "Training loss"), ("val_loss", "Validation loss"), ("lr", "Learning rate"),
    ("grad_norm", "Gradient norm"), ("tokens_per_s", "Tokens/s"),
    ("label_tokens_per_s", "Loss-bearing tokens/s"), ("peak_mem_gb", "Peak memory (GB)"), ("mfu", "MFU"),
]
NOT_PLOTTED = {"step", "tokens_seen", "label_tokens", "val_tokens"}
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
MAX_POINTS = 2000  # per series and plot: longer runs are thinned evenly (first and last points kept)


@dataclass
class Run:
    """One run directory, read back."""

    dir: Path
    name: str
    config: dict[str, Any]
    train: dict[int, dict[str, Any]]  # step -> training record (the last one logged for that step)
    val: dict[int, dict[str, Any]]  # step -> validation record
    summary: dict[str, Any] | None
    checkpoints: list[str] = field(default_factory=list)
    export: str | None = None

    def series(self, metric: str, x: str) -> list[tuple[float, float, int]]:
        """``(x, value, step)`` of ``metric`` with ``x`` = ``"step"`` or ``"tokens"`` (tokens seen)."""
        records = self.val if metric.startswith("val_") or (metric not in self._train_keys() and self.val) else self.train
        tokens = self._tokens_at()
        if x == "tokens" and not any(tokens.values()):  # a run that did not log tokens_seen: no tokens axis
            return []
        out = []
        for step in sorted(records):
            value = records[step].get(metric)
            if not _number(value):
                continue
            if x == "step":
                out.append((float(step), float(value), step))
            elif step in tokens:
                out.append((float(tokens[step]), float(value), step))
        return out

    def _train_keys(self) -> set[str]:
        return {k for r in self.train.values() for k in r}

    def _tokens_at(self) -> dict[int, int]:
        """Tokens seen at each step: from the training records, carried forward to validation-only steps."""
        out, last = {}, 0
        for step in sorted(set(self.train) | set(self.val)):
            value = self.train.get(step, {}).get("tokens_seen")
            last = int(value) if _number(value) else last
            out[step] = last
        return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# -- reading ---------------------------------------------------------------------------------------


def metrics_path(run_dir: Path, config: dict[str, Any]) -> Path:
    """The jsonl logger's file: its ``path`` from the config, else ``<run_dir>/metrics.jsonl``."""
    for spec in config.get("loggers") or []:
        if isinstance(spec, dict) and spec.get("name") == "jsonl" and spec.get("path"):
            return Path(spec["path"])
    return run_dir / "metrics.jsonl"


def load_run(run_dir: str | os.PathLike[str]) -> Run:
    """Read a run directory; :class:`AutomodelError` when it is missing or has no training metrics."""
    path = Path(run_dir)
    if not path.is_dir():
        raise AutomodelError(f"report: {path} is not a directory; give the run's output_dir (it holds config.yaml and metrics.jsonl)")
    config: dict[str, Any] = {}
    if (path / "config.yaml").is_file():
        try:
            config = yaml.safe_load((path / "config.yaml").read_text()) or {}
        except yaml.YAMLError as e:
            raise AutomodelError(f"report: {path / 'config.yaml'} is not valid YAML: {e}") from None
    file = metrics_path(path, config)
    train: dict[int, dict[str, Any]] = {}
    val: dict[int, dict[str, Any]] = {}
    if file.is_file():
        for line in file.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut by a crash: the rest is still worth showing
                continue
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                continue
            # a resumed run logs the steps after its checkpoint again: the last record of a step wins
            (train if "loss" in record else val)[record["step"]] = record
    if not train:
        what = f"{file} has no training records" if file.is_file() else f"there is no {file.name}"
        raise AutomodelError(
            f"report: {path} has no metrics: {what}. The jsonl logger writes them (it is in the default loggers); "
            "check that this is a run's output_dir and that the run logged at least one step"
        )
    _derive(train)
    ckpt_dir = Path((config.get("checkpoint") or {}).get("dir") or path / "checkpoints")
    checkpoints = sorted((p.name for p in ckpt_dir.glob("step_*") if p.is_dir()),
                         key=lambda n: int(n[5:]) if n[5:].isdigit() else -1)
    export = path / "hf"
    return Run(dir=path, name=path.resolve().name, config=config, train=train, val=val,
               summary=summary_mod.read(path), checkpoints=checkpoints,
               export=str(export) if export.is_dir() and any(export.iterdir()) else None)


def _derive(train: dict[int, dict[str, Any]]) -> None:
    """Loss-bearing tokens/s where the run logged every step: tokens/s x label tokens / tokens of the step."""
    steps = sorted(train)
    for prev, step in zip(steps, steps[1:]):
        a, b = train[prev], train[step]
        if step - prev != 1 or "label_tokens_per_s" in b:
            continue
        tokens = (b.get("tokens_seen") or 0) - (a.get("tokens_seen") or 0)
        if tokens > 0 and _number(b.get("tokens_per_s")) and _number(b.get("label_tokens")):
            b["label_tokens_per_s"] = b["tokens_per_s"] * b["label_tokens"] / tokens


def load_runs(run_dirs: list[str]) -> tuple[list[Run], list[str]]:
    """The runs that have metrics, and one warning per directory that has none (an error if none has)."""
    runs, skipped = [], []
    for d in run_dirs:
        try:
            runs.append(load_run(d))
        except AutomodelError as e:
            skipped.append(str(e))
    if not runs:
        raise AutomodelError("\n".join(skipped))
    names = [r.name for r in runs]
    for r in runs:  # two runs called "run" in different parents: show the parent too
        if names.count(r.name) > 1:
            r.name = f"{r.dir.resolve().parent.name}/{r.name}"
    return runs, skipped


# -- comparing -------------------------------------------------------------------------------------


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in flatten(item, f"{prefix}.{key}" if prefix else str(key)).items()}
    if isinstance(value, list) and value and any(isinstance(v, (dict, list)) for v in value):
        return {k: v for i, item in enumerate(value) for k, v in flatten(item, f"{prefix}.{i}").items()}
    return {prefix: value}


def config_differences(runs: list[Run]) -> list[tuple[str, list[str]]]:
    """``(key, [value per run])`` for every config key whose value differs between the runs (output_dir aside)."""
    flat = [flatten(r.config) for r in runs]
    keys = sorted(set().union(*flat) - {"output_dir"})
    out = []
    for key in keys:
        values = [f.get(key, "—") for f in flat]
        if len({json.dumps(v, sort_keys=True, default=str) for v in values}) > 1:
            out.append((key, ["—" if v == "—" else json.dumps(v, default=str) if not isinstance(v, str) else v for v in values]))
    return out


def run_facts(run: Run) -> dict[str, str]:
    """The summary table's cells for one run."""
    s, cfg = run.summary or {}, run.config
    last = run.train[max(run.train)]
    val = [(r["val_loss"], step) for step, r in run.val.items() if _number(r.get("val_loss"))]
    best = (s.get("best_val_loss"), s.get("best_val_step")) if s.get("best_val_loss") is not None else min(val) if val else None
    if s.get("components"):
        core = f"automodel-core {s.get('automodel_version', '')}".strip()
        plugins = sorted({c.split(" (", 1)[1].rstrip(")").replace("builtin", core) for c in s["components"] if " (" in c})
        components = ", ".join(c.split(" (", 1)[0] for c in s["components"])
    else:
        plugins, components = [], ", ".join(_component_names(cfg))
    if s.get("mesh"):
        layout = " x ".join(f"{k}={v}" for k, v in s["mesh"].items())
    else:
        names = [p.get("name", p.get("_target_", "?")) for p in cfg.get("parallel") or [] if isinstance(p, dict)]
        layout = "+".join(names) or "single process"
    if s.get("world_size"):
        layout = f"{s['world_size']} process(es): {layout}"
    if s.get("time_s") is not None:
        time_text = summary_mod.hms(s["time_s"]) + (f" (since the resume at step {s['resumed_from']})" if s.get("resumed_from") else "")
    else:  # unfinished run: the training time the records account for
        steps, spent, prev = sorted(run.train), 0.0, 0
        for step in steps:
            r = run.train[step]
            if _number(r.get("tokens_per_s")) and r["tokens_per_s"] > 0 and _number(r.get("tokens_seen")):
                spent += (r["tokens_seen"] - prev) / r["tokens_per_s"]
                prev = r["tokens_seen"]
        time_text = f"≈ {summary_mod.hms(spent)} of training steps (no summary.json: the run did not finish)"
    status = "finished" if s else "preempted" if (run.dir / "preempted.json").exists() else "not finished"
    return {
        "status": status,
        "steps": f"{max(run.train):,}" + (f" of {cfg['step_scheduler']['max_steps']:,}" if (cfg.get("step_scheduler") or {}).get("max_steps") else ""),
        "tokens seen": f"{int(last.get('tokens_seen') or s.get('tokens') or 0):,}",
        "final loss": f"{last['loss']:.4f}" if _number(last.get("loss")) else "—",
        "best val loss": f"{best[0]:.4f} (step {best[1]})" if best else "—",
        "total time": time_text,
        "parallel layout": layout,
        "components": components or "—",
        "plugins": ", ".join(plugins) or "—",
        "checkpoints": ", ".join(run.checkpoints) or "none",
        "export": run.export or "none",
    }


def _component_names(cfg: dict[str, Any]) -> list[str]:
    out = []
    for key in ("model", "dataset", "transforms", "parallel", "loss", "optimizer", "lr_scheduler", "loggers"):
        value = cfg.get(key)
        for item in value if isinstance(value, list) else [value] if value else []:
            if isinstance(item, dict):
                out.append(f"{key}={item.get('name', item.get('_target_', '?'))}")
    return out


# -- drawing ---------------------------------------------------------------------------------------


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step + 1e-9) + 1)]


def fmt(value: float) -> str:
    """Short axis/readout text: 1.2k, 3.4M, 2.5e-04, 0.731."""
    a = abs(value)
    if a == 0:
        return "0"
    if a >= 1e9:
        return f"{value / 1e9:.3g}G"
    if a >= 1e6:
        return f"{value / 1e6:.3g}M"
    if a >= 1e4:
        return f"{value / 1e3:.3g}k"
    if a < 1e-2:
        return f"{value:.2e}"
    return f"{value:.4g}"


def _thin(points: list[tuple[float, float, int]]) -> list[tuple[float, float, int]]:
    if len(points) <= MAX_POINTS:
        return points
    stride = len(points) / (MAX_POINTS - 1)
    return [points[min(int(i * stride), len(points) - 1)] for i in range(MAX_POINTS - 1)] + [points[-1]]


def svg_plot(runs: list[Run], metric: str, title: str, x: str, width: int = 460, height: int = 250) -> str | None:
    """One plot of ``metric`` for every run (one polyline each), or None when no run has it."""
    data = [(i, _thin(r.series(metric, x))) for i, r in enumerate(runs)]
    data = [(i, pts) for i, pts in data if pts]
    if not data:
        return None
    left, right, top, bottom = 58, 12, 10, 36
    xs = [p[0] for _, pts in data for p in pts]
    ys = [p[1] for _, pts in data for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    pad = (y1 - y0) * 0.06 or abs(y0) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    pw, ph = width - left - right, height - top - bottom

    def px(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def py(v: float) -> float:
        return top + (y1 - v) / (y1 - y0) * ph

    xlabel = "optimizer step" if x == "step" else "tokens seen"
    out = [f'<svg class="plot by-{x}" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
           f'aria-label="{html.escape(title)} against {xlabel}" data-metric="{metric}" data-x="{x}" '
           f'data-x0="{x0}" data-x1="{x1}" data-left="{left}" data-width="{pw}">',
           f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>']
    for t in _ticks(y0, y1):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
                   f'<text x="{left - 5}" y="{py(t) + 4:.1f}" class="tick" text-anchor="end">{fmt(t)}</text>')
    for t in _ticks(x0, x1):
        out.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top}" y2="{top + ph}" class="grid"/>'
                   f'<text x="{px(t):.1f}" y="{top + ph + 15}" class="tick" text-anchor="middle">{fmt(t)}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 4}" class="axis" text-anchor="middle">{xlabel}</text>')
    for i, pts in data:
        color = COLORS[i % len(COLORS)]
        coords = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b, _ in pts)
        values = ",".join(f"{b:.6g}" for _, b, _ in pts)
        steps = ",".join(str(s) for _, _, s in pts)
        name = html.escape(runs[i].name)
        out.append(f'<polyline points="{coords}" stroke="{color}" data-run="{name}" data-values="{values}" '
                   f'data-steps="{steps}"><title>{name}</title></polyline>')
        if len(pts) <= 60:  # markers (with a native tooltip) where they stay readable
            out += [f'<circle cx="{px(a):.1f}" cy="{py(b):.1f}" r="2.6" fill="{color}"><title>{name}: step {s}, '
                    f'{metric} {fmt(b)}</title></circle>' for a, b, s in pts]
    out.append(f'<line class="cursor" x1="0" x2="0" y1="{top}" y2="{top + ph}" visibility="hidden"/>')
    out.append("</svg>")
    return "".join(out)


def plotted_metrics(runs: list[Run]) -> list[tuple[str, str]]:
    """The (metric, title) pairs any run has: the known ones in order, then the others found."""
    keys = {k for r in runs for rec in (*r.train.values(), *r.val.values()) for k, v in rec.items() if _number(v)} - NOT_PLOTTED
    known = [(m, t) for m, t in METRICS if m in keys]
    extra = sorted(keys - {m for m, _ in METRICS})
    return known + [(m, m) for m in extra]


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}.muted{color:#666}
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f5f5f5}td.key{font-family:ui-monospace,monospace}
.legend span{display:inline-block;margin-right:16px}.swatch{display:inline-block;width:14px;height:4px;margin-right:5px;vertical-align:middle}
.controls button{font:inherit;padding:3px 10px;border:1px solid #bbb;background:#fff;border-radius:4px;cursor:pointer}
.controls button.on{background:#222;color:#fff;border-color:#222}
.grid-plots{display:flex;flex-wrap:wrap;gap:12px}figure{margin:0;border:1px solid #e3e3e3;border-radius:6px;padding:8px}
figcaption{font-weight:600;margin-bottom:2px}.readout{font-size:12px;color:#444;min-height:17px;font-family:ui-monospace,monospace}
svg.plot .frame{fill:none;stroke:#999}svg.plot .grid{stroke:#eee}svg.plot .tick{font-size:10px;fill:#555}
svg.plot .axis{font-size:11px;fill:#333}svg.plot polyline{fill:none;stroke-width:1.8}svg.plot .cursor{stroke:#888;stroke-dasharray:3 3}
#plots.x-step svg.by-tokens,#plots.x-tokens svg.by-step{display:none}
"""

# Written for this page: no library, no network. Switches the x axis, shows the values under the pointer,
# and records how many curves it found (data-curves on <body>: the browser test reads it).
SCRIPT = r"""
(function () {
  "use strict";
  var plots = document.getElementById("plots");
  var buttons = document.querySelectorAll(".controls button[data-x]");
  buttons.forEach(function (b) {
    b.addEventListener("click", function () {
      plots.className = "grid-plots x-" + b.getAttribute("data-x");
      buttons.forEach(function (o) { o.classList.toggle("on", o === b); });
    });
  });
  function fmt(v) {
    var a = Math.abs(v);
    if (a === 0) return "0";
    if (a >= 1e6) return (v / 1e6).toPrecision(3) + "M";
    if (a >= 1e4) return (v / 1e3).toPrecision(3) + "k";
    if (a < 1e-2) return v.toExponential(2);
    return String(Number(v.toPrecision(4)));
  }
  var curves = 0;
  document.querySelectorAll("svg.plot").forEach(function (svg) {
    var lines = Array.prototype.map.call(svg.querySelectorAll("polyline"), function (p) {
      curves += 1;
      return {run: p.getAttribute("data-run"), color: p.getAttribute("stroke"), points: p.points,
              values: p.getAttribute("data-values").split(",").map(Number),
              steps: p.getAttribute("data-steps").split(",").map(Number)};
    });
    var readout = svg.parentNode.querySelector(".readout");
    var cursor = svg.querySelector(".cursor");
    svg.addEventListener("mousemove", function (ev) {
      var box = svg.getBoundingClientRect();
      var x = (ev.clientX - box.left) * (svg.viewBox.baseVal.width / box.width);
      var parts = [];
      lines.forEach(function (l) {
        var best = 0;
        for (var i = 1; i < l.points.numberOfItems; i++) {
          if (Math.abs(l.points.getItem(i).x - x) < Math.abs(l.points.getItem(best).x - x)) best = i;
        }
        if (l.points.numberOfItems) {
          parts.push(l.run + " @ step " + l.steps[best] + ": " + fmt(l.values[best]));
        }
      });
      cursor.setAttribute("x1", x); cursor.setAttribute("x2", x); cursor.setAttribute("visibility", "visible");
      readout.textContent = parts.join("   ");
    });
    svg.addEventListener("mouseleave", function () {
      cursor.setAttribute("visibility", "hidden"); readout.textContent = "\u00a0";
    });
  });
  document.body.setAttribute("data-curves", String(curves));
})();
"""


def render_html(runs: list[Run], notes: list[str] = ()) -> str:
    """The whole page, self-contained."""
    e = html.escape
    names = ", ".join(r.name for r in runs)
    legend = "".join(f'<span><i class="swatch" style="background:{COLORS[i % len(COLORS)]}"></i>{e(r.name)} '
                     f'<span class="muted">({e(str(r.dir))})</span></span>' for i, r in enumerate(runs))
    facts = [run_facts(r) for r in runs]
    rows = "".join(f"<tr><th>{e(k)}</th>" + "".join(f"<td>{e(f[k])}</td>" for f in facts) + "</tr>" for k in facts[0])
    head = "".join(f'<th><i class="swatch" style="background:{COLORS[i % len(COLORS)]}"></i>{e(r.name)}</th>' for i, r in enumerate(runs))
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>automodel report: {e(names)}</title><style>{CSS}</style></head><body>",
        f"<h1>automodel report</h1><p class=\"muted\">{len(runs)} run(s), generated "
        f"{_dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by automodel {e(__version__)}</p>",
        *[f'<p class="muted">skipped: {e(n)}</p>' for n in notes],
        f'<div class="legend">{legend}</div>',
        '<h2>Curves</h2><div class="controls">x axis: <button type="button" data-x="step" class="on">optimizer step</button> '
        '<button type="button" data-x="tokens">tokens seen</button></div>',
        '<div id="plots" class="grid-plots x-step">',
    ]
    for metric, title in plotted_metrics(runs):
        svgs = [s for s in (svg_plot(runs, metric, title, "step"), svg_plot(runs, metric, title, "tokens")) if s]
        if svgs:
            parts.append(f'<figure data-metric="{e(metric)}"><figcaption>{e(title)} <span class="muted">({e(metric)})'
                         f'</span></figcaption>{"".join(svgs)}<div class="readout">&nbsp;</div></figure>')
    parts.append("</div>")
    parts.append(f'<h2>Runs</h2><table class="summary"><tr><th></th>{head}</tr>{rows}</table>')
    if len(runs) > 1:
        diffs = config_differences(runs)
        if diffs:
            body = "".join(f'<tr><td class="key">{e(k)}</td>' + "".join(f"<td>{e(str(v))}</td>" for v in vals) + "</tr>"
                           for k, vals in diffs)
            parts.append(f'<h2>Config differences</h2><table class="diff"><tr><th>key</th>{head}</tr>{body}</table>')
        else:
            parts.append("<h2>Config differences</h2><p>none: the runs have the same config (output_dir aside)</p>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)


def render_png(runs: list[Run], path: Path) -> Path:
    """The same curves against the optimizer step, one panel per metric, as a PNG (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise AutomodelError("report --png needs matplotlib, which is not installed: pip install matplotlib "
                             "(the HTML page needs nothing)") from None
    metrics = plotted_metrics(runs)
    cols = 3 if len(metrics) > 4 else 2
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.2 * rows), squeeze=False)
    for ax, (metric, title) in zip(axes.flat, metrics):
        for i, r in enumerate(runs):
            pts = r.series(metric, "step")
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=COLORS[i % len(COLORS)], label=r.name,
                        marker="o" if len(pts) <= 30 else None, markersize=3, linewidth=1.5)
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("optimizer step", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(len(runs), 4), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(run_dirs: list[str], out: str | os.PathLike[str], png: bool = False) -> tuple[Path, Path | None, list[Run], list[str]]:
    """Read ``run_dirs`` and write the page to ``out`` (and ``<out stem>.png`` with ``png``)."""
    runs, skipped = load_runs(list(run_dirs))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    image = render_png(runs, out.with_suffix(".png")) if png else None
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(render_html(runs, skipped), encoding="utf-8")
    tmp.replace(out)
    return out, image, runs, skipped
