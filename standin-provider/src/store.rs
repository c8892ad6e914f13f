//! In-memory state: authorization codes, access and refresh tokens, token families,
//! quirks and counters. All times are wall-clock instants passed in by the caller.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::crypto::{self, ACCESS_PREFIX, BOT_PREFIX, CODE_PREFIX, REFRESH_PREFIX};
use crate::error::OAuthError;
use crate::quirks::Quirks;
use crate::scope;

/// How long an authorization code can be exchanged.
pub const CODE_LIFETIME: Duration = Duration::from_secs(60);
/// How long a redeemed code is remembered, so that replaying it revokes its tokens.
const REDEEMED_CODE_RETENTION: Duration = Duration::from_secs(3600);
/// Expired entries are swept after this many issued codes and tokens.
const PRUNE_EVERY: u64 = 1024;

type FamilyId = u64;

/// How an access token was obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantKind {
    AuthorizationCode,
    RefreshToken,
    /// RFC 6749 §4.4: the client's own token (login `client:<client_id>`).
    ClientCredentials,
    /// An API key registered with `POST /_standin/credentials`.
    ApiKey,
    /// HTTP Basic credentials registered with `POST /_standin/credentials`.
    Basic,
}

/// What the consent page approved; becomes an authorization code.
#[derive(Debug, Clone)]
pub struct CodeGrant {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub login: String,
    /// Normalised, space separated.
    pub scope: String,
}

struct CodeEntry {
    grant: CodeGrant,
    expires_at: SystemTime,
    redeemed: bool,
    /// The family of the tokens issued from this code, once redeemed.
    family: Option<FamilyId>,
}

struct AccessEntry {
    login: String,
    grant: GrantKind,
    serial: u64,
    /// `None`: never expires.
    expires_at: Option<SystemTime>,
}

struct RefreshEntry {
    family: FamilyId,
    client_id: String,
    login: String,
    scope: String,
    /// Replaced by a newer refresh token; presenting it again is reuse.
    rotated: bool,
}

/// All tokens descending from one authorization code.
struct Family {
    login: String,
    access: Vec<String>,
    refresh: Vec<String>,
}

/// Token-endpoint calls by `grant_type`, successful or not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct TokenCalls {
    pub authorization_code: u64,
    pub refresh_token: u64,
    pub client_credentials: u64,
    pub other: u64,
}

/// Counters for tests (`GET /_standin/stats`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub token_calls: TokenCalls,
    /// Every request to `/api/…`, authorised or not.
    pub api_calls: u64,
    /// The `/api/…` requests answered 401.
    pub api_calls_rejected: u64,
    /// Families revoked by code replay, refresh-token reuse or `/_standin/revoke`.
    pub families_revoked: u64,
    /// Calls of `POST /oauth/revoke` (RFC 7009), and the tokens they revoked.
    pub revocation_calls: u64,
    pub tokens_revoked_by_client: u64,
}

/// Tokens handed out by a successful grant.
#[derive(Debug, Clone)]
pub struct Issued {
    pub access_token: String,
    /// `None` when the `omit_expires_in` quirk is on.
    pub expires_in: Option<u64>,
    pub refresh_token: Option<String>,
    pub scope: String,
    pub login: String,
    /// Slack-style bot token (only with the `slack_authed_user` quirk, on code exchange).
    pub bot_token: Option<String>,
}

/// How a grant issues its tokens: the quirks' settings, or a profile's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Issuing {
    /// Access-token lifetime in seconds; `None`: no `expires_in`, never expires.
    pub ttl: Option<u64>,
    /// A refresh returns a new refresh token and retires the presented one.
    pub rotate: bool,
}

/// A validated access token, as the API sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessInfo {
    pub login: String,
    pub grant: GrantKind,
    pub serial: u64,
}

/// A code exchange request; the client is already authenticated.
#[derive(Debug, Clone, Copy)]
pub struct Redemption<'a> {
    pub client_id: &'a str,
    pub code: &'a str,
    pub redirect_uri: &'a str,
    pub code_verifier: &'a str,
}

/// Outcome of revoking a login's grant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Revoked {
    pub families_revoked: u64,
    pub tokens_revoked: u64,
}

pub struct Store {
    /// API keys accepted by the API echo, and the login each stands for.
    pub api_keys: HashMap<String, String>,
    /// HTTP Basic usernames and their passwords accepted by the API echo.
    pub basic: HashMap<String, String>,
    codes: HashMap<String, CodeEntry>,
    access: HashMap<String, AccessEntry>,
    refresh: HashMap<String, RefreshEntry>,
    families: HashMap<FamilyId, Family>,
    next_family: FamilyId,
    serial: u64,
    issued_since_prune: u64,
    pub quirks: Quirks,
    pub stats: Stats,
    /// Catalog profiles served under `/p/{name}/…`.
    pub profiles: HashMap<String, crate::profile::Registered>,
}

