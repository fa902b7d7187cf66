"""The ``mlflow`` logger: one MLflow run per training run, continued on resume.

Importing this module does not import mlflow (``automodel validate`` runs :meth:`MlflowLogger.validate_args`,
which only checks that a tracking server answers).
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Literal

import yaml
from automodel.errors import AutomodelError

_SECRET = re.compile(r"(^|[_.-])(token|key|password|passwd|secret|credentials?)s?($|[_.-])", re.I)
MAX_PARAM_LENGTH = 6000  # MLflow >= 2.x: a param value holds at most 6000 characters
MASK = "***"


def safe_config(config: dict[str, Any]) -> Any:
    """The config as it may be logged: :func:`automodel.config.redacted` (credentials masked, ``${env:...}``
    kept unresolved), or, with an automodel-core that predates it, :func:`mask_secrets`."""
    try:
        from automodel.config import redacted
    except ImportError:
        return mask_secrets(config)
    return redacted(config)

def mask_secrets(value: Any) -> Any:
    """A copy of a config with the value of every key naming a token, key, password, secret or credential
    (``hf_token``, ``api_key``, ``db_password``, ...) replaced by ``***``."""
    if isinstance(value, dict):
        return {k: MASK if _SECRET.search(str(k)) and not isinstance(v, (dict, list)) else mask_secrets(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [mask_secrets(v) for v in value]
    return value


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """``{"optimizer": {"lr": 0.001}, "parallel": [{"name": "fsdp2"}]}`` ->
    ``{"optimizer.lr": "0.001", "parallel.0.name": "fsdp2"}`` (values as MLflow params: text, truncated)."""
    out: dict[str, str] = {}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else None
    if items is None or not value:
        text = "null" if value is None else str(value) if prefix else ""
        return {prefix: text[:MAX_PARAM_LENGTH]} if prefix else {}
    for k, v in items:
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def default_tracking_uri(output_dir: str | os.PathLike[str]) -> str:
    """``MLFLOW_TRACKING_URI``, else a local SQLite store ``<output_dir>/mlruns/mlflow.db``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(Path(output_dir) / 'mlruns' / 'mlflow.db').resolve()}"


def unreachable(uri: str, timeout: float) -> str | None:
    """Why the tracking server at an http(s) ``uri`` cannot be reached, or None (any HTTP answer, even an
    error status, means a server is there; other URIs are not checked here)."""
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (urllib.error.URLError, OSError) as e:
        return str(getattr(e, "reason", e))


def _unreachable_message(uri: str, reason: str) -> str:
    return (f"mlflow: the tracking server {uri} cannot be reached ({reason}). Start it (e.g. `mlflow server "
            f"--host 127.0.0.1 --port 5000`), fix loggers.<i>.tracking_uri or MLFLOW_TRACKING_URI, or set "
            f"on_unreachable: warn in the mlflow logger to train without MLflow")


