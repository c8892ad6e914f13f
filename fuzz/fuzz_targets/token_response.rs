//! A provider's token endpoint answer (status, content type, up to 1 MiB of
//! body): tokens or a classified failure, never a panic, and a token that
//! is accepted can go into an HTTP header.
#![no_main]

use authstamp_token_service::oauth::client::parse_token_response;
use libfuzzer_sys::fuzz_target;

const STATUSES: [u16; 8] = [200, 201, 400, 401, 403, 429, 500, 302];
const TYPES: [Option<&str>; 4] = [
    None,
    Some("application/json"),
    Some("application/x-www-form-urlencoded"),
    Some("text/plain; charset=utf-8"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let status = STATUSES[usize::from(selector & 7)];
    let content_type = TYPES[usize::from((selector >> 3) & 3)];
    match parse_token_response(status, content_type, body) {
        Ok(set) => {
            assert!((200..300).contains(&status));
            let token = set.access_token.expose();
            assert!(!token.is_empty());
            assert!(!token.chars().any(|c| c.is_control() || c.is_whitespace()));
            if let Some(refresh) = &set.refresh_token {
                assert!(!refresh.expose().is_empty());
            }
        }
        Err(err) => {
            // The reason is a short sanitized code, never the body.
            assert!(err.reason().len() <= 64);
            assert!(err
                .reason()
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b)));
        }
    }
});
