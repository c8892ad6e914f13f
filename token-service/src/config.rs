//! Resolved configuration: the public URL, and the secrets that never come
//! from flags (master key, admin token, filter token) with their local-mode
//! files.

use crate::crypto::secrets::{AdminToken, FilterToken, KeyRing, MasterKey};
use anyhow::{bail, Context as _};
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use url::Url;

pub const MASTER_KEY_ENV: &str = "AUTHSTAMP_MASTER_KEY";
pub const ADMIN_TOKEN_ENV: &str = "AUTHSTAMP_ADMIN_TOKEN";
pub const FILTER_TOKEN_ENV: &str = "AUTHSTAMP_FILTER_TOKEN";
const MASTER_KEY_FILE: &str = "master.key";
const ADMIN_TOKEN_FILE: &str = "admin.token";
/// Local mode's filter credential; `scripts/run-local.sh` hands it to Envoy.
pub const FILTER_TOKEN_FILE: &str = "filter.token";

/// Secrets taken from the environment (read once in `main`, passed in so
/// that tests do not depend on the process environment).
#[derive(Default, Clone)]
pub struct SecretEnv {
    /// One base64 key (version 1) or `VERSION:BASE64,…` (rotation).
    pub master_key: Option<String>,
    pub admin_token: Option<String>,
    /// The credential the filter sends to the filter listener.
    pub filter_token: Option<String>,
}

impl SecretEnv {
    pub fn from_process() -> Self {
        let read = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        Self {
            master_key: read(MASTER_KEY_ENV),
            admin_token: read(ADMIN_TOKEN_ENV),
            filter_token: read(FILTER_TOKEN_ENV),
        }
    }
}

impl fmt::Debug for SecretEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretEnv")
            .field(
                "master_key",
                &self.master_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "filter_token",
                &self.filter_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The externally visible base URL of the service (redirect URI, connect
/// links, cookie path and `Secure` flag derive from it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicUrl {
    /// Without a trailing slash.
    base: String,
    path_prefix: String,
    /// `scheme://host[:port]` as browsers send it in `Origin`.
    origin: String,
    https: bool,
}

impl PublicUrl {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let url = Url::parse(text.trim()).context("the public URL is not an absolute URL")?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            bail!("the public URL must be http:// or https:// with a host");
        }
        if !url.username().is_empty() || url.password().is_some() {
            bail!("the public URL must not contain user info");
        }
        if url.query().is_some() || url.fragment().is_some() {
            bail!("the public URL must not have a query or fragment");
        }
        let base = url.as_str().trim_end_matches('/').to_owned();
        let path_prefix = url.path().trim_end_matches('/').to_owned();
        Ok(Self {
            base,
            path_prefix,
            origin: url.origin().ascii_serialization(),
            https: url.scheme() == "https",
        })
    }

    /// `path` starts with `/`.
    pub fn join(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The path as the browser sees it (public path prefix included).
    pub fn browser_path(&self, path: &str) -> String {
        format!("{}{}", self.path_prefix, path)
    }

    /// The browser origin of the service (`Origin` of its own pages' forms).
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn is_https(&self) -> bool {
        self.https
    }

    pub fn redirect_uri(&self) -> String {
        self.join(authstamp_protocol::paths::OAUTH_CALLBACK)
    }
}

/// Creates a directory (and parents) readable only by the owner.
pub fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder
        .create(dir)
        .with_context(|| format!("could not create the data directory {}", dir.display()))
}

/// The vault's key ring and where it came from. A ring from a file can be
/// read again (a running service picks up a version added by
/// `authstamp keys rotate`) and extended by `keys rotate`.
#[derive(Debug)]
pub struct KeySource {
    pub ring: KeyRing,
    pub file: Option<PathBuf>,
}

