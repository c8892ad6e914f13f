//! `application/x-www-form-urlencoded` parameters (query strings and form bodies).
//!
//! RFC 6749 §3.1: parameters sent without a value are treated as omitted, and request
//! parameters must not be included more than once.

use std::collections::HashMap;

/// Parsed parameters, keeping every value of a repeated name.
#[derive(Debug, Default)]
pub struct Params {
    map: HashMap<String, Vec<String>>,
}

/// The parameter was included more than once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repeated(pub String);

impl Params {
    pub fn parse(input: &[u8]) -> Self {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        for (k, v) in url::form_urlencoded::parse(input) {
            map.entry(k.into_owned()).or_default().push(v.into_owned());
        }
        Self { map }
    }

    pub fn from_query(query: Option<&str>) -> Self {
        Self::parse(query.unwrap_or_default().as_bytes())
    }

    /// The value of `name`: `None` when absent or empty, an error when repeated.
    pub fn single(&self, name: &str) -> Result<Option<&str>, Repeated> {
        match self.map.get(name).map(Vec::as_slice) {
            None | Some([]) => Ok(None),
            Some([v]) => Ok(Some(v.as_str()).filter(|v| !v.is_empty())),
            Some(_) => Err(Repeated(name.to_owned())),
        }
    }

    /// Some parameter that was included more than once.
    pub fn any_repeated(&self) -> Option<Repeated> {
        let mut names: Vec<&String> = self
            .map
            .iter()
            .filter(|(_, v)| v.len() > 1)
            .map(|(k, _)| k)
            .collect();
        names.sort();
        names.first().map(|k| Repeated((*k).clone()))
    }
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space, `%XX` a
/// byte); `None` if the result is not UTF-8 or a `%` escape is malformed.
pub fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| (*b as char).to_digit(16))?;
                let lo = bytes.get(i + 2).and_then(|b| (*b as char).to_digit(16))?;
                out.push(u8::try_from(hi * 16 + lo).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_values() {
        let p = Params::parse(b"a=1&b=&c=x%20y&d=1&d=2");
        assert_eq!(p.single("a"), Ok(Some("1")));
        assert_eq!(p.single("b"), Ok(None));
        assert_eq!(p.single("c"), Ok(Some("x y")));
        assert_eq!(p.single("missing"), Ok(None));
        assert_eq!(p.single("d"), Err(Repeated("d".into())));
        assert_eq!(p.any_repeated(), Some(Repeated("d".into())));
        assert_eq!(Params::from_query(None).any_repeated(), None);
    }

    #[test]
    fn decode_components() {
        assert_eq!(form_decode("a+b%3Ac%25").as_deref(), Some("a b:c%"));
        assert_eq!(form_decode("plain").as_deref(), Some("plain"));
        assert_eq!(form_decode("%C3%A9").as_deref(), Some("é"));
        assert_eq!(form_decode("%"), None);
        assert_eq!(form_decode("%zz"), None);
        assert_eq!(form_decode("%FF"), None);
    }
}
