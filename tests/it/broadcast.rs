//! Live viewers over WebSocket and SSE, against the real stack.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    ElectionSpec, Proxy, RUNNERS, TestApp, code_of, insert_election, publish_version, spawn_app,
    spawn_app_with,
};

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn watch(app: &TestApp, election: i64) -> Socket {
    let url = format!("{}/v1/elections/{election}/live", app.broadcaster.replace("http://", "ws://"));
    tokio_tungstenite::connect_async(url).await.expect("websocket connects").0
}

/// The next tally message, or the close frame's code.
async fn next(socket: &mut Socket) -> Result<serde_json::Value, u16> {
    loop {
        let message =
            tokio::time::timeout(Duration::from_secs(15), socket.next()).await.expect("a message in time");
        match message {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).expect("json")),
            Some(Ok(Message::Close(frame))) => return Err(frame.map_or(1005, |f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            _ => return Err(1006),
        }
    }
}

/// Reads until a message satisfies `done`, checking versions never go
/// back. Frames that hide the counts carry no version.
async fn until(socket: &mut Socket, mut done: impl FnMut(&serde_json::Value) -> bool) -> serde_json::Value {
    let mut version = -1;
    loop {
        let message = next(socket).await.expect("still connected");
        if let Some(v) = message.get("version") {
            let v = v.as_i64().unwrap();
            assert!(v >= version, "version went back from {version} to {v}");
            version = v;
        }
        if done(&message) {
            return message;
        }
    }
}

fn votes(message: &serde_json::Value, runner: usize) -> Option<i64> {
    message["posts"][0]["runners"][runner]["votes"].as_i64()
}

#[tokio::test]
async fn a_viewer_gets_a_snapshot_at_once_then_each_new_tally() {
    let app = spawn_app().await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let mut viewer = watch(&app, election).await;
    let first = next(&mut viewer).await.unwrap();
    assert_eq!(first["type"], "tally");
    assert_eq!(
        (first["election_id"].as_i64(), first["status"].as_str(), first["final"].as_bool()),
        (Some(election), Some("open"), Some(false))
    );
    assert_eq!(first["posts"][0]["post"], "President");
    assert_eq!(first["posts"][0]["runners"][1]["full_name"], "Runner 9002");
    assert_eq!(
        (first["version"].as_i64(), first["turnout"].as_i64(), votes(&first, 0)),
        (Some(0), Some(0), Some(0))
    );
    assert!(first["at"].is_string());
    assert_eq!(first["anonymity_set"], 2);

    // 2K + 1 ballots: the workers commit the oldest K + 1 and hold K.
    app.ballots_from_new_voters(election, 500, 5, RUNNERS[1]).await;
    let live = until(&mut viewer, |m| m["turnout"].as_i64() > Some(0)).await;
    assert_eq!((live["turnout"].as_i64(), votes(&live, 0), votes(&live, 1)), (Some(3), Some(0), Some(3)));
    assert_eq!(live["final"], false);
    // The close flushes the rest, and the final frame counts every ballot.
    app.close(election).await;
    let last = until(&mut viewer, |m| m["final"] == true).await;
    assert_eq!(
        (last["status"].as_str(), last["turnout"].as_i64(), votes(&last, 0), votes(&last, 1)),
        (Some("closed"), Some(5), Some(0), Some(5))
    );
}

