"""The Kubernetes configuration in deploy/k8s, checked by loading it with Dagster and dagster-k8s (no cluster).

- the run config's ``execution: config:`` is valid for ``k8s_job_executor`` and for the plan's
  jobs once the code location selects it (``MEDTRINITY_EXECUTOR=k8s``), also as defaults from
  ``MEDTRINITY_K8S_EXECUTOR_CONFIG``;
- ``dagster.yaml`` is a valid instance configuration whose run launcher config is valid for the
  ``K8sRunLauncher`` (and storage for PostgreSQL);
- the GPU assets' ``dagster-k8s/config`` tags parse as dagster-k8s container config with one
  ``nvidia.com/gpu``; the step pods built from the executor config, the tags and the per-op
  overrides (the dagster-k8s merge, as ``K8sStepHandler`` does it) request the GPU and land on
  GPU nodes only for GPU steps.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration
pytest.importorskip("dagster_k8s", reason="dagster-k8s is not installed (the production extra)")

import dagster as dg  # noqa: E402
from dagster._config import process_config, validate_config  # noqa: E402
from dagster_k8s import k8s_job_executor  # noqa: E402
from dagster_k8s.container_context import K8sContainerContext  # noqa: E402
from dagster_k8s.job import (  # noqa: E402
    UserDefinedDagsterK8sConfig,
    construct_dagster_k8s_job,
    get_user_defined_k8s_config,
)

from medtrinity_assets.defs.accelerators import ACCELERATOR_TAG, K8S_CONFIG_TAG  # noqa: E402
from medtrinity_assets.defs.executors import (  # noqa: E402
    EXECUTOR_ENV,
    K8S_CONFIG_ENV,
    select_executor,
)
from medtrinity_assets_tests.executor_config import resolved_executor_config  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = REPO_ROOT / "deploy" / "k8s"
RUN_CONFIG = K8S_DIR / "run_config.yaml"
INSTANCE_YAML = K8S_DIR / "dagster.yaml"
SETTINGS_YAML = K8S_DIR / "settings.yaml"
GPU = "nvidia.com/gpu"


def _yaml(path: Path):
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _executor_config() -> dict:
    return _yaml(RUN_CONFIG)["execution"]["config"]


def _check(config_type, value, what: str):
    result = validate_config(config_type, value)
    assert result.success, f"{what}: " + "; ".join(e.message for e in result.errors)
    return result.value


@pytest.fixture(scope="module")
def k8s_defs():
    """The code location as the pods load it (``MEDTRINITY_EXECUTOR=k8s``)."""
    from medtrinity_assets.definitions import build_definitions

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(EXECUTOR_ENV, "k8s")
        mp.delenv(K8S_CONFIG_ENV, raising=False)
        return build_definitions()


def _gpu_ops(defs: dg.Definitions) -> dict[str, dict[str, str]]:
    """op name -> op tags (as Dagster stores them: strings) of every GPU-capable asset."""
    out = {}
    for a in defs.assets:
        if isinstance(a, dg.AssetsDefinition) and a.is_executable and a.op.tags.get(ACCELERATOR_TAG) == "gpu":
            out[a.op.name] = dict(a.op.tags)
    return out


def test_files_parse():
    for path in (RUN_CONFIG, INSTANCE_YAML):
        assert isinstance(_yaml(path), dict), path
    docs = list(yaml.safe_load_all(SETTINGS_YAML.read_text(encoding="utf-8")))
    assert {d["kind"] for d in docs} == {"ConfigMap", "PersistentVolumeClaim"}


def test_run_config_validates_against_the_k8s_job_executor_schema():
    config = _executor_config()
    _check(k8s_job_executor.config_schema.config_type, config, "k8s_job_executor")
    processed = process_config(k8s_job_executor.config_schema.config_type, config)
    assert processed.success
    assert processed.value["job_namespace"] == "medtrinity"
    assert processed.value["job_image"] and "medtrinity-env" in processed.value["env_secrets"]
    assert "MEDTRINITY_EXECUTOR=k8s" in processed.value["env_vars"]


def test_plan_jobs_take_the_run_config_under_the_k8s_executor(k8s_defs):
    run_config = _yaml(RUN_CONFIG)
    for name in ("ingest_job", "shared_models_job", "enrichment_job", "export_job"):
        job = k8s_defs.resolve_job_def(name)
        assert job.executor_def.name == "k8s", name
        dg.validate_run_config(job, run_config)
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.validate_run_config(
            k8s_defs.resolve_job_def("ingest_job"), {"execution": {"config": {"job_namespce": "typo"}}}
        )


def test_run_config_file_as_executor_defaults():
    """``MEDTRINITY_K8S_EXECUTOR_CONFIG``: the file's values become the executor's defaults; a
    run's own ``execution: config:`` still overrides one of them."""
    env = {EXECUTOR_ENV: "k8s", K8S_CONFIG_ENV: str(RUN_CONFIG)}
    executor = select_executor(env)
    assert executor is not None and executor.name == "k8s"
    defaults = resolved_executor_config(executor, {})
    expected = process_config(k8s_job_executor.config_schema.config_type, _executor_config()).value
    assert defaults == expected
    override = resolved_executor_config(executor, {"job_namespace": "medtrinity-staging"})
    assert override["job_namespace"] == "medtrinity-staging"
    assert override["per_step_k8s_config"] == expected["per_step_k8s_config"]


