//! The faults a run injects, in order, and how each is done and undone.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::direct::{self, Direct};
use crate::cluster::Cluster;
use crate::infra::Infra;

#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// kill -9 of a worker process, likely mid-batch under load.
    KillWorker(usize),
    KillApi(usize),
    KillBroadcaster(usize),
    CrashNats,
    CrashPostgres,
    /// Redis comes back with no data at all.
    CrashRedis,
    /// SIGSTOP for longer than the ack wait, so its batch is redelivered
    /// elsewhere while it still holds it; then SIGCONT.
    PauseWorker(usize),
    /// A rolling upgrade: ballots from an API one minor version ahead
    /// (a field today's workers do not know) arrive while each worker is
    /// restarted in turn.
    RollingUpgrade,
    /// A ballot Postgres refuses (its voter left the registry while it
    /// waited) amid others, in one busy batch.
    PoisonBallot,
}

/// One round touches every component at least once.
pub const ROUND: [Fault; 13] = [
    Fault::KillWorker(0),
    Fault::KillApi(0),
    Fault::CrashNats,
    Fault::KillWorker(1),
    Fault::KillBroadcaster(0),
    Fault::CrashPostgres,
    Fault::PauseWorker(0),
    Fault::CrashRedis,
    Fault::KillWorker(0),
    Fault::KillBroadcaster(1),
    Fault::RollingUpgrade,
    Fault::KillApi(1),
    Fault::PoisonBallot,
];

/// Spare voters one round's direct ballots need.
pub const SPARE_PER_ROUND: usize = direct::PER_UPGRADE + direct::PER_POISON;

#[derive(Debug, Serialize)]
pub struct Injected {
    pub fault: String,
    /// Seconds from the start of the run.
    pub at: f64,
    /// Seconds until the component was back (ready, or resumed).
    pub back_after: f64,
}

/// How long a killed process stays down before it is restarted.
const DOWN: Duration = Duration::from_secs(1);

pub async fn inject(
    fault: Fault,
    cluster: &mut Cluster,
    infra: &mut Infra,
    direct: &mut Direct,
    ack_wait: Duration,
    started: Instant,
) -> anyhow::Result<Injected> {
    let began = Instant::now();
    let node = |role: &str, n: usize| cluster.with_role(role)[n];
    match fault {
        Fault::KillWorker(n) => kill_and_restart(cluster, node("workers", n)).await?,
        Fault::KillApi(n) => kill_and_restart(cluster, node("api", n)).await?,
        Fault::KillBroadcaster(n) => kill_and_restart(cluster, node("broadcaster", n)).await?,
        Fault::CrashNats => infra.crash_nats().await?,
        Fault::CrashPostgres => infra.crash_postgres().await?,
        Fault::CrashRedis => infra.crash_redis().await?,
        Fault::PauseWorker(n) => {
            let i = node("workers", n);
            cluster.pause(i, true)?;
            tokio::time::sleep(ack_wait + Duration::from_secs(2)).await;
            cluster.pause(i, false)?;
        }
        Fault::RollingUpgrade => {
            let voters = direct.take(direct::PER_UPGRADE)?;
            let middle = voters.start + voters.len() / 2;
            let workers = cluster.with_role("workers");
            direct.newer(voters.start..middle).await?;
            kill_and_restart(cluster, workers[0]).await?;
            direct.newer(middle..voters.end).await?;
            kill_and_restart(cluster, workers[1]).await?;
        }
        Fault::PoisonBallot => {
            let voters = direct.take(direct::PER_POISON)?;
            direct.poison(voters).await?;
        }
    }
    Ok(Injected {
        fault: format!("{fault:?}"),
        at: began.duration_since(started).as_secs_f64(),
        back_after: began.elapsed().as_secs_f64(),
    })
}

async fn kill_and_restart(cluster: &mut Cluster, i: usize) -> anyhow::Result<()> {
    cluster.kill(i).await;
    tokio::time::sleep(DOWN).await;
    cluster.restart(i).await
}
