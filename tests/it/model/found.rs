//! Cases the random search once found, and cases written by hand to pin
//! a failure it could take long to find, kept as fixed regressions.

use super::*;
fn run(k: i32, ops: Vec<Op>) {
    tokio::runtime::Runtime::new().unwrap().block_on(run_case(k, ops));
}
fn s(voter: i64) -> Op {
    Op::Submit { voter, choice: 0, resubmit: false }
}
/// The voter's ballot again, as a retry after the duplicate window.
fn again(voter: i64) -> Op {
    Op::Submit { voter, choice: 1, resubmit: true }
}
/// A ballot handed back by the non-owner at the close is a straggler:
/// the flush waits for it.
#[test]
fn straggler_handed_back() {
    run(2, vec![s(1), s(2), Op::Step { worker: 0, max: 1 }, Op::Step { worker: 1, max: 1 }, Op::Close]);
}
/// A ballot not yet delivered when the election ends joins the flush.
#[test]
fn straggler_undelivered() {
    run(2, vec![s(1), Op::Step { worker: 0, max: 1 }, s(2)]);
}
/// A citizen's second ballot (a new receipt) never counts toward K.
#[test]
fn second_ballots_shrink_a_group() {
    run(2, vec![s(1), again(1), again(1), s(2), s(3), Op::Step { worker: 0, max: 5 }]);
}

#[test]
fn late_ballots_after_crashes_and_a_kill() {
    use Op::*;
    let s = |voter, choice, resubmit| Submit { voter, choice, resubmit };
    run(
        2,
        vec![
            s(7, 1, false),
            Close,
            s(5, 0, false),
            s(2, 1, false),
            Step { worker: 0, max: 5 },
            s(5, 1, true),
            Step { worker: 1, max: 3 },
            Crash { worker: 1, max: 5, at: Stage::Published },
            Step { worker: 1, max: 4 },
            Tick { worker: 1 },
            s(8, 0, false),
            Crash { worker: 1, max: 6, at: Stage::Ready },
            s(5, 1, false),
            Crash { worker: 0, max: 2, at: Stage::Published },
            Step { worker: 0, max: 1 },
            s(1, 1, true),
            s(4, 0, false),
            Kill { worker: 0 },
            Step { worker: 1, max: 5 },
            s(1, 1, false),
            Step { worker: 0, max: 1 },
            Step { worker: 1, max: 7 },
        ],
    );
}

/// A worker stalls after recording an already decided ballot (its totals
/// read at version 1) while the other commits version 2; the stalled one
/// then publishes version 1, which Redis must ignore.
#[test]
fn a_stalled_worker_publishes_an_older_version() {
    use Op::*;
    let mut ops: Vec<Op> = (1..=5).map(s).collect();
    ops.extend([
        Step { worker: 1, max: 5 },
        again(1),
        Stall { worker: 0, max: 1, at: Stage::Recorded },
        s(6),
        s(7),
        s(8),
        Step { worker: 1, max: 3 },
        Resume { worker: 0 },
    ]);
    run(2, ops);
}

/// A worker dies after recording the close flush: only the redelivery of
/// those ballots can bring Redis up to Postgres, so they must not have
/// been acked yet.
#[test]
fn death_after_recording_the_flush() {
    let ops = vec![s(1), s(2), s(3), Op::Close, Op::Crash { worker: 0, max: 5, at: Stage::Recorded }];
    run(2, ops);
}

/// Ballots already on the record (second ballots of counted voters) come
/// in beside new ones: they never count toward K.
#[test]
fn settled_ballots_never_count_toward_k() {
    let mut ops: Vec<Op> = (1..=5).map(s).collect();
    ops.extend([Op::Step { worker: 0, max: 5 }, again(1), again(2), s(6), Op::Step { worker: 0, max: 3 }]);
    run(2, ops);
}
