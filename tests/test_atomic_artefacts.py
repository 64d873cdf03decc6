"""Artefacts that serving reads are swapped in whole (issue 19 item 9), and the serving policy holder loads once and
calls its engine one call at a time (item 10)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from tiny_policy import build_policy, write_samples

from aigq import atomic
from aigq.config import CTRConfig
from aigq.models.factory import load_policy
from aigq.rewards import ctr as C
from learner import efficient as E
from serve_app import policy as SP


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name != folder.name)


def _intact(folder: Path) -> str | None:
    """What is wrong with a policy folder as a reader finds it (None: complete)."""
    if not (folder / "config.json").is_file() or not (folder / "tokenizer.json").is_file():
        return f"incomplete: {sorted(p.name for p in folder.iterdir())}"
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        list(f.keys())
    return None


def test_exchange_swaps_two_folders():
    # the atomic path of swap_in; without it the path briefly disappears (still never a partial folder)
    import tempfile

    d = Path(tempfile.mkdtemp())
    (d / "a").mkdir()
    (d / "b").mkdir()
    (d / "a" / "x").write_text("a")
    assert atomic._exchange(d / "a", d / "b")
    assert (d / "b" / "x").read_text() == "a" and not (d / "a" / "x").exists()


def test_policy_save_swaps_the_folder_in_whole(tmp_path, monkeypatch):
    """SFT/GRPO save_policy → save_merged: while the new policy is written, the folder still holds the old one
    whole; a reader polling it during saves never finds it missing a file or with a partial safetensors."""
    out = build_policy(tmp_path / "policy", write_samples(tmp_path / "s", n=20))
    old = SP.weights_digest(out)
    model, tok = load_policy(out)
    seen: list[str] = []
    real_save = type(model).save_pretrained

    def save_and_look(self, path, *a, **k):
        real_save(self, path, *a, **k)  # the new weights are written; the tokenizer not yet
        seen.append(SP.weights_digest(out))
        seen.append(_intact(out) or "ok")

    monkeypatch.setattr(type(model), "save_pretrained", save_and_look)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    E.save_merged(model, tok, out)
    assert seen == [old, "ok"]  # mid-save: the old policy, complete
    assert SP.weights_digest(out) != old and _intact(out) is None
    assert _siblings(out) == ["s"]  # no temporary folder left

    monkeypatch.setattr(type(model), "save_pretrained", real_save)
    problems, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                if (bad := _intact(out)) is not None:
                    problems.append(bad)
            except Exception as exc:  # noqa: BLE001 — a missing folder or a truncated file
                problems.append(repr(exc))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(5):
            with torch.no_grad():
                next(model.parameters()).add_(1.0)
            E.save_merged(model, tok, out)
    finally:
        stop.set()
        t.join()
    assert problems == []


def test_ctr_model_is_swapped_in_whole(tmp_path, monkeypatch):
    """A CTR day-T folder re-saved: mid-save it still holds the old model, after it the new one and nothing stale."""
    cc = CTRConfig(hash_buckets=1024, dim=4, hidden=8, history_len=4)
    folder = tmp_path / "ctr" / "day-003"
    torch.manual_seed(0)
    C.save_model(C.CTRModel(cc.hash_buckets, cc.dim, cc.hidden, cc.history_len), cc, folder, meta={"run": 1})
    (folder / C.SUCCESS_FILE).write_text("stale")  # from an earlier save with success rates
    old = (folder / "model.safetensors").read_bytes()
    seen = []
    real = C.save_file

    def save_and_look(tensors, path):
        real(tensors, path)
        seen.append(((folder / "model.safetensors").read_bytes() == old,
                     C.load_model(folder)[2]))

    monkeypatch.setattr(C, "save_file", save_and_look)
    torch.manual_seed(1)
    C.save_model(C.CTRModel(cc.hash_buckets, cc.dim, cc.hidden, cc.history_len), cc, folder, meta={"run": 2})
    assert seen == [(True, {"run": 1})]
    assert (folder / "model.safetensors").read_bytes() != old and C.load_model(folder)[2] == {"run": 2}
    assert not (folder / C.SUCCESS_FILE).exists() and _siblings(folder) == []


class FakeRegistry:
    """``mlflow.artifacts.download_artifacts`` and ``MlflowClient.get_model_version_by_alias`` for one model."""

    def __init__(self):
        self.aliases = {"prod": "1"}
        self.downloads: list[str] = []

    def download(self, artifact_uri, dst_path):
        self.downloads.append(artifact_uri)
        (Path(dst_path) / "config.json").write_text("{}")
        (Path(dst_path) / "model.safetensors").write_text(artifact_uri)
        return dst_path

    def client(self, *_a, **_k):
        reg = self

        class Client:
            def get_model_version_by_alias(self, name, alias):
                return type("MV", (), {"version": reg.aliases[alias]})

        return Client()


@pytest.fixture
def registry(monkeypatch):
    import mlflow

    reg = FakeRegistry()
    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", reg.download)
    monkeypatch.setattr(mlflow, "MlflowClient", reg.client)
    return reg


def test_registry_download_without_its_completion_marker_is_fetched_again(tmp_path, registry):
    cache = tmp_path / "cache"
    partial = cache / "m@3"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")  # a download cut short: config.json but no weights, no marker
    folder, label = SP.resolve_policy("models:/m/3", cache_dir=cache)
    assert (folder, label) == (partial, "m/3") and registry.downloads == ["models:/m/3"]
    assert (folder / "model.safetensors").read_text() == "models:/m/3" and (folder / SP.DOWNLOADED).is_file()
    SP.resolve_policy("models:/m/3", cache_dir=cache)
    assert registry.downloads == ["models:/m/3"]  # complete: not fetched again
    assert _siblings(folder) == []


def test_alias_is_resolved_to_a_version_and_a_moved_alias_reloads(tmp_path, registry, monkeypatch):
    cache = tmp_path / "cache"
    folder, label = SP.resolve_policy("models:/m@prod", cache_dir=cache)
    assert label == "m/1" and folder == cache / "m@1"
    registry.aliases["prod"] = "2"
    folder, label = SP.resolve_policy("models:/m@prod", cache_dir=cache)
    assert label == "m/2" and folder == cache / "m@2"
    assert (folder / "model.safetensors").read_text() == "models:/m/2"

    real = SP.resolve_policy
    monkeypatch.setattr(SP, "resolve_policy", lambda spec, uri=None: real(spec, uri, cache))
    monkeypatch.setattr(SP, "make_engine", lambda kind, folder, **kw: ("engine", folder))
    holder = SP.PolicyHolder("direct")
    assert holder.load("models:/m@prod").version == "m/2"
    assert holder.load("models:/m@prod").version == "m/2" and holder.loads == 1
    registry.aliases["prod"] = "3"
    assert holder.load("models:/m@prod").version == "m/3" and holder.loads == 2


def test_concurrent_loads_build_the_engine_once(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_text("w")
    built = []

    def slow_engine(kind, folder, **kw):
        built.append(folder)
        time.sleep(0.3)
        return object()

    monkeypatch.setattr(SP, "make_engine", slow_engine)
    holder = SP.PolicyHolder("think")
    gate = threading.Barrier(4)

    def load():
        gate.wait()
        holder.load(str(tmp_path))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(built) == 1 and holder.loads == 1


class OverlapEngine:
    """Records how many calls are inside ``generate`` at once."""

    def __init__(self):
        self.inside = self.most = 0
        self._count = threading.Lock()

    def generate(self, prompts, sampling):
        with self._count:
            self.inside += 1
            self.most = max(self.most, self.inside)
        time.sleep(0.05)
        with self._count:
            self.inside -= 1
        return [[type("R", (), {"text": p})()] for p in prompts]


def test_concurrent_generations_never_overlap_in_the_engine(monkeypatch):
    engine = OverlapEngine()
    holder = SP.PolicyHolder("direct")
    holder.current = SP.Loaded(engine, Path("."), "v1", "spec")
    monkeypatch.setattr(SP, "direct_lists", lambda eng, prompts, samples, max_tokens, k: [
        [r[0].text] for r in eng.generate(prompts, None)])
    gate = threading.Barrier(6)

    def call(i):
        gate.wait()
        if i % 2:
            assert holder.generate([f"p{i}"], 8)[0][0].text == f"p{i}"
        else:
            assert holder.direct_lists([f"p{i}"], 8, 1, 3) == ([[f"p{i}"]], "v1")

    threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert engine.most == 1
