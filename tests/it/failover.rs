//! The clients after a store fails over, on real processes: NATS given as
//! a list with a dead member, Redis behind three sentinels whose master is
//! killed, and a Postgres connection whose node turned read-only.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use futures_util::StreamExt;
use redis::AsyncCommands;
use tally_domain::secret::Secret;
use tally_platform::config::SentinelSettings;

use crate::helpers::{Cleanup, Namespace, eventually};

/// `N` different ports in 27000-27999 that nothing listens on now.
fn private_ports<const N: usize>() -> [u16; N] {
    let start = (uuid::Uuid::new_v4().as_u128() % 1000) as u16;
    // Held together while choosing, so no two are the same.
    let held: Vec<std::net::TcpListener> = (0..1000u16)
        .filter_map(|i| std::net::TcpListener::bind(("127.0.0.1", 27_000 + (start + i) % 1000)).ok())
        .take(N)
        .collect();
    let ports: Vec<u16> = held.iter().map(|l| l.local_addr().unwrap().port()).collect();
    ports.try_into().expect("enough free ports in 27000-27999")
}

#[tokio::test]
async fn nats_given_a_list_connects_past_a_dead_member_and_publishes() {
    let mut settings = Namespace::new().settings();
    let [dead] = private_ports();
    settings.nats.url = Secret::new(format!("nats://127.0.0.1:{dead}, nats://127.0.0.1:4222"));
    let client = tally_platform::nats::connect(&settings.nats).await.unwrap();
    let subject = format!("failover.{}", uuid::Uuid::new_v4().simple());
    let mut inbox = client.subscribe(subject.clone()).await.unwrap();
    client.publish(subject, "past the dead member".into()).await.unwrap();
    let message =
        tokio::time::timeout(Duration::from_secs(10), inbox.next()).await.expect("delivered in time");
    assert_eq!(&message.unwrap().payload[..], b"past the dead member");
}

/// A Redis master, its replica and three sentinels on private ports,
/// all with one password; killed and removed when dropped.
struct Sentinels {
    dir: PathBuf,
    master: tokio::process::Child,
    replica: tokio::process::Child,
    _sentinels: Vec<tokio::process::Child>,
    replica_port: u16,
    sentinel_ports: Vec<u16>,
}

const PASSWORD: &str = "failover-password";

fn redis_server(args: &[String]) -> tokio::process::Child {
    tokio::process::Command::new("redis-server")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-server from Debian's package")
}

async fn ask(port: u16, command: &redis::Cmd) -> Option<redis::Value> {
    let client = redis::Client::open(format!("redis://:{PASSWORD}@127.0.0.1:{port}")).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    command.query_async(&mut conn).await.ok()
}