def test_instance_yaml_validates_with_the_k8s_run_launcher():
    from dagster._core.instance.config import dagster_instance_config
    from dagster_k8s import K8sRunLauncher

    config, custom_class = dagster_instance_config(str(K8S_DIR), "dagster.yaml")
    assert custom_class is None
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    _check(K8sRunLauncher.config_type(), launcher["config"], "K8sRunLauncher")
    dagster_postgres = pytest.importorskip("dagster_postgres")
    _check(dagster_postgres.DagsterPostgresStorage.config_type(), config["storage"]["postgres"], "postgres")
    # The run pods get what the step pods get: the executor, secrets and shared volumes.
    executor = _executor_config()
    for key in ("job_namespace", "env_secrets", "env_vars", "volumes", "volume_mounts", "job_image"):
        assert launcher["config"][key] == executor[key], key


def test_settings_point_into_the_shared_volume():
    docs = {d["kind"]: d for d in yaml.safe_load_all(SETTINGS_YAML.read_text(encoding="utf-8"))}
    settings = json.loads(docs["ConfigMap"]["data"]["medtrinity.json"])
    config = _executor_config()
    mounts = {m["name"]: m for m in config["volume_mounts"]}
    data_mount = mounts["medtrinity-data"]["mount_path"]
    for key in ("out_dir", "registry_dir"):
        assert Path(settings[key]).is_relative_to(data_mount), (key, settings[key])
    claim = {v["name"]: v for v in config["volumes"]}["medtrinity-data"]["persistentVolumeClaim"]["claimName"]
    assert claim == docs["PersistentVolumeClaim"]["metadata"]["name"]
    assert "ReadWriteMany" in docs["PersistentVolumeClaim"]["spec"]["accessModes"]
    assert mounts["medtrinity-settings"]["mount_path"].endswith("/medtrinity.json")


def test_gpu_tags_parse_as_dagster_k8s_container_config(k8s_defs):
    gpu_ops = _gpu_ops(k8s_defs)
    assert {"expert_models", "roi_set", "knowledge_index", "caption_batch"} <= set(gpu_ops), sorted(gpu_ops)
    for op, tags in gpu_ops.items():
        assert K8S_CONFIG_TAG in tags, op
        parsed = get_user_defined_k8s_config(tags)
        assert isinstance(parsed, UserDefinedDagsterK8sConfig)
        assert parsed.container_config["resources"]["limits"][GPU] == "1", op
    # A CPU step has no GPU config at all.
    job = k8s_defs.resolve_job_def("enrichment_job")
    cpu_tags = dict(job.graph.node_named("retrieved_knowledge").definition.tags)
    assert not get_user_defined_k8s_config(cpu_tags).container_config
    # The per-op overrides (GPU nodes) name exactly the GPU-tagged ops.
    assert set(_executor_config()["per_step_k8s_config"]) == set(gpu_ops)


def _step_pod(op: str, tags: dict[str, str]):
    """The Kubernetes Job dagster-k8s builds for one step: the executor's container context, merged
    with the step's ``dagster-k8s/config`` tag and its per-op override (as ``K8sStepHandler``
    does), with the run launcher's settings from dagster.yaml."""
    config = process_config(k8s_job_executor.config_schema.config_type, _executor_config()).value
    context = K8sContainerContext(
        image_pull_policy=config.get("image_pull_policy"),
        image_pull_secrets=config.get("image_pull_secrets"),
        service_account_name=config.get("service_account_name"),
        env_config_maps=config.get("env_config_maps"),
        env_secrets=config.get("env_secrets"),
        env_vars=config.get("env_vars"),
        volume_mounts=config.get("volume_mounts"),
        volumes=config.get("volumes"),
        labels=config.get("labels"),
        namespace=config.get("job_namespace"),
        resources=config.get("resources"),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config.get("step_k8s_config", {})),
    )
    context = context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags))).merge(
        K8sContainerContext(
            run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config["per_step_k8s_config"].get(op, {}))
        )
    )
    launcher = types.SimpleNamespace(**_yaml(INSTANCE_YAML)["run_launcher"]["config"])
    launcher.postgres_password_secret = getattr(launcher, "postgres_password_secret", None)
    job_config = context.get_k8s_job_config(config.get("job_image"), launcher)
    return context, construct_dagster_k8s_job(
        job_config,
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-step-{op.replace('_', '-')}",
        user_defined_k8s_config=context.run_k8s_config,
    )


def test_step_pods_request_a_gpu_only_for_gpu_steps(k8s_defs):
    gpu_ops = _gpu_ops(k8s_defs)
    job = k8s_defs.resolve_job_def("enrichment_job")
    for node in job.graph.nodes:
        op = node.definition.name
        context, pod_job = _step_pod(op, dict(node.definition.tags))
        assert context.namespace == "medtrinity"
        spec = pod_job.spec.template.spec
        (container,) = spec.containers
        assert container.image == _executor_config()["job_image"]
        assert container.resources.requests == {"cpu": "1", "memory": "4Gi"}, op
        assert {e.secret_ref.name for e in container.env_from if e.secret_ref} >= {"medtrinity-env"}
        assert {m.mount_path for m in container.volume_mounts} >= {"/data"}
        env = {e.name: e.value for e in container.env}
        assert env.get(EXECUTOR_ENV) == "k8s"
        tolerated = {t.key for t in spec.tolerations or []}
        if op in gpu_ops:
            assert container.resources.limits == {"memory": "12Gi", GPU: "1"}, op
            assert GPU in tolerated and spec.node_selector, op
        else:
            assert GPU not in (container.resources.limits or {}), op
            assert GPU not in tolerated and not spec.node_selector, op
