//! Runs any set of roles in one process: binds their listeners, serves the
//! admin endpoints at once, connects to the dependencies (retrying), starts
//! the roles, and drains them on shutdown.

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tally_http::admin::admin_router;
use tally_http::middleware::{bind, serve_admin};
use tally_platform::readiness::Readiness;
use tally_platform::{Deps, Settings};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Roles {
    pub api: bool,
    pub workers: bool,
    pub broadcaster: bool,
}

impl Roles {
    pub const ALL: Roles = Roles { api: true, workers: true, broadcaster: true };

    pub fn names(&self) -> Vec<&'static str> {
        [(self.api, "api"), (self.workers, "workers"), (self.broadcaster, "broadcaster")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect()
    }
}

impl FromStr for Roles {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, Self::Err> {
        let mut roles = Roles { api: false, workers: false, broadcaster: false };
        for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            match name {
                "api" => roles.api = true,
                "workers" => roles.workers = true,
                "broadcaster" => roles.broadcaster = true,
                "all" => roles = Roles::ALL,
                other => {
                    return Err(format!("unknown role `{other}`; roles are api, workers, broadcaster"));
                }
            }
        }
        if roles.names().is_empty() {
            return Err("name at least one role: api, workers, broadcaster".into());
        }
        Ok(roles)
    }
}

/// A running process. Addresses are known as soon as it starts, before its
/// dependencies are reachable.
pub struct App {
    pub api_addr: Option<SocketAddr>,
    pub broadcaster_addr: Option<SocketAddr>,
    pub admin_addr: SocketAddr,
    pub readiness: Readiness,
    shutdown: CancellationToken,
    ready: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl App {
    pub async fn start(
        mut settings: Settings,
        roles: Roles,
        shutdown: CancellationToken,
    ) -> anyhow::Result<App> {
        let http = &settings.http;
        let api = if roles.api { Some(bind(http.api_addr, "http.api_addr").await?) } else { None };
        let broadcaster = if roles.broadcaster {
            Some(bind(http.broadcaster_addr, "http.broadcaster_addr").await?)
        } else {
            None
        };
        let admin = bind(http.admin_addr, "http.admin_addr").await?;
        // A broadcaster given port 0 got one from the system: the voter page
        // in this process links to that one.
        if let Some(bound) = broadcaster.as_ref().map(TcpListener::local_addr).transpose()? {
            settings.http.broadcaster_addr = bound;
        }
        let settings = Arc::new(settings);
        // Only workers need NATS to be of use (common/platform/src/readiness.rs).
        let readiness = Readiness::needing_nats(roles.workers);
        let (ready_tx, ready) = watch::channel(false);
        let app = App {
            api_addr: api.as_ref().map(TcpListener::local_addr).transpose()?,
            broadcaster_addr: broadcaster.as_ref().map(TcpListener::local_addr).transpose()?,
            admin_addr: admin.local_addr()?,
            readiness: readiness.clone(),
            shutdown: shutdown.clone(),
            ready,
            task: tokio::spawn(run(
                settings,
                roles,
                Listeners { api, broadcaster, admin },
                readiness,
                ready_tx,
                shutdown,
            )),
        };
        metrics::gauge!("tally_build_info", "version" => env!("CARGO_PKG_VERSION"), "roles" => roles.names().join(","))
            .set(1.0);
        Ok(app)
    }

    /// Resolves once every role is serving; fails if the process stopped first.
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        self.ready
            .wait_for(|ready| *ready)
            .await
            .map(|_| ())
            .map_err(|_| anyhow::anyhow!("stopped before ready"))
    }

