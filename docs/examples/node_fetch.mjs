// One provider API call through authstamp's Envoy with fetch (Node 18+), as
// the app, for one user: the filter stamps the user's token, the provider answers.
const env = process.env;
const envoy = env.AUTHSTAMP_ENVOY_URL ?? "http://127.0.0.1:10000";
const path = env.AUTHSTAMP_PATH ?? "/api/hello";

const response = await fetch(envoy + path, {
  headers: {
    "x-authstamp-provider": env.AUTHSTAMP_PROVIDER ?? "demo",
    "x-authstamp-user": env.AUTHSTAMP_USER ?? "alice",
    "x-authstamp-app": env.AUTHSTAMP_APP_ID,
    "x-authstamp-app-key": env.AUTHSTAMP_APP_KEY,
  },
  signal: AbortSignal.timeout(10_000),
});
const code = response.headers.get("x-authstamp-error");
if (code) {
  // authstamp's own refusal: {"error": code, "message": ...}
  const { message } = await response.json();
  console.error(`authstamp refused the call: ${code}: ${message}`);
  process.exit(1);
}
console.log(await response.text());
