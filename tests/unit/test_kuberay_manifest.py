"""deploy/kuberay/rayservice.yaml: generated from the project's config, valid for the app, and it fits its pods.

No Kubernetes cluster is reachable where these tests run: they read the
manifest as KubeRay and the app would and check what can be checked offline.
- `serveConfigV2` is configs/serve_gpu.yaml with deploy/kuberay/serve_overrides.yaml
  merged over it, exactly (deploy/kuberay/render.py rewrites it).
- It validates against Ray Serve's schema and the app's own settings (ServiceArgs,
  its model profile, presets and tiers).
- Its replicas pack onto the GPUs and CPUs the pods declare, the first-fit way
  the GPU configs' test packs cards.
- The stores, the volume and the Secrets it names are the ones the manifest
  creates or mounts; the image's Ray is pyproject's.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import json
import re
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from ray.serve.schema import ServeDeploySchema

from serve_app.artifacts import S3ArtifactStore, open_artifact_store
from serve_app.config import ServiceArgs
from serve_app.paths import PROJECT_ROOT
from serve_app.serve_config import check_app, gpu_placement

KUBERAY = PROJECT_ROOT / "deploy" / "kuberay"
MANIFEST = KUBERAY / "rayservice.yaml"
DOCKERFILE = PROJECT_ROOT / "deploy" / "Dockerfile"
S3_SECRET = "wan-serve-s3"


def _render_module():
    spec = importlib.util.spec_from_file_location("kuberay_render", KUBERAY / "render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


render = _render_module()


def _docs(text: str | None = None) -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text() if text is None else text) if d]


def _one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name or ''}: {len(found)} in the manifest"
    return found[0]


def _serve_config(rayservice: dict) -> dict:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def _groups(rayservice: dict) -> list[dict]:
    """The head group and every worker group, each with `replicas` (1 for the head)."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    return [{"groupName": "head", "replicas": 1, **cluster["headGroupSpec"]}, *cluster["workerGroupSpecs"]]


def _ray_container(group: dict) -> dict:
    # KubeRay runs Ray in the pod's first container.
    return group["template"]["spec"]["containers"][0]


def _quantity(value: str | int | float) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _resources(group: dict) -> tuple[float, float, dict[str, float]]:
    """(CPUs, GPUs, custom resources) Ray sees on one pod of `group`, as KubeRay derives them."""
    params = group.get("rayStartParams") or {}
    limits = _ray_container(group).get("resources", {}).get("limits", {})
    cpus = _quantity(params.get("num-cpus", limits.get("cpu", 0)))
    gpus = _quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
    custom = json.loads(params["resources"].strip("'\"").replace('\\"', '"')) if "resources" in params else {}
    return cpus, gpus, custom


def packing_problems(rayservice: dict) -> list[str]:
    """Why the app's replicas (each stage at its most) would not all find a place on the declared pods."""
    problems = []
    groups = _groups(rayservice)
    for group in groups[1:]:
        if not group.get("minReplicas", 0) <= group["replicas"] <= group.get("maxReplicas", group["replicas"]):
            problems.append(f"worker group {group['groupName']}: replicas outside [minReplicas, maxReplicas]")
    declared = [(_resources(g), g["replicas"]) for g in groups]
    cards = sum(int(gpus) * n for (_, gpus, _), n in declared)
    gpu_cpus = sum(cpus * n for (cpus, gpus, _), n in declared if gpus > 0)
    all_cpus = sum(cpus * n for (cpus, _, _), n in declared)
    for app in _serve_config(rayservice)["applications"]:
        # The options Ray will run: `deployments:` entries over the app's args, as Ray merges them.
        check = check_app(app)
        problems += [f"{app['name']}: {problem}" for problem in check.problems]
        by_name = check.stages
        if any(options.num_gpus > 1 for options in by_name.values()):
            problems.append(f"{app['name']}: a replica over one GPU needs a node-level check this test lacks")
        placement = gpu_placement(by_name, cards)
        if placement is None:
            shares = {name: (o.num_gpus, o.max_replicas) for name, o in by_name.items() if o.num_gpus > 0}
            problems.append(f"{app['name']}: {shares} does not fit {cards} GPU(s)")
        elif any(card.count("denoiser") > 1 for card in placement):
            problems.append(f"{app['name']}: two denoisers share a card: {placement}")
        stages = list(by_name.values())
        need_gpu_cpus = sum(s.num_cpus * s.max_replicas for s in stages if s.num_gpus > 0)
        need_cpus = sum(s.num_cpus * s.max_replicas for s in stages)
        if need_gpu_cpus > gpu_cpus:
            problems.append(f"{app['name']}: GPU replicas need {need_gpu_cpus} CPUs, GPU pods have {gpu_cpus}")
        if need_cpus > all_cpus:
            problems.append(f"{app['name']}: replicas need {need_cpus} CPUs, pods have {all_cpus}")
        for stage in stages:
            missing = set(stage.resources) - {k for (_, _, custom), _ in declared for k in custom}
            if missing:
                problems.append(f"{app['name']}: no pod declares resources {sorted(missing)}")
    return problems


