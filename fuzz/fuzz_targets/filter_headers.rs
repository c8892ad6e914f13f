//! The filter's request header handling: identity parsing (gateway, mesh,
//! transparent egress) and the path check, on arbitrary header lists.
//! Input: lines `name:value` (values may hold any byte but `\n`).
#![no_main]

use authstamp_filter_core::config::Config;
use authstamp_filter_core::request::{self, Classified};
use authstamp_filter_core::stamp;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn configs() -> &'static [Config; 3] {
    static CONFIGS: OnceLock<[Config; 3]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let env = |_: &str| Some("ask_mesh-key".to_string());
        let parse = |json: &str| Config::parse(json.as_bytes(), &env).unwrap();
        [
            parse(r#"{"token_service": {"cluster": "ts", "authority": "ts"}}"#),
            parse(
                r#"{"token_service": {"cluster": "ts", "authority": "ts"},
                    "app": {"id": "app_mesh", "key_env": "K"}}"#,
            ),
            parse(
                r#"{"token_service": {"cluster": "ts", "authority": "ts"},
                    "app": {"id": "app_mesh", "key_env": "K"},
                    "provider_hosts": {"slack.com": "slack", "api.example.com:8443": "ex"},
                    "unmapped_hosts": "reject", "unmarked_requests": "reject"}"#,
            ),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let headers: Vec<(String, Vec<u8>)> = data
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            // Pseudo-headers keep their leading colon: `::path:/x`.
            let (name, value) = if colon == 0 {
                let rest = &line[1..];
                let c = rest.iter().position(|b| *b == b':')?;
                (
                    format!(":{}", String::from_utf8_lossy(&rest[..c])),
                    &rest[c + 1..],
                )
            } else {
                (
                    String::from_utf8_lossy(&line[..colon]).into_owned(),
                    &line[colon + 1..],
                )
            };
            Some((name.to_ascii_lowercase(), value.to_vec()))
        })
        .collect();
    for config in configs() {
        let _ = request::is_marked(&headers, config);
        if let Ok(Classified::Marked(identity)) = request::classify(&headers, config) {
            // What a marked request yields is usable as given.
            assert!(!identity.provider.is_empty());
            assert!(!identity.user.is_empty());
            assert!(!identity.user.chars().any(char::is_control));
        }
        if let Ok(path) = stamp::request_path(&headers) {
            assert!(path.starts_with('/'));
            assert!(!path.starts_with("//"));
        }
    }
});