/// The master keys: `AUTHSTAMP_MASTER_KEY` or the key file, each one bare
/// base64 key (version 1) or `VERSION:BASE64` entries; in local mode
/// `<data_dir>/master.key`, created when missing. Otherwise no start.
pub fn load_key_ring(
    env: &SecretEnv,
    key_file: Option<&Path>,
    local: bool,
    data_dir: &Path,
) -> anyhow::Result<KeySource> {
    if env.master_key.is_some() && key_file.is_some() {
        bail!(
            "both {MASTER_KEY_ENV} and --master-key-file (AUTHSTAMP_MASTER_KEY_FILE) are set; use one"
        );
    }
    if let Some(text) = &env.master_key {
        let ring = KeyRing::parse(text).with_context(|| {
            format!("{MASTER_KEY_ENV} is invalid (base64 of 32 bytes, or VERSION:BASE64,…)")
        })?;
        return Ok(KeySource { ring, file: None });
    }
    if let Some(path) = key_file {
        return Ok(KeySource {
            ring: read_key_file(path)?,
            file: Some(path.to_path_buf()),
        });
    }
    if !local {
        bail!(
            "no master key: set {MASTER_KEY_ENV} (base64 of 32 random bytes, or \
             VERSION:BASE64,… for several versions) or --master-key-file PATH \
             (env AUTHSTAMP_MASTER_KEY_FILE); \
             for local development, --local creates one under the data directory"
        );
    }
    let path = data_dir.join(MASTER_KEY_FILE);
    if !path.exists() {
        let key = MasterKey::generate();
        let mut text = key.to_base64();
        text.push('\n');
        write_new_private_file(data_dir, &path, text.as_bytes())?;
        tracing::warn!(
            path = %path.display(),
            "local mode: created a new master key file; back it up, the vault cannot be read without it"
        );
    }
    Ok(KeySource {
        ring: read_key_file(&path)?,
        file: Some(path),
    })
}

/// Reads a key file: one bare base64 key (version 1) or `VERSION:BASE64` lines.
pub fn read_key_file(path: &Path) -> anyhow::Result<KeyRing> {
    crate::files::require_private_file(path)?;
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("could not read the master key file {}", path.display()))?,
    );
    KeyRing::parse(&text)
        .with_context(|| format!("the master key file {} is invalid", path.display()))
}

/// Replaces a key file with `ring` (mode 0600): written beside it, synced,
/// then renamed over it, so a crash leaves the old file or the new one.
pub fn write_key_file(path: &Path, ring: &KeyRing) -> anyhow::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or_else(|| Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "master.key".into());
    let temp = dir.join(format!(
        ".{name}.{}.tmp",
        crate::crypto::secrets::hex(&crate::crypto::secrets::random_bytes::<6>())
    ));
    let mut text = zeroize::Zeroizing::new(String::from(
        "# authstamp master keys, VERSION:BASE64 (written by `authstamp keys rotate`)\n",
    ));
    text.push_str(&ring.to_text());
    write_new_private_file(dir, &temp, text.as_bytes())?;
    std::fs::rename(&temp, path).with_context(|| {
        let _ = std::fs::remove_file(&temp);
        format!("could not replace {}", path.display())
    })
}

/// The admin token from `AUTHSTAMP_ADMIN_TOKEN` or the token file; in local
/// mode `<data_dir>/admin.token`, created when missing. `None`: the admin
/// API refuses every call.
pub fn load_admin_token(
    env: &SecretEnv,
    token_file: Option<&Path>,
    local: bool,
    data_dir: &Path,
) -> anyhow::Result<Option<AdminToken>> {
    let source = BearerSource {
        what: "admin token",
        env_name: ADMIN_TOKEN_ENV,
        flag: "--admin-token-file (AUTHSTAMP_ADMIN_TOKEN_FILE)",
        local_file: ADMIN_TOKEN_FILE,
    };
    load_bearer(
        &source,
        env.admin_token.as_deref(),
        token_file,
        local,
        data_dir,
    )
    .map(|t| t.map(|t| AdminToken::new(t.as_str())))
}

/// The filter credential from `AUTHSTAMP_FILTER_TOKEN` or the token file; in
/// local mode `<data_dir>/filter.token`, created when missing. `None`: the
/// filter listener refuses every lookup without a client certificate.
pub fn load_filter_token(
    env: &SecretEnv,
    token_file: Option<&Path>,
    local: bool,
    data_dir: &Path,
) -> anyhow::Result<Option<FilterToken>> {
    let source = BearerSource {
        what: "filter token",
        env_name: FILTER_TOKEN_ENV,
        flag: "--filter-token-file (AUTHSTAMP_FILTER_TOKEN_FILE)",
        local_file: FILTER_TOKEN_FILE,
    };
    load_bearer(
        &source,
        env.filter_token.as_deref(),
        token_file,
        local,
        data_dir,
    )
    .map(|t| t.map(|t| FilterToken::new(t.as_str())))
}

