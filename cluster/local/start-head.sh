#!/usr/bin/env bash
# Start a local Ray head for `ray job submit`, with token authentication and the dashboard on loopback.
#   cluster/local/start-head.sh            # then: ray job submit --address http://127.0.0.1:8265 ...
#   ray stop                               # when done
set -euo pipefail
export RAY_AUTH_MODE=token
if [ -z "${RAY_AUTH_TOKEN:-}" ] && [ ! -s "$HOME/.ray/auth_token" ]; then
  ray get-auth-token --generate >/dev/null   # writes ~/.ray/auth_token, read by `ray job submit`
fi
ray start --head --dashboard-host=127.0.0.1 --num-cpus="${NUM_CPUS:-$(nproc)}" --disable-usage-stats
echo "submit with: RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . --runtime-env cluster/runtime_env.yaml -- python -m glmscore ..."
