//! The client examples of docs/examples (curl, Python requests, Node fetch)
//! run as a user would run them, against a real Envoy, token service and
//! stand-in provider: a connected user's call arrives stamped, and a user
//! who never connected gets authstamp's error code.

use authstamp_e2e::stack::PROVIDER;
use authstamp_e2e::{workspace_root, Stack, StackOptions};
use serde_json::Value;
use std::process::{Command, Output};

/// The examples and the command that runs each.
const EXAMPLES: [(&str, &str); 3] = [
    ("sh", "docs/examples/curl.sh"),
    ("python3", "docs/examples/python_requests.py"),
    ("node", "docs/examples/node_fetch.mjs"),
];

fn run(stack: &Stack, program: &str, file: &str, user: &str) -> Output {
    Command::new(program)
        .arg(workspace_root().join(file))
        .env("AUTHSTAMP_ENVOY_URL", &stack.envoy_url)
        .env("AUTHSTAMP_PROVIDER", PROVIDER)
        .env("AUTHSTAMP_USER", user)
        .env("AUTHSTAMP_PATH", "/api/example?page=2")
        .env("AUTHSTAMP_APP_ID", &stack.app_id)
        .env("AUTHSTAMP_APP_KEY", &stack.app_key)
        .output()
        .unwrap_or_else(|e| panic!("{program} {file}: {e} (make deps installs it)"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_example_calls_through_authstamp() {
    let stack = Stack::start("examples", StackOptions::default()).await;
    stack.connect_user("erin").await;
    for (program, file) in EXAMPLES {
        let out = run(&stack, program, file, "erin");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{file}: {}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        let echo: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{file} printed no provider answer ({e}): {stdout}"));
        let authorization = echo["headers"]["authorization"][0]
            .as_str()
            .unwrap_or_default();
        assert!(
            authorization.starts_with("Bearer "),
            "{file}: not stamped: {echo}"
        );
        assert!(
            !stdout.contains("x-authstamp-") && !stdout.contains(&stack.app_key),
            "{file}: authstamp headers reached the provider: {echo}"
        );
        assert!(stdout.contains("page=2"), "{file}: query lost: {echo}");

        let out = run(&stack, program, file, "never-connected");
        assert_eq!(out.status.code(), Some(1), "{file}: a refusal exits 1");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("authstamp refused the call: not_connected"),
            "{file}: {stderr}"
        );
    }
}