/// Where one bearer secret may come from.
struct BearerSource {
    what: &'static str,
    env_name: &'static str,
    flag: &'static str,
    local_file: &'static str,
}

fn load_bearer(
    source: &BearerSource,
    from_env: Option<&str>,
    token_file: Option<&Path>,
    local: bool,
    data_dir: &Path,
) -> anyhow::Result<Option<zeroize::Zeroizing<String>>> {
    match (from_env, token_file) {
        (Some(_), Some(_)) => bail!(
            "both {} and {} are set; use one",
            source.env_name,
            source.flag
        ),
        (Some(text), None) => Ok(Some(zeroize::Zeroizing::new(text.trim().to_owned()))),
        (None, Some(path)) => read_bearer_file(source.what, path).map(Some),
        (None, None) if local => {
            let path = data_dir.join(source.local_file);
            if path.exists() {
                return read_bearer_file(source.what, &path).map(Some);
            }
            let token = crate::crypto::secrets::random_token::<32>();
            write_new_private_file(data_dir, &path, format!("{}\n", token.as_str()).as_bytes())?;
            tracing::warn!(path = %path.display(), "local mode: created a new {} file", source.what);
            Ok(Some(token))
        }
        (None, None) => Ok(None),
    }
}

fn read_bearer_file(what: &str, path: &Path) -> anyhow::Result<zeroize::Zeroizing<String>> {
    crate::files::require_private_file(path)?;
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("could not read the {what} file {}", path.display()))?,
    );
    let token = text.trim();
    if token.is_empty() {
        bail!("the {what} file {} is empty", path.display());
    }
    Ok(zeroize::Zeroizing::new(token.to_owned()))
}

