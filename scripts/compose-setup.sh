#!/usr/bin/env bash
# One-shot setup of the docker-compose trial (the `setup` service): creates
# the demo app once, points its provider "demo" at the stand-in provider,
# and prints the commands to try, as `make run` does. Every value can be
# overridden by the environment (the deployment tests run this script
# outside Docker).
set -euo pipefail

DATA_DIR=${AUTHSTAMP_DATA_DIR:-/data}
SECRET_FILE=${DEMO_CLIENT_SECRET_FILE:-/secrets/demo-client-secret}
# The browser reaches the provider's consent page through the published
# port; the token service and Envoy reach it by its compose service name.
PROVIDER_BROWSER_URL=${DEMO_PROVIDER_BROWSER_URL:-http://localhost:9100}
PROVIDER_URL=${DEMO_PROVIDER_URL:-http://standin:9100}
SERVICE_URL=${DEMO_SERVICE_URL:-http://localhost:8080}
ENVOY_URL=${DEMO_ENVOY_URL:-http://localhost:10000}
PROVIDER=demo

app_file=$DATA_DIR/demo-app.json
if [ ! -s "$app_file" ]; then
  (umask 077 && authstamp app create --local --data-dir "$DATA_DIR" --name demo >"$app_file.tmp")
  mv "$app_file.tmp" "$app_file"
fi
app_id=$(sed -n 's/.*"app_id": *"\([^"]*\)".*/\1/p' "$app_file")
app_key=$(sed -n 's/.*"app_key": *"\([^"]*\)".*/\1/p' "$app_file")

authstamp provider set --local --data-dir "$DATA_DIR" \
  --app "$app_id" --provider "$PROVIDER" --client-id demo-client \
  --client-secret-file "$SECRET_FILE" \
  --authorize-url "$PROVIDER_BROWSER_URL/oauth/authorize" \
  --token-url "$PROVIDER_URL/oauth/token" \
  --api-base-url "$PROVIDER_URL" --scope read --scope write >/dev/null

cat <<EOT
authstamp demo is set up: app $app_id, provider "$PROVIDER" (the stand-in).

1. Connect the demo user "alice": create a connect session, open its
   connect_url in your browser and approve.

   curl -s -X POST $SERVICE_URL/v1/connect-sessions \\
     -H 'x-authstamp-app: $app_id' -H 'x-authstamp-app-key: $app_key' \\
     -H 'content-type: application/json' -d '{"provider":"$PROVIDER","user":"alice"}'

2. Call the provider's API through Envoy; the filter stamps alice's token:

   curl -s $ENVOY_URL/api/hello?from=authstamp \\
     -H 'x-authstamp-provider: $PROVIDER' -H 'x-authstamp-user: alice' \\
     -H 'x-authstamp-app: $app_id' -H 'x-authstamp-app-key: $app_key'
EOT