impl Store {
    pub fn new(quirks: Quirks) -> Self {
        Self {
            api_keys: HashMap::new(),
            basic: HashMap::new(),
            codes: HashMap::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
            families: HashMap::new(),
            next_family: 1,
            serial: 0,
            issued_since_prune: 0,
            quirks,
            stats: Stats::default(),
            profiles: HashMap::new(),
        }
    }

    /// Issues a single-use authorization code valid for [`CODE_LIFETIME`].
    pub fn issue_code(&mut self, grant: CodeGrant, now: SystemTime) -> String {
        self.tick(now);
        let code = crypto::random_token(CODE_PREFIX);
        self.codes.insert(
            code.clone(),
            CodeEntry {
                grant,
                expires_at: now + CODE_LIFETIME,
                redeemed: false,
                family: None,
            },
        );
        code
    }

    /// Exchanges an authorization code (RFC 6749 §4.1.3, RFC 7636 §4.6). Replaying a
    /// redeemed code revokes every token issued from it (RFC 6749 §4.1.2).
    pub fn redeem_code(
        &mut self,
        r: Redemption<'_>,
        issuing: Issuing,
        now: SystemTime,
    ) -> Result<Issued, OAuthError> {
        let Some(entry) = self.codes.get(r.code) else {
            return Err(OAuthError::invalid_grant("unknown authorization code"));
        };
        if entry.redeemed {
            if let Some(family) = entry.family {
                self.revoke_family(family);
            }
            return Err(OAuthError::invalid_grant(
                "authorization code was already used; tokens issued from it are revoked",
            ));
        }
        if now >= entry.expires_at {
            return Err(OAuthError::invalid_grant("authorization code expired"));
        }
        if !crypto::ct_eq(&entry.grant.client_id, r.client_id) {
            return Err(OAuthError::invalid_grant(
                "authorization code was issued to another client",
            ));
        }
        if entry.grant.redirect_uri != r.redirect_uri {
            return Err(OAuthError::invalid_grant(
                "redirect_uri does not match the authorization request",
            ));
        }
        if !crypto::verify_pkce(r.code_verifier, &entry.grant.code_challenge) {
            return Err(OAuthError::invalid_grant(
                "code_verifier does not match the code_challenge",
            ));
        }
        let grant = entry.grant.clone();

        let family = self.next_family;
        self.next_family += 1;
        self.families.insert(
            family,
            Family {
                login: grant.login.clone(),
                access: Vec::new(),
                refresh: Vec::new(),
            },
        );
        if let Some(entry) = self.codes.get_mut(r.code) {
            entry.redeemed = true;
            entry.family = Some(family);
        }

        let expires_in = issuing.ttl;
        let access_token = self.issue_access(
            family,
            &grant.login,
            GrantKind::AuthorizationCode,
            ACCESS_PREFIX,
            expires_in,
            now,
        );
        let refresh_token =
            self.issue_refresh(family, &grant.client_id, &grant.login, &grant.scope);
        // Slack's bot token: never expires, and works on the API like any other token.
        let bot_token = self.quirks.slack_authed_user.then(|| {
            self.issue_access(
                family,
                &grant.login,
                GrantKind::AuthorizationCode,
                BOT_PREFIX,
                None,
                now,
            )
        });
        Ok(Issued {
            access_token,
            expires_in,
            refresh_token: Some(refresh_token),
            scope: grant.scope,
            login: grant.login,
            bot_token,
        })
    }

