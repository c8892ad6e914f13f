#!/usr/bin/env bash
# Walks the connect flow of `make run` with curl, as a browser would:
# connect session -> provider consent (approved as USER) -> callback.
set -euo pipefail
cd "$(dirname "$0")/.."
user=${1:?usage: scripts/demo-connect.sh USER}
DATA_DIR=${AUTHSTAMP_DATA_DIR:-authstamp-data}
app_file=$DATA_DIR/demo-app.json
app_id=$(sed -n 's/.*"app_id": *"\([^"]*\)".*/\1/p' "$app_file")
app_key=$(sed -n 's/.*"app_key": *"\([^"]*\)".*/\1/p' "$app_file")
jar=$(mktemp)
trap 'rm -f "$jar"' EXIT

session=$(curl -fsS -X POST http://127.0.0.1:8080/v1/connect-sessions \
  -H "x-authstamp-app: $app_id" -H "x-authstamp-app-key: $app_key" \
  -H 'content-type: application/json' -d "{\"provider\":\"demo\",\"user\":\"$user\"}")
connect_url=$(sed -n 's/.*"connect_url": *"\([^"]*\)".*/\1/p' <<<"$session")
# The connect page sets its CSRF cookie and carries the same token in its
# form; the Connect button posts the form to the same URL.
csrf=$(curl -fsS -c "$jar" -b "$jar" "$connect_url" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p')
authorize_url=$(curl -fsS -c "$jar" -b "$jar" -o /dev/null -w '%{redirect_url}' \
  -H "origin: http://127.0.0.1:8080" --data-urlencode "csrf=$csrf" "$connect_url")
# The consent form posts the authorize request back with the login and decision.
query=${authorize_url#*\?}
callback=$(curl -fsS -o /dev/null -w '%{redirect_url}' -X POST http://127.0.0.1:9100/oauth/authorize \
  --data "$query" --data-urlencode "login=$user" --data "decision=approve")
curl -fsS -c "$jar" -b "$jar" "$callback" | sed -e 's/<style>[^<]*<\/style>//g' -e 's/<title>[^<]*<\/title>//g' -e 's/<[^>]*>//g' | grep -v '^\s*$'
