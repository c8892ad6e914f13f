//! The OAuth side: token endpoint client, connect flow, callback and the
//! app's confirmation of a finished connect.

pub mod callback;
pub mod client;
pub mod confirm;
pub mod connect;
pub mod journalled_connect;
pub mod journalled_result;

use axum::http::{header, HeaderMap};

/// Values of the cookie `name` in every `Cookie` header.
pub(crate) fn cookie_values<'a>(
    headers: &'a HeaderMap,
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(move |pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key.trim() == name).then(|| value.trim().trim_matches('"'))
        })
}
