//! The OAuth callback's query string and the RFC 9207 issuer check.
#![no_main]

use authstamp_token_service::http::callback::{check_issuer, parse_query};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let query = parse_query(Some(&text));
    let expected = "https://provider.test/tenant";
    let accepted = check_issuer(Some(expected), &query).is_ok();
    // Accepted only with exactly that issuer, once.
    assert_eq!(
        accepted,
        query.iss.as_deref() == Some(expected) && !query.iss_repeated
    );
    assert!(check_issuer(None, &query).is_ok());
});