    /// Waits for the process to finish (after its shutdown token fires).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.task.await.context("app task panicked")?
    }

    /// Ends the process's work at once, as a crash would: nothing drains,
    /// nothing is acked. For fault-injection tests.
    pub fn abort(self) {
        self.task.abort();
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

struct Listeners {
    api: Option<TcpListener>,
    broadcaster: Option<TcpListener>,
    admin: TcpListener,
}

async fn run(
    settings: Arc<Settings>,
    roles: Roles,
    listeners: Listeners,
    readiness: Readiness,
    ready: watch::Sender<bool>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // The admin listener outlives the roles so probes see the drain.
    let admin_stop = CancellationToken::new();
    let admin =
        tokio::spawn(serve_admin(listeners.admin, admin_router(readiness.clone()), admin_stop.clone()));

    let result = run_roles(
        settings.clone(),
        roles,
        listeners.api,
        listeners.broadcaster,
        &readiness,
        ready,
        &shutdown,
    )
    .await;
    admin_stop.cancel();
    admin.await.context("admin listener panicked")??;
    result
}

async fn run_roles(
    settings: Arc<Settings>,
    roles: Roles,
    api: Option<TcpListener>,
    broadcaster: Option<TcpListener>,
    readiness: &Readiness,
    ready: watch::Sender<bool>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let Some(deps) = Deps::connect(settings.clone(), readiness, shutdown).await? else {
        return Ok(());
    };
    let mut tasks = JoinSet::new();
    if let Some(listener) = api {
        tasks.spawn(tally_api::run(deps.clone(), listener, shutdown.clone()));
    }
    if roles.workers {
        tasks.spawn(tally_workers::run(deps.clone(), shutdown.clone()));
    }
    if let Some(listener) = broadcaster {
        tasks.spawn(tally_broadcaster::run(deps.clone(), listener, shutdown.clone()));
    }
    readiness.roles_started();
    ready.send_replace(true);
    tracing::info!(roles = roles.names().join(","), "serving");

    // A role that fails brings the process down rather than limping on.
    let mut outcome = Ok(());
    tokio::select! {
        _ = shutdown.cancelled() => {}
        Some(finished) = tasks.join_next() => {
            outcome = finished.context("role panicked").and_then(|r| r);
            if let Err(e) = &outcome {
                tracing::error!(error = format!("{e:#}"), "a role failed; stopping");
            }
            shutdown.cancel();
        }
    }
    readiness.draining();
    let grace = Duration::from_secs(settings.http.shutdown_grace_secs);
    let drained = tokio::time::timeout(grace, async {
        while let Some(finished) = tasks.join_next().await {
            if let Err(e) = finished.context("role panicked").and_then(|r| r) {
                tracing::error!(error = format!("{e:#}"), "role failed while draining");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!(grace_secs = grace.as_secs(), "roles did not drain in time; aborting them");
        tasks.abort_all();
    }
    tracing::info!("stopped");
    outcome
}

/// Creates or updates the NATS streams, as `tally migrate` does: with
/// this process's NATS identity, which must be the provisioning one in
/// production. Waits a while for a broker that is still starting.
pub async fn provision_streams(settings: &tally_platform::config::NatsSettings) -> anyhow::Result<()> {
    const PATIENCE: Duration = Duration::from_secs(60);
    let client = tally_platform::nats::connect(settings).await?;
    let js = tally_platform::nats::jetstream(client.clone(), settings);
    let mut backoff = tally_platform::retry::Backoff::default();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let provisioned = loop {
        match tally_platform::streams::provision(&js, settings).await {
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = format!("{e:#}"), "cannot provision the NATS streams yet");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            outcome => break outcome,
        }
    };
    client.flush().await.ok();
    provisioned
}

#[cfg(test)]
mod tests {
    use super::Roles;

    #[test]
    fn roles_parse_from_a_comma_list() {
        let r: Roles = "api, broadcaster".parse().expect("valid list");
        assert_eq!(r, Roles { api: true, workers: false, broadcaster: true });
        assert_eq!("all".parse::<Roles>(), Ok(Roles::ALL));
        assert!("api,voting".parse::<Roles>().unwrap_err().contains("voting"));
        assert!("".parse::<Roles>().is_err());
    }
}