#[tokio::test]
async fn updates_are_capped_per_viewer_and_end_on_the_latest() {
    let app = spawn_app_with(::tally::app::Roles::ALL, |s| s.broadcaster.max_updates_per_sec = 2).await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let mut viewer = watch(&app, election).await;
    next(&mut viewer).await.unwrap();
    let started = std::time::Instant::now();
    for version in 1..=40 {
        publish_version(&app.deps().await.redis, &app, election, version).await;
    }
    let mut received = 0;
    let last = loop {
        let message = next(&mut viewer).await.unwrap();
        received += 1;
        if message["version"] == 40 {
            break message;
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(votes(&last, 0), Some(40));
    assert!(f64::from(received) <= 2.0 * elapsed + 2.0, "{received} frames in {elapsed:.2}s exceeds 2/s");
    assert!(received < 40, "updates were coalesced ({received} frames for 40 versions)");
}

#[tokio::test]
async fn a_viewer_that_never_reads_does_not_delay_others() {
    let app = spawn_app().await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let _stalled = watch(&app, election).await; // connected, never read
    let mut fast = watch(&app, election).await;
    next(&mut fast).await.unwrap();
    for version in 1..=30 {
        publish_version(&app.deps().await.redis, &app, election, version).await;
    }
    let last = until(&mut fast, |m| m["version"] == 30).await;
    assert_eq!(votes(&last, 0), Some(30));
}

#[tokio::test]
async fn visibility_rules_hold_on_the_live_feed() {
    let app = spawn_app().await;
    let turnout_only =
        insert_election(&app.db, ElectionSpec { visibility: "turnout_only", ..Default::default() }).await;
    let after_close =
        insert_election(&app.db, ElectionSpec { visibility: "after_close", ..Default::default() }).await;
    publish_version(&app.deps().await.redis, &app, turnout_only, 3).await;
    publish_version(&app.deps().await.redis, &app, after_close, 3).await;

    // Turnout only: the turnout, but no counts and no version (it counts
    // commits, so it would tell how often the counts moved).
    let mut viewer = watch(&app, turnout_only).await;
    let message = until(&mut viewer, |m| m["turnout"] == 3).await;
    assert!(message.get("version").is_none(), "{message}");
    assert!(message["posts"][0]["runners"][0].get("votes").is_none(), "{message}");

    // After close: the snapshot, taken after the tally was written, shows
    // only the status.
    let mut viewer = watch(&app, after_close).await;
    let message = next(&mut viewer).await.unwrap();
    assert_eq!(message["status"], "open");
    assert!(
        message.get("turnout").is_none()
            && message.get("version").is_none()
            && message["posts"][0]["runners"][0].get("votes").is_none(),
        "{message}"
    );

    // Closing reveals everything, and the feed says so by itself.
    sqlx::query("UPDATE runners SET total_votes = 3 WHERE election_id = $1 AND citizen_id = $2")
        .bind(after_close)
        .bind(RUNNERS[0])
        .execute(&app.db)
        .await
        .unwrap();
    sqlx::query("UPDATE elections SET turnout = 3, tally_version = 3 WHERE election_id = $1")
        .bind(after_close)
        .execute(&app.db)
        .await
        .unwrap();
    let admin = app.admin(1).await;
    let close =
        app.send_as(reqwest::Method::POST, &format!("/v1/elections/{after_close}/close"), &admin, None).await;
    assert_eq!(close.status(), 200);
    let closed = until(&mut viewer, |m| m["final"] == true).await;
    assert_eq!(
        (closed["status"].as_str(), closed["turnout"].as_i64(), votes(&closed, 0)),
        (Some("closed"), Some(3), Some(3))
    );
    assert_eq!(closed["version"], 3);
}

#[tokio::test]
async fn refusals_before_the_upgrade() {
    let app = spawn_app_with(::tally::app::Roles::ALL, |s| s.broadcaster.max_viewers_per_ip = 1).await;
    let missing =
        app.client.get(format!("{}/v1/elections/999999/live", app.broadcaster)).send().await.unwrap();
    assert_eq!(code_of(missing).await, (404, "election_not_found".into()));
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let plain =
        app.client.get(format!("{}/v1/elections/{election}/live", app.broadcaster)).send().await.unwrap();
    assert_eq!(code_of(plain).await, (426, "websocket_required".into()));
    let _first = watch(&app, election).await;
    let url = format!("{}/v1/elections/{election}/live", app.broadcaster.replace("http://", "ws://"));
    let refused = tokio_tungstenite::connect_async(url).await.unwrap_err();
    assert!(refused.to_string().contains("429"), "{refused}");
}

#[tokio::test]
async fn server_sent_events_carry_the_same_frames() {
    let app = spawn_app().await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let mut response =
        app.client.get(format!("{}/v1/elections/{election}/events", app.broadcaster)).send().await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let chunk =
        tokio::time::timeout(Duration::from_secs(10), response.chunk()).await.unwrap().unwrap().unwrap();
    let text = String::from_utf8_lossy(&chunk);
    assert!(text.starts_with("event: tally\ndata: {"), "{text}");
    let data: serde_json::Value =
        serde_json::from_str(text.lines().nth(1).unwrap().trim_start_matches("data: ")).unwrap();
    assert_eq!(data["election_id"], election);
}

#[tokio::test]
async fn viewers_end_at_the_final_tally_across_a_broadcaster_restart() {
    let app = spawn_app_with(crate::helpers::API_AND_WORKERS, |_| {}).await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut settings = app.settings.clone();
    settings.http.broadcaster_addr = ([127, 0, 0, 1], port).into();
    let broadcaster =
        crate::helpers::start_with(&app, settings.clone(), crate::helpers::BROADCASTER_ONLY).await;
    let mut viewer = watch(&broadcaster, election).await;
    next(&mut viewer).await.unwrap();

    let voter = app.voter(600).await;
    app.cast(&voter.access, election, &[RUNNERS[0]]).await;
    broadcaster.stop().await;
    assert_eq!(until_close(&mut viewer).await, 1001, "a clean close frame on shutdown");

    let voter = app.voter(601).await;
    app.cast(&voter.access, election, &[RUNNERS[0]]).await;
    app.close(election).await;
    app.recorded(election, 2).await;
    let restarted = crate::helpers::start_with(&app, settings, crate::helpers::BROADCASTER_ONLY).await;
    let mut viewer = watch(&restarted, election).await;
    let message = until(&mut viewer, |m| m["final"] == true).await;
    assert_eq!((message["turnout"].as_i64(), votes(&message, 0)), (Some(2), Some(2)));
}

async fn until_close(socket: &mut Socket) -> u16 {
    loop {
        if let Err(code) = next(socket).await {
            return code;
        }
    }
}

#[tokio::test]
async fn viewers_converge_after_redis_goes_away_and_comes_back_empty() {
    let app = spawn_app_with(crate::helpers::API_AND_WORKERS, |_| {}).await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let proxy = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let mut settings = app.settings.clone();
    settings.redis.url = tally_domain::secret::Secret::new(format!("redis://{}", proxy.addr));
    let broadcaster = crate::helpers::start_with(&app, settings, crate::helpers::BROADCASTER_ONLY).await;
    let mut viewer = watch(&broadcaster, election).await;
    next(&mut viewer).await.unwrap();

    proxy.cut();
    // As if Redis restarted empty: the tally is gone.
    let _: () = redis::cmd("DEL")
        .arg(app.keys().tally(election))
        .query_async(&mut app.deps().await.redis)
        .await
        .unwrap();
    // 2K + 1 ballots: one group of K + 1 is committed while the
    // broadcaster cannot hear of it.
    app.ballots_from_new_voters(election, 700, 5, RUNNERS[1]).await;
    app.recorded(election, 3).await;
    proxy.restore();
    // The same connection, without reconnecting, reaches the current tally...
    let message = until(&mut viewer, |m| m["turnout"] == 3).await;
    assert_eq!(votes(&message, 1), Some(3));
    // ...and then the final one.
    app.close(election).await;
    let message = until(&mut viewer, |m| m["final"] == true).await;
    assert_eq!((message["turnout"].as_i64(), votes(&message, 1)), (Some(5), Some(5)));
    viewer.close(None).await.ok();
    let _ = viewer.send(Message::Close(None)).await;
}

#[tokio::test]
async fn a_viewer_that_stops_answering_pings_is_dropped() {
    let app = spawn_app_with(::tally::app::Roles::ALL, |s| {
        s.broadcaster.ping_interval_secs = 1;
        s.broadcaster.max_viewers_per_ip = 1;
    })
    .await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    // Connected, then silent: it never reads, so it never answers a ping.
    let _silent = watch(&app, election).await;
    let url = format!("{}/v1/elections/{election}/live", app.broadcaster.replace("http://", "ws://"));
    assert!(tokio_tungstenite::connect_async(&url).await.is_err(), "the silent viewer holds the only place");
    // Within a bounded time the server drops it and the place frees up.
    let mut viewer = crate::helpers::eventually("the silent viewer to be dropped", || async {
        tokio_tungstenite::connect_async(&url).await.ok().map(|(socket, _)| socket)
    })
    .await;
    assert_eq!(next(&mut viewer).await.unwrap()["election_id"], election);
}
