//! The connect page of API-key and Basic providers: the connect link shows
//! a form built from the provider's fields (catalog labels, help text, a
//! link to where the key is found). Its post passes the same origin and
//! CSRF checks as the OAuth Connect button; what the user entered may be
//! checked with one call at the provider, then the session is used up and
//! the credentials are sealed, ending like an OAuth connect: the result
//! page, or back to the app's `return_to` for its confirmation.

use crate::catalog::{ApiKeyField, AuthType, KeyCheck};
use crate::crypto::secrets::{hex, sha256, AccessToken, CsrfToken, SessionToken};
use crate::db;
use crate::http::callback::redirect_to_return;
use crate::http::connect::{
    app_name, finish_response, page_path, set_csrf_cookie, shown_user, CSRF_FIELD,
};
use crate::http::error::ApiError;
use crate::http::html::{self, KeyConnectPage, KeyField};
use crate::oauth::client::{CredentialStamp, TokenSet};
use crate::service::credentials::{self, FieldError, API_KEY_MAX, PASSWORD_MAX, USERNAME_MAX};
use crate::service::state::AppState;
use crate::store::connections::ConnKey;
use crate::store::providers::ProviderRecord;
use crate::store::sessions::{self, ConnectSession};
use authstamp_protocol::Placement;
use axum::http::StatusCode;
use axum::response::Response;

/// Providers whose connect page is a credentials form.
pub fn is_key_provider(auth_type: AuthType) -> bool {
    matches!(auth_type, AuthType::ApiKey | AuthType::Basic)
}

/// What a shown form says besides its fields: a problem with the entry
/// and the user name entered (a secret is never shown again).
#[derive(Default)]
pub struct Shown {
    pub problem: Option<FieldError>,
    pub username: Option<String>,
}

/// The provider's form fields; without any configured, the plain labels.
fn fields_of(provider: &ProviderRecord) -> Vec<ApiKeyField> {
    if !provider.settings.api_key_fields.is_empty() {
        return provider.settings.api_key_fields.clone();
    }
    let field = |name: &str, label: &str, secret| ApiKeyField {
        name: name.to_owned(),
        label: label.to_owned(),
        secret,
        help: None,
        help_url: None,
    };
    match provider.auth_type {
        AuthType::Basic => vec![
            field("username", "Username", false),
            field("password", "Password", true),
        ],
        _ => vec![field("api_key", "API key", true)],
    }
}

fn max_len(name: &str) -> usize {
    match name {
        "username" => USERNAME_MAX,
        "password" => PASSWORD_MAX,
        _ => API_KEY_MAX,
    }
}

/// The form for `session`, with a fresh CSRF token in the form and its
/// cookie; `status` 200 when first shown, the problem's status when shown
/// again.
pub async fn form_page(
    state: &AppState,
    token: &SessionToken,
    session: &ConnectSession,
    provider: &ProviderRecord,
    status: StatusCode,
    shown: &Shown,
) -> Result<Response, ApiError> {
    let app = app_name(state, session).await?;
    let action = page_path(state, token);
    let csrf = CsrfToken::generate();
    let fields = fields_of(provider);
    let problem = shown.problem.as_ref();
    let field_error = |name: &str| {
        problem
            .filter(|p| p.field == Some(name))
            .map(|p| p.message.as_str())
    };
    let form_error = problem
        .filter(|p| p.field.is_none_or(|f| !fields.iter().any(|x| x.name == f)))
        .map(|p| p.message.as_str());
    let focused = fields
        .iter()
        .position(|f| field_error(&f.name).is_some())
        .unwrap_or(0);
    let views = fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let error = field_error(&f.name);
            let mut described_by = Vec::new();
            if f.help.is_some() || f.help_url.is_some() {
                described_by.push(format!("{}-help", f.name));
            }
            if error.is_some() {
                described_by.push(format!("{}-error", f.name));
            }
            if form_error.is_some() {
                described_by.push("form-error".to_owned());
            }
            KeyField {
                name: &f.name,
                label: &f.label,
                help: f.help.as_deref(),
                help_url: f.help_url.as_deref(),
                secret: f.secret,
                value: match (f.secret, f.name.as_str()) {
                    (false, "username") => shown.username.as_deref().unwrap_or(""),
                    _ => "",
                },
                error,
                invalid: error.is_some() || form_error.is_some(),
                maxlength: max_len(&f.name),
                required: f.name != "password",
                autofocus: i == focused,
                described_by: described_by.join(" "),
            }
        })
        .collect();
    let requested = match provider.auth_type {
        AuthType::Basic => "username and password".to_owned(),
        _ => fields
            .first()
            .map_or("API key".to_owned(), |f| f.label.clone()),
    };
    let mut response = html::key_connect_page(&KeyConnectPage {
        provider: provider.shown_name(),
        app: &app,
        user: shown_user(session),
        requested: &requested,
        checked: provider.settings.key_check.is_some(),
        fields: views,
        form_error,
        action: &action,
        csrf: csrf.expose(),
    });
    *response.status_mut() = status;
    set_csrf_cookie(state, &mut response, &action, &csrf)?;
    Ok(response)
}

