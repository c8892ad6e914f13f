//! Scope strings (RFC 6749 §3.3): space-delimited, case-sensitive tokens.

/// Splits a scope string into its distinct tokens, keeping their order; `None` if a token
/// holds a character outside `%x21 / %x23-5B / %x5D-7E`.
pub fn parse(raw: &str) -> Option<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for token in raw.split(' ').filter(|t| !t.is_empty()) {
        if !token
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b))
        {
            return None;
        }
        if !out.iter().any(|t| t == token) {
            out.push(token.to_owned());
        }
    }
    Some(out)
}

/// Is every token of `requested` also in `granted`?
pub fn is_subset(requested: &[String], granted: &str) -> bool {
    requested.iter().all(|r| granted.split(' ').any(|g| g == r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_dedups() {
        assert_eq!(
            parse("read  write read").unwrap(),
            vec!["read".to_owned(), "write".to_owned()]
        );
        assert_eq!(parse("").unwrap(), Vec::<String>::new());
        assert_eq!(parse("chat:write users.read").unwrap().len(), 2);
        assert!(parse("bad\"quote").is_none());
        assert!(parse("back\\slash").is_none());
        assert!(parse("tab\there").is_none());
    }

    #[test]
    fn subsets() {
        let r = |s: &str| parse(s).unwrap();
        assert!(is_subset(&r("read"), "read write"));
        assert!(is_subset(&r(""), "read write"));
        assert!(!is_subset(&r("admin"), "read write"));
        assert!(!is_subset(&r("rea"), "read write"));
    }
}
