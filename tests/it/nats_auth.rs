//! NATS with the shipped authorization (`deploy/nats/authorization.conf`):
//! a private `nats-server` loads that very file, and each role connects
//! as its own identity, with only the rights that file gives it.

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::{self, stream::Stream};
use tally_domain::secret::Secret;
use tally_platform::{Settings, fence, nats, streams};

use crate::helpers::{
    API_ONLY, BROADCASTER_ONLY, ElectionSpec, Namespace, RUNNERS, WORKERS_ONLY, eventually, insert_election,
    spawn_app_with, start_with,
};

const ROLES: [&str; 5] = ["provision", "api", "workers", "broadcaster", "quarantine"];

/// A nats-server on a free port with `deploy/nats/authorization.conf`,
/// a random password per identity, killed when dropped.
struct LockedNats {
    _child: tokio::process::Child,
    dir: PathBuf,
    port: u16,
    password: String,
}

impl LockedNats {
    async fn start() -> LockedNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = std::env::temp_dir().join(format!("tally-nats-auth-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/nats/authorization.conf");
        std::fs::copy(shipped, dir.join("authorization.conf")).unwrap();
        let config = format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: \"{}\" }}\ninclude ./authorization.conf\n",
            dir.join("js").display()
        );
        std::fs::write(dir.join("nats.conf"), config).unwrap();
        let password = uuid::Uuid::new_v4().simple().to_string();
        let mut command = tokio::process::Command::new("/usr/sbin/nats-server");
        command.arg("-c").arg(dir.join("nats.conf"));
        for role in ROLES {
            command.env(format!("NATS_{}_PASSWORD", role.to_uppercase()), format!("{role}-{password}"));
        }
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server from Debian's package");
        eventually("the private nats-server", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok()
        })
        .await;
        LockedNats { _child: child, dir, port, password }
    }

    /// `settings` as the identity `role`, with the stream names the
    /// shipped file grants (the defaults).
    fn as_role(&self, settings: &Settings, role: &str) -> Settings {
        let mut s = settings.clone();
        let defaults = Settings::default().nats;
        s.nats.url = Secret::new(format!("nats://{role}:{role}-{}@127.0.0.1:{}", self.password, self.port));
        s.nats.inbox_prefix = format!("_INBOX_{role}");
        s.nats.stream = defaults.stream;
        s.nats.subject_prefix = defaults.subject_prefix;
        s.nats.consumer = defaults.consumer;
        // A denied request is never answered: it times out.
        s.nats.publish_timeout_ms = 1_000;
        s
    }
}

