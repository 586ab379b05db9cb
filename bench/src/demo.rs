//! `tally-bench demo`: brings the demo election of `tally seed-demo` to
//! life. Registry citizens without an account are given enrollment codes
//! (as the registry would mail them), then each signs up, logs in and casts
//! a ballot through the REST API, at a gentle rate, favouring some runners
//! over others so the live page shows a race. It stops once every citizen
//! of this run's electorate has voted.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::StatusCode;
use serde::Deserialize;
use sqlx::PgPool;
use tally_platform::Settings;
use tokio::sync::Semaphore;

use crate::kit;

/// The election `tally seed-demo` creates (its `DEMO_ELECTION`).
pub const DEMO_ELECTION: &str = "Demo general election";
/// The demo electorate starts here, above the citizens the seed prints
/// codes for (42 to 46), which stay free for a person to sign up with.
const FIRST_DEMO_VOTER: i64 = 1_000;
/// Ballots that may be on their way at once, whatever the rate.
const IN_FLIGHT: usize = 64;
/// A refused step (429, 503) is tried again this many times.
const ATTEMPTS: u32 = 8;

#[derive(Clone, Debug)]
pub struct Options {
    /// The API's base URL, without `/v1`.
    pub api: String,
    /// Voters started per second.
    pub rate: u32,
    /// How many citizens vote in this run.
    pub voters: u64,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub election_id: i64,
    pub electorate: u64,
    pub voted: u64,
    pub refused: u64,
    pub seconds: f64,
}

#[derive(Deserialize)]
struct ElectionView {
    election_id: i64,
    status: String,
    posts: Vec<PostView>,
}

#[derive(Deserialize)]
struct PostView {
    runners: Vec<RunnerView>,
}

#[derive(Deserialize)]
struct RunnerView {
    citizen_id: i64,
}

#[derive(Deserialize)]
struct Login {
    access_token: String,
}

pub async fn run(settings: &Settings, options: Options) -> anyhow::Result<Report> {
    anyhow::ensure!(options.rate > 0, "--rate must be at least 1 voter per second");
    let db = tally_platform::postgres::pool(&settings.database)?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let api = options.api.trim_end_matches('/').to_string();
    wait_for_api(&http, &api).await?;
    let election_id: i64 = sqlx::query_scalar(
        "SELECT election_id FROM elections WHERE name = $1 ORDER BY election_id DESC LIMIT 1",
    )
    .bind(DEMO_ELECTION)
    .fetch_optional(&db)
    .await?
    .context("no demo election: run `tally seed-demo` first")?;
    let election: ElectionView = http
        .get(format!("{api}/v1/elections/{election_id}"))
        .send()
        .await?
        .error_for_status()
        .context("reading the demo election")?
        .json()
        .await?;
    anyhow::ensure!(election.status == "open", "the demo election is {}, not open", election.status);
    let electorate = electorate(&db, election_id, options.voters).await?;
    let mut report = Report {
        election_id: election.election_id,
        electorate: electorate.len() as u64,
        ..Report::default()
    };
    if electorate.is_empty() {
        println!("demo: every citizen of the demo registry has an account already; nothing to do");
        return Ok(report);
    }
    println!(
        "demo: {} citizens sign up and vote in election {election_id}, {} per second",
        electorate.len(),
        options.rate
    );

    let ballot = Arc::new(Ballot::of(&election));
    // One password for the run's accounts; it is never printed or kept.
    let password = Arc::new(uuid::Uuid::new_v4().simple().to_string());
    let voted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(options.rate)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut last_said = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for citizen_id in electorate {
        ticks.tick().await;
        let permit = in_flight.clone().acquire_owned().await?;
        let code = kit::enrollment_code(&db, settings, citizen_id).await?;
        let voter = Voter { http: http.clone(), api: api.clone(), citizen_id, password: password.clone() };
        let (ballot, counts) = (ballot.clone(), (voted.clone(), refused.clone()));
        tasks.spawn(async move {
            let _permit = permit;
            match voter.sign_up_and_vote(&code, election_id, &ballot).await {
                Ok(()) => counts.0.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(citizen_id, error = format!("{e:#}"), "a demo voter did not vote");
                    counts.1.fetch_add(1, Ordering::Relaxed)
                }
            };
        });
        while tasks.try_join_next().is_some() {}
        if last_said.elapsed() >= Duration::from_secs(10) {
            last_said = Instant::now();
            say(&voted, &refused, report.electorate, started);
        }
    }
    while tasks.join_next().await.is_some() {}
    report.voted = voted.load(Ordering::Relaxed);
    report.refused = refused.load(Ordering::Relaxed);
    report.seconds = started.elapsed().as_secs_f64();
    say(&voted, &refused, report.electorate, started);
    Ok(report)
}

fn say(voted: &AtomicU64, refused: &AtomicU64, of: u64, started: Instant) {
    let voted = voted.load(Ordering::Relaxed);
    let rate = voted as f64 / started.elapsed().as_secs_f64().max(0.001);
    println!("demo: {voted}/{of} voted ({rate:.1}/s), {} could not", refused.load(Ordering::Relaxed));
}

/// Adults (on the day voting starts) of the registry without an account,
/// from `FIRST_DEMO_VOTER` up, who are not runners.
async fn electorate(db: &PgPool, election_id: i64, voters: u64) -> anyhow::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT c.citizen_id FROM citizens c
         CROSS JOIN elections e
         LEFT JOIN users u ON u.citizen_id = c.citizen_id
         WHERE e.election_id = $1 AND c.citizen_id >= $2 AND u.citizen_id IS NULL
           AND c.dob <= (e.start_at AT TIME ZONE 'UTC')::date - make_interval(years => e.min_age)
           AND NOT EXISTS (SELECT 1 FROM runners r WHERE r.citizen_id = c.citizen_id)
         ORDER BY c.citizen_id LIMIT $3",
    )
    .bind(election_id)
    .bind(FIRST_DEMO_VOTER)
    .bind(voters as i64)
    .fetch_all(db)
    .await
    .context("choosing the demo electorate")
}

