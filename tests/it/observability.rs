//! The dashboards and alerts proven against real data: a short synthetic
//! load on a live stack, the real Prometheus (Debian's package) scraping it
//! and the Postgres and Redis exporters, then every PromQL expression of
//! every panel and alert rule evaluated through Prometheus's HTTP API.

use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;

use crate::helpers::{ElectionSpec, RUNNERS, TestApp, eventually, insert_election, spawn_app};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn spawn(program: &str, args: &[String], env: &[(&str, &str)]) -> tokio::process::Child {
    let mut command = tokio::process::Command::new(program);
    command.args(args).stdout(Stdio::null()).stderr(Stdio::null()).kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    command.spawn().unwrap_or_else(|e| panic!("{program}: {e}; `make tools` installs it"))
}

/// Every expression of every dashboard panel, with the panel's title.
fn panel_queries(root: &str) -> Vec<(String, String)> {
    let mut queries = Vec::new();
    for file in ["pipeline.json", "infrastructure.json"] {
        let text = std::fs::read_to_string(format!("{root}/grafana/dashboards/{file}")).unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            assert!(
                panel["title"].is_string() && panel["description"].is_string(),
                "{file}: panels need a title and description"
            );
            assert!(
                panel["fieldConfig"]["defaults"]["unit"].is_string(),
                "{file}: {} has no unit",
                panel["title"]
            );
            for target in panel["targets"].as_array().unwrap() {
                assert_eq!(target["datasource"]["uid"], "${datasource}", "{file}: the datasource variable");
                queries.push((
                    format!("{file}: {}", panel["title"].as_str().unwrap()),
                    as_grafana_would(target["expr"].as_str().unwrap()),
                ));
            }
        }
    }
    queries
}

/// The expression as Grafana sends it with every job and namespace chosen
/// ("All" is `.*`) and a 15 s scrape interval's rate window.
fn as_grafana_would(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$job", ".*").replace("$namespace", ".*")
}

/// Every alert rule's `expr:` line.
fn alert_queries(root: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap();
    let mut name = String::new();
    let mut queries = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(alert) = line.strip_prefix("- alert: ") {
            name = alert.to_string();
        } else if let Some(expr) = line.strip_prefix("expr: ") {
            queries.push((name.clone(), expr.to_string()));
        }
    }
    queries
}

