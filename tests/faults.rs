//! Faults while training, through the real binary: a disk that fills up or turns read-only
//! while a checkpoint or a record is written (injected with GAPLAB_FAULT, and for real on a
//! small tmpfs where the machine allows mounting one), two trainers on one run or variant, and
//! resuming after the workspace changed.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{copy_dir, cut_back, jsonl, read_json, runs, stderr, tiny_workspace};
use serde_json::Value;

/// `gaplab train ARGS` with fault points `fault` armed (none when empty).
fn train(fault: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gaplab"));
    cmd.arg("train").args(args);
    if !fault.is_empty() {
        cmd.env("GAPLAB_FAULT", fault);
    }
    cmd.output().unwrap()
}

/// A `gaplab train ARGS` left running, its output discarded.
fn spawn_train(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_gaplab"))
        .arg("train")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Train-split losses by step.
fn losses(run: &Path) -> Vec<(u64, f64)> {
    jsonl(&run.join("metrics.jsonl"))
        .into_iter()
        .filter(|v| v["split"] == "train")
        .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect()
}

fn state(run: &Path) -> Value {
    read_json(&run.join("status.json"))["state"].clone()
}

/// The error status.json records for a failed run.
fn failure(run: &Path) -> String {
    let st = read_json(&run.join("status.json"));
    assert_eq!(st["state"], "failed", "{st}");
    st["detail"].as_str().unwrap().to_string()
}

fn checkpoint_names(run: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(run.join("checkpoints"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Every line of the run's record files is a whole JSON record.
fn assert_records_whole(run: &Path) {
    for f in [
        "events.jsonl",
        "metrics.jsonl",
        "samples.jsonl",
        "prefix.jsonl",
    ] {
        let text = std::fs::read_to_string(run.join(f)).unwrap_or_default();
        for line in text.lines() {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("{f}: torn record {line:?}: {e}"));
        }
    }
}

fn wait_for(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: signalling a child this test started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// The single run directory under `root` once it exists.
fn the_run(root: &Path) -> PathBuf {
    wait_for("the run directory", 120, || {
        root.exists() && runs(root).len() == 1
    });
    runs(root).pop().unwrap()
}

#[test]
fn a_checkpoint_that_fails_midway_stops_the_run_and_resume_finishes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| t);
    let (full_root, cut_root) = (tmp.path().join("full"), tmp.path().join("cut"));
    let out = train("", &[s(&ws), "--variant", "dpo", "--out", s(&full_root)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let full = runs(&full_root).pop().unwrap();

    // The second checkpoint (step 4) fails after its weights are written.
    let out = train(
        "checkpoint-optimizer@2",
        &[s(&ws), "--variant", "dpo", "--out", s(&cut_root)],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let run = runs(&cut_root).pop().unwrap();
    let err = stderr(&out);
    let file = run.join("checkpoints/.tmp-step-4/optimizer.safetensors");
    assert!(
        err.contains(&format!(
            "checkpoint at step 4 not written: cannot write {}: No space left on device",
            file.display()
        )),
        "{err}"
    );
    let hint = format!(
        "the run keeps its checkpoint at step 2: once space is freed, continue with: gaplab train {} --resume {}",
        ws.display(),
        run.display()
    );
    assert!(err.contains(&hint), "{err}");
    assert!(
        failure(&run).contains(".tmp-step-4/optimizer.safetensors"),
        "{err}"
    );
    // The half-written checkpoint is gone; the previous one stays.
    assert_eq!(checkpoint_names(&run), ["step-2"]);
    assert_records_whole(&run);

    let out = train("", &[s(&ws), "--resume", s(&run)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(state(&run), "finished");
    let (a, b) = (losses(&full), losses(&run));
    assert_eq!(a.len(), 6);
    assert_eq!(
        a.iter().map(|x| x.0).collect::<Vec<_>>(),
        b.iter().map(|x| x.0).collect::<Vec<_>>()
    );
    for ((step, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 1e-6 * (1.0 + y.abs()),
            "step {step}: {x} vs {y}"
        );
    }
}

#[test]
fn every_checkpoint_file_is_a_fault_point() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| t);
    for (fault, file) in [
        ("checkpoint-write", ".tmp-step-2"),
        ("checkpoint-model", ".tmp-step-2/model.safetensors"),
        ("checkpoint-state", ".tmp-step-2/trainer_state.json"),
        ("checkpoint-rename", ".tmp-step-2"),
    ] {
        let root = tmp.path().join(fault);
        let out = train(fault, &[s(&ws), "--variant", "dpo", "--out", s(&root)]);
        assert_eq!(out.status.code(), Some(2), "{fault}: {}", stderr(&out));
        let run = runs(&root).pop().unwrap();
        let err = stderr(&out);
        let path = run.join("checkpoints").join(file);
        assert!(err.contains(&path.display().to_string()), "{fault}: {err}");
        assert!(err.contains("No space left on device"), "{fault}: {err}");
        assert!(checkpoint_names(&run).is_empty(), "{fault}");
        failure(&run);
    }
}

#[test]
fn a_full_disk_while_appending_records_fails_cleanly_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| t);
    // Metrics records: the eval at step 0, steps 1 and 2 (then the checkpoint), step 3 fails.
    let out = train("metrics-write@4", &[s(&ws), "--variant", "dpo"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let run = runs(&ws.join("runs")).pop().unwrap();
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "cannot write {}: No space left on device",
            run.join("metrics.jsonl").display()
        )),
        "{err}"
    );
    assert!(err.contains("--resume"), "{err}");
    failure(&run);
    assert_records_whole(&run);
    let out = train("", &[s(&ws), "--resume", s(&run)]);
    assert!(out.status.success(), "{}", stderr(&out));
    let steps: Vec<u64> = losses(&run).iter().map(|x| x.0).collect();
    assert_eq!(steps, [1, 2, 3, 4, 5, 6]);

    // Status still says failed when the event record cannot be written.
    for fault in [
        "events-write@12",
        "samples-write",
        "prefix-write",
        "log-write@5",
    ] {
        let root = tmp.path().join(fault);
        let out = train(fault, &[s(&ws), "--variant", "dpo", "--out", s(&root)]);
        assert_eq!(out.status.code(), Some(2), "{fault}: {}", stderr(&out));
        let run = runs(&root).pop().unwrap();
        failure(&run);
        assert!(stderr(&out).contains("No space left on device"), "{fault}");
        assert_records_whole(&run);
    }
}

#[test]
fn status_json_that_cannot_be_written_fails_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| t);
    let out = train("status-write@2", &[s(&ws), "--variant", "dpo"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let run = runs(&ws.join("runs")).pop().unwrap();
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "cannot write {}: No space left on device",
            run.join("status.json").display()
        )),
        "{err}"
    );
}