/// The URL of an API listening on `addr` on this machine.
pub fn local_api(addr: std::net::SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() { std::net::Ipv4Addr::LOCALHOST.into() } else { addr.ip() };
    format!("http://{}", std::net::SocketAddr::new(host, addr.port()))
}

async fn wait_for_api(http: &reqwest::Client, api: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = http.get(format!("{api}/v1/elections?per_page=1")).send().await;
        if matches!(&answer, Ok(r) if r.status().is_success()) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the API at {api} did not answer within 2 minutes");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How the demo electorate leans: in each post, runner i of n gets weight
/// n - i + 1 (three runners: 4:3:2; two: 3:2), so every runner gets votes
/// and the order is stable.
pub struct Ballot {
    posts: Vec<Vec<i64>>,
}

impl Ballot {
    fn of(election: &ElectionView) -> Ballot {
        Ballot {
            posts: election
                .posts
                .iter()
                .map(|post| post.runners.iter().map(|r| r.citizen_id).collect())
                .collect(),
        }
    }

    /// The citizen's choice, one runner per post, drawn from a hash of the
    /// citizen id, so a rerun picks the same.
    pub fn selections(&self, citizen_id: i64) -> Vec<i64> {
        let mut draw = citizen_id as u64;
        self.posts
            .iter()
            .filter(|runners| !runners.is_empty())
            .map(|runners| {
                draw = mix(draw);
                let n = runners.len() as u64;
                let total = (2..=n + 1).sum::<u64>();
                let mut point = draw % total;
                for (i, runner) in runners.iter().enumerate() {
                    let weight = n - i as u64 + 1;
                    if point < weight {
                        return *runner;
                    }
                    point -= weight;
                }
                runners[0]
            })
            .collect()
    }
}

/// SplitMix64's finaliser: neighbouring ids draw unrelated numbers.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Voter {
    http: reqwest::Client,
    api: String,
    citizen_id: i64,
    password: Arc<String>,
}

impl Voter {
    async fn sign_up_and_vote(&self, code: &str, election_id: i64, ballot: &Ballot) -> anyhow::Result<()> {
        let phone = format!("+1{}", 3_000_000_000 + self.citizen_id);
        let signup = serde_json::json!({
            "citizen_id": self.citizen_id, "password": self.password.as_str(),
            "phone": phone, "enrollment_code": code,
        });
        self.send("sign-up", |http| http.post(format!("{}/v1/auth/signup", self.api)).json(&signup)).await?;
        let login = serde_json::json!({"citizen_id": self.citizen_id, "password": self.password.as_str()});
        let token: Login = self
            .send("login", |http| http.post(format!("{}/v1/auth/login", self.api)).json(&login))
            .await?
            .json()
            .await?;
        let cast = serde_json::json!({"selections": ballot.selections(self.citizen_id)});
        // One key for every try, so a retried ballot counts once.
        let key = uuid::Uuid::new_v4().to_string();
        self.send("ballot", |http| {
            http.post(format!("{}/v1/elections/{election_id}/ballots", self.api))
                .bearer_auth(&token.access_token)
                .header("Idempotency-Key", &key)
                .json(&cast)
        })
        .await?;
        Ok(())
    }

    /// Sends the request, waiting out 429 and 503 as `Retry-After` asks.
    async fn send(
        &self,
        step: &str,
        request: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        for _ in 0..ATTEMPTS {
            let answer = request(&self.http).send().await.with_context(|| format!("{step}: no answer"))?;
            let status = answer.status();
            if status.is_success() {
                return Ok(answer);
            }
            if status != StatusCode::TOO_MANY_REQUESTS && status != StatusCode::SERVICE_UNAVAILABLE {
                let body = answer.text().await.unwrap_or_default();
                anyhow::bail!("{step}: {status} {body}");
            }
            let wait = answer
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1)
                .clamp(1, 30);
            tokio::time::sleep(Duration::from_secs(wait)).await;
        }
        anyhow::bail!("{step}: still refused after {ATTEMPTS} attempts")
    }
}

#[cfg(test)]
mod tests {
    use super::Ballot;

    #[test]
    fn the_electorate_leans_but_every_runner_gets_votes() {
        let ballot = Ballot { posts: vec![vec![1, 2, 3], vec![4, 5]] };
        let mut president = [0_u32; 3];
        let mut senator = [0_u32; 2];
        for citizen_id in 1_000..10_000 {
            let chosen = ballot.selections(citizen_id);
            assert_eq!(chosen.len(), 2, "one runner per post");
            president[(chosen[0] - 1) as usize] += 1;
            senator[(chosen[1] - 4) as usize] += 1;
        }
        // 4:3:2 and 3:2 of 9,000 ballots, within a few percent.
        assert!(president[0] > president[1] && president[1] > president[2], "{president:?}");
        assert!((3_700..4_300).contains(&president[0]), "{president:?}");
        assert!((1_700..2_300).contains(&president[2]), "{president:?}");
        assert!((5_100..5_700).contains(&senator[0]), "{senator:?}");
        assert_eq!(ballot.selections(1234), ballot.selections(1234), "a rerun chooses the same");
    }
}
