#!/bin/sh
# Run once by the postgres image on an empty data volume (/docker-entrypoint-initdb.d/):
# one role and one database each for Dagster and MLflow. Passwords come from the environment
# (infra/.env) and are passed as psql variables, so any character is safe.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v dagster_pw="$DAGSTER_PG_PASSWORD" -v mlflow_pw="$MLFLOW_PG_PASSWORD" <<'SQL'
CREATE ROLE dagster LOGIN PASSWORD :'dagster_pw';
CREATE DATABASE dagster OWNER dagster;
CREATE ROLE mlflow LOGIN PASSWORD :'mlflow_pw';
CREATE DATABASE mlflow OWNER mlflow;
SQL
