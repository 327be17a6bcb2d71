use std::time::{Duration, Instant};

use roster::dev_target::DevTargetArgs;
use roster::scim::{ErrorClass, ScimError, TransportKind};

use crate::helpers::{spawn_target, spawn_target_with, user};

#[tokio::test]
async fn above_the_rate_limit_answers_429_with_retry_after() {
    let t = spawn_target(DevTargetArgs {
        rate_limit: Some(5),
        ..DevTargetArgs::default()
    })
    .await;
    let mut throttled: i64 = 0;
    let started = Instant::now();
    for _ in 0..20 {
        match t.client.users().get("nobody").await {
            Err(e) if e.status() == Some(429) => {
                assert_eq!(e.class(), ErrorClass::Transient);
                let wait = e.retry_after().expect("Retry-After parsed");
                assert!(
                    wait >= Duration::from_secs(1) && wait <= Duration::from_secs(2),
                    "{wait:?}"
                );
                throttled += 1;
            }
            Err(e) => assert_eq!(e.status(), Some(404), "{e}"),
            Ok(_) => panic!("no such user"),
        }
    }
    // A burst of 5, then 5 a second: however fast or slow this machine sent the 20, no more
    // passed than the bucket allowed in the time it took, and the burst always passed.
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = 5 + (elapsed * 5.0).ceil() as i64;
    let passed = 20 - throttled;
    assert!(
        passed >= 5 && passed <= allowed,
        "{passed} passed in {elapsed:.2} s, the bucket allows {allowed}"
    );
    assert_eq!(t.target.stats()["throttled"], throttled);
    assert_eq!(t.target.stats()["requests"]["GET"], 20);
}

#[tokio::test]
async fn fail_rate_one_answers_5xx_classified_transient() {
    let t = spawn_target(DevTargetArgs {
        fail_rate: 1.0,
        seed: Some(7),
        ..DevTargetArgs::default()
    })
    .await;
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let err = t.client.users().create(&user("x")).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        if err.status() == Some(503) {
            assert_eq!(err.retry_after(), Some(Duration::from_secs(1)));
        }
        statuses.push(err.status().unwrap());
    }
    assert!(
        statuses.contains(&500) && statuses.contains(&503),
        "{statuses:?}"
    );
    assert_eq!(t.target.stats()["users"], 0);
    assert_eq!(t.target.stats()["failed"], 10);
}

#[tokio::test]
async fn a_hanging_target_times_out_as_transient() {
    let t = spawn_target_with(
        DevTargetArgs {
            hang_rate: 1.0,
            ..DevTargetArgs::default()
        },
        |c| {
            c.timeout = Duration::from_millis(300);
        },
    )
    .await;
    let started = Instant::now();
    let err = t.client.users().get("x").await.unwrap_err();
    assert!(
        matches!(
            err,
            ScimError::Transport {
                kind: TransportKind::Timeout,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_transient());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(t.target.stats()["hung"], 1);
    // Shutdown ends the hanging handler instead of waiting for it.
    let stopping = Instant::now();
    t.target.shutdown().await.unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn latency_delays_every_answer() {
    let t = spawn_target(DevTargetArgs {
        latency_ms: 200,
        ..DevTargetArgs::default()
    })
    .await;
    let _ = t.client.users().get("x").await;
    let call = &t.calls.all()[0];
    assert!(
        call.duration >= Duration::from_millis(200),
        "{:?}",
        call.duration
    );
}

#[tokio::test]
async fn stats_count_requests_by_method_and_resources() {
    let t = spawn_target(DevTargetArgs::default()).await;
    let a = t.client.users().create(&user("stats-a")).await.unwrap();
    t.client.users().create(&user("stats-b")).await.unwrap();
    t.client
        .groups()
        .create(&serde_json::json!({"schemas": [roster::scim::schemas::GROUP], "displayName": "g"}))
        .await
        .unwrap();
    t.client
        .users()
        .get(roster::scim::id_of(&a).unwrap())
        .await
        .unwrap();
    t.client
        .users()
        .delete(roster::scim::id_of(&a).unwrap())
        .await
        .unwrap();
    // Over HTTP, without a token, as dashboards and scripts read it.
    roster::scim::install_crypto_provider();
    let stats: serde_json::Value = reqwest::get(format!("http://{}/_dev/stats", t.target.addr()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["requests"]["POST"], 3);
    assert_eq!(stats["requests"]["GET"], 1);
    assert_eq!(stats["requests"]["DELETE"], 1);
    assert_eq!(stats["throttled"], 0);
    assert_eq!(stats["users"], 1);
    assert_eq!(stats["groups"], 1);
    let reset = reqwest::Client::new()
        .post(format!("http://{}/_dev/reset", t.target.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), 204);
    assert_eq!(t.target.stats()["users"], 0);
    assert_eq!(t.target.stats()["requests"], serde_json::json!({}));
}