/// What the form posted: the credentials the provider takes.
#[derive(Default)]
struct Entered {
    api_key: Option<AccessToken>,
    username: Option<String>,
    password: Option<AccessToken>,
}

/// Which fields were posted, never their values: some providers take an
/// API key as the Basic user name.
impl std::fmt::Debug for Entered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entered")
            .field("api_key", &self.api_key.is_some())
            .field("username", &self.username.is_some())
            .field("password", &self.password.is_some())
            .finish()
    }
}

/// The posted form's fields; an unknown or repeated field is refused.
fn parse_form(form: &[u8]) -> Result<Entered, ApiError> {
    let mut entered = Entered::default();
    let mut csrf_seen = false;
    for (name, value) in url::form_urlencoded::parse(form) {
        let repeated =
            match name.as_ref() {
                CSRF_FIELD => std::mem::replace(&mut csrf_seen, true),
                "api_key" => entered
                    .api_key
                    .replace(AccessToken::new(value.as_ref()))
                    .is_some(),
                "username" => entered.username.replace(value.into_owned()).is_some(),
                "password" => entered
                    .password
                    .replace(AccessToken::new(value.as_ref()))
                    .is_some(),
                _ => return Err(ApiError::bad_request(
                    "the connect form has a field it does not take; open the connect link again",
                )),
            };
        if repeated {
            return Err(ApiError::bad_request(format!(
                "the connect form has {name:?} twice; open the connect link again"
            )));
        }
    }
    Ok(entered)
}

/// The form's post, after the origin and CSRF checks: validates the entry,
/// runs the provider's key check, then uses the session up and keeps the
/// credentials. A bad or refused entry shows the form again with the
/// problem and keeps nothing; the session stays usable.
pub async fn submit(
    state: &AppState,
    token: &SessionToken,
    session: &ConnectSession,
    provider: &ProviderRecord,
    form: &[u8],
) -> Result<Response, ApiError> {
    let session_hash = sha256(token.expose().as_bytes());
    let again = |status, problem: FieldError, username: Option<String>| async move {
        form_page(
            state,
            token,
            session,
            provider,
            status,
            &Shown {
                problem: Some(problem),
                username,
            },
        )
        .await
    };
    if let Err(wait) = state.limits.key_submissions.check(&hex(&session_hash)) {
        let secs = wait.as_secs().max(1);
        let problem = FieldError {
            field: None,
            message: format!("Too many attempts with this link. Wait {secs} s and try again."),
        };
        return again(StatusCode::TOO_MANY_REQUESTS, problem, None).await;
    }
    let entered = parse_form(form)?;
    let username = entered.username.clone();
    // A Basic form without a password field posts none: an empty one.
    let password = match (provider.auth_type, entered.password) {
        (AuthType::Basic, None) => Some(AccessToken::new("")),
        (_, password) => password,
    };
    let secret = match credentials::credential_secret(
        provider.auth_type,
        &provider.provider,
        entered.api_key.as_ref(),
        entered.username.as_deref(),
        password.as_ref(),
    ) {
        Ok(secret) => secret,
        Err(problem) => return again(StatusCode::BAD_REQUEST, problem, username).await,
    };
    if let Some(check) = &provider.settings.key_check {
        if let Err((status, problem)) = run_check(state, provider, session, check, &secret).await {
            return again(status, problem, username).await;
        }
    }
    // Used up only now: a refused entry can be corrected on the same link.
    let session = sessions::take_session(&state.db, &session_hash)
        .await?
        .filter(|s| s.expires_at > db::now())
        .ok_or_else(ApiError::invalid_state)?;
    let key = ConnKey {
        app_id: session.app_id.clone(),
        provider: session.provider.clone(),
        user_id: session.user_id.clone(),
    };
    let mut response = match &session.return_to {
        // As after an OAuth callback: the app confirms its logged-in user
        // before the connection exists.
        Some(return_to) => {
            let tokens = TokenSet {
                access_token: secret,
                refresh_token: None,
                expires_in: None,
                scope: None,
                derived: crate::template::Values::new(),
            };
            let result =
                crate::http::confirm::hold(state, &key, "", &tokens, &session.params, db::now())
                    .await?;
            redirect_to_return(return_to, &result, StatusCode::SEE_OTHER)?
        }
        None => {
            credentials::store_credentials(
                state,
                &key,
                provider.auth_type,
                &secret,
                &session.params,
            )
            .await?;
            html::connected_page(&key.provider, &key.user_id)
        }
    };
    finish_response(state, &mut response, token)?;
    Ok(response)
}

