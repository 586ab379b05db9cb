//! Resource exhaustion: password hashing under a login flood, connections
//! that never start, and viewers that could run the broadcaster out of
//! memory.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use ::tally::app::Roles;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout};
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    Cleanup, ElectionSpec, Namespace, TestApp, insert_election, publish_version, spawn_app_with,
};

// ---------------------------------------------------------------------------
// Password hashing

/// `tally serve --roles api` in a process of its own, so the hashing
/// gauges it reports are its alone (metrics are process-wide, and other
/// tests hash passwords in this one).
struct ApiProcess {
    child: tokio::process::Child,
    api: String,
    admin: String,
    _cleanup: Cleanup,
}

impl ApiProcess {
    async fn start(extra: &[(&str, &str)]) -> ApiProcess {
        let ns = Namespace::new();
        ns.create_database().await;
        let s = ns.settings();
        crate::helpers::provision_streams(&s).await;
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_tally"));
        command
            .args(["serve", "--roles", "api"])
            .env("TALLY_DATABASE__URL", s.database.url.expose())
            .env("TALLY_REDIS__KEY_PREFIX", &s.redis.key_prefix)
            .env("TALLY_NATS__STREAM", &s.nats.stream)
            .env("TALLY_NATS__SUBJECT_PREFIX", &s.nats.subject_prefix)
            .env("TALLY_NATS__CONSUMER", &s.nats.consumer)
            .env("TALLY_NATS__MAX_BYTES", s.nats.max_bytes.to_string())
            .env("TALLY_HTTP__API_ADDR", "127.0.0.1:0")
            .env("TALLY_HTTP__ADMIN_ADDR", "127.0.0.1:0")
            .env("TALLY_LOG__FILTER", "error")
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        for (name, value) in extra {
            command.env(name, value);
        }
        let mut child = command.spawn().expect("run tally serve");
        // It prints its addresses once ready.
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut api, mut admin) = (String::new(), String::new());
        let read = async {
            while let Some(line) = lines.next_line().await.unwrap() {
                let url = line.split_whitespace().last().unwrap_or_default().to_string();
                if line.starts_with("API ") && url.ends_with("/v1") {
                    api = url.trim_end_matches("/v1").to_string();
                } else if line.starts_with("Metrics ") {
                    admin = url.trim_end_matches("/metrics").to_string();
                    return;
                }
            }
        };
        timeout(Duration::from_secs(60), read).await.expect("tally serve becomes ready");
        // It prints more; a closed pipe would make its next print panic.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ApiProcess { child, api, admin, _cleanup: Cleanup(ns) }
    }

    async fn gauge(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.admin)).await.unwrap().text().await.unwrap();
        let line = text.lines().find(|l| l.split_whitespace().next() == Some(name));
        line.unwrap_or_else(|| panic!("{name} missing from /metrics"))
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse()
            .unwrap()
    }
}

/// `clients` clients each log in `each` times with a wrong password,
/// giving up on any answer after 60 ms.
async fn flood_logins(login: &str, clients: i64, each: i64, first_id: i64) {
    let client = reqwest::Client::builder().timeout(Duration::from_millis(60)).build().unwrap();
    let mut flood = tokio::task::JoinSet::new();
    for n in 0..clients {
        let (client, login) = (client.clone(), login.to_string());
        flood.spawn(async move {
            for attempt in 0..each {
                let body = serde_json::json!({"citizen_id": first_id + n * each + attempt, "password": "a guess, wrong"});
                let _ = client.post(&login).json(&body).send().await;
            }
        });
    }
    while flood.join_next().await.is_some() {}
}

