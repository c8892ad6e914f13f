//! Command line and runtime configuration.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::{BoolishValueParser, NonEmptyStringValueParser};
use clap::{ArgAction, Parser};

/// `authstamp-standin`: a stand-in OAuth 2.0 provider for tests and local trials.
///
/// Every option can also be given through its `AUTHSTAMP_STANDIN_*` environment variable;
/// use `AUTHSTAMP_STANDIN_CLIENT_SECRET` to keep the client secret off the command line.
// No `Debug`: the struct holds the client secret.
#[derive(Parser, Clone)]
#[command(name = "authstamp-standin", version, about, long_about = None)]
pub struct Cli {
    /// Address to listen on; port 0 picks a free port (printed on stdout once bound).
    #[arg(long, env = "AUTHSTAMP_STANDIN_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,

    /// The only client the provider knows.
    #[arg(long, env = "AUTHSTAMP_STANDIN_CLIENT_ID", value_parser = NonEmptyStringValueParser::new())]
    pub client_id: String,

    /// The client's secret (prefer the environment variable).
    #[arg(
        long,
        env = "AUTHSTAMP_STANDIN_CLIENT_SECRET",
        hide_env_values = true,
        value_parser = NonEmptyStringValueParser::new()
    )]
    pub client_secret: String,

    /// Lifetime of issued access tokens (humantime: `3600s`, `15m`, `0s`).
    #[arg(
        long,
        env = "AUTHSTAMP_STANDIN_ACCESS_TOKEN_TTL",
        default_value = "3600s"
    )]
    pub access_token_ttl: humantime::Duration,

    /// Rotate refresh tokens on every refresh (and detect reuse of rotated ones).
    #[arg(
        long,
        env = "AUTHSTAMP_STANDIN_ROTATE_REFRESH_TOKENS",
        action = ArgAction::SetTrue,
        value_parser = BoolishValueParser::new()
    )]
    pub rotate_refresh_tokens: bool,

    /// Issuer identifier (default: `http://<bound address>`).
    #[arg(long, env = "AUTHSTAMP_STANDIN_ISSUER", value_parser = parse_issuer)]
    pub issuer: Option<String>,

    /// Add `iss=<issuer>` to authorization responses (RFC 9207).
    #[arg(
        long,
        env = "AUTHSTAMP_STANDIN_SEND_ISS",
        action = ArgAction::SetTrue,
        value_parser = BoolishValueParser::new()
    )]
    pub send_iss: bool,
}

impl Cli {
    /// The runtime configuration, once the listener is bound to `bound`.
    pub fn into_config(self, bound: SocketAddr) -> Config {
        Config {
            issuer: self.issuer.unwrap_or_else(|| format!("http://{bound}")),
            client_id: self.client_id,
            client_secret: self.client_secret,
            access_token_ttl: self.access_token_ttl.into(),
            rotate_refresh_tokens: self.rotate_refresh_tokens,
            send_iss: self.send_iss,
        }
    }
}

/// An issuer must be an absolute http(s) URL without query or fragment (RFC 8414 §2).
fn parse_issuer(raw: &str) -> Result<String, String> {
    let url = url::Url::parse(raw).map_err(|e| format!("not an absolute URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err("issuer must use http or https".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("issuer must not have a query or fragment".into());
    }
    Ok(raw.to_owned())
}

/// Runtime configuration of one provider instance.
#[derive(Clone)]
pub struct Config {
    pub client_id: String,
    pub client_secret: String,
    /// Default for the `access_token_ttl_secs` quirk.
    pub access_token_ttl: Duration,
    /// Default for the `rotate_refresh_tokens` quirk.
    pub rotate_refresh_tokens: bool,
    pub issuer: String,
    pub send_iss: bool,
}

impl Config {
    /// A configuration with the CLI defaults: one hour access tokens, no rotation,
    /// issuer `http://127.0.0.1`, no `iss` parameter.
    pub fn new(client_id: impl Into<String>, client_secret: impl Into<String>) -> Self {
        Self {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            access_token_ttl: Duration::from_secs(3600),
            rotate_refresh_tokens: false,
            issuer: "http://127.0.0.1".into(),
            send_iss: false,
        }
    }

    /// The issuer without a trailing slash, for building endpoint URLs.
    pub fn issuer_base(&self) -> &str {
        self.issuer.trim_end_matches('/')
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("access_token_ttl", &self.access_token_ttl)
            .field("rotate_refresh_tokens", &self.rotate_refresh_tokens)
            .field("issuer", &self.issuer)
            .field("send_iss", &self.send_iss)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("authstamp-standin").chain(args.iter().copied()))
    }

    #[test]
    fn defaults() {
        let cli = parse(&["--client-id", "app", "--client-secret", "s3cret"]).unwrap();
        assert_eq!(cli.listen, "127.0.0.1:0".parse().unwrap());
        let cfg = cli.into_config("127.0.0.1:4321".parse().unwrap());
        assert_eq!(cfg.access_token_ttl, Duration::from_secs(3600));
        assert!(!cfg.rotate_refresh_tokens);
        assert!(!cfg.send_iss);
        assert_eq!(cfg.issuer, "http://127.0.0.1:4321");
        assert_eq!(cfg.client_id, "app");
        assert_eq!(cfg.client_secret, "s3cret");
    }

    #[test]
    fn all_options() {
        let cli = parse(&[
            "--listen",
            "[::1]:8080",
            "--client-id",
            "app",
            "--client-secret",
            "x",
            "--access-token-ttl",
            "15m",
            "--rotate-refresh-tokens",
            "--issuer",
            "https://provider.example/",
            "--send-iss",
        ])
        .unwrap();
        let cfg = cli.into_config("[::1]:8080".parse().unwrap());
        assert_eq!(cfg.access_token_ttl, Duration::from_secs(900));
        assert!(cfg.rotate_refresh_tokens);
        assert!(cfg.send_iss);
        assert_eq!(cfg.issuer, "https://provider.example/");
        assert_eq!(cfg.issuer_base(), "https://provider.example");
    }

    #[test]
    fn rejects_bad_values() {
        assert!(
            parse(&["--client-id", "app"]).is_err()
                || std::env::var_os("AUTHSTAMP_STANDIN_CLIENT_SECRET").is_some()
        );
        assert!(parse(&["--client-id", "", "--client-secret", "x"]).is_err());
        assert!(parse(&[
            "--client-id",
            "a",
            "--client-secret",
            "x",
            "--issuer",
            "not a url"
        ])
        .is_err());
        assert!(parse(&[
            "--client-id",
            "a",
            "--client-secret",
            "x",
            "--issuer",
            "http://a/?q=1"
        ])
        .is_err());
        assert!(parse(&[
            "--client-id",
            "a",
            "--client-secret",
            "x",
            "--access-token-ttl",
            "soon"
        ])
        .is_err());
    }

    #[test]
    fn debug_redacts_secret() {
        let cfg = Config::new("app", "hunter2");
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }
}