    /// Refreshes (RFC 6749 §6). With rotation on, presenting a rotated refresh token is
    /// reuse and revokes the whole family (RFC 9700 §4.14.2).
    pub fn refresh(
        &mut self,
        client_id: &str,
        refresh_token: &str,
        requested_scope: Option<&str>,
        issuing: Issuing,
        now: SystemTime,
    ) -> Result<Issued, OAuthError> {
        let Some(entry) = self.refresh.get(refresh_token) else {
            return Err(OAuthError::invalid_grant(
                "unknown or revoked refresh token",
            ));
        };
        if !crypto::ct_eq(&entry.client_id, client_id) {
            return Err(OAuthError::invalid_grant(
                "refresh token was issued to another client",
            ));
        }
        if entry.rotated {
            let family = entry.family;
            self.revoke_family(family);
            return Err(OAuthError::invalid_grant(
                "refresh token was already rotated; reuse detected, the token family is revoked",
            ));
        }
        let scope = match requested_scope {
            None => entry.scope.clone(),
            Some(raw) => {
                let requested = scope::parse(raw)
                    .ok_or_else(|| OAuthError::invalid_scope("malformed scope"))?;
                if !scope::is_subset(&requested, &entry.scope) {
                    return Err(OAuthError::invalid_scope(
                        "requested scope exceeds the scope originally granted",
                    ));
                }
                if requested.is_empty() {
                    entry.scope.clone()
                } else {
                    requested.join(" ")
                }
            }
        };
        let family = entry.family;
        let login = entry.login.clone();
        let original_scope = entry.scope.clone();

        let expires_in = issuing.ttl;
        let access_token = self.issue_access(
            family,
            &login,
            GrantKind::RefreshToken,
            ACCESS_PREFIX,
            expires_in,
            now,
        );
        let refresh_token = if self.quirks.omit_refresh_token_on_refresh {
            None
        } else if issuing.rotate {
            let fresh = self.issue_refresh(family, client_id, &login, &original_scope);
            if let Some(old) = self.refresh.get_mut(refresh_token) {
                old.rotated = true;
            }
            Some(fresh)
        } else {
            Some(refresh_token.to_owned())
        };
        Ok(Issued {
            access_token,
            expires_in,
            refresh_token,
            scope,
            login,
            bot_token: None,
        })
    }

    /// RFC 6749 §4.4: an access token for the client itself, no refresh token.
    pub fn client_credentials(
        &mut self,
        client_id: &str,
        scope: Option<&str>,
        issuing: Issuing,
        now: SystemTime,
    ) -> Result<Issued, OAuthError> {
        let scope = match scope {
            None => String::new(),
            Some(raw) => scope::parse(raw)
                .ok_or_else(|| OAuthError::invalid_scope("malformed scope"))?
                .join(" "),
        };
        let login = format!("client:{client_id}");
        let family = self.next_family;
        self.next_family += 1;
        self.families.insert(
            family,
            Family {
                login: login.clone(),
                access: Vec::new(),
                refresh: Vec::new(),
            },
        );
        let expires_in = issuing.ttl;
        let access_token = self.issue_access(
            family,
            &login,
            GrantKind::ClientCredentials,
            ACCESS_PREFIX,
            expires_in,
            now,
        );
        Ok(Issued {
            access_token,
            expires_in,
            refresh_token: None,
            scope,
            login,
            bot_token: None,
        })
    }

    /// RFC 7009 §2.1: revokes `token` (an access or refresh token of
    /// `client_id`) and, for a refresh token, its whole family. Unknown tokens
    /// are no error (§2.2). Returns how many tokens were removed.
    pub fn revoke_token(&mut self, client_id: &str, token: &str) -> u64 {
        self.stats.revocation_calls += 1;
        let family = if let Some(entry) = self.refresh.get(token) {
            crypto::ct_eq(&entry.client_id, client_id).then_some(entry.family)
        } else {
            self.families
                .iter()
                .find(|(_, f)| f.access.iter().any(|t| t == token))
                .map(|(id, _)| *id)
        };
        let removed = match family {
            Some(id) => self.revoke_family(id),
            None => u64::from(self.access.remove(token).is_some()),
        };
        self.stats.tokens_revoked_by_client += removed;
        removed
    }

    /// Looks up a live access token.
    pub fn access(&self, token: &str, now: SystemTime) -> Option<AccessInfo> {
        let entry = self.access.get(token)?;
        if is_expired(entry.expires_at, now) {
            return None;
        }
        Some(AccessInfo {
            login: entry.login.clone(),
            grant: entry.grant,
            serial: entry.serial,
        })
    }

    /// Revokes everything granted to `login`: its token families and unredeemed codes.
    pub fn revoke_login(&mut self, login: &str) -> Revoked {
        let families: Vec<FamilyId> = self
            .families
            .iter()
            .filter(|(_, f)| f.login == login)
            .map(|(id, _)| *id)
            .collect();
        let mut out = Revoked::default();
        for id in families {
            out.tokens_revoked += self.revoke_family(id);
            out.families_revoked += 1;
        }
        self.codes
            .retain(|_, c| c.redeemed || c.grant.login != login);
        out
    }

