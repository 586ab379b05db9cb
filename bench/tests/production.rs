//! tally-bench writes synthetic citizens and accounts: it must refuse a
//! production deployment before touching anything.

use std::process::Command;

#[test]
fn tally_bench_refuses_production() {
    // Settings production accepts, so only the harness's own refusal stops it.
    let production = [
        ("TALLY_ENV", "production"),
        ("TALLY_AUTH__KEYS__DEV", "a-signing-key-that-is-long-enough-for-production"),
        ("TALLY_DATABASE__URL", "postgres://tally:a-real-password@127.0.0.1:5432/nowhere?sslmode=require"),
        ("TALLY_REDIS__URL", "redis://:a-real-password@127.0.0.1:6379"),
        ("TALLY_NATS__URL", "nats://tally:a-real-password@localhost:4222"),
    ];
    let output = Command::new(env!("CARGO_BIN_EXE_tally-bench"))
        .args(["provision", "--voters", "1", "--output", "/dev/null"])
        .envs(production)
        .output()
        .expect("run tally-bench");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("refuses to run with TALLY_ENV=production"), "{stderr}");
}
