//! The token lookup: what the filter stamps for (app, provider, user): the
//! provider row, the connection (or a connection journalled while the
//! database was away), refreshed first when due or forced, answered as the
//! credential and the upstream it may go to.

use crate::catalog::AuthType;
use crate::db;
use crate::error::Error;
use crate::service::connect::{app_provider, APP_USER};
use crate::service::credentials;
use crate::service::journalled_connect;
use crate::service::refresh::{self, Need, Served};
use crate::service::state::AppState;
use crate::store::connections::{self, ConnKey, ConnectionStatus};
use crate::store::providers::ProviderRecord;
use crate::validate::{self, TOKEN_PLACEHOLDER};
use authstamp_protocol::{Credential, ErrorCode, TokenLookupRequest, TokenLookupResponse};
use url::Url;

/// The answer to the filter's lookup for `app_id` (its app key already checked).
pub async fn lookup(
    state: &AppState,
    app_id: &str,
    request: &TokenLookupRequest,
) -> Result<TokenLookupResponse, Error> {
    validate::user_id(&request.user)?;
    let provider = app_provider(state, app_id, &request.provider).await?;
    if provider.auth_type == AuthType::Oauth2ClientCredentials {
        if request.user != APP_USER {
            return Err(Error::bad_request(format!(
                "provider {:?} uses an app-level client-credentials token: send the user {APP_USER:?}",
                provider.provider
            )));
        }
        let (served, params) =
            credentials::client_credentials_token(state, &provider, request.force_refresh).await?;
        return answer(&provider, &params, &served);
    }
    let key = ConnKey {
        app_id: app_id.to_owned(),
        provider: provider.provider.clone(),
        user_id: request.user.clone(),
    };
    let now = db::now();
    if let Some(journalled) =
        journalled_connect::served(state, &provider, &key, request.force_refresh, now)
    {
        // Connected while the database was away, not written yet.
        let (served, params) = journalled?;
        return answer(&provider, &params, &served);
    }
    let connection = connections::get(&state.db, &key).await?.ok_or_else(|| {
        Error::new(
            ErrorCode::NotConnected,
            "the user has not connected this provider",
        )
    })?;
    if connection.status == ConnectionStatus::ReauthRequired {
        return Err(refresh::reauth_required());
    }
    let policy = state.policy.with(&provider.policy);
    let params = connection.params.clone();
    let journalled = (!request.force_refresh)
        .then(|| refresh::journalled(state, &connection, &policy, now))
        .flatten();
    let served = if let Some(served) = journalled {
        // Refreshed while the database was away, not written yet.
        served?
    } else if request.force_refresh {
        refresh::refresh(state, &provider, connection, Need::Force).await?
    } else if refresh::is_due(&connection, &policy, now) || !connection.is_valid_at(now) {
        refresh::refresh(state, &provider, connection, Need::Due).await?
    } else {
        Served {
            access_token: refresh::open_access_token(state, &connection)?,
            expires_at: refresh::reported_expiry(&connection, &policy),
        }
    };
    answer(&provider, &params, &served)
}

/// The lookup's answer for a served token: the credential in its
/// placement, and the upstream of the connection's API URL.
pub fn answer(
    provider: &ProviderRecord,
    params: &crate::template::Values,
    served: &Served,
) -> Result<TokenLookupResponse, Error> {
    let api: Url = provider.api_base_url_for(params).map_err(|e| {
        Error::new(
            ErrorCode::Internal,
            format!("the connection's API URL cannot be built ({e})"),
        )
    })?;
    let api_hosts = provider
        .api_hosts(params)
        .map_err(|e| Error::internal("stored api_hosts are invalid", e))?;
    if !api_hosts.iter().any(|h| Some(h.as_str()) == api.host_str()) {
        return Err(Error::new(
            ErrorCode::ForbiddenDestination,
            "the connection's API host is not one of the provider's api_hosts",
        ));
    }
    let upstream = validate::upstream_of(&api)?;
    let response = TokenLookupResponse {
        credential: Credential {
            placement: provider.settings.stamp_in,
            name: provider.header_name.clone(),
            value: provider.header_format.replacen(
                TOKEN_PLACEHOLDER,
                served.access_token.expose(),
                1,
            ),
        },
        upstream,
        expires_at: served.expires_at.and_then(|at| u64::try_from(at).ok()),
    };
    // The filter applies the same rules and would refuse the answer: say
    // here what is wrong rather than leave it a bad answer there.
    authstamp_protocol::credential::check(&response.credential)
        .and_then(|()| authstamp_protocol::upstream::check(&response.upstream))
        .map_err(|reason| {
            Error::new(
                ErrorCode::Internal,
                format!("the connection's credential or upstream is invalid: {reason}"),
            )
        })?;
    Ok(response)
}
