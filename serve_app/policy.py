"""Policy specs for serving: a local model folder or an MLflow registry entry ``models:/<name>/<version>``, resolved
to a folder and a version label; and the engine that a Direct/Think deployment holds and swaps on reconfigure."""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aigq.atomic import remove, swap_in
from aigq.models.factory import variant_mismatch
from rollout.consensus import direct_lists
from rollout.engine import Sampling, make_engine

# written last into a registry download: a cached folder without it (a download cut short) is fetched again
DOWNLOADED = ".aigq-download-complete"


def resolve_policy(spec: str, tracking_uri: str | None = None, cache_dir: str | Path | None = None) -> tuple[Path, str]:
    """``spec`` → (local folder, version label). ``models:/name/3`` is downloaded once from the MLflow registry
    (version label ``name/3``); an alias ``models:/name@prod`` is resolved to its version first, so the cache is
    keyed by name/version and a moved alias loads the new version. A folder's label is ``<folder name>@<sha256 of
    its weights, 12 hex>``."""
    if spec.startswith("models:/"):
        import mlflow

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        name_version = spec[len("models:/"):].strip("/")
        if "@" in name_version:  # an alias: its version now
            name, alias = name_version.split("@", 1)
            name_version = f"{name}/{mlflow.MlflowClient().get_model_version_by_alias(name, alias).version}"
        dst = Path(cache_dir or Path.home() / ".cache" / "aigq" / "policies") / name_version.replace("/", "@")
        if not (dst / DOWNLOADED).is_file():
            _download(f"models:/{name_version}", dst)
        return dst, name_version
    folder = Path(spec).expanduser()
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"policy {folder} is not a model folder (no config.json); train one with `aigq sft`")
    return folder, f"{folder.name}@{weights_digest(folder)}"


def resolve_ctr_model(spec: str, tracking_uri: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """A CTR model for HintQ's ranker: a folder, or ``runs:/<run id>/ctr`` — the artefacts an ``aigq train-ctr`` run
    logged (``ctr.log_model``), downloaded once into ``cache_dir`` (default ``~/.cache/aigq/ctr``), so a replica on a
    node without the driver's folders still loads it (issue 19 item 11)."""
    if not spec.startswith("runs:/"):
        return Path(spec).expanduser()
    import mlflow

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    key = spec[len("runs:/"):].strip("/").replace("/", "@")
    dst = Path(cache_dir or Path.home() / ".cache" / "aigq" / "ctr") / key
    if not (dst / DOWNLOADED).is_file():
        _download(spec, dst, need="model.json")
    return dst


def _download(uri: str, dst: Path, need: str = "config.json") -> None:
    """Download ``uri`` into a temporary sibling of ``dst``, check it holds ``need``, mark it complete, swap it in
    whole."""
    import mlflow

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    remove(tmp)
    tmp.mkdir()
    try:
        try:
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp)))
        except mlflow.exceptions.MlflowException as exc:  # no such run / artefact path: a missing model, said so
            raise FileNotFoundError(f"{uri}: nothing to download ({str(exc).splitlines()[0]})") from None
        src = tmp if (tmp / need).is_file() else got
        if not (src / need).is_file():
            raise FileNotFoundError(f"{uri} is not a {'model' if need == 'config.json' else 'CTR model'} folder "
                                    f"(no {need})")
        (src / DOWNLOADED).write_text(uri)
        swap_in(src, dst)
    finally:
        remove(tmp)


def weights_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.glob("*.safetensors")):
        h.update(f.name.encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()[:12]


@dataclass
class Loaded:
    engine: Any
    folder: Path
    version: str
    spec: str


class PolicyHolder:
    """Holds the live engine. ``load`` builds the new engine *before* swapping it in, so requests in flight keep
    the old one and no request ever sees a half-loaded policy (hot rollout). One load at a time: requests that all
    find no policy wait for the first one's load and reuse it. One engine call at a time: an engine (vLLM's LLM, a
    transformers model) is not safe to call from several threads, and Serve runs handlers concurrently."""

    def __init__(self, variant: str):
        self.variant = variant
        self.current: Loaded | None = None
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        self._engine_lock = threading.Lock()
        self.loads = 0

    def load(self, spec: str, engine: str = "transformers", tracking_uri: str | None = None,
             dtype: str = "float32") -> Loaded:
        with self._load_lock:
            folder, version = resolve_policy(spec, tracking_uri)
            if self.current is not None and self.current.version == version and self.current.spec == spec:
                return self.current
            if why := variant_mismatch(folder, self.variant):
                raise ValueError(why)
            kw: dict[str, Any] = {"dtype": dtype}
            if engine == "transformers":
                kw["threads"] = int(os.environ.get("AIGQ_SERVE_THREADS", "1"))
            new = Loaded(make_engine(engine, folder, variant=self.variant, **kw), folder, version, spec)
            with self._lock:  # requests in flight hold the old engine until they finish; then it is garbage
                self.current = new
                self.loads += 1
            return new

    def live(self) -> Loaded:
        """The policy live now (a call keeps it to the end, whatever is loaded meanwhile)."""
        live = self.current
        if live is None:
            raise RuntimeError("no policy loaded")
        return live

    def generate(self, prompts: list[str], max_tokens: int) -> tuple[list[Any], str]:
        """Greedy generation (one list per prompt) with the engine live at call time; returns (rollouts, version)."""
        with self._engine_lock:
            live = self.live()
            groups = live.engine.generate(prompts, Sampling(n=1, temperature=0.0, max_tokens=max_tokens))
        return [g[0] for g in groups], live.version

    def direct_lists(self, prompts: list[str], max_tokens: int, samples: int, k: int) -> tuple[list[list[str]], str]:
        """The Direct cache's decoding (``consensus.direct_lists``: greedy + ``samples`` sampled lists, merged by
        consensus) with the engine live at call time; returns (query lists, version)."""
        with self._engine_lock:
            live = self.live()
            return direct_lists(live.engine, prompts, samples, max_tokens, k), live.version
