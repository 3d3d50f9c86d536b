#!/bin/sh
# Runs once, when the postgres container initialises its data directory: gpuplane's own role, which is no
# superuser and owns only its database (the services connect as it; POSTGRES_USER stays the superuser).
set -eu
: "${GPUPLANE_DB_PASSWORD:?set GPUPLANE_DB_PASSWORD (gpuplane compose-env writes it to .env)}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
    --set=password="$GPUPLANE_DB_PASSWORD" <<'SQL'
CREATE ROLE gpuplane LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD :'password';
CREATE DATABASE gpuplane OWNER gpuplane;
REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;
\connect gpuplane
ALTER SCHEMA public OWNER TO gpuplane;
SQL
