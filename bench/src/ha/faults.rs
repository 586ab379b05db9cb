//! The HA run's faults, one at a time, each done and undone the way the
//! clustered engine and its operator would: the store loses a node, the
//! cluster carries on without it, the node comes back and catches up.
//! With `roles`, one Tally process of each role is killed -9 as well while
//! the store is failing over, and started again once it has.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{Value, json};

use super::nats_cluster::NatsCluster;
use super::partition::Net;
use super::postgres_pair::PostgresPair;
use super::sentinel::RedisGroup;
use crate::cluster::Cluster;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// kill -9 of the `VOTES` stream leader; restarted once a new one leads.
    NatsLeader,
    /// kill -9 of a `VOTES` follower; restarted after a few seconds.
    NatsFollower,
    /// The leader cut off from its two peers for 10 s, then healed.
    NatsPartition,
    /// kill -9 of the Postgres primary, the standby promoted, the old
    /// primary back as the new standby.
    PostgresPrimary,
    /// kill -9 of the Postgres standby for 5 s: with synchronous
    /// replication the primary's commits wait until it is back.
    PostgresStandby,
    /// kill -9 of the Redis master; Sentinel promotes the replica, the
    /// old master comes back as a replica.
    RedisMaster,
}

pub struct Stores {
    pub nats: NatsCluster,
    pub postgres: PostgresPair,
    pub redis: RedisGroup,
    pub net: Option<Net>,
    pub stream: String,
    /// Through HAProxy: what is recorded while a store is down.
    pub db: sqlx::PgPool,
}

const WITHIN: Duration = Duration::from_secs(60);
/// How long a killed follower stays down, and a partition lasts.
const FOLLOWER_DOWN: Duration = Duration::from_secs(5);
const PARTITION: Duration = Duration::from_secs(10);

/// Injects and undoes `fault`; what happened, with timings in seconds
/// from the fault, as JSON.
pub async fn inject(
    fault: Fault,
    stores: &mut Stores,
    cluster: &mut Cluster,
    round: usize,
    roles: bool,
) -> anyhow::Result<Value> {
    let began = Instant::now();
    let since = |t: Instant| (t.duration_since(began).as_secs_f64() * 100.0).round() / 100.0;
    let stream = stores.stream.clone();
    let mut killed = Vec::new();
    let detail = match fault {
        Fault::NatsLeader => {
            let leader = stores.nats.wait_leader(&stream, None, WITHIN).await?;
            stores.nats.kill(leader).await;
            if roles {
                killed = kill_roles(cluster, round).await;
            }
            let next = stores.nats.wait_leader(&stream, Some(leader), WITHIN).await?;
            let elected = Instant::now();
            stores.nats.restart(leader).await?;
            stores.nats.wait_current(&stream, WITHIN).await?;
            json!({
                "killed": stores.nats.nodes[leader].name, "new_leader": stores.nats.nodes[next].name,
                "new_leader_after": since(elected), "caught_up_after": since(Instant::now()),
            })
        }
        Fault::NatsFollower => {
            let leader = stores.nats.wait_leader(&stream, None, WITHIN).await?;
            let follower = (leader + 1) % 3;
            stores.nats.kill(follower).await;
            if roles {
                killed = kill_roles(cluster, round).await;
            }
            tokio::time::sleep(FOLLOWER_DOWN).await;
            stores.nats.restart(follower).await?;
            stores.nats.wait_current(&stream, WITHIN).await?;
            let still = stores.nats.wait_leader(&stream, None, WITHIN).await?;
            json!({
                "killed": stores.nats.nodes[follower].name, "leader_before": stores.nats.nodes[leader].name,
                "leader_after": stores.nats.nodes[still].name, "caught_up_after": since(Instant::now()),
            })
        }
        Fault::NatsPartition => {
            let leader = stores.nats.wait_leader(&stream, None, WITHIN).await?;
            let net = stores.net.as_ref().ok_or_else(|| {
                anyhow::anyhow!("the partition needs the NATS nodes in network namespaces (root, `ip netns`)")
            })?;
            net.cut(leader).await?;
            if roles {
                killed = kill_roles(cluster, round).await;
            }
            partition(stores, leader, &stream, began).await?
        }
        Fault::PostgresPrimary => {
            let old = stores.postgres.primary;
            stores.postgres.kill_primary().await?;
            if roles {
                killed = kill_roles(cluster, round).await;
            }
            // The operator's reaction time: the primary is seen dead first.
            tokio::time::sleep(Duration::from_secs(1)).await;
            stores.postgres.promote().await?;
            let promoted = Instant::now();
            let how = stores.postgres.rejoin().await?;
            json!({
                "killed": format!("pg{old}"), "promoted": format!("pg{}", stores.postgres.primary),
                "promoted_after": since(promoted), "old_primary_back_as_sync_standby_after": since(Instant::now()),
                "rejoined_with": how,
            })
        }
        Fault::PostgresStandby => {
            let recorded = |db: sqlx::PgPool| async move {
                sqlx::query_scalar::<_, i64>("SELECT count(*) FROM voter_roll").fetch_one(&db).await
            };
            stores.postgres.kill_standby().await?;
            if roles {
                killed = kill_roles(cluster, round).await;
            }
            let before = recorded(stores.db.clone()).await?;
            tokio::time::sleep(FOLLOWER_DOWN).await;
            let during = recorded(stores.db.clone()).await? - before;
            stores.postgres.restart_standby().await?;
            json!({
                "killed": format!("pg{}", stores.postgres.standby()),
                "recorded_while_standby_down": during,
                "standby_sync_again_after": since(Instant::now()),
            })
        }
        Fault::RedisMaster => {
            let master = stores.redis.master().await?;
            stores.redis.kill(master).await;
            if roles {
                killed = kill_roles(cluster, round).await;
            }
            let next = 1 - master;
            stores.redis.wait_master(next, WITHIN).await?;
            let promoted = Instant::now();
            stores.redis.restart(master).await?;
            json!({
                "killed": format!("redis{master}"), "promoted": format!("redis{next}"),
                "promoted_after": since(promoted), "old_master_replica_after": since(Instant::now()),
            })
        }
    };
    for &i in &killed {
        cluster.restart(i).await?;
    }
    let names: Vec<&str> = killed.iter().map(|&i| cluster.nodes[i].name.as_str()).collect();
    let mut detail = detail;
    detail["tally_killed"] = json!(names);
    detail["back_after"] = json!(since(Instant::now()));
    Ok(detail)
}

