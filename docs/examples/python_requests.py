"""One provider API call through authstamp's Envoy with requests, as the app,
for one user: the filter stamps the user's token, the provider answers."""

import os
import sys

import requests

envoy = os.environ.get("AUTHSTAMP_ENVOY_URL", "http://127.0.0.1:10000")
path = os.environ.get("AUTHSTAMP_PATH", "/api/hello")

response = requests.get(
    envoy + path,
    headers={
        "x-authstamp-provider": os.environ.get("AUTHSTAMP_PROVIDER", "demo"),
        "x-authstamp-user": os.environ.get("AUTHSTAMP_USER", "alice"),
        "x-authstamp-app": os.environ["AUTHSTAMP_APP_ID"],
        "x-authstamp-app-key": os.environ["AUTHSTAMP_APP_KEY"],
    },
    timeout=10,
)
code = response.headers.get("x-authstamp-error")
if code:
    # authstamp's own refusal: {"error": code, "message": ...}
    print(f"authstamp refused the call: {code}: {response.json()['message']}", file=sys.stderr)
    sys.exit(1)
print(response.text)
