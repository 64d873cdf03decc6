"""configs/serve.yaml's autoscaling, checked with Ray Serve's own schema (no cluster): every deployment autoscales,
its ``autoscaling_config`` is one Ray Serve accepts, min ≤ initial ≤ max, and broken copies are rejected.

Ray Serve's config schema alone is not enough: ``DeploymentSchema.autoscaling_config`` is ``Union[Dict,
AutoscalingConfig]``, so ``ServeDeploySchema`` keeps a dict as it is (min > max passes until the controller builds
the deployment), and ``AutoscalingConfig`` ignores unknown keys (a misspelt ``target_ongoing_request`` would be
dropped silently and the default used). So :func:`autoscaling_errors` validates each dict with ``AutoscalingConfig``
itself and refuses keys it does not define. ``benchmarks/serve_autoscale.py`` shows the replicas actually moving."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SERVE_YAML = REPO / "configs" / "serve.yaml"


def autoscaling_errors(data: dict) -> list[str]:
    """What is wrong with the autoscaling of a multi-application Serve config (``configs/serve.yaml`` as loaded);
    [] when nothing. Validates the whole config with ``ServeDeploySchema`` (what ``serve_app.deploy.deploy``
    sends), then each deployment's ``autoscaling_config`` with ``AutoscalingConfig``."""
    from pydantic import ValidationError
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    try:
        schema = ServeDeploySchema.model_validate(data)
    except ValidationError as exc:
        return [f"ServeDeploySchema: {exc}"]
    errors = []
    known = set(AutoscalingConfig.model_fields)
    for app in schema.applications:
        for dep in app.deployments or []:
            where = f"{app.name}/{dep.name}"
            raw = dep.autoscaling_config
            if not isinstance(raw, dict | AutoscalingConfig):
                errors.append(f"{where}: no autoscaling_config")
                continue
            if "num_replicas" in dep.model_fields_set and dep.num_replicas is not None:
                errors.append(f"{where}: num_replicas pins the replica count")
            if isinstance(raw, dict) and (unknown := sorted(set(raw) - known)):
                errors.append(f"{where}: unknown autoscaling keys {unknown} (Ray would ignore them)")
            try:
                ac = raw if isinstance(raw, AutoscalingConfig) else AutoscalingConfig.model_validate(raw)
            except ValidationError as exc:
                errors.append(f"{where}: {exc}")
                continue
            initial = ac.initial_replicas if ac.initial_replicas is not None else ac.min_replicas
            if not ac.min_replicas <= initial <= ac.max_replicas:
                errors.append(f"{where}: not min {ac.min_replicas} ≤ initial {initial} ≤ max {ac.max_replicas}")
            if "max_ongoing_requests" in dep.model_fields_set and \
                    ac.get_target_ongoing_requests() > dep.max_ongoing_requests:
                errors.append(f"{where}: target_ongoing_requests {ac.get_target_ongoing_requests()} above "
                              f"max_ongoing_requests {dep.max_ongoing_requests} (Serve would scale up only once "
                              "requests queue in front of full replicas)")
    return errors


@pytest.fixture(scope="module")
def shipped() -> dict:
    return yaml.safe_load(SERVE_YAML.read_text())


def _deployments(data: dict):
    return [(app["name"], d) for app in data["applications"] for d in app.get("deployments", [])]


def test_every_shipped_deployment_autoscales_with_a_valid_config(shipped):
    from ray.serve.config import AutoscalingConfig

    assert autoscaling_errors(shipped) == []
    deps = _deployments(shipped)
    assert {d["name"] for _, d in deps} == {"HintQ", "DirectIngress", "DirectGenerator", "ThinkApp"}
    for _, d in deps:
        ac = AutoscalingConfig.model_validate(d["autoscaling_config"])
        assert 1 <= ac.min_replicas <= (ac.initial_replicas or ac.min_replicas) <= ac.max_replicas
        assert "num_replicas" not in d


def test_deploy_path_keeps_autoscaling(shipped):
    """serve_app.deploy.load_serve_config (what `aigq serve up` and the benchmark deploy) passes every
    autoscaling_config through unchanged."""
    from serve_app.deploy import load_serve_config

    cfg = load_serve_config(SERVE_YAML, root=REPO, config="configs/tiny_cpu.yaml", port=8123)
    assert autoscaling_errors(cfg) == []
    assert [d["autoscaling_config"] for _, d in _deployments(cfg)] == \
        [d["autoscaling_config"] for _, d in _deployments(shipped)]


def _break(data: dict, name: str, change) -> dict:
    out = copy.deepcopy(data)
    for _, d in _deployments(out):
        if d["name"] == name:
            change(d)
            return out
    raise KeyError(name)


BROKEN = {
    "min above max": lambda d: d["autoscaling_config"].update(min_replicas=3, max_replicas=2),
    "initial above max": lambda d: d["autoscaling_config"].update(initial_replicas=5),
    "initial below min": lambda d: d["autoscaling_config"].update(min_replicas=2, initial_replicas=1),
    "misspelt key": lambda d: d["autoscaling_config"].update(target_ongoing_request=4),
    "unknown key": lambda d: d["autoscaling_config"].update(max_replica=4),
    "zero target": lambda d: d["autoscaling_config"].update(target_ongoing_requests=0),
    "negative delay": lambda d: d["autoscaling_config"].update(downscale_delay_s=-1),
    "max zero": lambda d: d["autoscaling_config"].update(min_replicas=0, max_replicas=0),
    "num_replicas beside autoscaling": lambda d: d.update(num_replicas=2),
    "pinned, no autoscaling": lambda d: (d.pop("autoscaling_config"), d.update(num_replicas=1)),
    "target above max_ongoing_requests": lambda d: d["autoscaling_config"].update(target_ongoing_requests=1000),
}


# what the error says, for each broken copy (Ray's own messages where Ray finds it)
SAYS = {"min above max": "must be greater than or equal to min_replicas", "initial above max": "initial_replicas",
        "initial below min": "initial_replicas", "misspelt key": "target_ongoing_request'",
        "unknown key": "max_replica'", "zero target": "greater than 0", "negative delay": "greater than or equal to 0",
        "max zero": "greater than 0", "num_replicas beside autoscaling": "num_replicas is not allowed",
        "pinned, no autoscaling": "no autoscaling_config", "target above max_ongoing_requests": "max_ongoing_requests"}


@pytest.mark.parametrize("what", list(BROKEN))
@pytest.mark.parametrize("deployment", ["HintQ", "DirectGenerator"])
def test_broken_copies_are_rejected(shipped, what, deployment):
    errors = autoscaling_errors(_break(shipped, deployment, BROKEN[what]))
    assert len(errors) == 1, errors
    assert SAYS[what] in errors[0], errors
    if what != "num_replicas beside autoscaling":  # Ray's schema names no deployment for that one
        assert errors[0].startswith(("hintq/HintQ:", "direct/DirectGenerator:")) and deployment in errors[0], errors


def test_ray_rejects_min_above_max_itself():
    """The checks above lean on Ray's own validator for the replica bounds."""
    from pydantic import ValidationError
    from ray.serve.config import AutoscalingConfig

    with pytest.raises(ValidationError, match="max_replicas"):
        AutoscalingConfig.model_validate({"min_replicas": 3, "max_replicas": 2})
    with pytest.raises(ValidationError, match="initial_replicas"):
        AutoscalingConfig.model_validate({"min_replicas": 1, "max_replicas": 2, "initial_replicas": 3})