/// kill -9 of one process of each role (alternating between the two
/// replicas from one fault to the next); returns their indexes.
async fn kill_roles(cluster: &mut Cluster, round: usize) -> Vec<usize> {
    let mut killed = Vec::new();
    for role in ["api", "workers", "broadcaster"] {
        let replicas = cluster.with_role(role);
        let i = replicas[round % replicas.len()];
        cluster.kill(i).await;
        killed.push(i);
    }
    killed
}

/// With the old leader cut off from its peers until `PARTITION` has
/// passed, watches whom each side names leader, then heals and waits until
/// all catch up.
async fn partition(
    stores: &mut Stores,
    leader: usize,
    stream: &str,
    began: Instant,
) -> anyhow::Result<Value> {
    let mut majority_leader = None;
    let mut isolated_claims_until = 0.0;
    while began.elapsed() < PARTITION {
        let views = stores.nats.views(stream).await;
        let now = began.elapsed().as_secs_f64();
        if views[leader].as_deref() == Some(stores.nats.nodes[leader].name.as_str()) {
            isolated_claims_until = now;
        }
        let peers: Vec<&Option<String>> = (0..3).filter(|&i| i != leader).map(|i| &views[i]).collect();
        if majority_leader.is_none()
            && let (Some(a), Some(b)) = (peers[0], peers[1])
            && a == b
            && *a != stores.nats.nodes[leader].name
        {
            majority_leader = Some((a.clone(), now));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Some(net) = &stores.net {
        net.heal(leader).await?;
    }
    let healed = began.elapsed().as_secs_f64();
    // A replica that never catches up is a finding, not the end of the
    // run: the books are still checked, and it is reported as a violation.
    let problem = stores.nats.wait_current(stream, WITHIN).await.err().map(|e| format!("{e:#}"));
    let after = stores.nats.wait_leader(stream, None, WITHIN).await?;
    Ok(json!({
        "problem": problem,
        "isolated": stores.nats.nodes[leader].name,
        "majority_elected": majority_leader.as_ref().map(|(n, _)| n.clone()),
        "majority_elected_after": majority_leader.map(|(_, t)| (t * 100.0).round() / 100.0),
        "isolated_claimed_leadership_until": (isolated_claims_until * 100.0_f64).round() / 100.0,
        "healed_at": (healed * 100.0).round() / 100.0,
        "leader_after_heal": stores.nats.nodes[after].name,
        "caught_up_after": (began.elapsed().as_secs_f64() * 100.0).round() / 100.0,
    }))
}
