//! Fault injection, so that tests can make the disk fill up or a step run out of memory at a
//! chosen moment and check that nothing is lost.
//!
//! `GAPLAB_FAULT` holds a comma-separated list of fault points, each `NAME` (every call fails)
//! or `NAME@N` (the N-th call and every one after it fails, 1-based: a full disk stays full).
//! Unset, the checks cost one atomic load. The variable is read once per process; it is meant
//! for gaplab's own tests and is documented in docs/RELIABILITY.md.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock, PoisonError};

/// The environment variable that arms fault points.
pub const ENV: &str = "GAPLAB_FAULT";

/// Armed points: name -> first failing call (1-based).
fn armed() -> &'static HashMap<String, u64> {
    static ARMED: OnceLock<HashMap<String, u64>> = OnceLock::new();
    ARMED.get_or_init(|| parse(&std::env::var(ENV).unwrap_or_default()))
}

/// `NAME` or `NAME@N` entries; malformed counts arm the point from its first call (a test that
/// misspells a count sees the fault early rather than never).
fn parse(spec: &str) -> HashMap<String, u64> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s.split_once('@') {
            Some((name, n)) => (
                name.trim().to_string(),
                n.trim().parse().unwrap_or(1).max(1),
            ),
            None => (s.to_string(), 1),
        })
        .collect()
}

/// Counts a call of fault point `name`; true when it must fail.
pub fn hit(name: &str) -> bool {
    let armed = armed();
    let Some(&from) = armed.get(name) else {
        return false;
    };
    static CALLS: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);
    let mut calls = CALLS.lock().unwrap_or_else(PoisonError::into_inner);
    let n = calls
        .get_or_insert_with(HashMap::new)
        .entry(name.to_string())
        .or_insert(0);
    *n += 1;
    *n >= from
}

/// An injected "no space left on device" error when fault point `name` fires.
pub fn disk(name: &str) -> std::io::Result<()> {
    if hit(name) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::StorageFull,
            format!("No space left on device (injected by {ENV}={name})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_points_and_first_failing_calls() {
        let p = parse(" checkpoint@3, metrics ,,oom@x");
        assert_eq!(p.get("checkpoint"), Some(&3));
        assert_eq!(p.get("metrics"), Some(&1));
        assert_eq!(p.get("oom"), Some(&1));
        assert_eq!(p.len(), 3);
        assert!(parse("").is_empty());
    }

    #[test]
    fn unarmed_points_never_fire() {
        // The test process does not set GAPLAB_FAULT.
        assert!(!hit("nothing-armed-here"));
        assert!(disk("nothing-armed-here").is_ok());
    }
}
