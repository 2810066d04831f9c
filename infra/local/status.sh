#!/usr/bin/env bash
# Thin wrapper over `lexforge status` for the embedded local stack (Prefect, MLflow, Ray head on 127.0.0.1).
# Ports and state dir come from the usual env vars (LEXFORGE_HOME, LEXFORGE_PREFECT_PORT, LEXFORGE_MLFLOW_PORT,
# LEXFORGE_RAY_PORT, LEXFORGE_RAY_DASHBOARD_PORT, LEXFORGE_RAY_CLIENT_PORT, LEXFORGE_RAY_AGENT_PORT); extra
# arguments are passed through.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=_lexforge.sh
. "$(dirname "$0")/_lexforge.sh"
export DO_NOT_TRACK=1 RAY_USAGE_STATS_ENABLED=0 PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_ENABLE_TELEMETRY=false
exec "$LEXFORGE" status "$@"
