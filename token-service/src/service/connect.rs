//! Connect sessions: the single-use link an app asks for, so one of its
//! users can connect a provider (a new connection or a reconnect).

use crate::catalog::{self, AuthType};
use crate::crypto::secrets::{sha256, SessionToken};
use crate::db;
use crate::error::Error;
use crate::service::state::AppState;
use crate::store::providers::{self, ProviderRecord};
use crate::store::sessions::{self, ConnectSession};
use crate::validate;
use authstamp_protocol::ErrorCode;
use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    pub provider: String,
    pub user: String,
    #[serde(default)]
    pub return_to: Option<String>,
    /// How the connect page names the user (the app's own label, e.g. an
    /// e-mail address), so a user can tell a link made for someone else.
    #[serde(default)]
    #[schema(max_length = 120)]
    pub user_display_name: Option<String>,
    /// Connection parameters the provider declares (a Zendesk subdomain, a
    /// Shopify shop), checked against their patterns.
    #[serde(default)]
    pub params: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedSession {
    pub connect_url: String,
    pub expires_at: i64,
}

pub(crate) async fn app_provider(
    state: &AppState,
    app_id: &str,
    provider: &str,
) -> Result<ProviderRecord, Error> {
    let unknown = || {
        Error::new(
            ErrorCode::UnknownProvider,
            format!("the app has no provider {provider:?}"),
        )
    };
    if validate::provider_name(provider).is_err() {
        return Err(unknown());
    }
    providers::get(&state.db, app_id, provider)
        .await?
        .ok_or_else(unknown)
}

/// A single-use connect link for one user of `app` (a new connection, or a
/// reconnect of an existing one).
pub async fn new_session(
    state: &AppState,
    app: &crate::store::apps::AppRecord,
    input: CreateSession,
) -> Result<CreatedSession, Error> {
    validate::user_id(&input.user)?;
    if let Some(name) = &input.user_display_name {
        display_name(name)?;
    }
    let provider = app_provider(state, &app.app_id, &input.provider).await?;
    if provider.auth_type == AuthType::Oauth2ClientCredentials {
        return Err(Error::bad_request(format!(
            "provider {:?} uses {} credentials: there is nothing to connect in a browser (the service fetches its token itself)",
            provider.provider,
            provider.auth_type.as_str(),
        )));
    }
    if input.user == APP_USER {
        return Err(Error::bad_request(format!(
            "user {APP_USER:?} is reserved for app-level credentials"
        )));
    }
    let params = catalog::resolve_params(&provider.settings.connection_params, &input.params)?;
    let urls = if provider.auth_type == AuthType::Oauth2 {
        provider.check_connect_urls(&params)
    } else {
        provider.urls(&params).map(|_| ())
    };
    urls.map_err(|e| Error::bad_request(format!("connection parameters: {e}")))?;
    let return_to = match &input.return_to {
        None => None,
        Some(text) => {
            let url = validate::http_url("return_to", text)?;
            if !validate::return_to_allowed(&url, &app.allowed_return_to) {
                return Err(Error::bad_request(
                    "return_to is not under any of the app's allowed_return_to URLs",
                ));
            }
            Some(url.to_string())
        }
    };
    let now = db::now();
    let ttl = i64::try_from(state.connect_session_ttl.as_secs()).unwrap_or(i64::MAX);
    let token = SessionToken::generate();
    let session = ConnectSession {
        token_hash: sha256(token.expose().as_bytes()).to_vec(),
        app_id: app.app_id.clone(),
        provider: provider.provider,
        user_id: input.user,
        return_to,
        user_display_name: input.user_display_name,
        params,
        created_at: now,
        expires_at: now.saturating_add(ttl),
    };
    sessions::purge_expired(&state.db, now).await?;
    sessions::insert_session(&state.db, &session).await?;
    Ok(CreatedSession {
        connect_url: state
            .public_url
            .join(&format!("{CONNECT_PATH}/{}", token.expose())),
        expires_at: session.expires_at,
    })
}

/// A display name the page can show: 1 to 120 characters, no control
/// characters (it is escaped on the page all the same).
fn display_name(name: &str) -> Result<(), Error> {
    let chars = name.chars().count();
    if chars == 0 || chars > DISPLAY_NAME_MAX || name.chars().any(char::is_control) {
        return Err(Error::bad_request(format!(
            "user_display_name must be 1 to {DISPLAY_NAME_MAX} characters without control characters"
        )));
    }
    Ok(())
}

/// Longest `user_display_name`, in characters.
pub const DISPLAY_NAME_MAX: usize = 120;

pub const CONNECT_PATH: &str = "/v1/connect";

/// The user id of app-level connections (client credentials, an app's own
/// API key): the app sends `x-authstamp-user: -`.
pub const APP_USER: &str = "-";
