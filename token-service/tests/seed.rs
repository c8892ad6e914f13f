//! `authstamp bench-seed`: seeded users are real connections to the lookup.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code

mod common;

use authstamp_token_service::seed::{self, Seed};
use common::*;
use std::time::Duration;

fn seed_of(app: &ConnectedApp, users: u64, start: u64, batch: u64) -> Seed {
    Seed {
        app_id: app.app_id.clone(),
        provider: app.provider.clone(),
        users,
        start,
        prefix: "bench-".into(),
        token_prefix: "tok_".into(),
        expires_in: Duration::from_secs(3600),
        batch,
    }
}

#[tokio::test]
async fn seeded_users_are_served_by_the_token_lookup() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;
    let seeded = seed::run(&h.state.db, &h.state.vault, &seed_of(&app, 25, 10, 7))
        .await
        .unwrap();
    assert_eq!(seeded.inserted, 25);
    assert_eq!(seeded.first_user, "bench-10");
    assert_eq!(seeded.last_user, "bench-34");

    for user in ["bench-10", "bench-22", "bench-34"] {
        let reply = h.lookup(&app, user, false).await;
        assert_eq!(reply.status.as_u16(), 200, "{}", reply.text());
        let body = reply.json();
        assert_eq!(body["header"]["value"], format!("Bearer tok_{user}"));
        let expires_at = body["expires_at"].as_i64().unwrap();
        assert!(expires_at > authstamp_token_service::db::now() + 3000);
    }
    for user in ["bench-9", "bench-35"] {
        h.lookup(&app, user, false)
            .await
            .assert_error(404, "not_connected");
    }

    // Seeding again replaces the rows.
    let again = seed::run(&h.state.db, &h.state.vault, &seed_of(&app, 25, 10, 1000))
        .await
        .unwrap();
    assert_eq!(again.inserted, 25);
}

#[tokio::test]
async fn seeding_needs_the_provider_configuration() {
    let h = Harness::new().await;
    let app = h.app_with_provider().await;
    let mut seed = seed_of(&app, 1, 0, 1);
    seed.provider = "nope".into();
    let err = seed::run(&h.state.db, &h.state.vault, &seed)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    let err = seed::run(&h.state.db, &h.state.vault, &seed_of(&app, 0, 0, 1))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("--users"), "{err}");
}
