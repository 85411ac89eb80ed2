//! Helpers of the run-directory readers' unit tests.

use std::io::Write;
use std::path::Path;

use super::RunDir;
use crate::config::RunConfig;
use crate::event::{Event, Sample};

pub fn config(variant_dir: &Path) -> RunConfig {
    let text = "[model]\npath = \"m\"\n[data]\ntrain = \"t.jsonl\"\n";
    crate::config::Workspace::parse(variant_dir, &variant_dir.join("gaplab.toml"), text)
        .unwrap()
        .run_config("dpo")
        .unwrap()
}

pub fn new_run(root: &Path, name: &str) -> RunDir {
    let run = RunDir::create(root, name).unwrap();
    run.write_config(&config(root)).unwrap();
    run
}

pub fn append(path: &Path, text: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

pub fn steps(events: &[Event]) -> Vec<usize> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Step(m) => Some(m.step),
            _ => None,
        })
        .collect()
}

pub fn sample(step: usize, prompt_id: usize, source: &str) -> Sample {
    Sample {
        step,
        prompt_id,
        prompt: format!("prompt {prompt_id}"),
        source: source.into(),
        text: "a b".into(),
        token_ids: vec![1, 2],
        pieces: vec!["a".into(), " b".into()],
        logps: vec![],
        ref_logps: vec![],
    }
}
