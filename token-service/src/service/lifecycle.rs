//! The end of a connection's life and its renewal: a disconnect revokes the
//! grant at the provider where it supports RFC 7009, then always deletes the
//! connection locally; a reconnect is a new connect session with the
//! connection's parameters.

use crate::catalog::{AuthType, HttpMethod, RevocationClientAuth, RevocationStyle, RevokedToken};
use crate::crypto::secrets::ClientSecret;
use crate::crypto::vault::{Aad, Field};
use crate::error::Error;
use crate::service::connect::{app_provider, new_session, CreateSession, CreatedSession};
use crate::service::state::AppState;
use crate::store::connections::{self, ConnKey};
use crate::store::providers::{ClientAuth, ProviderRecord};
use crate::validate;
use authstamp_protocol::ErrorCode;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use url::form_urlencoded;
use zeroize::Zeroizing;

/// Bound of a revocation call; a slow provider never holds a disconnect.
const REVOCATION_TIMEOUT: Duration = Duration::from_secs(5);

/// What a disconnect's revocation did.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)] // only its schema is used (the OpenAPI document)
pub enum RevocationOutcome {
    Revoked,
    Failed,
    Unsupported,
}

/// What a disconnect did.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Disconnected {
    pub provider: String,
    pub user: String,
    /// The connection was deleted locally (always, when it existed).
    pub deleted: bool,
    /// `revoked`: the provider accepted the RFC 7009 revocation;
    /// `failed`: it did not (see `revocation_error`), the local delete
    /// happened anyway; `unsupported`: the provider has no RFC 7009
    /// endpoint (or the credential is not an OAuth token): local delete only.
    #[schema(value_type = RevocationOutcome)]
    pub revocation: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revocation_error: Option<String>,
}

pub async fn disconnect(
    state: &AppState,
    app_id: &str,
    provider_name: &str,
    user: &str,
) -> Result<Disconnected, Error> {
    validate::user_id(user)?;
    let provider = app_provider(state, app_id, provider_name).await?;
    let key = ConnKey {
        app_id: app_id.to_owned(),
        provider: provider.provider.clone(),
        user_id: user.to_owned(),
    };
    let connection = connections::get(&state.db, &key).await?.ok_or_else(|| {
        Error::new(
            ErrorCode::NotConnected,
            "the user has not connected this provider",
        )
    })?;
    let endpoint = provider
        .settings
        .revocation_url
        .as_ref()
        .filter(|_| {
            matches!(
                provider.settings.revocation_style,
                Some(RevocationStyle::Rfc7009 | RevocationStyle::Bearer)
            )
        })
        .filter(|_| provider.auth_type.is_oauth());
    let (revocation, revocation_error) = match endpoint {
        None => ("unsupported".to_owned(), None),
        Some(template) => {
            let aad = |field| Aad::connection(&key.app_id, &key.provider, &key.user_id, field);
            // A bearer-authenticated endpoint needs the access token.
            let wants_access = provider.settings.revocation_token == Some(RevokedToken::Access)
                || provider.settings.revocation_style == Some(RevocationStyle::Bearer);
            let (blob, hint, field) = match &connection.refresh_token {
                Some(blob) if !wants_access => (blob, "refresh_token", Field::RefreshToken),
                _ => (&connection.access_token, "access_token", Field::AccessToken),
            };
            let token = state.vault.open_string(&aad(field), blob)?;
            match revoke(state, &provider, template, &connection.params, &token, hint).await {
                Ok(()) => ("revoked".to_owned(), None),
                Err(reason) => {
                    tracing::warn!(app_id, provider = provider_name, %reason, "revocation at the provider failed; deleting locally anyway");
                    ("failed".to_owned(), Some(reason))
                }
            }
        }
    };
    let deleted = connections::delete(&state.db, &key).await?;
    tracing::info!(app_id, provider = provider_name, revocation = %revocation, "connection disconnected");
    crate::service::webhooks::emit(
        state,
        app_id,
        crate::service::webhooks::Event::Disconnected,
        &key.provider,
        user,
    );
    Ok(Disconnected {
        provider: key.provider,
        user: key.user_id,
        deleted,
        revocation,
        revocation_error,
    })
}

