"""MLflow tracking for every AIGQ command.

By default runs go to a project-local SQLite store (``<tracking.root>/mlflow.db``) with artifacts beside it
(``<tracking.root>/artifacts``), so nothing lands in a stray ``./mlruns``. ``$MLFLOW_TRACKING_URI`` (or
``tracking.uri``) points the same code at a tracking server. Params are the flattened, resolved config; the config
itself is logged as ``config.yaml``; pipeline stages are nested runs under one parent run. Credentials in URLs
(``serve.redis_url=redis://:secret@host``) are redacted in both (:func:`redacted`).

    tracker = Tracker(cfg.tracking)
    with tracker.run("build-samples", cfg):
        tracker.metrics({"samples.direct": 1234})
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from aigq.config import AIGQConfig, TrackingConfig, flatten, redact_url

# Runs are offline: keep MLflow from trying to phone home.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")


def tracking_uri(cfg: TrackingConfig) -> str:
    if cfg.uri:
        return cfg.uri
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    root = Path(cfg.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def redacted(value: Any) -> Any:
    """``value`` with the credentials of every URL in it redacted (:func:`redact_url`, a no-op on any other string),
    through dicts and lists: whatever its key (``serve.redis_url``, ``tracking.uri``, an override list)."""
    if isinstance(value, dict):
        return {k: redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redacted(v) for v in value)
    return redact_url(value) if isinstance(value, str) else value


class Tracker:
    """Thin wrapper over the MLflow fluent API; ``tracking.enabled=false`` turns every call into a no-op."""

    def __init__(self, cfg: TrackingConfig):
        self.cfg = cfg
        self.enabled = cfg.enabled
        self._mlflow = None
        if self.enabled:
            import mlflow

            self._mlflow = mlflow
            self.uri = tracking_uri(cfg)
            user_uri = os.environ.get("MLFLOW_TRACKING_URI")
            mlflow.set_tracking_uri(self.uri)
            # mlflow.set_tracking_uri also exports $MLFLOW_TRACKING_URI; put the user's value back, or the next
            # Tracker of this process (and every child process: Ray heads, jobs) would follow this store instead of
            # its own tracking config
            if user_uri is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = user_uri
            if mlflow.get_experiment_by_name(cfg.experiment) is None:
                artifacts = None
                if self.uri.startswith("sqlite:"):
                    artifacts = (Path(cfg.root).resolve() / "artifacts").as_uri()
                mlflow.create_experiment(cfg.experiment, artifact_location=artifacts)
            mlflow.set_experiment(cfg.experiment)

    @contextmanager
    def run(self, name: str, cfg: AIGQConfig | None = None, tags: dict[str, str] | None = None) -> Iterator[Any]:
        """Start a run (nested when another is active) and log the resolved config as params + config.yaml."""
        if not self.enabled:
            yield None
            return
        mlflow = self._mlflow
        nested = mlflow.active_run() is not None
        with mlflow.start_run(run_name=name, nested=nested, tags={"aigq.stage": name, **(tags or {})}) as run:
            if cfg is not None:
                self.params(flatten(cfg))
                mlflow.log_text(yaml.safe_dump(redacted(cfg.model_dump()), sort_keys=False, allow_unicode=True),
                                "config.yaml")
            yield run

    def params(self, params: dict[str, Any]) -> None:
        """Log params (credentials in URLs redacted)."""
        if self.enabled:
            self._mlflow.log_params({k: str(redacted(v))[:6000] for k, v in params.items()})

    def metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self.enabled:
            clean = {k.replace(":", "_"): float(v) for k, v in metrics.items() if v is not None}
            self._mlflow.log_metrics(clean, step=step)

    def artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self._mlflow.log_artifact(str(path), artifact_path)

    def text(self, text: str, name: str) -> None:
        if self.enabled:
            self._mlflow.log_text(text, name)

    def dict(self, data: dict[str, Any], name: str) -> None:
        if self.enabled:
            self._mlflow.log_dict(data, name)

    def artifacts(self, folder: str | Path, artifact_path: str | None = None) -> None:
        """Log a whole folder (a checkpoint, a model) as artifacts."""
        if self.enabled:
            self._mlflow.log_artifacts(str(folder), artifact_path)

    def register_model(self, artifact_path: str, name: str, tags: dict[str, str] | None = None) -> str | None:
        """Register the active run's artifact folder ``artifact_path`` (a Hugging Face model folder logged with
        ``artifacts``) as a new version of registered model ``name``; returns the version."""
        if not self.enabled:
            return None
        client = self._mlflow.MlflowClient()
        try:
            client.get_registered_model(name)
        except self._mlflow.exceptions.MlflowException:
            client.create_registered_model(name)
        run = self._mlflow.active_run()
        mv = client.create_model_version(name, source=self._mlflow.get_artifact_uri(artifact_path),
                                         run_id=run.info.run_id if run else None, tags=tags)
        return mv.version