impl Drop for LockedNats {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

async fn js_as(settings: &Settings) -> (jetstream::Context, Stream<()>) {
    let client = nats::connect(&settings.nats).await.unwrap();
    let js = nats::jetstream(client, &settings.nats);
    let votes = js.get_stream_no_info(&settings.nats.stream).await.unwrap();
    (js, votes)
}

/// What the identity may read of the ballot on `subject`: a message get
/// and a direct get by subject, each `Ok` only if a ballot came back.
async fn reads_ballot(votes: &Stream<()>, subject: &str) -> [bool; 2] {
    [
        votes.get_last_raw_message_by_subject(subject).await.is_ok(),
        votes.direct_get_last_for_subject(subject).await.is_ok(),
    ]
}

#[tokio::test]
async fn nats_refuses_a_wrong_user_and_gives_each_identity_only_its_rights() {
    let nats = LockedNats::start().await;
    let base = Namespace::new().settings();
    let [provision, api, workers, broadcaster] =
        ["provision", "api", "workers", "broadcaster"].map(|role| nats.as_role(&base, role));

    let address = format!("nats://127.0.0.1:{}", nats.port);
    let wrong = async_nats::ConnectOptions::with_user_and_password("api".into(), "not-its-password".into())
        .connect(&address)
        .await;
    assert!(
        matches!(&wrong, Err(e) if e.kind() == async_nats::ConnectErrorKind::AuthorizationViolation),
        "a wrong password is refused: {wrong:?}"
    );
    let anonymous = async_nats::connect(&address).await;
    assert!(anonymous.is_err(), "no one connects without credentials");

    // Serving identities may not create streams; the provisioning one does.
    let (api_js, api_votes) = js_as(&api).await;
    let missing = streams::require(&api_js, &api.nats).await.unwrap_err().to_string();
    assert!(missing.contains("VOTES does not exist; `tally migrate` creates it"), "{missing}");
    assert!(streams::provision(&api_js, &api.nats).await.is_err(), "the API cannot create streams");
    let (provision_js, _) = js_as(&provision).await;
    streams::provision(&provision_js, &provision.nats).await.expect("the provisioning identity creates them");
    streams::require(&api_js, &api.nats).await.expect("the API finds them");

    // The API publishes a ballot and gets its ack.
    let subject = nats::ballot_subject(&api.nats, 41);
    let timeout = Duration::from_secs(2);
    let stored = nats::publish_acked(&api_js, subject.clone(), Default::default(), "sealed".into(), timeout)
        .await
        .expect("the API publishes ballots");
    let fence_subject = fence::subject(&api.nats, 41);
    let forged = nats::publish_acked(&api_js, fence_subject, Default::default(), "".into(), timeout).await;
    assert!(forged.is_err(), "the API cannot raise a fence");

    // It counts, but reads no ballot and consumes none.
    assert!(nats::holds_any(&api_votes, &subject).await.unwrap(), "the API counts waiting ballots");
    assert_eq!(reads_ballot(&api_votes, &subject).await, [false, false], "the API reads no ballot");
    let consumer = api_js
        .create_consumer_on_stream(
            jetstream::consumer::pull::Config {
                durable_name: Some(api.nats.consumer.clone()),
                ..Default::default()
            },
            &api.nats.stream,
        )
        .await;
    assert!(consumer.is_err(), "the API cannot create a consumer");

    // The broadcaster likewise.
    let (broadcaster_js, broadcaster_votes) = js_as(&broadcaster).await;
    streams::require(&broadcaster_js, &broadcaster.nats).await.expect("the broadcaster finds the streams");
    assert!(nats::holds_any(&broadcaster_votes, &subject).await.unwrap());
    assert_eq!(reads_ballot(&broadcaster_votes, &subject).await, [false, false], "nor does the broadcaster");

    // Workers read ballots and raise the fence; the API reads the fence.
    let (workers_js, workers_votes) = js_as(&workers).await;
    let read = reads_ballot(&workers_votes, &subject).await;
    assert_eq!(read, [true, false], "workers read ballots by message get, direct gets only fences");
    assert_eq!(fence::first(&api_votes, &api.nats, 41).await.unwrap(), None);
    let fenced = fence::raise(&workers_js, &workers_votes, &workers.nats, 41, timeout).await.unwrap();
    assert!(fenced > stored.sequence());
    assert_eq!(fence::first(&api_votes, &api.nats, 41).await.unwrap(), Some(fenced), "the API reads it");
    let again = fence::raise(&workers_js, &workers_votes, &workers.nats, 41, timeout).await.unwrap();
    assert_eq!(again, fenced, "an election has one fence");
}

/// With each role as its own identity, none of the API and broadcaster
/// allowed to read a ballot, votes are counted and the election becomes
/// final: pending state comes from counts, never from reading ballots.
#[tokio::test]
async fn every_role_works_with_only_its_own_rights() {
    let nats = LockedNats::start().await;
    let ns = Namespace::new();
    let provision = nats.as_role(&ns.settings(), "provision");
    let (provision_js, _) = js_as(&provision).await;
    streams::provision(&provision_js, &provision.nats).await.unwrap();

    let api = spawn_app_with(API_ONLY, |s| *s = nats.as_role(s, "api")).await;
    let _workers = start_with(&api, nats.as_role(&api.settings, "workers"), WORKERS_ONLY).await;
    let broadcaster = start_with(&api, nats.as_role(&api.settings, "broadcaster"), BROADCASTER_ONLY).await;
    let election = insert_election(&api.db, ElectionSpec::default()).await;
    let receipts = api.ballots_from_new_voters(election, 7_170_000, 3, RUNNERS[0]).await;

    let results = |election: i64| {
        let api = &api;
        async move { api.get_json(&format!("/v1/elections/{election}/results")).await }
    };
    assert_eq!(results(election).await["final"], false);
    api.close(election).await;
    for receipt in &receipts {
        assert_eq!(api.settled(receipt).await["status"], "recorded");
    }
    eventually("the election to be final", || async {
        (results(election).await["final"] == true).then_some(())
    })
    .await;
    let ready = reqwest::get(format!("{}/readyz", broadcaster.admin)).await.unwrap();
    assert_eq!(ready.status(), 200, "the broadcaster serves as its own identity");

    // A ballot set aside: the operator's identity lists it, the API's
    // cannot read it.
    let workers_nats = nats.as_role(&api.settings, "workers");
    let (workers_js, _) = js_as(&workers_nats).await;
    let aside = nats::quarantine_subject(&workers_nats.nats, &election.to_string());
    nats::publish_acked(&workers_js, aside, Default::default(), "sealed".into(), Duration::from_secs(2))
        .await
        .expect("workers set ballots aside");
    let operator = nats.as_role(&api.settings, "quarantine");
    let deps = tally_platform::Deps::connect(
        std::sync::Arc::new(operator),
        &tally_platform::readiness::Readiness::default(),
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap()
    .unwrap();
    let listed = tally_workers::quarantine::list(&deps, Some(election)).await.unwrap();
    assert_eq!(listed.len(), 1, "the quarantine identity reads the quarantine");
    let (api_js, _) = js_as(&api.settings).await;
    let held = api_js.get_stream_no_info(nats::quarantine_stream(&api.settings.nats)).await.unwrap();
    assert!(held.get_raw_message(listed[0].sequence).await.is_err(), "the API cannot read it");
}
