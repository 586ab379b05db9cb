//! Security headers on every response, CORS only for configured origins,
//! and source checks: no SQL built from strings, no query that joins the
//! voter roll to the ballot box.

use tally::app::Roles;

use crate::helpers::*;

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn every_response_carries_the_security_headers() {
    let app = spawn_app().await;
    for url in [
        format!("{}/v1/elections", app.api),
        format!("{}/v1/no-such-route", app.api),
        format!("{}/v1/elections/1/live", app.broadcaster),
        format!("{}/", app.broadcaster),
        format!("{}/docs/", app.api),
    ] {
        let answer = app.client.get(&url).send().await.unwrap();
        assert_eq!(header(&answer, "x-content-type-options"), Some("nosniff"), "{url}");
        assert_eq!(header(&answer, "referrer-policy"), Some("no-referrer"), "{url}");
        let csp = header(&answer, "content-security-policy").unwrap_or_default();
        assert!(csp.contains("frame-ancestors 'none'"), "{url}: {csp}");
        assert!(!csp.contains("unsafe-eval") && !csp.contains("script-src *"), "{url}: {csp}");
    }
    let api = app.client.get(format!("{}/v1/elections", app.api)).send().await.unwrap();
    assert_eq!(header(&api, "content-security-policy"), Some("default-src 'none'; frame-ancestors 'none'"));
}

#[tokio::test]
async fn cors_is_off_unless_an_origin_is_allowed() {
    let preflight = |app: &TestApp, origin: &str| {
        app.client
            .request(reqwest::Method::OPTIONS, format!("{}/v1/elections", app.api))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization,content-type")
            .send()
    };
    let closed = spawn_app().await;
    let answer = preflight(&closed, "https://results.example.org").await.unwrap();
    assert!(header(&answer, "access-control-allow-origin").is_none());

    let open = spawn_app_with(Roles::ALL, |s| {
        s.http.cors_allowed_origins = vec!["https://results.example.org".into()];
    })
    .await;
    let allowed = preflight(&open, "https://results.example.org").await.unwrap();
    assert_eq!(header(&allowed, "access-control-allow-origin"), Some("https://results.example.org"));
    assert!(header(&allowed, "access-control-allow-headers").unwrap_or_default().contains("authorization"));
    let other = preflight(&open, "https://evil.example.com").await.unwrap();
    assert!(header(&other, "access-control-allow-origin").is_none());
}

