//! The fuzz targets' runner: a case count from `GAPLAB_FUZZ_CASES`, every case in a thread with
//! a deadline (a hang fails the test instead of stalling it), and a tally of outcomes written
//! to the terminal even when the test harness captures output.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestRunner};

/// How long one case may take before it counts as a hang. Cases take milliseconds; the margin
/// is for a loaded CI machine.
const DEADLINE: Duration = Duration::from_secs(20);

/// Cases per target: `GAPLAB_FUZZ_CASES` when set (a long local run), else `default` (CI).
pub fn cases(default: u32) -> u32 {
    std::env::var("GAPLAB_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// Runs `f` on a thread of rayon's default stack size (the data is rendered on rayon's
/// threads) and waits at most [`DEADLINE`] for it. A panic in `f` is raised again here.
pub fn bounded<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("fuzz-case".into())
        .stack_size(2 << 20)
        .spawn(move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(r);
        })
        .unwrap();
    match rx.recv_timeout(DEADLINE) {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what}: no result after {DEADLINE:?} (a hang)"),
    }
}

/// Runs `cases` cases of `strategy` through `test`, which checks the invariants (panicking when
/// one fails) and names the outcome; then prints `fuzz NAME: N cases, ...` with the count of
/// each outcome.
pub fn fuzz<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> &'static str,
) {
    let n = cases(default_cases);
    let config = Config {
        cases: n,
        failure_persistence: None,
        max_shrink_time: 60_000,
        max_shrink_iters: 1000,
        ..Config::default()
    };
    let tally: Mutex<BTreeMap<&'static str, usize>> = Mutex::new(BTreeMap::new());
    let start = Instant::now();
    let result = TestRunner::new(config).run(&strategy, |v| {
        let outcome = test(v);
        *tally.lock().unwrap().entry(outcome).or_default() += 1;
        Ok(())
    });
    let tally = tally.into_inner().unwrap();
    let total: usize = tally.values().sum();
    let parts: Vec<String> = tally.iter().map(|(k, v)| format!("{v} {k}")).collect();
    // Straight to the terminal: libtest captures print!/eprint!, not the stderr handle.
    let _ = writeln!(
        std::io::stderr(),
        "fuzz {name}: {total} cases in {:.1}s: {}",
        start.elapsed().as_secs_f64(),
        parts.join(", ")
    );
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
}

/// A one-line summary of a target that is not random (every offset of a file, say).
pub fn note(name: &str, what: &str) {
    let _ = writeln!(std::io::stderr(), "fuzz {name}: {what}");
}
