-- Creates one database per service of the lora-pipeline stack.
--
-- The postgres image runs every *.sql file in /docker-entrypoint-initdb.d/ once,
-- as $POSTGRES_USER, and ONLY when the data volume is empty (first start). If you
-- change this file after the first start, either create the databases by hand
-- (docker compose exec postgres psql -U "$POSTGRES_USER" -c 'CREATE DATABASE ...')
-- or drop the volume (docker compose down -v -- this deletes all data).
--
-- The databases are owned by $POSTGRES_USER, which every service connects as.

CREATE DATABASE labelstudio;  -- Label Studio (Django): projects, tasks, annotations, users
CREATE DATABASE prefect;      -- Prefect server: flows, deployments, runs, work pools
CREATE DATABASE mlflow;       -- MLflow tracking + model registry (artifacts live on a volume)