def test_the_committed_serve_config_is_the_rendered_one():
    text = MANIFEST.read_text()
    assert render.with_block(text, render.serve_config()) == text, "run: python deploy/kuberay/render.py"
    assert render.main(["--check"]) == 0


def test_the_render_check_sees_a_change_in_the_source_config(tmp_path):
    source = tmp_path / "serve_gpu.yaml"
    source.write_text(render.SOURCE.read_text().replace("max_queue_per_replica: 16", "max_queue_per_replica: 17"))
    text = MANIFEST.read_text()
    changed = render.with_block(text, render.serve_config(source=source))
    assert changed != text and "max_queue_per_replica: 17" in changed
    # Only the block changes: the hand-written rest of the manifest is kept.
    assert [d for d in _docs(changed) if d["kind"] != "RayService"] == [d for d in _docs() if d["kind"] != "RayService"]


def test_overrides_merge_by_key_and_applications_by_name():
    base = {
        "a": 1,
        "http_options": {"host": "127.0.0.1", "port": 8000},
        "applications": [{"name": "x", "args": {"k": 1, "j": 2}}],
    }
    patch = {"http_options": {"host": "0.0.0.0"}, "applications": {"x": {"args": {"k": 5}}}}
    assert render.merge(base, patch) == {
        "a": 1,
        "http_options": {"host": "0.0.0.0", "port": 8000},
        "applications": [{"name": "x", "args": {"k": 5, "j": 2}}],
    }
    with pytest.raises(ValueError, match=r"no item named \['y'\]"):
        render.merge(base, {"applications": {"y": {}}})


def test_serve_config_v2_validates_against_ray_serve_and_the_app_s_settings():
    config = _serve_config(_one(_docs(), "RayService"))
    schema = ServeDeploySchema.model_validate(config)
    assert schema.proxy_location.value == "EveryNode"  # KubeRay's serve Service targets every pod's proxy
    assert schema.http_options.host == "0.0.0.0"
    for app in schema.applications:
        module, _, attr = app.import_path.partition(":")
        assert callable(getattr(importlib.import_module(module), attr))
        args = ServiceArgs.model_validate(app.args)
        assert args.model_dump(exclude_unset=True) == app.args  # every key lands in a field
        args.model_profile(), args.preset_catalog(), args.tier_table()
        for stage in args.stages.deployed():
            args.deployment_options(stage)
        if args.stages.queue_depth_look_back_s() is not None:
            assert app.autoscaling_policy is not None, "queue_depth needs the application-level policy"


def test_serve_config_v2_packs_onto_the_declared_gpus_and_cpus():
    rayservice = _one(_docs(), "RayService")
    assert packing_problems(rayservice) == []
    # It is the GPU workers that hold the cards, not the head.
    head, *workers = _groups(rayservice)
    assert _resources(head)[1] == 0 and all(_resources(w)[1] >= 1 for w in workers)


def _no_gpu_worker(rayservice: dict) -> None:
    rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0].update(replicas=0, minReplicas=0)


def _four_cpu_worker(rayservice: dict) -> None:
    worker = rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    _ray_container(worker)["resources"]["limits"]["cpu"] = "4"


def _denoiser_at_nine_tenths(rayservice: dict) -> None:
    spec = rayservice["spec"]
    spec["serveConfigV2"] = spec["serveConfigV2"].replace("num_gpus: 0.5", "num_gpus: 0.9")


