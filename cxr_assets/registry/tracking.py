"""MLflow set-up: tracking store, experiment, and the model registry helpers.

Embedded default: `sqlite:///mlflow.db` and `mlartifacts/` under the project root; a server
URI (http://..., postgresql://...) from params works unchanged.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path

from cxr_assets.config import Params
from cxr_assets.paths import ProjectPaths

CHALLENGER = "challenger"
CHAMPION = "champion"


def tracking_uri(params: Params, paths: ProjectPaths) -> str:
    """Resolve a relative sqlite path against the project root (not the caller's cwd)."""
    uri = params.registry.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix):].startswith("/"):
        return prefix + str(paths.root / uri[len(prefix):])
    return uri


def artifact_location(params: Params, paths: ProjectPaths) -> str:
    location = params.registry.artifact_location
    if "://" in location:
        return location
    path = Path(location)
    return (path if path.is_absolute() else paths.root / path).as_uri()


@contextmanager
def sqlite_store_lock(uri: str) -> Iterator[None]:
    """Exclusive flock on `<db>.lock` beside a sqlite store (a no-op for other stores).

    MLflow creates and migrates a sqlite store's schema on first use; two processes doing that
    at once fail with SQL errors such as "duplicate column name: step", and two that both find
    the experiment missing collide creating it.
    """
    prefix = "sqlite:///"
    database = uri[len(prefix):] if uri.startswith(prefix) else ""
    try:
        import fcntl
    except ImportError:
        fcntl = None
    if not database or database.startswith(":memory:") or fcntl is None:
        yield
        return
    lock = Path(database).with_name(Path(database).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # released on close, or by the kernel if we die
        yield


def configure_mlflow(params: Params, paths: ProjectPaths):
    """Point MLflow at the configured store; create the experiment once. Returns a client."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(params, paths)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = params.registry.experiment
    with sqlite_store_lock(uri):  # first use creates the schema: one process at a time
        if mlflow.get_experiment_by_name(name) is None:
            mlflow.create_experiment(name, artifact_location=artifact_location(params, paths))
    mlflow.set_experiment(name)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def version_by_alias(client, model_name: str, alias: str):
    """The model version holding `alias`, or None when the alias is unset."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(model_name, alias)
    except MlflowException:
        return None


def model_uri(model_name: str, alias: str = CHAMPION) -> str:
    return f"models:/{model_name}@{alias}"


def rollback_champion(client, model_name: str, to_version: str | None = None,
                      reason: str = "manual rollback") -> tuple[str, str]:
    """Move the `champion` alias back; returns (demoted version, new champion version).

    Without `to_version` the target is the version the current champion replaced (its
    `previous_champion` tag, set at promotion). The demoted version is tagged `demoted` so the
    promotion stage does not promote it again on its own.
    """
    from datetime import datetime

    current = version_by_alias(client, model_name, CHAMPION)
    if current is None:
        raise LookupError(f"model {model_name!r} has no '{CHAMPION}' alias: nothing to roll back")
    target = to_version or current.tags.get("previous_champion")
    if not target:
        raise LookupError(f"{model_name} v{current.version} replaced no earlier champion; "
                          "name a version with --to")
    target = str(target)
    if target == str(current.version):
        raise ValueError(f"v{target} is already the champion")
    revived = client.get_model_version(model_name, target)  # raises naming a missing version
    if "demoted" in revived.tags:  # explicitly chosen again: no longer demoted
        client.delete_model_version_tag(model_name, target, "demoted")
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    client.set_model_version_tag(model_name, str(current.version), "demoted",
                                 f"{stamp}: {reason} (champion moved to v{target})")
    client.set_registered_model_alias(model_name, CHAMPION, target)
    return str(current.version), target
