"""The KubeRay manifests (deploy/kuberay/) against what the KubeRay operator accepts and what framepipe asks of
the cluster: each is validated with jsonschema against KubeRay's own CRD schema (../shared/kuberay/, strict about
unknown fields as ``kubectl apply --validate=strict`` is), the RayService's serveConfigV2 is serve/config.yaml's,
and the RayJob's worker groups hold what the backfill's plan asks for."""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib

import jsonschema
import pytest
import yaml

from conftest import ROOT, SHARED

pytestmark = []  # the fast layer: neither the models nor ../shared

KUBERAY = SHARED / "kuberay"
DEPLOY = ROOT / "deploy" / "kuberay"
CRDS = {"RayJob": "ray.io_rayjobs.yaml", "RayService": "ray.io_rayservices.yaml",
        "RayCluster": "ray.io_rayclusters.yaml"}
RAY_KINDS = set(CRDS)


def _strict(schema):
    """The schema with unknown fields refused wherever it lists an object's fields (Kubernetes would prune them
    silently: a misspelled field is a setting that never applies)."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


_VALIDATORS: dict = {}


def validator(kind: str) -> jsonschema.Draft7Validator:
    if kind not in _VALIDATORS:
        crd = yaml.safe_load((KUBERAY / CRDS[kind]).read_text())
        version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
        schema = _strict(version["schema"]["openAPIV3Schema"])
        jsonschema.Draft7Validator.check_schema(schema)
        _VALIDATORS[kind] = jsonschema.Draft7Validator(schema)
    return _VALIDATORS[kind]


def problems(doc: dict) -> list[str]:
    assert doc["apiVersion"] == "ray.io/v1", doc["apiVersion"]
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(doc["kind"]).iter_errors(doc)]


def manifests() -> dict[str, dict]:
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(DEPLOY.glob("*.yaml"))}


def ray_manifest(kind: str) -> dict:
    return next(d for d in manifests().values() if d["kind"] == kind)


def test_every_ray_manifest_is_valid_against_kuberays_crd_schema():
    docs = {name: d for name, d in manifests().items() if d["kind"] in RAY_KINDS}
    assert {d["kind"] for d in docs.values()} == {"RayJob", "RayService"}, docs.keys()
    for name, doc in docs.items():
        assert problems(doc) == [], name


@pytest.mark.parametrize("break_it,expected", [
    (lambda job: job["spec"]["rayClusterSpec"].update(workerGroupSpec=job["spec"]["rayClusterSpec"].pop(
        "workerGroupSpecs")), "'workerGroupSpec' was unexpected"),  # a misspelled field
    (lambda job: job["spec"]["rayClusterSpec"]["workerGroupSpecs"][1].update(maxReplicas="eight"),
     "is not of type 'integer'"),
    (lambda job: job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("groupName"),
     "'groupName' is a required property"),
    (lambda job: job["spec"].update(shutdownAfterJobFinishes="yes"), "is not of type 'boolean'"),
    (lambda job: job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(
        resources={"limits": {"cpu": ["2"]}}), "is not valid under any of the given schemas"),
])
def test_a_broken_manifest_is_refused(break_it, expected):
    job = copy.deepcopy(ray_manifest("RayJob"))
    break_it(job)
    found = problems(job)
    assert any(expected in p for p in found), found


def test_the_rayservice_runs_serve_config_yaml():
    """serveConfigV2 is serve/config.yaml (what `serve run` and the tests deploy), apart from the GPU profile, and
    deploy/generate.py has nothing left to change."""
    import runpy

    gen = runpy.run_path(str(ROOT / "deploy" / "generate.py"))
    service = ray_manifest("RayService")
    deployed = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert deployed == gen["serve_config"](), "stale serveConfigV2: python deploy/generate.py"
    assert gen["rendered"]((DEPLOY / "rayservice.yaml").read_text()) == (DEPLOY / "rayservice.yaml").read_text()
    source = yaml.safe_load((ROOT / "serve" / "config.yaml").read_text())
    assert {k: v for k, v in deployed.items() if k != "applications"} == {
        k: v for k, v in source.items() if k != "applications"}
    for app, src in zip(deployed["applications"], source["applications"], strict=True):
        for d, s in zip(app["deployments"], src["deployments"], strict=True):
            differs = {k for k in d["ray_actor_options"] if d["ray_actor_options"][k] != s["ray_actor_options"].get(k)}
            assert differs <= set(gen["GPU_PROFILE"].get(d["name"], {})), (d["name"], differs)
            assert {k: v for k, v in d.items() if k != "ray_actor_options"} == {
                k: v for k, v in s.items() if k != "ray_actor_options"}
    # every deployment fits a worker group's pod; the GPU one lands on the T4 group
    groups = [group_resources(g) for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]]
    for d in deployed["applications"][0]["deployments"]:
        need = {"CPU": d["ray_actor_options"].get("num_cpus", 1), "GPU": d["ray_actor_options"].get("num_gpus", 0)}
        assert any(fits(need, g) for g in groups), (d["name"], need, groups)


def quantity(value) -> float:
    """A Kubernetes CPU quantity ("500m", "2", 2) as a number of CPUs."""
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def group_resources(group: dict) -> dict:
    """What Ray counts on one pod of a group: num-cpus / num-gpus / resources from rayStartParams, else the ray
    container's limits (KubeRay's rule)."""
    params = group.get("rayStartParams") or {}
    limits = group["template"]["spec"]["containers"][0].get("resources", {}).get("limits", {})
    out = {"CPU": quantity(params.get("num-cpus", limits.get("cpu", 0))),
           "GPU": float(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))}
    if "resources" in params:  # KubeRay's form: '"{\"t4\": 1}"'
        out.update(json.loads(params["resources"].strip("'\"").replace('\\"', '"')))
    return out


def fits(need: dict, pod: dict) -> bool:
    return all(v <= pod.get(k, 0) + 1e-9 for k, v in need.items() if v)


def test_the_rayjob_groups_hold_what_the_backfill_plan_asks_for():
    """The entrypoint is the documented `python -m jobs.backfill ...`, parsed by the backfill's own parser; the plan
    it makes for the cluster at full size (jobs/plan.py) is the split layout with GPU actors; each actor fits a T4
    pod and the actors the T4 group's pods, decode tasks and the listing fit a CPU pod, and the head runs nothing."""
    from jobs.backfill import parse_args
    from jobs.plan import plan_resources

    job = ray_manifest("RayJob")
    check_plan(job, parse_args, plan_resources)


