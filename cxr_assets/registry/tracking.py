"""MLflow set-up: tracking store, experiment, and the model registry helpers.

Embedded default: `sqlite:///mlflow.db` and `mlartifacts/` under the project root; a server
URI (http://..., postgresql://...) from params works unchanged.
"""

from __future__ import annotations

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


def configure_mlflow(params: Params, paths: ProjectPaths):
    """Point MLflow at the configured store; create the experiment once. Returns a client."""
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(params, paths)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = params.registry.experiment
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
