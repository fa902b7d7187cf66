"""``automodel report`` and the end-of-run summary, on two real short runs (trained once for the module).

The page is checked three ways: its plotted values against metrics.jsonl (parsed from the SVG), its
self-containment (no URL to fetch), and in a real headless Chromium (no console errors, the script ran
and found every curve; a screenshot is taken).
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from automodel import config
from automodel.plugins import load_plugins
from automodel.testing import make_config, read_metrics, run_cli, write_task_data
from automodel.train import Trainer

SCHED = {"global_batch_size": 8, "local_batch_size": 4, "max_steps": 4, "log_every_steps": 1,
         "val_every_steps": 2, "val_max_batches": 1, "ckpt_every_steps": 2}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("report")
    val = write_task_data(root / "val.jsonl", n=8, seed=1)
    out: dict[str, Any] = {"root": root}
    for name, optimizer, scheduler in [("base", {"name": "adamw", "lr": 1.0e-3}, {"name": "constant"}),
                                       ("fast", {"name": "adamw", "lr": 3.0e-3}, {"name": "cosine", "warmup_steps": 2})]:
        cfg = make_config(
            root, tiny_model_dir, name=f"{name}.yaml", output_dir=str(root / name), step_scheduler=SCHED,
            optimizer=optimizer, lr_scheduler=scheduler, checkpoint={"export_hf": name == "base", "save_final": True},
            validation_dataset={"name": "instruction", "path": str(val), "prompt": "question", "response": "answer", "prompt_template": "{prompt}\n"},
        )
        plugins = load_plugins()
        validated = config.validate(config.load(cfg), plugins)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            Trainer(validated).run()
        out[name] = {"dir": root / name, "stdout": printed.getvalue()}
    page = root / "page" / "report.html"
    out["cli"] = run_cli("report", root / "base", root / "fast", "-o", page)
    out["page"] = page
    out["html"] = page.read_text()
    return out


class Page(HTMLParser):
    """Figures -> svgs -> polylines (their data-run, data-values, data-steps), and every tag's attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.figures: dict[str, dict[str, list[dict[str, str]]]] = {}
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.figure = self.svg = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append((tag, a))
        if tag == "figure":
            self.figure = self.figures.setdefault(a["data-metric"], {})
        elif tag == "svg" and self.figure is not None:
            self.svg = self.figure.setdefault(a["data-x"], [])
        elif tag == "polyline" and self.svg is not None:
            self.svg.append(a)


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    return page


def test_end_of_run_summary_line_and_file(runs):
    base = runs["base"]["dir"]
    (line,) = [x for x in runs["base"]["stdout"].splitlines() if x.startswith("done: ")]
    records = read_metrics(base)
    vals = [json.loads(x) for x in (base / "metrics.jsonl").read_text().splitlines() if "val_loss" in x]
    best = min(vals, key=lambda r: r["val_loss"])
    facts = json.loads((base / "summary.json").read_text())
    assert facts["steps"] == 4 and facts["tokens"] == records[-1]["tokens_seen"]
    assert facts["best_val_loss"] == pytest.approx(best["val_loss"]) and facts["best_val_step"] == best["step"]
    assert facts["checkpoint"] == str(base / "checkpoints" / "step_4") and facts["export"] == str(base / "hf")
    assert line.startswith(f"done: 4 steps, {records[-1]['tokens_seen']:,} tokens in 0:0")
    assert f"best val_loss {best['val_loss']:.4f} (step {best['step']})" in line
    assert f"checkpoint {base / 'checkpoints' / 'step_4'} | export {base / 'hf'}" in line
    assert "not exported" in [x for x in runs["fast"]["stdout"].splitlines() if x.startswith("done: ")][0]