impl Sentinels {
    async fn start() -> Sentinels {
        let dir = std::env::temp_dir().join(format!("tally-sentinel-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let [master_port, replica_port, s1, s2, s3] = private_ports();
        let node = |port: u16| -> Vec<String> {
            let dir = dir.to_str().unwrap();
            let args =
                ["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
            let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            args.extend(["--dir", dir, "--dbfilename", &format!("{port}.rdb")].map(String::from));
            args.extend(["--requirepass", PASSWORD, "--masterauth", PASSWORD].map(String::from));
            args
        };
        let master = redis_server(&node(master_port));
        let mut replica_args = node(replica_port);
        replica_args.extend(["--replicaof".into(), "127.0.0.1".into(), master_port.to_string()]);
        let replica = redis_server(&replica_args);
        eventually("the replica in sync", || async {
            let info = ask(master_port, redis::cmd("INFO").arg("replication")).await?;
            let info: String = redis::from_redis_value(&info).ok()?;
            info.contains("connected_slaves:1").then_some(())
        })
        .await;
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for port in [s1, s2, s3] {
            let config = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &config,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n\
                     requirepass {PASSWORD}\nsentinel sentinel-pass {PASSWORD}\n\
                     sentinel monitor tally 127.0.0.1 {master_port} 2\n\
                     sentinel auth-pass tally {PASSWORD}\n\
                     sentinel down-after-milliseconds tally 1000\n\
                     sentinel failover-timeout tally 3000\n",
                    dir = dir.display()
                ),
            )
            .unwrap();
            let config = config.to_str().unwrap().to_string();
            sentinels.push(redis_server(&[config, "--sentinel".into()]));
            sentinel_ports.push(port);
        }
        // Each sentinel must know the replica and the other two, or no
        // failover can be agreed.
        for port in &sentinel_ports {
            eventually("a sentinel that knows the others and the replica", || async {
                let known =
                    |v: redis::Value| redis::from_redis_value::<Vec<redis::Value>>(&v).ok().map(|v| v.len());
                let others = known(ask(*port, redis::cmd("SENTINEL").arg("SENTINELS").arg("tally")).await?)?;
                let replicas = known(ask(*port, redis::cmd("SENTINEL").arg("REPLICAS").arg("tally")).await?)?;
                (others == 2 && replicas == 1).then_some(())
            })
            .await;
        }
        Sentinels { dir, master, replica, _sentinels: sentinels, replica_port, sentinel_ports }
    }

    /// Settings that reach Redis through the sentinels only: `redis.url`
    /// names a port nothing listens on, and gives the password.
    fn settings(&self) -> tally_platform::Settings {
        let mut settings = Namespace::new().settings();
        let [nowhere] = private_ports();
        settings.redis.url = Secret::new(format!("redis://:{PASSWORD}@127.0.0.1:{nowhere}/0"));
        let urls =
            self.sentinel_ports.iter().map(|p| Secret::new(format!("redis://:{PASSWORD}@127.0.0.1:{p}")));
        settings.redis.sentinel =
            Some(SentinelSettings { master_name: "tally".into(), urls: urls.collect() });
        settings
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        let _ = self.master.start_kill();
        let _ = self.replica.start_kill();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

#[tokio::test]
async fn redis_behind_sentinel_follows_the_master_it_promotes() {
    let mut stores = Sentinels::start().await;
    let settings = stores.settings();
    let mut redis = tally_platform::redis::connect(&settings.redis).await.unwrap();
    let master = tally_platform::redis::master(&settings.redis).unwrap();
    let () = redis.set("before", "the failover").await.unwrap();
    let counter = redis::Script::new("return redis.call('INCR', KEYS[1])");
    let first: i64 = counter.key("counted").invoke_async(&mut redis).await.unwrap();
    assert_eq!(first, 1);
    eventually("the replica to hold the writes before the master dies", || {
        let mut redis = redis.clone();
        async move {
            let replicas: i64 = redis::cmd("WAIT").arg(1).arg(200).query_async(&mut redis).await.ok()?;
            (replicas == 1).then_some(())
        }
    })
    .await;

    // SIGKILL: no shutdown, no goodbye to the replica or the sentinels.
    stores.master.start_kill().unwrap();
    stores.master.wait().await.unwrap();

    // Tally's connection, not a new one, comes back on the promoted replica.
    let after: String = eventually("a write through Tally's connection after the failover", || {
        let mut redis = redis.clone();
        async move {
            let () = redis.set("after", "the failover").await.ok()?;
            redis.get("before").await.ok()
        }
    })
    .await;
    assert_eq!(after, "the failover");
    let on_new_master = ask(stores.replica_port, redis::cmd("GET").arg("after")).await;
    assert_eq!(on_new_master, Some(redis::Value::BulkString(b"the failover".to_vec())));

    // A fresh master holds no script: EVALSHA fails, and Script loads it again.
    ask(stores.replica_port, redis::cmd("SCRIPT").arg("FLUSH")).await.expect("flushed");
    let second: i64 = counter.key("counted").invoke_async(&mut redis).await.unwrap();
    assert_eq!(second, 2, "the script ran on the new master, which holds the replicated count");

    // A subscription made now reaches the new master.
    let client = master.client().await.unwrap();
    assert_eq!(client.get_connection_info().addr.to_string(), format!("127.0.0.1:{}", stores.replica_port));
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe("failover-channel").await.unwrap();
    let _: i64 = redis.publish("failover-channel", "heard").await.unwrap();
    let mut messages = pubsub.on_message();
    let message =
        tokio::time::timeout(Duration::from_secs(5), messages.next()).await.expect("in time").unwrap();
    assert_eq!(message.get_payload::<String>().unwrap(), "heard");
}

#[tokio::test]
async fn a_connection_to_a_read_only_postgres_is_closed_and_never_made_again() {
    let ns = Namespace::new();
    let _cleanup = Cleanup(ns.clone());
    let admin = ns.create_database().await;
    let mut settings = ns.settings();
    settings.database.max_connections = 1;
    settings.database.acquire_timeout_ms = 1_000;
    let db = tally_platform::postgres::pool(&settings.database).unwrap();
    sqlx::query("CREATE TABLE ha_writes (n int)").execute(&db).await.unwrap();
    let pid = |db: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(&db).await.unwrap()
    };
    let before = pid(db.clone()).await;
    assert_eq!(pid(db.clone()).await, before, "one pooled connection, reused");

    // The node turns read-only under the open connection (as a demoted
    // primary would), and for every new session.
    let database = ns.database();
    sqlx::query(&format!("ALTER DATABASE \"{database}\" SET default_transaction_read_only = on"))
        .execute(&admin)
        .await
        .unwrap();
    let mut conn = db.acquire().await.unwrap();
    sqlx::query("SET SESSION default_transaction_read_only = on").execute(&mut *conn).await.unwrap();
    let written = async {
        sqlx::query("INSERT INTO ha_writes VALUES (1)").execute(&mut *conn).await?;
        Ok::<_, anyhow::Error>(())
    };
    let written = written.await;
    let error = tally_platform::postgres::evict_if_read_only(&mut conn, written).unwrap_err();
    assert!(tally_platform::postgres::is_read_only(&error), "{error:#}");
    drop(conn);
    eventually("the read-only connection closed", || async { (db.size() == 0).then_some(()) }).await;
    let refused = db.acquire().await.map(drop).unwrap_err();
    assert!(matches!(refused, sqlx::Error::PoolTimedOut), "a read-only session is never pooled: {refused}");

    // The primary is writable again (a new one, behind the balancer).
    sqlx::query(&format!("ALTER DATABASE \"{database}\" RESET default_transaction_read_only"))
        .execute(&admin)
        .await
        .unwrap();
    sqlx::query("INSERT INTO ha_writes VALUES (2)").execute(&db).await.unwrap();
    assert_ne!(pid(db.clone()).await, before, "the write went over a fresh connection");
    db.close().await;
    admin.close().await;
}