    /// Removes a family and all its tokens; returns how many tokens were removed.
    /// Revokes every access token of `login`; the refresh tokens stay valid.
    pub fn revoke_login_access(&mut self, login: &str) -> Revoked {
        let mut out = Revoked::default();
        for family in self.families.values().filter(|f| f.login == login) {
            for t in &family.access {
                out.tokens_revoked += u64::from(self.access.remove(t).is_some());
            }
        }
        out
    }

    fn revoke_family(&mut self, id: FamilyId) -> u64 {
        let Some(family) = self.families.remove(&id) else {
            return 0;
        };
        self.stats.families_revoked += 1;
        let mut removed = 0;
        for t in &family.access {
            removed += u64::from(self.access.remove(t).is_some());
        }
        for t in &family.refresh {
            removed += u64::from(self.refresh.remove(t).is_some());
        }
        removed
    }

    /// How grants issue tokens under the current quirks: `ttl` is `None`
    /// (never expires) when the `omit_expires_in` quirk is on.
    pub fn issuing(&self) -> Issuing {
        Issuing {
            ttl: (!self.quirks.omit_expires_in).then_some(self.quirks.access_token_ttl_secs),
            rotate: self.quirks.rotate_refresh_tokens,
        }
    }

    /// Issues an access token living `ttl` seconds (`None`: forever).
    fn issue_access(
        &mut self,
        family: FamilyId,
        login: &str,
        grant: GrantKind,
        prefix: &str,
        ttl: Option<u64>,
        now: SystemTime,
    ) -> String {
        self.tick(now);
        self.serial += 1;
        // An overflowing expiry means "far future", which is what never expiring is.
        let expires_at = ttl.and_then(|ttl| now.checked_add(Duration::from_secs(ttl)));
        let token = crypto::random_token(prefix);
        self.access.insert(
            token.clone(),
            AccessEntry {
                login: login.to_owned(),
                grant,
                serial: self.serial,
                expires_at,
            },
        );
        if let Some(f) = self.families.get_mut(&family) {
            f.access.push(token.clone());
        }
        token
    }

    fn issue_refresh(
        &mut self,
        family: FamilyId,
        client_id: &str,
        login: &str,
        scope: &str,
    ) -> String {
        let token = crypto::random_token(REFRESH_PREFIX);
        self.refresh.insert(
            token.clone(),
            RefreshEntry {
                family,
                client_id: client_id.to_owned(),
                login: login.to_owned(),
                scope: scope.to_owned(),
                rotated: false,
            },
        );
        if let Some(f) = self.families.get_mut(&family) {
            f.refresh.push(token.clone());
        }
        token
    }

    /// Counts an issuance and now and then sweeps expired codes and access tokens.
    fn tick(&mut self, now: SystemTime) {
        self.issued_since_prune += 1;
        if self.issued_since_prune >= PRUNE_EVERY {
            self.issued_since_prune = 0;
            self.prune(now);
        }
    }

    fn prune(&mut self, now: SystemTime) {
        self.codes.retain(|_, c| {
            let keep_until = if c.redeemed {
                c.expires_at + REDEEMED_CODE_RETENTION
            } else {
                c.expires_at
            };
            now < keep_until
        });
        self.access.retain(|_, a| !is_expired(a.expires_at, now));
        let access = &self.access;
        for family in self.families.values_mut() {
            family.access.retain(|t| access.contains_key(t));
        }
    }

    #[cfg(test)]
    fn counts(&self) -> (usize, usize, usize, usize) {
        (
            self.codes.len(),
            self.access.len(),
            self.refresh.len(),
            self.families.len(),
        )
    }
}