class MlflowLogger:
    """Logs to an MLflow tracking server or store, from rank 0 only:

    * params: the resolved config, flattened (``optimizer.lr``, ``step_scheduler.max_steps``, ...), with
      the values of keys naming a token, key, password or secret masked;
    * metrics: every numeric value of every training and validation record at its optimizer step
      (``loss``, ``lr``, ``grad_norm``, ``tokens_per_s``, ``val_loss``, ...), one batch per record;
    * tags: the automodel version, each loaded plugin's version (``automodel.plugin.<name>``), which plugin
      provided each component (``automodel.components``), the run directory, and ``tags`` from the config;
    * artifacts at the end: ``config.yaml`` (masked) and, with ``log_model``, the exported ``<output_dir>/hf``
      under ``model/``.

    ``tracking_uri`` defaults to ``MLFLOW_TRACKING_URI``, else a local SQLite store in
    ``<output_dir>/mlruns``. The run id is kept in the checkpoint (``train_state.metadata["mlflow"]``), so a
    resumed run continues the same MLflow run; steps the interrupted attempt logged after the checkpoint
    are not logged again (one value per step). An http(s) server that does not answer stops the run
    before training (``on_unreachable: fail``), or is skipped with a warning (``warn``).
    """

    path_args = ()

    def __init__(
        self,
        ctx: Any,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        log_model: bool = False,
        log_config: bool = True,
        on_unreachable: Literal["fail", "warn"] = "fail",
        timeout_s: float = 10.0,
    ):
        self.ctx, self.log_model, self.log_config = ctx, log_model, log_config
        self.started = time.time()
        self.client: Any = None
        self.skip: dict[str, set[int]] = {}  # metric -> steps an interrupted attempt already logged
        self.failures = 0
        output_dir = Path(ctx.output_dir)
        self.uri = tracking_uri or default_tracking_uri(output_dir)
        reason = unreachable(self.uri, timeout_s)
        if reason is not None:
            if on_unreachable == "fail":
                raise AutomodelError(_unreachable_message(self.uri, reason))
            print(f"warning: mlflow: the tracking server {self.uri} cannot be reached ({reason}); "
                  "training continues without MLflow (on_unreachable: warn)", flush=True)
            return
        from mlflow.tracking import MlflowClient

        for name in ("mlflow.store.db.utils", "alembic"):  # "Creating initial MLflow database tables...": not news
            logging.getLogger(name).setLevel(logging.WARNING)
        local = self.uri.startswith("sqlite:///") and tracking_uri is None and not os.environ.get("MLFLOW_TRACKING_URI")
        if local:
            (output_dir / "mlruns").mkdir(parents=True, exist_ok=True)
        self.client = client = MlflowClient(tracking_uri=self.uri)
        name = experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "automodel"
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(
            name, artifact_location=(output_dir / "mlruns" / "artifacts").resolve().as_uri() if local else None)

        metadata = getattr(ctx.train_state, "metadata", None)
        step = int(getattr(ctx.train_state, "step", 0) or 0)
        saved = (metadata or {}).get("mlflow", {})
        self.run_id: str | None = None
        self.run_id = self._resume(saved, step) if saved.get("run_id") and step else None
        if self.run_id is None:
            if saved.get("run_id") and step:
                print(f"mlflow: run {saved['run_id']} of the checkpoint is not in {self.uri}; starting a new run", flush=True)
            run = client.create_run(experiment_id, run_name=run_name or output_dir.name, tags=self._tags(tags))
            self.run_id = run.info.run_id
            if log_config:
                self._log_params(flatten(safe_config(ctx.config)))
        if metadata is not None:
            metadata["mlflow"] = {"run_id": self.run_id, "tracking_uri": self.uri, "experiment_id": experiment_id}
        print(f"mlflow: logging to run {self.run_id} (experiment '{name}') at {self.uri}", flush=True)

    @staticmethod
    def validate_args(args: dict[str, Any]) -> list[tuple[str, str, str]]:
        """Before anything heavy starts: an http(s) tracking server must answer (unless on_unreachable: warn)."""
        uri = args.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri or args.get("on_unreachable", "fail") != "fail":
            return []
        reason = unreachable(uri, float(args.get("timeout_s", 10.0)))
        if reason is None:
            return []
        key = "tracking_uri" if args.get("tracking_uri") else ""
        return [(key, f"the MLflow tracking server {uri} cannot be reached ({reason})",
                 "start it (mlflow server --host 127.0.0.1 --port 5000), fix the URI (or MLFLOW_TRACKING_URI), "
                 "or set on_unreachable: warn to train without MLflow")]

    # -- start ------------------------------------------------------------------------------------

    def _tags(self, extra: dict[str, str] | None) -> dict[str, str]:
        import automodel

        tags = {"mlflow.source.name": "automodel", "automodel.version": automodel.__version__,
                "automodel.output_dir": str(Path(self.ctx.output_dir).resolve())}
        for info in getattr(self.ctx.plugins, "infos", None) or []:
            if info.error:
                continue
            if info.source == "builtin":
                where = f"automodel-core {automodel.__version__}"
            else:
                where = f"{info.dist} {info.version or ''}".strip() if info.dist else f"{info.source} module {info.module}"
            tags[f"automodel.plugin.{info.name}"] = where
        if self.ctx.plugins is not None and self.ctx.config:
            from automodel.config import component_providers

            try:  # which plugin provided each component of this run: "loss=triton_ce (automodel-triton-ce 0.1.0)"
                tags["automodel.components"] = "; ".join(component_providers(self.ctx.config, self.ctx.plugins))[:5000]
            except (KeyError, TypeError, AttributeError):
                pass
        tags.update({str(k): str(v) for k, v in (extra or {}).items()})
        return tags

    def _resume(self, saved: dict[str, Any], step: int) -> str | None:
        """Continue the run of the checkpoint: mark it running, log the params that are new, note the ones
        that changed (MLflow params are immutable), and remember the steps after ``step`` already logged."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(saved["run_id"])
        except MlflowException:
            return None
        run_id = self.run_id = run.info.run_id
        self.client.update_run(run_id, status="RUNNING")
        params = flatten(safe_config(self.ctx.config)) if self.log_config else {}
        old = run.data.params
        self._log_params({k: v for k, v in params.items() if k not in old})
        changed = [f"{k}: {old[k]} -> {v}" for k, v in params.items() if k in old and old[k] != v]
        if changed:
            self.client.set_tag(run_id, f"automodel.resumed_at_step_{step}", "; ".join(changed)[:5000])
        for key in run.data.metrics:
            later = {m.step for m in self.client.get_metric_history(run_id, key) if m.step > step}
            if later:
                self.skip[key] = later
        if self.skip:
            steps = sorted(set().union(*self.skip.values()))
            print(f"mlflow: resumed from step {step}; steps {steps[0]}-{steps[-1]} were logged before the interruption "
                  "and are kept (a resumed run repeats them exactly), not logged twice", flush=True)
        return run_id

    def _log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    # -- logging ----------------------------------------------------------------------------------

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(key, float(value), now, step) for key, value in metrics.items()
                 if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                 and step not in self.skip.get(key, ())]
        if not batch:
            return
        try:
            self.client.log_batch(self.run_id, metrics=batch)
        except Exception as e:  # a metrics server that went away must not stop a training run
            self.failures += 1
            if self.failures == 1 or self.failures % 100 == 0:
                print(f"warning: mlflow: could not log step {step} to {self.uri} ({type(e).__name__}: "
                      f"{str(e)[:200]}); training continues ({self.failures} record(s) lost so far)", flush=True)

    def close(self) -> None:
        if self.client is None:
            return
        failed = sys.exc_info()[0] is not None  # the loop closes loggers from its exception handler
        from automodel.signals import read_marker

        status = "FAILED" if failed else "KILLED" if read_marker(self.ctx.output_dir) else "FINISHED"
        try:  # the model and the checkpoints are on disk already: a tracking problem now only costs the upload
            self._log_artifacts()
            self.client.set_terminated(self.run_id, status=status)
        except Exception as e:
            print(f"warning: mlflow: could not finish run {self.run_id} at {self.uri} ({type(e).__name__}: "
                  f"{str(e)[:300]}); the run's files are intact in {self.ctx.output_dir}", flush=True)

    def _log_artifacts(self) -> None:
        output_dir = Path(self.ctx.output_dir)
        if self.log_config and self.ctx.config:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "config.yaml"
                path.write_text(yaml.safe_dump(safe_config(self.ctx.config), sort_keys=False))
                self.client.log_artifact(self.run_id, str(path))
        if not self.log_model:
            return
        hf = output_dir / "hf"
        files = [p for p in hf.rglob("*") if p.is_file()] if hf.is_dir() else []
        if files and max(p.stat().st_mtime for p in files) >= self.started:  # exported by this run
            self.client.log_artifacts(self.run_id, str(hf), artifact_path="model")
            print(f"mlflow: logged the exported model {hf} as the artifact 'model' of run {self.run_id}", flush=True)
        else:
            print(f"mlflow: log_model: {hf} was not exported by this run; no model artifact", flush=True)