/// A tmpfs mounted at a folder, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// None (with the reason printed) where this machine does not let the test mount one.
    fn mount(dir: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Self(dir.to_path_buf())),
            Ok(o) => {
                eprintln!("skipped: cannot mount a tmpfs: {}", stderr(&o));
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }

    fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).output();
    }
}

/// Fills the file system of `dir` up to `leave` free bytes with `dir/filler`.
fn fill_disk(dir: &Path, leave: u64) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    drop(f);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len.saturating_sub(leave))
        .unwrap();
    path
}

/// A tiny workspace whose run is long enough to be caught in the middle.
fn long_workspace(dir: &Path, steps: usize) -> PathBuf {
    tiny_workspace(dir, |t| {
        t.replace("steps = 6", &format!("steps = {steps}"))
            .replace("interval = 3\npairs = 4", "interval = 0\npairs = 4")
            .replace("interval = 3\nfrom_eval", "interval = 0\nfrom_eval")
    })
}

#[test]
fn a_real_full_disk_stops_at_a_checkpoint_and_resumes_once_space_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = long_workspace(tmp.path(), 200);
    let Some(disk) = Tmpfs::mount(&tmp.path().join("disk"), "24m") else {
        return;
    };
    let root = disk.0.join("runs");
    let child = spawn_train(&[s(&ws), "--variant", "dpo", "--out", s(&root)]);
    let run = the_run(&root);
    wait_for("the first checkpoint", 120, || {
        checkpoint_names(&run).contains(&"step-2".to_string())
    });
    signal(&child, libc::SIGSTOP);
    // Room for a few records, not for another checkpoint (about 1.6 MB).
    let filler = fill_disk(&disk.0, 256 * 1024);
    signal(&child, libc::SIGCONT);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = failure(&run);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(
        !checkpoint_names(&run)
            .iter()
            .any(|n| n.starts_with(".tmp-")),
        "{:?}",
        checkpoint_names(&run)
    );
    std::fs::remove_file(filler).unwrap();
    let out = train("", &[s(&ws), "--resume", s(&run)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(state(&run), "finished");
    let steps: Vec<u64> = losses(&run).iter().map(|x| x.0).collect();
    assert_eq!(steps, (1..=200).collect::<Vec<u64>>());
    assert_records_whole(&run);
}

#[test]
fn a_read_only_checkpoint_folder_or_run_directory_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = long_workspace(tmp.path(), 200);
    let Some(disk) = Tmpfs::mount(&tmp.path().join("disk"), "64m") else {
        return;
    };
    let root = disk.0.join("runs");
    let child = spawn_train(&[s(&ws), "--variant", "dpo", "--out", s(&root)]);
    let run = the_run(&root);
    wait_for("the first checkpoint", 120, || {
        checkpoint_names(&run).contains(&"step-2".to_string())
    });
    // A file system with files open for writing cannot be remounted read-only: the checkpoint
    // folder becomes a read-only one instead (which hides the checkpoints until unmounted).
    signal(&child, libc::SIGSTOP);
    let ro = Tmpfs::mount(&run.join("checkpoints"), "1m").unwrap();
    ro.remount("ro");
    signal(&child, libc::SIGCONT);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = failure(&run);
    let expected = format!(
        "cannot create {}/.tmp-step-",
        run.join("checkpoints").display()
    );
    assert!(err.contains(&expected), "{err}");
    assert!(err.contains("Read-only file system"), "{err}");
    drop(ro);

    // The whole run directory read-only (no gaplab running): the resume says so.
    disk.remount("ro");
    let out = train("", &[s(&ws), "--resume", s(&run)]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(err.contains(&run.display().to_string()), "{err}");
    disk.remount("rw");
    let out = train("", &[s(&ws), "--resume", s(&run)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(state(&run), "finished");
}

#[test]
fn a_second_trainer_is_refused_and_a_killed_ones_lock_is_taken_over() {
    let tmp = tempfile::tempdir().unwrap();
    // dpo trains until stopped; dpo-poet (the last table) only a few steps.
    let ws = tiny_workspace(tmp.path(), |t| {
        t.replace("steps = 6", "steps = 100000")
            .replace("interval = 3\npairs = 4", "interval = 0\npairs = 4")
            + "\nsteps = 4\n"
    });
    let root = ws.join("runs");
    let mut first = spawn_train(&[s(&ws), "--variant", "dpo"]);
    let run = the_run(&root);
    wait_for("training", 120, || losses(&run).len() >= 2);
    let pid = first.id();

    let out = train("", &[s(&ws), "--variant", "dpo"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let who = format!("is being trained by another gaplab process (pid {pid}, started ");
    assert!(
        err.contains(&format!("variant dpo in {} {who}", root.display())),
        "{err}"
    );
    assert!(err.contains("stop it first or wait"), "{err}");
    let out = train("", &[s(&ws), "--resume", s(&run)]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains(&format!("{} {who}", run.display())), "{err}");
    // Nothing of the run was touched by the refused ones.
    assert_eq!(runs(&root).len(), 1);

    // Another variant trains meanwhile.
    let out = train("", &[s(&ws), "--variant", "dpo-poet"]);
    assert!(out.status.success(), "{}", stderr(&out));

    // Killed without a chance to clean up: the locks stay, stale.
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(run.join(".lock").exists());
    assert!(root.join(".lock-dpo").exists());
    let resumed = spawn_train(&[s(&ws), "--resume", s(&run)]);
    wait_for("the note", 120, || {
        std::fs::read_to_string(run.join("log.txt"))
            .unwrap_or_default()
            .contains(&format!(
                "took over the lock {}",
                run.join(".lock").display()
            ))
    });
    // Past its start (the signal handler is set by then).
    std::thread::sleep(Duration::from_millis(500));
    signal(&resumed, libc::SIGINT);
    let out = resumed.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert_eq!(state(&run), "stopped");
    // Released on the way out.
    assert!(!run.join(".lock").exists());
}

#[test]
fn resume_refuses_changed_restart_only_settings_unless_forced_and_applies_live_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = tiny_workspace(tmp.path(), |t| t);
    let out = train("", &[s(&ws), "--variant", "dpo"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = runs(&ws.join("runs")).pop().unwrap();
    let copy = tmp.path().join("copy");
    copy_dir(&run, &copy);
    cut_back(&run, 4);
    let toml = ws.join("gaplab.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, text.replace("max_len = 64", "max_len = 48")).unwrap();

    let out = train("", &[s(&ws), "--resume", s(&run)]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "--resume: restart-only settings changed since {} started: data.max_len (64 -> 48); put them back, start a new run, or pass --force to resume with the run's own settings",
            run.display()
        )),
        "{err}"
    );
    // Refused before anything was touched.
    assert_eq!(losses(&run), losses(&copy));

    let out = train("", &[s(&ws), "--resume", s(&run), "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("--force: resuming"),
        "{}",
        stderr(&out)
    );
    // The run's own max_len was kept: the same losses as before.
    assert_eq!(losses(&run).len(), 6);
    for ((_, x), (_, y)) in losses(&run).iter().zip(&losses(&copy)) {
        assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()));
    }
    let applied: Vec<Value> = jsonl(&run.join("metrics.jsonl"))
        .into_iter()
        .filter(|v| v["event"] == "applied")
        .collect();
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0]["ignored"], serde_json::json!(["data.max_len"]));

    // A live setting changed: applied at the resume, recorded, trained with.
    std::fs::write(&toml, text.replace("lr = 1e-3", "lr = 2e-3")).unwrap();
    cut_back(&run, 4);
    let out = train("", &[s(&ws), "--resume", s(&run)]);
    assert!(out.status.success(), "{}", stderr(&out));
    // The forced resume's record at step 4 stays; this one follows it.
    let applied: Vec<Value> = jsonl(&run.join("metrics.jsonl"))
        .into_iter()
        .filter(|v| v["event"] == "applied")
        .collect();
    assert_eq!(applied.len(), 2, "{applied:?}");
    let last = &applied[1];
    assert_eq!(last["step"], 4);
    assert_eq!(last["ignored"], serde_json::json!([]));
    let changes = last["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{last}");
    assert_eq!(changes[0]["field"], "train.lr");
    let new: f64 = changes[0]["new"].as_str().unwrap().parse().unwrap();
    assert_eq!(new, 2e-3);
    let state = read_json(&run.join("checkpoints/step-6/trainer_state.json"));
    assert_eq!(state["train"]["lr"], 2e-3);
    let (a, b) = (losses(&run), losses(&copy));
    assert_eq!(a[..4], b[..4]);
    assert_ne!(a[5], b[5], "step 6 trained with the new learning rate");

    // --force only goes with --resume.
    let out = train("", &[s(&ws), "--force"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--resume"), "{}", stderr(&out));
}