def check_plan(job: dict, parse_args, plan_resources) -> None:
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[:3] == ["python", "-m", "jobs.backfill"], words
    args = parse_args(words[3:])
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: (group_resources(g), g["maxReplicas"]) for g in cluster["workerGroupSpecs"]}
    total: dict = {}
    for pod, count in groups.values():
        for k, v in pod.items():
            total[k] = total.get(k, 0) + v * count
    res = plan_resources(args, total)
    assert res.layout == "split" and res.actor_gpus > 0, res
    actor = {"CPU": res.actor_cpus, "GPU": res.actor_gpus, **res.actor_resources}
    decode = {"CPU": res.decode_cpus, **res.decode_resources}
    room = sum(int(min(pod[k] // v for k, v in actor.items() if v)) * count
               for pod, count in groups.values() if fits(actor, pod))
    assert res.actors <= room, f"{res.actors} actors, room for {room} on the groups {groups}"
    assert any(fits(decode, pod) and fits({"CPU": 1}, pod) for pod, _ in groups.values()), groups  # + the listing


def test_a_rayjob_whose_gpu_group_has_no_gpu_fails_the_plan_check():
    from jobs.backfill import parse_args
    from jobs.plan import plan_resources

    job = copy.deepcopy(ray_manifest("RayJob"))
    gpu = next(g for g in job["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu-t4")
    for part in ("requests", "limits"):
        gpu["template"]["spec"]["containers"][0]["resources"][part].pop("nvidia.com/gpu")
    assert problems(job) == []  # valid for KubeRay, yet no actor of the plan could ever be placed
    with pytest.raises(AssertionError, match="actors, room for 0"):
        check_plan(job, parse_args, plan_resources)


def test_versions_match_and_no_secret_is_in_a_manifest():
    pinned = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                  if d.startswith("ray["))
    version = pinned.split("==")[1]
    assert f"rayproject/ray:{version}-" in (ROOT / "deploy" / "Dockerfile").read_text()
    secret_name = re.compile(r"(TOKEN|SECRET|PASSWORD|ACCESS_KEY|BROKER_URL|STORE_URL)", re.I)
    for name, doc in manifests().items():
        if doc["kind"] not in RAY_KINDS:
            continue
        spec = doc["spec"].get("rayClusterSpec") or doc["spec"]["rayClusterConfig"]
        assert spec["rayVersion"] == version, name
        assert spec["authOptions"] == {"mode": "token"}, name  # Ray's token authentication, the token KubeRay's
        pods = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
        for pod in pods:
            tpl = pod["template"]["spec"]
            assert tpl["serviceAccountName"] == "framepipe-ray", name  # AWS access: the account's role
            for c in tpl["containers"] + tpl.get("initContainers", []):
                for env in c.get("env", []):
                    assert not (secret_name.search(env["name"]) and "value" in env), (name, env["name"])
                assert "AWS_SECRET_ACCESS_KEY" not in json.dumps(c)
                if c in tpl["containers"]:
                    assert {"name": "FRAMEPIPE_MODELS", "value": "/models/buffalo_l"} in c["env"], name
    # the service reads its secrets from the Secret, whose example holds placeholders only
    service = ray_manifest("RayService")
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "framepipe-serve"}} in head["envFrom"]