@pytest.mark.parametrize(
    "break_it, problem",
    [
        (_no_gpu_worker, "does not fit 0 GPU"),
        (_four_cpu_worker, "GPU replicas need"),
        (_denoiser_at_nine_tenths, "does not fit 1 GPU"),
    ],
)
def test_the_packing_check_fails_a_manifest_that_does_not_fit(break_it, problem):
    rayservice = copy.deepcopy(_one(_docs(), "RayService"))
    break_it(rayservice)
    assert any(problem in p for p in packing_problems(rayservice)), packing_problems(rayservice)


def test_the_stores_are_the_manifest_s_redis_and_an_s3_bucket_whose_credentials_come_from_a_secret(tmp_path):
    docs = _docs()
    rayservice = _one(docs, "RayService")
    redis = _one(docs, "Service", "wan-serve-redis")
    redis_address = f"{redis['metadata']['name']}:{redis['spec']['ports'][0]['port']}"
    assert rayservice["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]["redisAddress"] == redis_address
    for app in _serve_config(rayservice)["applications"]:
        args = ServiceArgs.model_validate(app["args"])
        stores = [urlsplit(args.job_store), urlsplit(args.cache_store)]
        assert [(u.scheme, u.netloc) for u in stores] == [("redis", redis_address)] * 2
        # Apart from each other and from db 0, where Ray's GCS keeps its keys.
        assert len({u.path for u in stores}) == 2 and "/0" not in {u.path for u in stores}
        store = open_artifact_store(args.artifact_store, tmp_path, client=object())
        assert isinstance(store, S3ArtifactStore) and store.bucket
    for group in _groups(rayservice):
        secrets = [e["secretRef"] for e in _ray_container(group).get("envFrom", []) if "secretRef" in e]
        assert {"name": S3_SECRET} in secrets, f"{group['groupName']}: no S3 credentials"


def test_checkpoints_and_compile_caches_are_on_a_shared_volume_in_every_ray_pod():
    docs = _docs()
    rayservice = _one(docs, "RayService")
    for app in _serve_config(rayservice)["applications"]:
        args = ServiceArgs.model_validate(app["args"])
        dirs = [Path(args.checkpoint_dir), Path(args.compile_cache_dir), Path(args.data_dir)]
        for group in _groups(rayservice):
            spec = group["template"]["spec"]
            claims = {
                v["name"]: v["persistentVolumeClaim"]["claimName"]
                for v in spec["volumes"]
                if "persistentVolumeClaim" in v
            }
            mounts = {
                Path(m["mountPath"]): claims[m["name"]]
                for m in _ray_container(group)["volumeMounts"]
                if m["name"] in claims
            }
            for directory in dirs:
                claim = next((c for path, c in mounts.items() if directory.is_relative_to(path)), None)
                assert claim, f"{group['groupName']}: {directory} is on no volume"
                # Shared between pods: a rerun elsewhere resumes from the lost pod's checkpoint.
                assert _one(docs, "PersistentVolumeClaim", claim)["spec"]["accessModes"] == ["ReadWriteMany"]


def test_every_ray_pod_exposes_the_serve_port_and_runs_one_image():
    rayservice = _one(_docs(), "RayService")
    port = _serve_config(rayservice)["http_options"]["port"]
    images = set()
    for group in _groups(rayservice):
        container = _ray_container(group)
        assert port in [p["containerPort"] for p in container["ports"]], group["groupName"]
        images.add(container["image"])
    assert len(images) == 1, images


def test_the_image_s_ray_is_pyproject_s_and_the_manifest_s():
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    (ray_pin,) = [d for d in pyproject["dependencies"] if re.match(r"ray\[", d)]
    dockerfile = DOCKERFILE.read_text()
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)$", dockerfile, re.M).group(1)
    base = re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py(\d)(\d+)-gpu$", dockerfile, re.M)
    assert base, "the image is built on Ray's official GPU image, at RAY_VERSION"
    assert Version(ray_version) in SpecifierSet(ray_pin.split("]", 1)[1])
    assert Version(f"{base.group(1)}.{base.group(2)}") in SpecifierSet(pyproject["requires-python"])
    assert _one(_docs(), "RayService")["spec"]["rayClusterConfig"]["rayVersion"] == ray_version
