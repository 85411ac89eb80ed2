//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A copy of the tiny fixture workspace in `dir/ws` (model and data paths made absolute), with
/// `edit` applied to its gaplab.toml.
pub fn tiny_workspace(dir: &std::path::Path, edit: impl Fn(String) -> String) -> PathBuf {
    let ws = dir.join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let text = std::fs::read_to_string(fixture("ws-tiny/gaplab.toml")).unwrap();
    let text = text
        .replace("\"../tiny-llama\"", &format!("{:?}", fixture("tiny-llama")))
        .replace(
            "\"../pairs.jsonl\"",
            &format!("{:?}", fixture("pairs.jsonl")),
        );
    std::fs::write(ws.join("gaplab.toml"), edit(text)).unwrap();
    ws
}

pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Runs the real gaplab binary.
pub fn gaplab(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_gaplab"))
        .args(args)
        .output()
        .expect("gaplab runs")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

pub fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The padded batch of a fixture checkpoint's expected.json: input ids and attention masks.
pub fn expected_batch(exp: &serde_json::Value) -> (Vec<Vec<u32>>, Vec<Vec<u32>>) {
    let rows = |key: &str| -> Vec<Vec<u32>> {
        exp["batch"][key]
            .as_array()
            .unwrap()
            .iter()
            .map(u32s)
            .collect()
    };
    (rows("input_ids"), rows("attention_mask"))
}

/// Two small preference pairs in token ids (prompt, chosen, rejected of different lengths).
pub fn tiny_pairs() -> Vec<gaplab::data::TokenizedPair> {
    use gaplab::data::TokenizedPair;
    vec![
        TokenizedPair {
            prompt: vec![0, 7, 9],
            chosen: vec![12, 15, 3, 8, 1],
            rejected: vec![20, 4, 1],
        },
        TokenizedPair {
            prompt: vec![0, 30],
            chosen: vec![5, 6, 1],
            rejected: vec![9, 9, 9, 9, 1],
        },
    ]
}

/// A tiny random-init model config (vocab 40, hidden 32, 2 layers, 4 heads, `kv` kv heads).
pub fn tiny_config(arch: gaplab::model::Arch, tied: bool, kv: usize) -> gaplab::model::ModelConfig {
    let spec = gaplab::model::ScratchSpec {
        arch,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: kv,
        max_position_embeddings: 64,
        rope_theta: 10000.0,
        tie_word_embeddings: tied,
        seed: 0,
    };
    gaplab::model::ModelConfig::from_scratch(&spec, 40).unwrap()
}

/// The unpadded rows of a fixture batch (`expected_batch`).
pub fn unpadded(ids: &[Vec<u32>], masks: &[Vec<u32>]) -> Vec<Vec<u32>> {
    ids.iter()
        .zip(masks)
        .map(|(r, m)| r[..m.iter().sum::<u32>() as usize].to_vec())
        .collect()
}

/// The squared L2 norm of a tensor of any float dtype.
pub fn sq_norm(t: &candle_core::Tensor) -> f32 {
    t.to_dtype(candle_core::DType::F32)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The run directories under `root`, sorted (stage results, starter runs and dot folders aside).
pub fn runs(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            p.is_dir() && !n.starts_with('.') && !n.starts_with("init-") && !n.starts_with("sft-")
        })
        .collect();
    v.sort();
    v
}

/// The records of a JSONL file (none when it does not exist).
pub fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A recursive copy of a folder.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_dir(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

/// Keeps only the checkpoint at `step` of a run, as if it had been stopped (or killed) then.
pub fn cut_back(run: &Path, step: usize) {
    for e in std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .flatten()
    {
        if e.file_name().to_string_lossy() != format!("step-{step}") {
            std::fs::remove_dir_all(e.path()).unwrap();
        }
    }
}

/// The dashboard drawn into a `w` x `h` test terminal, as its text (lines trimmed at the end),
/// for snapshots and screen assertions.
pub fn render_app(app: &mut gaplab::ui::state::App, w: u16, h: u16) -> String {
    let backend = ratatui::backend::TestBackend::new(w, h);
    let mut term = ratatui::Terminal::new(backend).unwrap();
    term.draw(|f| gaplab::ui::view::draw(f, app)).unwrap();
    let buf = term.backend().buffer().clone();
    let mut out = String::new();
    for y in 0..buf.area.height {
        let line: String = (0..buf.area.width)
            .map(|x| buf[(x, y)].symbol().to_string())
            .collect();
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
