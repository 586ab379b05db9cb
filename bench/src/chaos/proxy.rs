//! `tally-bench proxy`: Debian's nginx with `deploy/nginx/tally.conf` in
//! front of two API, two worker and two broadcaster processes on loopback.
//! Ballots and live viewers go through the proxy; one API replica is
//! killed mid-run. Both replicas must have served, viewers must end on the
//! final tally (after the election is closed, since workers hold its last
//! K ballots until then), TLS and request ids must pass through, and no
//! accepted ballot may be lost.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;
use tally_platform::Settings;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::audience::Audience;
use super::books::{self, Accounting, Books};
use super::voters::{Pace, Voters, ballots};
use crate::cluster::Cluster;
use crate::free_port;
use crate::infra::{private_stack, wait_for_port};
use crate::kit::close;
use crate::process::Tally;
use crate::process::{End, end};
use crate::provision::{FIRST_VOTER, provision};

pub struct Options {
    pub voters: u64,
    pub rate: u32,
    pub viewers: usize,
    /// `deploy/nginx/tally.conf`.
    pub nginx_conf: PathBuf,
    pub out: PathBuf,
}

#[derive(Serialize)]
pub struct Report {
    pub passed: bool,
    /// Ballots each API replica had accepted when the first was killed.
    pub accepted_per_api_replica: Vec<u64>,
    pub tls_status: u16,
    pub request_id_echoed: bool,
    pub viewers: usize,
    pub votes: Accounting,
    /// The election's K, and voter-roll rows per commit (transaction id):
    /// the fewest in one commit and how many commits recorded K voters or
    /// fewer (only the close flush should). Reported, not judged.
    pub anonymity_set: i32,
    pub smallest_commit_group: Option<i64>,
    pub commit_groups_of_k_or_fewer: usize,
    /// Every commit's size, in commit order.
    pub commit_groups: Vec<i64>,
}

pub async fn run(settings: &Settings, tally: &Tally, options: Options) -> anyhow::Result<Report> {
    let (infra, settings, db) = private_stack(tally, settings).await?;
    let provisioned = provision(&settings, options.voters, FIRST_VOTER).await?;
    let election = provisioned.election_id;
    let mut stack = infra.settings();
    stack.extend([
        ("TALLY_LOG__FILTER", "warn".to_owned()),
        ("TALLY_HTTP__TRUSTED_PROXIES", "[\"127.0.0.1\"]".to_owned()),
        ("TALLY_BROADCASTER__MAX_VIEWERS_PER_IP", "100000".to_owned()),
    ]);
    let layout = [("api", 2), ("workers", 2), ("broadcaster", 2)];
    let mut cluster = Cluster::start(tally, &options.out.join("logs"), stack, &layout).await?;
    let apis = cluster.with_role("api");
    let ports = |role: &str, pick: fn(&crate::cluster::Node) -> u16| {
        cluster.with_role(role).into_iter().map(|i| pick(&cluster.nodes[i])).collect::<Vec<_>>()
    };
    let (api_ports, live_ports) = (ports("api", |n| n.api), ports("broadcaster", |n| n.live));
    let nginx =
        Nginx::start(&options.nginx_conf, &options.out.join("nginx"), &api_ports, &live_ports).await?;

    let stop_watching = CancellationToken::new();
    let audience = Audience::start(vec![nginx.http], election, options.viewers, stop_watching.clone());
    let pace = Pace { rate: options.rate, in_flight: 64, attempts: 8 };
    let voting = Voters::start(
        vec![nginx.http],
        election,
        ballots(&provisioned, FIRST_VOTER),
        pace,
        CancellationToken::new(),
    );
    // Kill one API replica once about 40 % of the ballots are out.
    let kill_at = Duration::from_secs_f64(0.4 * options.voters as f64 / f64::from(options.rate.max(1)));
    tokio::time::sleep(kill_at).await;
    let client = reqwest::Client::new();
    let mut accepted_per_api_replica = Vec::new();
    for &i in &apis {
        let accepted = crate::metric(cluster.nodes[i].admin, "tally_votes_accepted_total").await;
        accepted_per_api_replica.push(accepted.unwrap_or(0.0) as u64);
    }
    cluster.kill(apis[0]).await;
    let logs = voting.finish().await;

    let redis = tally_platform::redis::connect(&settings.redis).await?;
    let keys = tally_platform::redis::Keys::new(&settings.redis.key_prefix);
    let within = Duration::from_secs(60);
    close(&db, &redis, &keys, election).await?;
    let books = Books::settle(&db, &redis, &keys, election, &logs, || audience.snapshot(), within).await?;
    let mut votes = books::account(&books, &logs, &provisioned.tokens, nginx.http, election).await?;
    books::note_quarantine(&mut votes, &settings.nats).await?;
    if !books.settled(&logs, &audience.snapshot()) {
        votes
            .violations
            .push("stores, receipts and viewers did not agree within 60 s of the close".to_owned());
    }
    if accepted_per_api_replica.contains(&0) {
        votes.violations.push(format!("an API replica served no ballots: {accepted_per_api_replica:?}"));
    }
    let tls_status = nginx.tls_status("/v1/elections").await;
    if tls_status != 200 {
        votes.violations.push(format!("HTTPS through the proxy answered {tls_status}"));
    }
    let echoed = client
        .get(format!("http://127.0.0.1:{}/v1/elections", nginx.http))
        .header("x-request-id", "proxy-check-1")
        .send()
        .await?
        .headers()
        .get("x-request-id")
        .is_some_and(|v| v == "proxy-check-1");
    if !echoed {
        votes.violations.push("the request id did not pass through the proxy".to_owned());
    }
    let groups = books::commit_groups(&db, election).await?;
    let k = provisioned.anonymity_set;
    stop_watching.cancel();
    audience.finish().await;
    cluster.stop().await;
    nginx.stop().await;
    Ok(Report {
        passed: votes.violations.is_empty(),
        accepted_per_api_replica,
        tls_status,
        request_id_echoed: echoed,
        viewers: options.viewers,
        votes,
        anonymity_set: k,
        smallest_commit_group: groups.iter().min().copied(),
        commit_groups_of_k_or_fewer: groups.iter().filter(|n| **n <= i64::from(k)).count(),
        commit_groups: groups,
    })
}