#[tokio::test]
async fn a_login_flood_never_runs_more_hashes_than_the_limit() {
    // A 30 ms request timeout makes the server drop request futures while
    // their hashes run, again and again.
    let server = ApiProcess::start(&[
        ("TALLY_AUTH__MAX_CONCURRENT_HASHES", "2"),
        ("TALLY_AUTH__HASH_WAIT_MS", "60000"),
        ("TALLY_AUTH__LOGIN_ATTEMPTS_PER_IP", "0"),
        ("TALLY_AUTH__ATTEMPTS_PER_CITIZEN_ADDRESS", "0"),
        ("TALLY_AUTH__ATTEMPTS_PER_CITIZEN", "0"),
        ("TALLY_LIMITS__PER_CLIENT_PER_MINUTE", "0"),
        ("TALLY_HTTP__REQUEST_TIMEOUT_MS", "30"),
    ])
    .await;
    let login = format!("{}/v1/auth/login", server.api);
    let limit = 2.0;
    let mut peak = 0.0;
    // Rounds until some flooded login reached the hash (on a loaded machine
    // a 30 ms request may time out before it does).
    for round in 0..10 {
        flood_logins(&login, 48, 25, 500_000 + round * 10_000).await;
        peak = server.gauge("tally_password_hashes_peak").await;
        if peak >= 1.0 {
            break;
        }
    }
    assert!(peak >= 1.0, "no flooded login reached the hashing in 10 rounds");
    assert!(peak <= limit, "{peak} hashes ran at once; auth.max_concurrent_hashes is {limit}");
    // Hashes whose requests were abandoned still finish and free their place.
    let started = Instant::now();
    while server.gauge("tally_password_hashes_running").await > 0.0 {
        assert!(started.elapsed() < Duration::from_secs(60), "hashes still running a minute later");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(server.child);
}

#[tokio::test]
async fn a_login_that_waits_too_long_for_hashing_gets_503_with_retry_after() {
    let app = spawn_app_with(Roles::ALL, |s| {
        s.auth.max_concurrent_hashes = 1;
        s.auth.hash_wait_ms = 1;
        s.auth.login_attempts_per_ip = 0;
        s.auth.attempts_per_citizen_address = 0;
        s.auth.attempts_per_citizen = 0;
    })
    .await;
    // Waves of simultaneous logins until one finds the only place taken
    // for longer than it may wait.
    for wave in 0..20 {
        let logins = (0..16).map(|n| app.login(700_000 + wave * 100 + n, "a guess, wrong"));
        let answers = futures_util::future::join_all(logins).await;
        let mut refused = None;
        for answer in answers {
            match answer.status().as_u16() {
                401 => {}
                503 => refused = Some(answer),
                other => panic!("a login answered {other}"),
            }
        }
        if let Some(answer) = refused {
            assert!(answer.headers()["retry-after"].to_str().unwrap().parse::<u64>().unwrap() >= 1);
            let body: serde_json::Value = answer.json().await.unwrap();
            assert_eq!(body["code"], "unavailable");
            return;
        }
    }
    panic!("no login out of 20 waves of 16 had to wait for hashing");
}

// ---------------------------------------------------------------------------
// Connections that never start

/// The HTTP/2 preface, of which a stalling client sends only a part.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A preface and an empty SETTINGS frame: HTTP/2 begun, no request.
const H2_NO_REQUEST: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
/// The first bytes of a TLS ClientHello.
const TLS_HELLO_START: &[u8] = b"\x16\x03\x01\x02\x00\x01";

/// Opens `count` connections to `addr` that each send `prefix` and then
/// nothing more.
async fn stalled(addr: &str, count: usize, prefix: &'static [u8]) -> Vec<TcpStream> {
    let mut connections = Vec::new();
    for _ in 0..count {
        let mut stream = TcpStream::connect(addr).await.expect("connects");
        stream.write_all(prefix).await.unwrap();
        connections.push(stream);
    }
    connections
}

/// Reads (and discards) until the server closes the connection, and says
/// how long that took, or fails past `bound`.
async fn closed_within(mut stream: TcpStream, bound: Duration, what: &str) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match timeout(bound.saturating_sub(started.elapsed()), stream.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("{what}: still open after {bound:?}"),
        }
    }
}

async fn all_closed_within(connections: Vec<TcpStream>, bound: Duration, what: &str) {
    let waits = connections.into_iter().map(|c| closed_within(c, bound, what));
    futures_util::future::join_all(waits).await;
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").trim_start_matches("https://").to_string()
}

#[tokio::test]
async fn connections_that_never_start_a_request_are_closed() {
    let app = spawn_app_with(Roles::ALL, |s| s.http.header_read_timeout_ms = 1_000).await;
    for listener in [&app.api, &app.broadcaster] {
        let addr = host_port(listener);
        let mut connections = stalled(&addr, 10, b"").await;
        connections.extend(stalled(&addr, 10, &H2_PREFACE[..16]).await);
        connections.extend(stalled(&addr, 5, H2_NO_REQUEST).await);
        // Ten times the deadline, for a loaded machine.
        all_closed_within(connections, Duration::from_secs(10), &format!("a silent connection to {addr}"))
            .await;
    }
    let still_served = app.client.get(format!("{}/v1/elections", app.api)).send().await.unwrap();
    assert_eq!(still_served.status(), 200);
}