def test_page_plots_every_metric_of_both_runs_against_steps_and_tokens(runs):
    assert f"wrote {runs['page']} (2 run(s): base (4 steps), fast (4 steps))" in runs["cli"].stdout
    page = parse(runs["html"])
    assert {"loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "label_tokens_per_s", "peak_mem_gb"} <= set(page.figures)
    for name in ("base", "fast"):
        train = read_metrics(runs[name]["dir"])
        val = [r for r in map(json.loads, (runs[name]["dir"] / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
        for metric, records in [("loss", train), ("lr", train), ("grad_norm", train), ("val_loss", val)]:
            for x in ("step", "tokens"):
                (line,) = [p for p in page.figures[metric][x] if p["data-run"] == name]
                values = [float(v) for v in line["data-values"].split(",")]
                assert values == pytest.approx([r[metric] for r in records], rel=1e-5), (name, metric, x)
                assert [int(s) for s in line["data-steps"].split(",")] == [r["step"] for r in records]
    # loss-bearing tokens/s as the run logged it, which is tokens/s x label tokens / tokens of the window
    train = read_metrics(runs["base"]["dir"])
    (line,) = [p for p in page.figures["label_tokens_per_s"]["step"] if p["data-run"] == "base"]
    assert [float(v) for v in line["data-values"].split(",")] == pytest.approx([r["label_tokens_per_s"] for r in train], rel=1e-5)
    derived = [b["tokens_per_s"] * b["label_tokens"] / (b["tokens_seen"] - a["tokens_seen"]) for a, b in zip(train, train[1:])]
    assert [r["label_tokens_per_s"] for r in train[1:]] == pytest.approx(derived, rel=1e-5)


def test_page_lists_config_differences_and_run_summaries(runs):
    text = runs["html"]
    diff = text[text.index("<h2>Config differences</h2>"):]
    for key, a, b in [("optimizer.lr", "0.001", "0.003"), ("lr_scheduler.name", "constant", "cosine"),
                      ("checkpoint.export_hf", "true", "false")]:
        assert re.search(rf'<td class="key">{re.escape(key)}</td><td>{a}</td><td>{b}</td>', diff), key
    assert "output_dir" not in diff and "step_scheduler" not in diff
    summary = text[text.index('<table class="summary">'):text.index("</table>", text.index('<table class="summary">'))]
    assert "<th>status</th><td>finished</td><td>finished</td>" in summary
    assert "<th>steps</th><td>4 of 4</td><td>4 of 4</td>" in summary
    assert "<th>checkpoints</th><td>step_2, step_4</td><td>step_2, step_4</td>" in summary
    assert "1 process(es): single process" in summary and "automodel-core" in summary
    assert f"<td>{runs['base']['dir'] / 'hf'}</td><td>none</td>" in summary


def test_page_is_self_contained(runs):
    page = parse(runs["html"])
    for tag, attrs in page.tags:
        for key in ("src", "href", "xlink:href", "data", "action"):
            assert key not in attrs, (tag, attrs)
    assert not re.search(r"https?://|url\(|@import|fetch\(|XMLHttpRequest|import\(", runs["html"])


def test_report_imports_no_torch(runs, tmp_path):
    code = ("import sys; from automodel.cli import main\ntry:\n    main(['report', sys.argv[1], '-o', sys.argv[2]])\n"
            "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\nprint('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(runs["base"]["dir"]), str(tmp_path / "r.html")],
                         capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().endswith("ok"), out.stdout + out.stderr


def test_run_dir_without_metrics_says_so(runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = run_cli("report", empty, "-o", tmp_path / "x.html", check=False)
    assert out.returncode == 2 and f"report: {empty} has no metrics: there is no metrics.jsonl" in out.stderr
    assert not (tmp_path / "x.html").exists()
    (empty / "metrics.jsonl").write_text('{"step": 2, "val_loss": 1.0}\n')
    out = run_cli("report", empty, "-o", tmp_path / "x.html", check=False)
    assert out.returncode == 2 and "metrics.jsonl has no training records" in out.stderr
    out = run_cli("report", tmp_path / "missing", "-o", tmp_path / "x.html", check=False)
    assert out.returncode == 2 and "is not a directory" in out.stderr
    # with another run that has metrics: a warning, and the page of the other one
    out = run_cli("report", runs["base"]["dir"], empty, "-o", tmp_path / "y.html")
    assert "warning: skipped report:" in out.stderr and "1 run(s): base" in out.stdout


def test_png(runs, tmp_path, monkeypatch):
    from automodel.errors import AutomodelError
    from automodel.report import load_runs, render_png

    pytest.importorskip("matplotlib", reason="matplotlib is optional: pip install matplotlib")
    out = run_cli("report", runs["base"]["dir"], runs["fast"]["dir"], "-o", tmp_path / "r.html", "--png")
    image = tmp_path / "r.png"
    assert f"and {image}" in out.stdout
    data = image.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(AutomodelError, match="report --png needs matplotlib, which is not installed: pip install matplotlib"):
        render_png(load_runs([str(runs["base"]["dir"])])[0], tmp_path / "x.png")


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs the Debian package)")
        pytest.skip("chromium is not installed: apt-get install -y chromium (CI installs it)")
    return exe


def browse(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         f"--user-data-dir={profile}", "--enable-logging=stderr", "--log-level=0", *args, page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )


# Appended to a copy of the page: switch the x axis to tokens, move the pointer over the loss plot, and
# record what the page did (the class of the plots, which plots are visible, the readout) on <body>.
PROBE = """<script>
(function () {
  document.querySelector('.controls button[data-x="tokens"]').click();
  var svg = document.querySelector('figure[data-metric="loss"] svg.by-tokens');
  var box = svg.getBoundingClientRect();
  svg.dispatchEvent(new MouseEvent("mousemove", {clientX: box.left + box.width * 0.6, clientY: box.top + 40, bubbles: true}));
  var shown = Array.prototype.filter.call(document.querySelectorAll("svg.plot"), function (s) { return s.getBoundingClientRect().width > 0; });
  document.body.setAttribute("data-probe", JSON.stringify({
    plots: document.getElementById("plots").className, shown: shown.map(function (s) { return s.getAttribute("data-x"); }),
    readout: svg.parentNode.querySelector(".readout").textContent}));
})();
</script></body>"""


def test_page_in_headless_chromium(runs, tmp_path):
    # control: the browser's console reaches stderr as CONSOLE lines (else this test could not see an error)
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><body><script>console.error('boom'); missing();</script></body>")
    control = browse(bad, tmp_path, "--dump-dom")
    assert "CONSOLE" in control.stderr and "missing is not defined" in control.stderr, control.stderr[-2000:]

    probed = tmp_path / "probed.html"
    probed.write_text(runs["html"].replace("</body>", PROBE))
    shot = tmp_path / "report.png"
    out = browse(probed, tmp_path, "--dump-dom", f"--screenshot={shot}", "--window-size=1300,1500", "--hide-scrollbars")
    assert out.returncode == 0, out.stderr[-2000:]
    assert [line for line in out.stderr.splitlines() if "CONSOLE" in line] == []
    # the page's script ran and found every curve of every plot (2 runs x 2 x axes per metric)
    polylines = runs["html"].count("<polyline ")
    assert polylines >= 2 * 2 * 7
    assert f'data-curves="{polylines}"' in out.stdout, out.stdout[:500]
    # the x-axis switch and the pointer readout work
    probe = json.loads(html.unescape(re.search(r'data-probe="([^"]*)"', out.stdout).group(1)))
    assert probe["plots"] == "grid-plots x-tokens" and set(probe["shown"]) == {"tokens"} and len(probe["shown"]) >= 7
    assert re.fullmatch(r"base @ step \d: [\d.]+\s+fast @ step \d: [\d.]+", probe["readout"]), probe["readout"]
    assert shot.stat().st_size > 30_000


def test_a_resumed_unfinished_run_counts_each_step_once(tmp_path):
    """Records written by hand as a preempted, resumed run leaves them: step 3 twice (the last one counts),
    no summary.json (time estimated from the records), the preemption marker."""
    from automodel.report import load_run, render_html, run_facts

    run = tmp_path / "r"
    run.mkdir()
    rows = [{"step": 1, "loss": 3.0, "tokens_seen": 100, "tokens_per_s": 50.0}, {"step": 2, "loss": 2.5, "tokens_seen": 200, "tokens_per_s": 100.0},
            {"step": 2, "val_loss": 2.6}, {"step": 3, "loss": 9.9, "tokens_seen": 300, "tokens_per_s": 100.0},
            {"step": 3, "loss": 2.2, "tokens_seen": 300, "tokens_per_s": 100.0}]
    (run / "metrics.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n{\"step\": 4, \"lo")  # a line cut by the kill
    (run / "preempted.json").write_text("{}")
    loaded = load_run(run)
    assert loaded.series("loss", "step") == [(1.0, 3.0, 1), (2.0, 2.5, 2), (3.0, 2.2, 3)]
    assert loaded.series("val_loss", "tokens") == [(200.0, 2.6, 2)]
    facts = run_facts(loaded)
    assert facts["status"] == "preempted" and facts["best val loss"] == "2.6000 (step 2)"
    assert facts["total time"].startswith("≈ 0:00:04")  # 100/50 + 100/100 + 100/100 s of training steps
    assert 'data-values="3,2.5,2.2"' in render_html([loaded])