/// nginx in a prefix directory of its own, on free loopback ports, with a
/// self-signed certificate for its TLS listener.
struct Nginx {
    http: u16,
    https: u16,
    child: Child,
}

impl Nginx {
    async fn start(tally_conf: &Path, dir: &Path, apis: &[u16], lives: &[u16]) -> anyhow::Result<Nginx> {
        let tally_conf =
            tally_conf.canonicalize().with_context(|| format!("finding {}", tally_conf.display()))?;
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir.join("servers")).context("creating nginx's directory")?;
        let dir = dir.canonicalize()?;
        let (http, https) = (free_port()?, free_port()?);
        let servers = |ports: &[u16]| -> String {
            ports.iter().map(|p| format!("server 127.0.0.1:{p} max_fails=2 fail_timeout=5s;\n")).collect()
        };
        std::fs::write(dir.join("servers/api.conf"), servers(apis))?;
        std::fs::write(dir.join("servers/live.conf"), servers(lives))?;
        let d = dir.display();
        std::fs::write(
            dir.join("listen.conf"),
            format!(
                "listen 127.0.0.1:{http};\nlisten 127.0.0.1:{https} ssl;\n\
                 ssl_certificate {d}/tally.crt;\nssl_certificate_key {d}/tally.key;\n\
                 add_header Strict-Transport-Security \"max-age=31536000\" always;\n"
            ),
        )?;
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 include {};\n  access_log {d}/access.log tally;\n}}\n",
                tally_conf.display()
            ),
        )?;
        let certificate = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
            .arg("-keyout")
            .arg(dir.join("tally.key"))
            .arg("-out")
            .arg(dir.join("tally.crt"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await
            .context("running openssl for a development certificate")?;
        anyhow::ensure!(certificate.success(), "openssl could not make a certificate");
        let conf = dir.join("nginx.conf");
        let test = Command::new("nginx").arg("-t").arg("-p").arg(&dir).arg("-c").arg(&conf).output().await;
        let test = test.context("running nginx -t (is nginx installed?)")?;
        if !test.status.success() {
            bail!("nginx -t refused the configuration: {}", String::from_utf8_lossy(&test.stderr));
        }
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting nginx")?;
        wait_for_port(http, "nginx").await?;
        Ok(Nginx { http, https, child })
    }

    /// TERM (fast shutdown) and a wait, so no worker outlives its master.
    async fn stop(self) {
        end(&mut Some(self.child), End::Term(Duration::from_secs(10))).await;
    }

    async fn tls_status(&self, path: &str) -> u16 {
        let output = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("https://127.0.0.1:{}{path}", self.https))
            .output()
            .await;
        output.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(0)
    }
}