async fn synthetic_load(
    app: &TestApp,
    first_citizen: i64,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let election = insert_election(&app.db, ElectionSpec::default()).await;
    let url = format!("{}/v1/elections/{election}/live", app.broadcaster.replace("http://", "ws://"));
    let (mut viewer, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    viewer.next().await;
    for citizen in first_citizen..first_citizen + 10 {
        let voter = app.voter(citizen).await;
        assert_eq!(app.cast(&voter.access, election, &[RUNNERS[(citizen % 2) as usize]]).await.status(), 202);
        app.cast(&voter.access, election, &[RUNNERS[0]]).await; // refused: already voted
    }
    app.client.get(format!("{}/v1/me", app.api)).bearer_auth("not-a-token").send().await.unwrap();
    // Workers hold the last K ballots until the end.
    app.close(election).await;
    app.recorded(election, 10).await;
    viewer
}

#[tokio::test]
async fn every_panel_and_alert_evaluates_against_a_live_stack() {
    let root = env!("CARGO_MANIFEST_DIR");
    let app = spawn_app().await;
    let _viewer = synthetic_load(&app, 1000).await;

    let (pg_port, redis_port, prom_port) = (free_port(), free_port(), free_port());
    let _pg_exporter = spawn(
        "prometheus-postgres-exporter",
        &[format!("--web.listen-address=127.0.0.1:{pg_port}")],
        &[("DATA_SOURCE_NAME", "postgresql://postgres@127.0.0.1:5432/postgres?sslmode=disable")],
    );
    let _redis_exporter = spawn(
        "prometheus-redis-exporter",
        &[
            "-redis.addr".into(),
            "redis://127.0.0.1:6379".into(),
            "-web.listen-address".into(),
            format!("127.0.0.1:{redis_port}"),
        ],
        &[],
    );
    let dir = std::env::temp_dir().join(format!("{}-prometheus", app.ns.id));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(format!("{root}/deploy/prometheus/alerts.yml"), dir.join("alerts.yml")).unwrap();
    let admin = app.admin.trim_start_matches("http://");
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nrule_files: [alerts.yml]\nscrape_configs:\n  \
             - job_name: tally\n    static_configs: [{{ targets: ['{admin}'] }}]\n  \
             - job_name: postgres\n    static_configs: [{{ targets: ['127.0.0.1:{pg_port}'] }}]\n  \
             - job_name: redis\n    static_configs: [{{ targets: ['127.0.0.1:{redis_port}'] }}]\n"
        ),
    )
    .unwrap();
    let _prometheus = spawn(
        "prometheus",
        &[
            format!("--config.file={}", dir.join("prometheus.yml").display()),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            format!("--web.listen-address=127.0.0.1:{prom_port}"),
        ],
        &[],
    );
    let prometheus = format!("http://127.0.0.1:{prom_port}");
    let query = |expr: String| {
        let client = app.client.clone();
        let prometheus = prometheus.clone();
        async move {
            let response = client
                .get(format!("{prometheus}/api/v1/query"))
                .query(&[("query", expr)])
                .send()
                .await
                .ok()?;
            response.json::<serde_json::Value>().await.ok()
        }
    };
    // Enough scrapes of every target for rates over the panels' windows.
    eventually("Prometheus to scrape every target several times", || async {
        let answer = query("min(count_over_time(up[1m])) >= 4 and min(up) == 1".into()).await?;
        answer["data"]["result"].as_array().filter(|r| !r.is_empty()).map(|_| ())
    })
    .await;
    // Ballots during the scrapes, so rates are not all zero.
    let _second = synthetic_load(&app, 2000).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    let mut failures = Vec::new();
    let exported =
        app.client.get(format!("{}/metrics", app.admin)).send().await.unwrap().text().await.unwrap();
    for family in exported.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split_whitespace().next().unwrap_or_default();
        if name.starts_with("tally_") && !exported.contains(&format!("# HELP {name} ")) {
            failures.push(format!("{name} has no help text (declare it in tally_platform::metrics)"));
        }
    }
    for (panel, expr) in panel_queries(root) {
        let answer = query(expr.clone()).await.unwrap_or_default();
        if answer["status"] != "success" {
            failures.push(format!("{panel}: `{expr}` failed: {}", answer["error"]));
        } else if answer["data"]["result"].as_array().is_none_or(Vec::is_empty) {
            failures.push(format!("{panel}: `{expr}` returned no series"));
        }
    }
    for (alert, expr) in alert_queries(root) {
        let answer = query(expr.clone()).await.unwrap_or_default();
        if answer["status"] != "success" {
            failures.push(format!("alert {alert}: `{expr}` failed: {}", answer["error"]));
        }
    }
    let rules: serde_json::Value =
        app.client.get(format!("{prometheus}/api/v1/rules")).send().await.unwrap().json().await.unwrap();
    let loaded = rules["data"]["groups"]
        .as_array()
        .map_or(0, |g| g.iter().map(|g| g["rules"].as_array().map_or(0, Vec::len)).sum());
    assert_eq!(loaded, alert_queries(root).len(), "Prometheus loaded every alert rule");
    std::fs::remove_dir_all(&dir).ok();
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
}

/// `promtool check metrics` (Prometheus's own linter) on a live process
/// that has served ballots, viewers and an invented request method: any
/// complaint fails, whether a missing HELP, a counter without `_total`, a
/// gauge named like a counter, or a label value a client made up.
#[tokio::test]
async fn promtool_finds_nothing_to_complain_about_in_live_metrics() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app().await;
    let _viewer = synthetic_load(&app, 3000).await;
    let brew = reqwest::Method::from_bytes(b"BREW").unwrap();
    app.client.request(brew, format!("{}/v1/elections", app.api)).send().await.unwrap();
    let exported =
        app.client.get(format!("{}/metrics", app.admin)).send().await.unwrap().text().await.unwrap();
    assert!(exported.contains("method=\"_OTHER\""), "an unknown method is bucketed");
    assert!(!exported.contains("BREW"), "a client's method never becomes a label value");
    assert!(exported.contains("process_resident_memory_bytes"), "the standard process metrics");

    let mut promtool = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (`make tools` installs Debian's prometheus)");
    let mut stdin = promtool.stdin.take().unwrap();
    stdin.write_all(exported.as_bytes()).await.unwrap();
    drop(stdin);
    let output = promtool.wait_with_output().await.unwrap();
    let complaints =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && complaints.trim().is_empty(), "promtool complains:\n{complaints}");
}