/// RFC 7009 §2.1: POST `token` and `token_type_hint`, with the client
/// authentication the catalog names for the endpoint (else the token
/// endpoint's); or, `bearer` style, the token itself as the credential and
/// no body. 2xx means revoked (also for an already invalid token, §2.2).
async fn revoke(
    state: &AppState,
    provider: &ProviderRecord,
    template: &str,
    params: &crate::template::Values,
    token: &str,
    hint: &str,
) -> Result<(), String> {
    let mut values = provider.values(params);
    values.insert("refresh_token".into(), token.to_owned());
    let url = crate::template::render_url(template, &values)?;
    let secret = state.client_secret(provider).map_err(|e| e.to_string())?;
    let client_auth =
        provider
            .settings
            .revocation_client_auth
            .unwrap_or(match provider.client_auth {
                ClientAuth::Basic => RevocationClientAuth::Basic,
                ClientAuth::Body => RevocationClientAuth::Body,
            });
    let bearer = provider.settings.revocation_style == Some(RevocationStyle::Bearer);
    let body = if bearer {
        Zeroizing::new(String::new())
    } else {
        revocation_form(provider, &secret, client_auth, token, hint)
    };
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REVOCATION_TIMEOUT)
        .build()
        .map_err(|_| "client".to_owned())?;
    let method = match provider.settings.revocation_method.unwrap_or_default() {
        HttpMethod::Post => reqwest::Method::POST,
        HttpMethod::Delete => reqwest::Method::DELETE,
    };
    let mut request = http
        .request(method, url)
        .header(reqwest::header::ACCEPT, "application/json");
    if !bearer {
        request = request.header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
    }
    if bearer {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "access token".to_owned())?;
        value.set_sensitive(true);
        request = request.header(reqwest::header::AUTHORIZATION, value);
    } else if client_auth == RevocationClientAuth::Basic {
        let id: String = form_urlencoded::byte_serialize(provider.client_id.as_bytes()).collect();
        let encoded_secret = Zeroizing::new(
            form_urlencoded::byte_serialize(secret.expose().as_bytes()).collect::<String>(),
        );
        let pair = Zeroizing::new(format!("{id}:{}", encoded_secret.as_str()));
        let mut value = reqwest::header::HeaderValue::from_str(&format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
        ))
        .map_err(|_| "client credentials".to_owned())?;
        value.set_sensitive(true);
        request = request.header(reqwest::header::AUTHORIZATION, value);
    }
    let response = request
        .body(body.as_bytes().to_vec())
        .send()
        .await
        .map_err(|e| {
            if e.is_timeout() {
                "timeout".to_owned()
            } else {
                "unreachable".to_owned()
            }
        })?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("http_{}", response.status().as_u16()))
    }
}

/// The form body (built apart: the serializer is not `Send`).
fn revocation_form(
    provider: &ProviderRecord,
    secret: &ClientSecret,
    client_auth: RevocationClientAuth,
    token: &str,
    hint: &str,
) -> Zeroizing<String> {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("token", token)
        .append_pair("token_type_hint", hint);
    if client_auth == RevocationClientAuth::Body {
        form.append_pair("client_id", &provider.client_id)
            .append_pair("client_secret", secret.expose());
    }
    Zeroizing::new(form.finish())
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Reconnect {
    #[serde(default)]
    pub return_to: Option<String>,
    #[serde(default)]
    #[schema(max_length = 120)]
    pub user_display_name: Option<String>,
}

/// A new connect session for an existing OAuth connection of `app`, with
/// its connection parameters (the API's reconnect and `authstamp connection
/// reconnect`).
pub async fn reconnect(
    state: &AppState,
    app: &crate::store::apps::AppRecord,
    provider_name: &str,
    user: &str,
    input: Reconnect,
) -> Result<CreatedSession, Error> {
    let user = user.to_owned();
    validate::user_id(&user)?;
    let provider = app_provider(state, &app.app_id, provider_name).await?;
    if provider.auth_type != AuthType::Oauth2 {
        return Err(Error::bad_request(
            "only OAuth authorization-code connections are reconnected in a browser",
        ));
    }
    let key = ConnKey {
        app_id: app.app_id.clone(),
        provider: provider.provider.clone(),
        user_id: user.clone(),
    };
    let connection = connections::get(&state.db, &key).await?.ok_or_else(|| {
        Error::new(
            ErrorCode::NotConnected,
            "the user has not connected this provider: create a connect session",
        )
    })?;
    let declared: Vec<&str> = provider
        .settings
        .connection_params
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    let params = connection
        .params
        .into_iter()
        .filter(|(k, _)| declared.contains(&k.as_str()))
        .collect();
    new_session(
        state,
        app,
        CreateSession {
            provider: provider.provider,
            user,
            return_to: input.return_to,
            user_display_name: input.user_display_name,
            params,
        },
    )
    .await
}