/// Every SQL statement binds its values: no statement text is built with
/// `format!` or concatenation. The only exception is `CREATE/DROP
/// DATABASE`, which cannot take parameters; its name goes through
/// `quote_identifier`.
#[test]
fn no_sql_is_built_from_strings() {
    let mut offenders = Vec::new();
    let mut stack: Vec<std::path::PathBuf> =
        ["src", "common/src", "api/src", "workers/src", "broadcaster/src"].iter().map(Into::into).collect();
    let sql_words = ["SELECT ", "INSERT ", "UPDATE ", "DELETE ", "CREATE ", "DROP ", " WHERE ", "ALTER "];
    while let Some(path) = stack.pop() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in text.lines().enumerate() {
            let builds = line.contains("format!(") || line.contains("push_str(");
            let upper = line.to_uppercase();
            let sql = (sql_words.iter().any(|w| upper.contains(w)) && line.contains('"'))
                || (line.contains("query") && line.contains("(&format!("));
            let allowed = line.contains("quote_identifier(") || line.trim_start().starts_with("//");
            if builds && sql && !allowed {
                offenders.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(offenders.is_empty(), "SQL built from strings:\n{}", offenders.join("\n"));
}

/// Ballot secrecy in the code itself: no statement reads the ballot box
/// together with the voter roll or the recorded receipts, so no endpoint
/// or command (an admin's included) can pair a citizen, or a receipt a
/// coercer was shown, with a choice.
#[test]
fn no_query_joins_the_voter_roll_to_the_ballot_box() {
    let mut stack: Vec<std::path::PathBuf> =
        ["src", "common/src", "api/src", "workers/src", "broadcaster/src"].iter().map(Into::into).collect();
    while let Some(path) = stack.pop() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            for statement in text.split("sqlx::query").skip(1) {
                let sql = statement
                    .split(".bind(")
                    .next()
                    .unwrap_or_default()
                    .split(".fetch")
                    .next()
                    .unwrap_or_default();
                for other in ["voter_roll", "recorded_receipts"] {
                    assert!(
                        !(sql.contains(other) && sql.contains("ballot_box")),
                        "{} reads {other} with the ballot box",
                        path.display()
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn https_is_served_with_hsts_when_given_a_certificate() {
    let dir = crate::helpers::self_signed_localhost().await;
    let app = spawn_app_with(Roles::ALL, |s| {
        s.http.tls_certificate = Some(dir.join("cert.pem"));
        s.http.tls_private_key = Some(dir.join("key.pem"));
    })
    .await;
    let https = app.api.replace("http://", "https://");
    let answer = tokio::process::Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-D", "-", "--http1.1"])
        .arg(format!("{https}/v1/elections"))
        .output()
        .await
        .unwrap();
    let head = String::from_utf8_lossy(&answer.stdout).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("strict-transport-security: max-age=31536000"), "{head}");
    let plain = app.client.get(format!("{}/v1/elections", app.api)).send().await;
    assert!(
        plain.is_err() || !plain.unwrap().status().is_success(),
        "plain HTTP is not served on a TLS port"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_client_that_sends_headers_too_slowly_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app_with(Roles::ALL, |s| s.http.header_read_timeout_ms = 500).await;
    let address = app.api.trim_start_matches("http://").to_owned();
    let mut slow = tokio::net::TcpStream::connect(&address).await.unwrap();
    slow.write_all(b"GET /v1/elections HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Never finishes its headers: the server must close the connection.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), slow.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection was still open after 5 s");
    let fine = app.client.get(format!("{}/v1/elections", app.api)).send().await.unwrap();
    assert_eq!(fine.status(), 200, "a normal client is served meanwhile");
}

/// A private CA and a certificate for 127.0.0.1 signed by it.
async fn private_ca(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    let steps: [&[&str]; 3] = [
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=Tally test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
        ],
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            "leaf.ext",
            "-out",
            "leaf.pem",
        ],
    ];
    for args in steps {
        let made =
            tokio::process::Command::new("openssl").args(args).current_dir(dir).output().await.unwrap();
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    }
}

#[tokio::test]
async fn postgres_redis_and_nats_are_reached_over_tls() {
    let dir = std::env::temp_dir().join(format!("tally-store-tls-{}", uuid::Uuid::new_v4()));
    private_ca(&dir).await;
    let mut settings = tally_platform::Settings::default();

    // Postgres: the server's own certificate, TLS required by the URL.
    settings.database.url =
        tally_domain::secret::Secret::new("postgres://postgres@127.0.0.1:5432/postgres?sslmode=require");
    let db = tally_platform::postgres::pool(&settings.database).unwrap();
    let encrypted: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(encrypted);

    // Redis and NATS: servers of their own with a certificate from the private CA.
    let (redis_port, nats_port) = (free_port(), free_port());
    let d = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let _redis = tokio::process::Command::new("redis-server")
        .args(["--port", "0", "--tls-port", &redis_port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args([
            "--tls-cert-file",
            &d("leaf.pem"),
            "--tls-key-file",
            &d("leaf.key"),
            "--tls-ca-cert-file",
            &d("ca.pem"),
        ])
        .args(["--tls-auth-clients", "no"])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _nats = tokio::process::Command::new("nats-server")
        .args([
            "-a",
            "127.0.0.1",
            "-p",
            &nats_port.to_string(),
            "--tls",
            "--tlscert",
            &d("leaf.pem"),
            "--tlskey",
            &d("leaf.key"),
        ])
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    settings.redis.url = tally_domain::secret::Secret::new(format!("rediss://127.0.0.1:{redis_port}"));
    settings.redis.tls_root_certificate = Some(dir.join("ca.pem"));
    settings.nats.url = tally_domain::secret::Secret::new(format!("tls://127.0.0.1:{nats_port}"));
    settings.nats.tls_root_certificate = Some(dir.join("ca.pem"));
    let mut redis =
        eventually("Redis over TLS", || async { tally_platform::redis::connect(&settings.redis).await.ok() })
            .await;
    let pong: String = redis::cmd("PING").query_async(&mut redis).await.unwrap();
    assert_eq!(pong, "PONG");
    let nats = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tally_platform::nats::connect(&settings.nats),
    )
    .await
    .unwrap()
    .unwrap();
    nats.flush().await.unwrap();
    assert!(nats.server_info().tls_required);
    std::fs::remove_dir_all(&dir).ok();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}