/// The provider's key check: `Err` with the status and the problem to show
/// when the provider answers anything but the expected status, or cannot be
/// reached.
async fn run_check(
    state: &AppState,
    provider: &ProviderRecord,
    session: &ConnectSession,
    check: &KeyCheck,
    secret: &AccessToken,
) -> Result<(), (StatusCode, FieldError)> {
    let name = provider.shown_name();
    let internal = |what: &str| {
        tracing::error!(provider = %provider.provider, "key check URL: {what}");
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            FieldError {
                field: None,
                message: format!("The check call to {name} is misconfigured; nothing was stored."),
            },
        )
    };
    let base = provider
        .urls(&session.params)
        .map_err(|_| internal("api_base_url does not render"))?
        .api_base_url;
    let url = base
        .join(&check.path)
        .map_err(|_| internal("path does not join"))?;
    // The entered credential goes to the API's own origin or nowhere.
    if url.origin() != base.origin() {
        return Err(internal("path leaves the API origin"));
    }
    let stamp = CredentialStamp {
        name: &provider.header_name,
        format: &provider.header_format,
        in_query: provider.settings.stamp_in == Placement::Query,
    };
    match state
        .token_client
        .check_credential(check.method, url, &stamp, secret)
        .await
    {
        Ok(status) if status.as_u16() == check.expect_status => Ok(()),
        Ok(status) => {
            tracing::info!(provider = %provider.provider, status = status.as_u16(), "key check refused the entered credentials");
            Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                FieldError {
                    field: None,
                    message: format!(
                        "{name} did not accept these credentials (HTTP {}). Check them and try again; nothing was stored.",
                        status.as_u16()
                    ),
                },
            ))
        }
        Err(err) => {
            let reason = err.reason();
            tracing::warn!(provider = %provider.provider, reason = %reason, "key check call failed");
            Err((
                StatusCode::BAD_GATEWAY,
                FieldError {
                    field: None,
                    message: format!(
                        "Could not reach {name} to check these credentials ({reason}). Nothing was stored; try again."
                    ),
                },
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_repeated_fields_are_refused() {
        assert!(parse_form(b"csrf=t&api_key=k").is_ok());
        assert!(parse_form(b"csrf=t&api_key=a&api_key=b").is_err());
        assert!(parse_form(b"csrf=t&csrf=u&api_key=a").is_err());
        assert!(parse_form(b"csrf=t&client_secret=x").is_err());
        let entered = parse_form(b"username=carol&password=p%3Aw%20d").unwrap();
        assert_eq!(entered.username.as_deref(), Some("carol"));
        assert_eq!(entered.password.unwrap().expose(), "p:w d");
    }

    #[test]
    fn entered_secrets_are_not_in_debug_output() {
        let entered = parse_form(b"api_key=sk-live-0123456789").unwrap();
        assert!(!format!("{entered:?}").contains("sk-live"));
        let entered = parse_form(b"username=key-as-user&password=pw-1").unwrap();
        let debug = format!("{entered:?}");
        assert!(
            !debug.contains("key-as-user") && !debug.contains("pw-1"),
            "{debug}"
        );
        assert!(debug.contains("username: true"), "{debug}");
    }
}