fn is_expired(expires_at: Option<SystemTime>, now: SystemTime) -> bool {
    expires_at.is_some_and(|t| now >= t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";

    fn store() -> Store {
        Store::new(Quirks::from_config(&Config::new("app", "secret")))
    }

    fn grant() -> CodeGrant {
        CodeGrant {
            client_id: "app".into(),
            redirect_uri: "http://localhost/cb".into(),
            code_challenge: crypto::s256_challenge(VERIFIER),
            login: "alice".into(),
            scope: "read write".into(),
        }
    }

    fn redeem<'a>(code: &'a str) -> Redemption<'a> {
        Redemption {
            client_id: "app",
            code,
            redirect_uri: "http://localhost/cb",
            code_verifier: VERIFIER,
        }
    }

    #[test]
    fn code_expires_after_sixty_seconds() {
        let mut s = store();
        let t0 = SystemTime::now();
        let code = s.issue_code(grant(), t0);
        let err = s
            .redeem_code(redeem(&code), s.issuing(), t0 + CODE_LIFETIME)
            .unwrap_err();
        assert_eq!(err.error, "invalid_grant");
        let code = s.issue_code(grant(), t0);
        let issued = s
            .redeem_code(
                redeem(&code),
                s.issuing(),
                t0 + CODE_LIFETIME - Duration::from_secs(1),
            )
            .unwrap();
        assert_eq!(issued.login, "alice");
        assert_eq!(issued.scope, "read write");
        assert_eq!(issued.expires_in, Some(3600));
    }

    #[test]
    fn access_token_expires_by_clock() {
        let mut s = store();
        let t0 = SystemTime::now();
        let code = s.issue_code(grant(), t0);
        let issued = s.redeem_code(redeem(&code), s.issuing(), t0).unwrap();
        let t = &issued.access_token;
        assert!(s.access(t, t0 + Duration::from_secs(3599)).is_some());
        assert!(s.access(t, t0 + Duration::from_secs(3600)).is_none());
    }

    #[test]
    fn failed_checks_do_not_consume_the_code() {
        let mut s = store();
        let now = SystemTime::now();
        let code = s.issue_code(grant(), now);
        let mut bad = redeem(&code);
        bad.code_verifier = "x";
        assert_eq!(
            s.redeem_code(bad, s.issuing(), now).unwrap_err().error,
            "invalid_grant"
        );
        let mut bad = redeem(&code);
        bad.redirect_uri = "http://localhost/other";
        assert_eq!(
            s.redeem_code(bad, s.issuing(), now).unwrap_err().error,
            "invalid_grant"
        );
        assert!(s.redeem_code(redeem(&code), s.issuing(), now).is_ok());
        assert_eq!(s.stats.families_revoked, 0);
    }

    #[test]
    fn prune_sweeps_expired_entries() {
        let mut s = store();
        let t0 = SystemTime::now();
        s.quirks.access_token_ttl_secs = 10;
        let code = s.issue_code(grant(), t0);
        let issued = s.redeem_code(redeem(&code), s.issuing(), t0).unwrap();
        let _unused = s.issue_code(grant(), t0);
        assert_eq!(s.counts(), (2, 1, 1, 1));
        s.prune(t0 + Duration::from_secs(61));
        // The redeemed code is kept (replay detection), the unused expired one is gone,
        // the access token expired; the refresh token and family stay.
        assert_eq!(s.counts(), (1, 0, 1, 1));
        assert!(s
            .refresh(
                "app",
                issued.refresh_token.as_deref().unwrap(),
                None,
                s.issuing(),
                t0 + Duration::from_secs(61)
            )
            .is_ok());
        s.prune(t0 + REDEEMED_CODE_RETENTION + CODE_LIFETIME);
        assert_eq!(s.counts().0, 0);
    }

    #[test]
    fn revoke_login_drops_families_and_pending_codes() {
        let mut s = store();
        let now = SystemTime::now();
        let code = s.issue_code(grant(), now);
        let issued = s.redeem_code(redeem(&code), s.issuing(), now).unwrap();
        let pending = s.issue_code(grant(), now);
        let mut bob = grant();
        bob.login = "bob".into();
        let bob_code = s.issue_code(bob, now);
        let bob_issued = s.redeem_code(redeem(&bob_code), s.issuing(), now).unwrap();

        let out = s.revoke_login("alice");
        assert_eq!(
            out,
            Revoked {
                families_revoked: 1,
                tokens_revoked: 2
            }
        );
        assert!(s.access(&issued.access_token, now).is_none());
        assert!(s.access(&bob_issued.access_token, now).is_some());
        assert_eq!(
            s.redeem_code(redeem(&pending), s.issuing(), now)
                .unwrap_err()
                .error,
            "invalid_grant"
        );
        assert_eq!(s.stats.families_revoked, 1);
    }

    #[test]
    fn rotation_follows_the_issuing_policy() {
        let mut s = store();
        let now = SystemTime::now();
        for rotate in [false, true] {
            let issuing = Issuing {
                ttl: Some(60),
                rotate,
            };
            let code = s.issue_code(grant(), now);
            let first = s.redeem_code(redeem(&code), issuing, now).unwrap();
            let old = first.refresh_token.unwrap();
            let next = s.refresh("app", &old, None, issuing, now).unwrap();
            let new = next.refresh_token.unwrap();
            assert_eq!(new != old, rotate);
            let again = s.refresh("app", &old, None, issuing, now);
            // A rotated refresh token is refused (and its family revoked); a kept one works.
            assert_eq!(again.is_err(), rotate);
            assert_eq!(s.refresh("app", &new, None, issuing, now).is_err(), rotate);
        }
    }
}
