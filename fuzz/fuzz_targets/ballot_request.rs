//! The ballot body as the API reads it: any bytes either fail to parse or
//! give selections that `check_selections` judges without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tally_api::ballots::BallotRequest;
use tally_domain::ballot::check_selections;
use tally_domain::election::Runner;

fuzz_target!(|data: &[u8]| {
    let Ok(request) = serde_json::from_slice::<BallotRequest>(data) else { return };
    let runners: Vec<Runner> = [(9001, "President"), (9002, "President"), (9003, "Senator")]
        .into_iter()
        .map(|(citizen_id, post)| Runner { citizen_id, full_name: String::new(), post: post.into(), total_votes: 0 })
        .collect();
    if check_selections(&request.selections, &runners).is_ok() {
        assert!(!request.selections.is_empty() && request.selections.len() <= 2);
    }
});
