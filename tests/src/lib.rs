//! End-to-end harness: starts the real parts (the stand-in provider, the
//! `authstamp` token service, Envoy loading the built `.wasm`) on free
//! loopback ports, waits for each to be ready, and walks the OAuth flow as a
//! browser would. Each process's output goes to `target/e2e-logs/<test>/`,
//! kept after the run so a failure can be read.

pub mod browser;
pub mod chromium;
pub mod deploy;
pub mod docs;
pub mod page_server;
pub mod replicas;
pub mod stack;
pub mod tcp_cut;
pub mod webhook_receiver;

use std::path::{Path, PathBuf};

pub use stack::{Stack, StackOptions};
// The shared test kit, under the paths the tests have always used.
pub use authstamp_testkit::{postgres, process, prom};

/// The workspace root (the parent of this crate's folder).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// A file the tests need, from an environment variable or its default place.
/// Missing means the build step was skipped: fail loudly, never skip.
fn required_file(env_var: &str, default: PathBuf) -> PathBuf {
    let path = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or(default);
    assert!(
        path.is_file(),
        "{} not found (set {env_var} or run `make build`)",
        path.display()
    );
    path
}

pub fn authstamp_bin() -> PathBuf {
    required_file(
        "AUTHSTAMP_BIN",
        workspace_root().join("target/debug/authstamp"),
    )
}

pub fn standin_bin() -> PathBuf {
    required_file(
        "AUTHSTAMP_STANDIN_BIN",
        workspace_root().join("target/debug/authstamp-standin"),
    )
}

pub fn filter_wasm() -> PathBuf {
    required_file(
        "AUTHSTAMP_WASM",
        workspace_root().join("target/wasm32-wasip1/release/authstamp_filter.wasm"),
    )
}

/// Envoy: `ENVOY_BIN`, else the Makefile's pinned venv, else `envoy` on PATH.
pub fn envoy_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        return required_file("ENVOY_BIN", PathBuf::from(path));
    }
    let venv = workspace_root().join(".venv/bin/envoy");
    if venv.is_file() {
        return venv;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("envoy"))
        .find(|candidate| candidate.is_file());
    on_path.expect("no Envoy: set ENVOY_BIN or run `make envoy`")
}

/// `envoy` with the test process's filter credential in its environment, as
/// every shipped bootstrap expects (`credential_env`).
pub fn envoy_command() -> std::process::Command {
    let mut command = std::process::Command::new(envoy_bin());
    command.env(FILTER_TOKEN_ENV, filter_token());
    if filter_build() == FilterBuild::Native {
        command.env(DYNAMIC_MODULES_PATH_ENV, native_module_dir());
    }
    command
}

/// Which build of the filter the local bootstrap runs: `AUTHSTAMP_E2E_FILTER`
/// = `wasm` (default, `envoy/envoy.yaml`) or `native` (`envoy/envoy-native.yaml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterBuild {
    Wasm,
    Native,
}

pub fn filter_build() -> FilterBuild {
    match std::env::var("AUTHSTAMP_E2E_FILTER").as_deref() {
        Ok("native") => FilterBuild::Native,
        Ok("wasm") | Err(_) => FilterBuild::Wasm,
        Ok(other) => panic!("AUTHSTAMP_E2E_FILTER={other}: wasm or native"),
    }
}

/// The folder of the shipped native module (`cargo build --profile native
/// -p authstamp-native`).
pub fn native_module_dir() -> PathBuf {
    let module = required_file(
        "AUTHSTAMP_NATIVE",
        workspace_root().join("target/native/libauthstamp_native.so"),
    );
    module.parent().expect("module folder").to_path_buf()
}

/// A fresh, kept log folder for one test.
pub fn log_dir(test_name: &str) -> PathBuf {
    let dir = workspace_root().join("target/e2e-logs").join(test_name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create log dir");
    dir
}

/// Random URL-safe string for secrets the tests hand out.
pub fn random_token(prefix: &str) -> String {
    use base64::Engine;
    let mut bytes = [0u8; 24];
    getrandom(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

fn getrandom(buf: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(buf))
        .expect("read /dev/urandom");
}

/// Environment variable of the filter credential, for `authstamp serve` and
/// for Envoy (the bootstraps name it in `credential_env`).
pub const FILTER_TOKEN_ENV: &str = "AUTHSTAMP_FILTER_TOKEN";

/// The filter credential of every token service and Envoy this test
/// process starts: random, made once.
pub fn filter_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| random_token("ftk_"))
}

/// Hex SHA-256, as the stand-in provider reports request bodies.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The folder of the native module's test build (`make native-probe`:
/// `cargo build -p authstamp-native --features probe`), which Envoy finds
/// through `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
pub fn native_probe_dir() -> PathBuf {
    let module = required_file(
        "AUTHSTAMP_NATIVE_PROBE",
        workspace_root().join("target/debug/libauthstamp_native.so"),
    );
    module.parent().expect("module folder").to_path_buf()
}

/// The environment variable through which Envoy finds dynamic modules.
pub const DYNAMIC_MODULES_PATH_ENV: &str = "ENVOY_DYNAMIC_MODULES_SEARCH_PATH";
