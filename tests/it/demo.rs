//! `tally-bench demo` against a live process: citizens of the demo
//! registry sign up, log in and vote through the API, leaning towards the
//! first runners, and the run ends once its electorate has voted.

use crate::helpers::spawn_app;

#[tokio::test]
async fn the_demo_electorate_signs_up_and_votes_through_the_api_then_stops() {
    let app = spawn_app().await;
    let key = app.enrollment_key();
    let seeded = tally::seed::seed_demo(&app.db, &key, 2_000).await.expect("seeded");
    let options = tally_bench::demo::Options { api: app.api.clone(), rate: 100, voters: 60 };
    let report = tally_bench::demo::run(&app.settings, options.clone()).await.expect("the demo runs");
    assert_eq!((report.electorate, report.voted, report.refused), (60, 60, 0), "{report:?}");
    assert_eq!(report.election_id, seeded.election_id);

    // Every ballot went through sign-up: 60 enrolled accounts, none of the
    // citizens whose codes the seed prints for a person.
    let enrolled: Vec<i64> =
        sqlx::query_scalar("SELECT citizen_id FROM users WHERE enrolled_at IS NOT NULL ORDER BY citizen_id")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(enrolled.len(), 60);
    assert!(enrolled.iter().all(|&id| id >= 1_000), "42 to 46 are left for a person: {enrolled:?}");

    app.close(seeded.election_id).await;
    app.recorded(seeded.election_id, 60).await;
    let (totals, _) = app.totals(seeded.election_id).await;
    let votes = |runner: i64| totals.iter().find(|(id, _)| *id == runner).map_or(0, |(_, n)| *n);
    // One runner per post on every ballot; President (1-3) leans 4:3:2.
    assert_eq!(votes(1) + votes(2) + votes(3), 60);
    assert_eq!(votes(4) + votes(5), 60);
    assert!(votes(1) > votes(3) && votes(3) > 0, "an uneven race: {totals:?}");

    // Once the election has ended, a run refuses rather than cast ballots
    // that would all be refused.
    let closed = tally_bench::demo::run(&app.settings, options).await.unwrap_err();
    assert!(closed.to_string().contains("not open"), "{closed:#}");
}
