#!/usr/bin/env bash
# Local trial: the stand-in provider (127.0.0.1:9100), the token service in
# local mode on SQLite (app API 127.0.0.1:8080, filter API 127.0.0.1:8081),
# and Envoy with the filter
# (127.0.0.1:10000, admin 9901). Ctrl-C stops everything started here.
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_BIN=${ENVOY_BIN:-$(command -v envoy || echo .venv/bin/envoy)}
DATA_DIR=${AUTHSTAMP_DATA_DIR:-authstamp-data}
RUN_DIR=.run
PROVIDER=demo
PROVIDER_URL=http://127.0.0.1:9100
SERVICE_URL=http://127.0.0.1:8080
ENVOY_URL=http://127.0.0.1:10000
AUTHSTAMP=target/debug/authstamp
STANDIN=target/debug/authstamp-standin

# The data dir holds the vault and its key: owner only (the service warns
# about a wider one). chmod also fixes dirs made 0755 by older versions.
(umask 077 && mkdir -p "$RUN_DIR" "$DATA_DIR")
chmod 700 "$RUN_DIR" "$DATA_DIR"
for port in 9100 8080 8081 10000 9901; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use: stop whatever listens there first" >&2
    exit 1
  fi
done

pids=()
stop() {
  trap - INT TERM EXIT
  echo
  echo "stopping: ${pids[*]:-nothing}"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

wait_http() { # url name
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$2 did not come up; see $RUN_DIR/$2.log" >&2
  exit 1
}

# The stand-in provider's client secret is new every run; the provider config
# below is updated with it each time.
client_secret=$(head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
AUTHSTAMP_STANDIN_CLIENT_SECRET=$client_secret \
  "$STANDIN" --listen 127.0.0.1:9100 --client-id demo-client >"$RUN_DIR/standin.log" 2>&1 &
pids+=($!)

# The filter credential is the one local mode keeps in the data dir.
env -u AUTHSTAMP_FILTER_TOKEN -u AUTHSTAMP_FILTER_TOKEN_FILE \
  "$AUTHSTAMP" serve --local --data-dir "$DATA_DIR" --listen 127.0.0.1:8080 \
  --filter-listen 127.0.0.1:8081 >"$RUN_DIR/token-service.log" 2>&1 &
pids+=($!)
wait_http "$PROVIDER_URL/healthz" standin
wait_http "$SERVICE_URL/healthz" token-service
grep -h "local mode" "$RUN_DIR/token-service.log" || true

app_file=$DATA_DIR/demo-app.json
if [ ! -s "$app_file" ]; then
  (umask 077 && "$AUTHSTAMP" app create --local --data-dir "$DATA_DIR" --name demo >"$app_file")
fi
app_id=$(sed -n 's/.*"app_id": *"\([^"]*\)".*/\1/p' "$app_file")
app_key=$(sed -n 's/.*"app_key": *"\([^"]*\)".*/\1/p' "$app_file")

DEMO_CLIENT_SECRET=$client_secret "$AUTHSTAMP" provider set --local --data-dir "$DATA_DIR" \
  --app "$app_id" --provider "$PROVIDER" --client-id demo-client --client-secret-env DEMO_CLIENT_SECRET \
  --authorize-url "$PROVIDER_URL/oauth/authorize" --token-url "$PROVIDER_URL/oauth/token" \
  --api-base-url "$PROVIDER_URL" --scope read --scope write >/dev/null

# The filter credential (local mode wrote it) goes to Envoy only, through
# its environment: never to the app, never into envoy.yaml.
# FILTER=native (make run FILTER=native): the native module's bootstrap.
BOOTSTRAP=envoy/envoy.yaml
[ "${FILTER:-wasm}" = native ] && BOOTSTRAP=envoy/envoy-native.yaml
AUTHSTAMP_FILTER_TOKEN=$(cat "$DATA_DIR/filter.token") \
  "$ENVOY_BIN" -c "$BOOTSTRAP" --disable-hot-restart -l info >"$RUN_DIR/envoy.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:9901/ready" envoy

cat <<EOT

authstamp is running (logs in $RUN_DIR/):
  stand-in provider  $PROVIDER_URL
  token service      $SERVICE_URL   (data: $DATA_DIR, app: $app_file)
  Envoy              $ENVOY_URL  (admin http://127.0.0.1:9901)

1. Connect the demo user "alice" (opens a connect session; open connect_url in a browser and approve):

   curl -s -X POST $SERVICE_URL/v1/connect-sessions \\
     -H 'x-authstamp-app: $app_id' -H 'x-authstamp-app-key: $app_key' \\
     -H 'content-type: application/json' -d '{"provider":"$PROVIDER","user":"alice"}'

   or walk the same flow without a browser:  scripts/demo-connect.sh alice

2. Call the provider's API through Envoy; the filter stamps alice's token:

   curl -s $ENVOY_URL/api/hello?from=authstamp \\
     -H 'x-authstamp-provider: $PROVIDER' -H 'x-authstamp-user: alice' \\
     -H 'x-authstamp-app: $app_id' -H 'x-authstamp-app-key: $app_key'

Ctrl-C stops everything.
EOT
wait -n "${pids[@]}"
echo "a process exited; see $RUN_DIR/*.log" >&2
