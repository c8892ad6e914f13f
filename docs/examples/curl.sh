#!/bin/sh
# One provider API call through authstamp's Envoy, as the app, for one user:
# the filter stamps the user's token and the provider's answer comes back.
# authstamp's own refusals carry x-authstamp-error and a JSON body.
set -eu
envoy=${AUTHSTAMP_ENVOY_URL:-http://127.0.0.1:10000}
provider=${AUTHSTAMP_PROVIDER:-demo}
user=${AUTHSTAMP_USER:-alice}
path=${AUTHSTAMP_PATH:-/api/hello}
: "${AUTHSTAMP_APP_ID:?the app id}" "${AUTHSTAMP_APP_KEY:?the app key}"

headers=$(mktemp)
trap 'rm -f "$headers"' EXIT
body=$(curl -sS -D "$headers" "$envoy$path" \
  -H "x-authstamp-provider: $provider" \
  -H "x-authstamp-user: $user" \
  -H "x-authstamp-app: $AUTHSTAMP_APP_ID" \
  -H "x-authstamp-app-key: $AUTHSTAMP_APP_KEY")
code=$(sed -n 's/^x-authstamp-error: *\([a-z_]*\).*/\1/Ip' "$headers")
if [ -n "$code" ]; then
  echo "authstamp refused the call: $code: $body" >&2
  exit 1
fi
echo "$body"