/// Writes a new file with mode 0600; fails if it already exists.
fn write_new_private_file(dir: &Path, path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    create_private_dir(dir)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("could not create {}", path.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("could not write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key file as an operator writes it: 0600 (secret files readable by
    /// others are refused).
    fn write_private(path: &Path, contents: &[u8]) {
        std::fs::write(path, contents).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
    }

    /// Version 1 of the ring the sources give.
    fn load_master_key(
        env: &SecretEnv,
        key_file: Option<&Path>,
        local: bool,
        data_dir: &Path,
    ) -> anyhow::Result<MasterKey> {
        let source = load_key_ring(env, key_file, local, data_dir)?;
        assert_eq!(source.ring.versions(), [1]);
        let key = source.ring.get(1).unwrap();
        Ok(MasterKey::from_base64(&key.to_base64()).unwrap())
    }

    #[test]
    fn no_master_key_is_an_error_naming_both_options() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_master_key(&SecretEnv::default(), None, false, dir.path()).unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("AUTHSTAMP_MASTER_KEY"), "{text}");
        assert!(text.contains("--master-key-file"), "{text}");
        assert!(!dir.path().join(MASTER_KEY_FILE).exists());
    }

    #[test]
    fn local_mode_creates_a_private_key_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = load_master_key(&SecretEnv::default(), None, true, &data).unwrap();
        let path = data.join(MASTER_KEY_FILE);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let second = load_master_key(&SecretEnv::default(), None, true, &data).unwrap();
        assert_eq!(first.expose(), second.expose());
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            MasterKey::from_base64(&text).unwrap().expose(),
            first.expose()
        );

        let token = load_admin_token(&SecretEnv::default(), None, true, &data)
            .unwrap()
            .unwrap();
        let again = load_admin_token(&SecretEnv::default(), None, true, &data)
            .unwrap()
            .unwrap();
        assert_eq!(token.expose(), again.expose());
        assert!(load_admin_token(&SecretEnv::default(), None, false, &data)
            .unwrap()
            .is_none());

        // The filter token: its own file, 0600, kept across starts, not the admin token.
        let filter = load_filter_token(&SecretEnv::default(), None, true, &data)
            .unwrap()
            .unwrap();
        let again = load_filter_token(&SecretEnv::default(), None, true, &data)
            .unwrap()
            .unwrap();
        assert_eq!(filter.expose(), again.expose());
        assert_ne!(filter.expose(), token.expose());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(data.join(FILTER_TOKEN_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(load_filter_token(&SecretEnv::default(), None, false, &data)
            .unwrap()
            .is_none());
        let both = SecretEnv {
            filter_token: Some("x".into()),
            ..SecretEnv::default()
        };
        let file = data.join(FILTER_TOKEN_FILE);
        assert!(load_filter_token(&both, Some(&file), false, &data).is_err());
    }

    #[test]
    fn env_key_wins_and_is_validated() {
        let dir = tempfile::tempdir().unwrap();
        let key = MasterKey::generate();
        let env = SecretEnv {
            master_key: Some(key.to_base64().to_string()),
            ..SecretEnv::default()
        };
        let loaded = load_master_key(&env, None, false, dir.path()).unwrap();
        assert_eq!(loaded.expose(), key.expose());
        let bad = SecretEnv {
            master_key: Some("c2hvcnQ=".into()),
            ..SecretEnv::default()
        };
        assert!(load_master_key(&bad, None, true, dir.path()).is_err());
        let file = dir.path().join("k");
        write_private(&file, key.to_base64().as_bytes());
        assert!(load_master_key(&env, Some(&file), false, dir.path()).is_err());
        let from_file =
            load_master_key(&SecretEnv::default(), Some(&file), false, dir.path()).unwrap();
        assert_eq!(from_file.expose(), key.expose());
    }

    #[test]
    fn versioned_keys_from_the_environment_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (MasterKey::generate(), MasterKey::generate());
        let text = format!("1:{},2:{}", a.to_base64().as_str(), b.to_base64().as_str());
        let env = SecretEnv {
            master_key: Some(text.clone()),
            ..SecretEnv::default()
        };
        let source = load_key_ring(&env, None, false, dir.path()).unwrap();
        assert_eq!(source.ring.versions(), [1, 2]);
        assert!(source.file.is_none());

        // A bare key file is version 1; rewritten with a second version it
        // stays private and reads back whole.
        let file = dir.path().join("master.key");
        write_private(&file, format!("{}\n", a.to_base64().as_str()).as_bytes());
        let mut ring = read_key_file(&file).unwrap();
        assert_eq!(ring.versions(), [1]);
        ring.insert(2, MasterKey::from_base64(&b.to_base64()).unwrap());
        write_key_file(&file, &ring).unwrap();
        let source = load_key_ring(&SecretEnv::default(), Some(&file), false, dir.path()).unwrap();
        assert_eq!(source.ring.versions(), [1, 2]);
        assert_eq!(source.ring.get(2).unwrap().expose(), b.expose());
        assert_eq!(source.file.as_deref(), Some(file.as_path()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&file).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temp file left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn public_url_keeps_its_path_prefix() {
        let url = PublicUrl::parse("https://auth.example/stamp/").unwrap();
        assert_eq!(
            url.redirect_uri(),
            "https://auth.example/stamp/v1/oauth/callback"
        );
        assert_eq!(
            url.browser_path("/v1/oauth/callback"),
            "/stamp/v1/oauth/callback"
        );
        assert!(url.is_https());
        assert_eq!(url.origin(), "https://auth.example");
        let plain = PublicUrl::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(plain.origin(), "http://127.0.0.1:8080");
        assert_eq!(
            PublicUrl::parse("HTTPS://Auth.Example:443/x")
                .unwrap()
                .origin(),
            "https://auth.example"
        );
        assert_eq!(
            plain.redirect_uri(),
            "http://127.0.0.1:8080/v1/oauth/callback"
        );
        assert_eq!(
            plain.browser_path("/v1/oauth/callback"),
            "/v1/oauth/callback"
        );
        assert!(PublicUrl::parse("ftp://x").is_err());
        assert!(PublicUrl::parse("https://u:p@x").is_err());
        assert!(PublicUrl::parse("https://x/?a=b").is_err());
    }
}
