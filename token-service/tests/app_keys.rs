//! App key rotation without downtime: a second key works next to the first,
//! the first keeps working until revoked or until its grace period ends, an
//! app always keeps one key, and no key ever works for another app.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use axum::http::{Method, StatusCode};
use common::{Backend, ConnectedApp, Harness, Options};
use serde_json::json;

fn with_key(app: &ConnectedApp, key: &str) -> ConnectedApp {
    ConnectedApp {
        app_id: app.app_id.clone(),
        app_key: key.to_owned(),
        provider: app.provider.clone(),
    }
}

async fn rotate_without_downtime(backend: Backend) {
    let h = Harness::with(Options::on(backend)).await;
    let app = h.app_with_provider().await;
    h.connect(&app, "alice").await;
    let old_key = app.app_key.clone();
    assert_eq!(h.lookup(&app, "alice", false).await.status, StatusCode::OK);

    let reply = h
        .admin(Method::POST, &format!("/v1/apps/{}/keys", app.app_id), None)
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let created = reply.json();
    let new_key = created["app_key"].as_str().unwrap().to_owned();
    let new_id = created["key_id"].as_str().unwrap().to_owned();
    assert!(new_key.starts_with("ask_") && new_key != old_key);
    assert!(created.get("others_expire_at").is_none());

    // Both keys work, for lookups and for connect sessions.
    for key in [&old_key, &new_key] {
        let reply = h.lookup(&with_key(&app, key), "alice", false).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let reply = h
            .as_app(
                &app.app_id,
                key,
                "/v1/connect-sessions",
                json!({"provider": "fake", "user": "bob"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    // The key is shown once: the list has ids and dates, never a key or digest.
    let listed = h
        .admin(Method::GET, &format!("/v1/apps/{}/keys", app.app_id), None)
        .await;
    assert_eq!(listed.status, StatusCode::OK);
    let text = listed.text();
    assert!(
        !text.contains(&new_key) && !text.contains(&old_key),
        "{text}"
    );
    let keys = listed.json()["keys"].as_array().unwrap().clone();
    assert_eq!(keys.len(), 2, "{text}");
    let old_id = keys
        .iter()
        .find(|k| k["key_id"] != new_id.as_str())
        .unwrap()["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(keys.iter().all(|k| k["valid"] == true));

    // Revoking the old key: it stops working at once, the new one goes on.
    let reply = h
        .admin(
            Method::DELETE,
            &format!("/v1/apps/{}/keys/{old_id}", app.app_id),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT, "{}", reply.text());
    h.lookup(&with_key(&app, &old_key), "alice", false)
        .await
        .assert_error(401, "bad_app_key");
    assert_eq!(
        h.lookup(&with_key(&app, &new_key), "alice", false)
            .await
            .status,
        StatusCode::OK
    );
    // The last key cannot be revoked; an unknown one is not found.
    h.admin(
        Method::DELETE,
        &format!("/v1/apps/{}/keys/{new_id}", app.app_id),
        None,
    )
    .await
    .assert_error(409, "conflict");
    h.admin(
        Method::DELETE,
        &format!("/v1/apps/{}/keys/key_nope", app.app_id),
        None,
    )
    .await
    .assert_error(404, "not_found");

    // With a grace period the other keys expire on their own.
    let reply = h
        .admin(
            Method::POST,
            &format!("/v1/apps/{}/keys", app.app_id),
            Some(json!({"grace": "1h"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let third = reply.json();
    assert!(third["others_expire_at"].as_i64().unwrap() > third["created_at"].as_i64().unwrap());
    let third_key = third["app_key"].as_str().unwrap().to_owned();
    assert_eq!(
        h.lookup(&with_key(&app, &new_key), "alice", false)
            .await
            .status,
        StatusCode::OK,
        "still inside its grace period"
    );
    // The grace period ends.
    h.exec(&format!(
        "UPDATE app_keys SET expires_at = 1 WHERE app_id = '{}' AND expires_at IS NOT NULL",
        app.app_id
    ))
    .await;
    h.lookup(&with_key(&app, &new_key), "alice", false)
        .await
        .assert_error(401, "bad_app_key");
    assert_eq!(
        h.lookup(&with_key(&app, &third_key), "alice", false)
            .await
            .status,
        StatusCode::OK
    );

    // No key of this app works for another app, and the other way round.
    let other = h.app_with_provider().await;
    h.connect(&other, "alice").await;
    for key in [&old_key, &new_key, &third_key] {
        h.lookup(&with_key(&other, key), "alice", false)
            .await
            .assert_error(401, "bad_app_key");
    }
    h.lookup(&with_key(&app, &other.app_key), "alice", false)
        .await
        .assert_error(401, "bad_app_key");

    // Admin only; bounded inputs.
    let reply = h
        .as_app(
            &app.app_id,
            &third_key,
            &format!("/v1/apps/{}/keys", app.app_id),
            json!({}),
        )
        .await;
    reply.assert_error(401, "unauthorized");
    h.admin(Method::POST, "/v1/apps/app_nope/keys", None)
        .await
        .assert_error(404, "not_found");
    h.admin(
        Method::POST,
        &format!("/v1/apps/{}/keys", app.app_id),
        Some(json!({"grace": "1000d"})),
    )
    .await
    .assert_error(400, "bad_request");
    h.admin(
        Method::POST,
        &format!("/v1/apps/{}/keys", app.app_id),
        Some(json!({"grace": "soon"})),
    )
    .await
    .assert_error(400, "bad_request");
    // Only digests are stored.
    for key in [&old_key, &new_key, &third_key] {
        assert!(!h.stores_in_clear(key).await);
    }
}

both_backends!(app_keys_rotate_without_downtime, rotate_without_downtime);

#[tokio::test]
async fn an_app_holds_at_most_ten_valid_keys() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;
    for _ in 0..9 {
        let reply = h
            .admin(Method::POST, &format!("/v1/apps/{}/keys", app.app_id), None)
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    h.admin(Method::POST, &format!("/v1/apps/{}/keys", app.app_id), None)
        .await
        .assert_error(409, "conflict");
}

/// The key ids the admin API lists as valid.
async fn valid_key_ids(h: &Harness, app_id: &str) -> Vec<String> {
    let listed = h
        .admin(Method::GET, &format!("/v1/apps/{app_id}/keys"), None)
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{}", listed.text());
    listed.json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["valid"] == true)
        .map(|k| k["key_id"].as_str().unwrap().to_owned())
        .collect()
}

/// 30 rotations at once leave exactly ten valid keys (the count check and
/// the insert are one transaction), and 30 revocations at once never answer
/// 500 and never remove the last key.
async fn concurrent_rotations_and_revocations(backend: Backend) {
    let h = std::sync::Arc::new(Harness::with(Options::on(backend)).await);
    let app = h.app_with_provider().await;
    let rotations: Vec<_> = (0..30)
        .map(|_| {
            let h = h.clone();
            let uri = format!("/v1/apps/{}/keys", app.app_id);
            tokio::spawn(async move { h.admin(Method::POST, &uri, None).await })
        })
        .collect();
    let mut created = Vec::new();
    for rotation in rotations {
        let reply = rotation.await.unwrap();
        if reply.status == StatusCode::CREATED {
            created.push(reply.json()["app_key"].as_str().unwrap().to_owned());
        } else {
            reply.assert_error(409, "conflict");
            assert!(reply.json()["message"]
                .as_str()
                .unwrap()
                .contains("at most 10"));
        }
    }
    // The app's first key plus nine new ones.
    assert_eq!(created.len(), 9);
    let valid = valid_key_ids(&h, &app.app_id).await;
    assert_eq!(valid.len(), 10, "{valid:?}");
    for key in &created {
        let reply = h
            .as_app(
                &app.app_id,
                key,
                "/v1/connect-sessions",
                json!({"provider": "fake", "user": "bob"}),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "every created key works");
    }

    // Every valid key revoked three times over, all at once.
    let revocations: Vec<_> = valid
        .iter()
        .cycle()
        .take(30)
        .map(|key_id| {
            let h = h.clone();
            let uri = format!("/v1/apps/{}/keys/{key_id}", app.app_id);
            tokio::spawn(async move { h.admin(Method::DELETE, &uri, None).await })
        })
        .collect();
    let mut revoked = 0;
    for revocation in revocations {
        let reply = revocation.await.unwrap();
        match reply.status.as_u16() {
            204 => revoked += 1,
            404 => reply.assert_error(404, "not_found"),
            _ => reply.assert_error(409, "conflict"),
        }
    }
    assert_eq!(revoked, 9);
    let left = valid_key_ids(&h, &app.app_id).await;
    assert_eq!(left.len(), 1, "the last key is never revoked: {left:?}");
}

both_backends!(
    app_keys_are_atomic_under_concurrency,
    concurrent_rotations_and_revocations
);