#[tokio::test]
async fn a_kept_alive_connection_that_sends_no_further_request_is_closed() {
    let app = spawn_app_with(Roles::ALL, |s| s.http.header_read_timeout_ms = 1_000).await;
    let mut stream = TcpStream::connect(host_port(&app.api)).await.unwrap();
    stream.write_all(b"GET /v1/elections HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut head = [0u8; 12];
    timeout(Duration::from_secs(10), stream.read_exact(&mut head)).await.unwrap().unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    closed_within(stream, Duration::from_secs(10), "an idle kept-alive connection").await;
}

#[tokio::test]
async fn tls_connections_that_never_start_a_request_are_closed() {
    let dir = crate::helpers::self_signed_localhost().await;
    let app = spawn_app_with(Roles::ALL, |s| {
        s.http.header_read_timeout_ms = 1_000;
        s.http.tls_certificate = Some(dir.join("cert.pem"));
        s.http.tls_private_key = Some(dir.join("key.pem"));
    })
    .await;
    let addr = host_port(&app.api);
    // A handshake that never finishes.
    let mut connections = stalled(&addr, 5, b"").await;
    connections.extend(stalled(&addr, 5, TLS_HELLO_START).await);
    all_closed_within(connections, Duration::from_secs(10), "an unfinished TLS handshake").await;
    // A finished handshake, then silence: s_client waits on its stdin, which
    // this test never writes, and exits when the server closes.
    let mut clients = Vec::new();
    for _ in 0..3 {
        let client = tokio::process::Command::new("openssl")
            .args(["s_client", "-quiet", "-connect", &addr])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        clients.push(client);
    }
    for mut client in clients {
        let exited = timeout(Duration::from_secs(10), client.wait()).await;
        assert!(exited.is_ok(), "a TLS client that sent no request was still connected after 10 s");
    }
    std::fs::remove_dir_all(dir).ok();
}

// ---------------------------------------------------------------------------
// The broadcaster's memory

/// Opens a WebSocket to the live feed by hand, so the test can then write
/// raw frames.
async fn raw_websocket(app: &TestApp, election: i64) -> TcpStream {
    let mut stream = TcpStream::connect(host_port(&app.broadcaster)).await.unwrap();
    let request = format!(
        "GET /v1/elections/{election}/live HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        timeout(Duration::from_secs(10), stream.read_exact(&mut byte)).await.unwrap().unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    stream
}

#[tokio::test]
async fn a_viewer_announcing_a_frame_over_the_cap_is_disconnected_at_once() {
    let app = spawn_app_with(Roles::ALL, |s| s.broadcaster.max_frame_bytes = 1024).await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let mut socket = raw_websocket(&app, election).await;
    // A masked binary frame announcing 8 MiB, of which only 4 KiB follow:
    // the server must refuse it from its header, not buffer the payload.
    let mut frame = vec![0x82, 0x80 | 127];
    frame.extend_from_slice(&(8u64 << 20).to_be_bytes());
    frame.extend_from_slice(&[1, 2, 3, 4]);
    frame.extend_from_slice(&[0u8; 4096]);
    socket.write_all(&frame).await.unwrap();
    // The snapshot, perhaps a close frame, then EOF (or a reset, as the rest
    // of the announced payload never comes).
    closed_within(socket, Duration::from_secs(10), "a viewer that announced an 8 MiB frame").await;
}

#[tokio::test]
async fn a_websocket_viewer_sending_a_big_message_gets_1009() {
    let app = spawn_app_with(Roles::ALL, |s| s.broadcaster.max_frame_bytes = 1024).await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let url = format!("{}/v1/elections/{election}/live", app.broadcaster.replace("http://", "ws://"));
    let (mut socket, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    socket.send(Message::Binary(vec![0u8; 2048].into())).await.unwrap();
    let closed = timeout(Duration::from_secs(10), async {
        while let Some(message) = socket.next().await {
            match message {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("disconnected within 10 s");
    assert_eq!(closed, Some(1009), "closed with 1009 (message too big)");
}

/// An SSE request on a socket with a small receive buffer, read up to the
/// end of the response head and then never again.
async fn stalled_sse(app: &TestApp, election: i64) -> TcpStream {
    let addr: SocketAddr = host_port(&app.broadcaster).parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    let request = format!("GET /v1/elections/{election}/events HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        timeout(Duration::from_secs(10), stream.read_exact(&mut byte)).await.unwrap().unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    stream
}

#[tokio::test]
async fn an_sse_viewer_that_stops_reading_is_dropped() {
    let app = spawn_app_with(Roles::ALL, |s| {
        s.broadcaster.max_viewers_per_ip = 1;
        s.broadcaster.max_updates_per_sec = 1000;
        s.broadcaster.slow_viewer_timeout_ms = 1_000;
        s.limits.live_connects_per_client_per_minute = 0;
    })
    .await;
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let events = format!("{}/v1/elections/{election}/events", app.broadcaster);
    let stalled = stalled_sse(&app, election).await;
    let refused = app.client.get(&events).send().await.unwrap();
    assert_eq!(refused.status(), 429, "the stalled viewer holds the only place");
    // Updates fill the socket's buffers; once the server's writes stop
    // making progress for a second, it drops the viewer and frees the place.
    let redis = app.deps().await.redis;
    let started = Instant::now();
    let mut version = 0;
    loop {
        for _ in 0..200 {
            version += 1;
            publish_version(&redis, &app, election, version).await;
        }
        let again = app.client.get(&events).send().await.unwrap();
        if again.status() == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "a viewer that stopped reading still held its place after {version} updates"
        );
    }
    closed_within(stalled, Duration::from_secs(10), "the stalled SSE viewer").await;
}
