//! How each of Tally's command-line programs starts: settings, then logs,
//! then the async runtime, each failure reported on stderr under the
//! program's name with the exit code scripts rely on (2 for bad settings).

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use crate::Settings;

/// Loads the settings from `config` (and the environment), starts logging
/// and a runtime, and runs `main` on it.
pub fn run<F>(program: &str, config: Option<&Path>, main: impl FnOnce(Settings) -> F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    let settings = match Settings::load(config) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = crate::telemetry::init_tracing(&settings.log) {
        eprintln!("{program}: {e:#}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{program}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
