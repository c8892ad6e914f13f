//! The filter's JSON plugin configuration: any bytes are accepted or refused
//! with a message, never a panic (a panic in `on_configure` kills the VM).
#![no_main]

use authstamp_filter_core::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let env = |name: &str| (name == "K").then(|| "ask_fuzz-key".to_string());
    if let Ok(config) = Config::parse(data, &env) {
        // A parsed configuration is internally consistent.
        assert!(!config.token_service.cluster.is_empty());
        assert!(config.cache_capacity >= 1);
        let names = config.headers.all();
        for (i, name) in names.iter().enumerate() {
            assert!(!names[..i].contains(name));
        }
    }
});
