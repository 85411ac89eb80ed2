//! Conversational preference data and chat templates: token ids against TRL's DPOTrainer and
//! renderings against transformers (the fixtures of tests/fixtures/make_chat_fixtures.py), where
//! templates come from, and `check`, `train` and `eval` through the real binary.
// Tests state their expectations by unwrapping: a failure is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, gaplab, read_json, stderr, stdout, u32s};
use gaplab::data::chat::{TemplateResolver, TemplateSetting};
use gaplab::data::{self, DataFormat, Prompt};
use gaplab::model::Tok;
use serde_json::Value;

fn chat_tok() -> Tok {
    Tok::load(&fixture("tiny-qwen2-chat"), None).unwrap()
}

/// Checks the pairs of `path` (read and rendered with `templates`) against the fixture's `rows`:
/// the texts as rendered and TRL's prompt, chosen and rejected ids.
fn assert_rows_match(tok: &Tok, path: &Path, templates: &mut TemplateResolver, rows: &Value) {
    let name = path.display();
    let (pairs, summary) = data::load_pairs(path, &DataFormat::default(), templates).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(
        (pairs.len(), summary.pairs),
        (rows.len(), rows.len()),
        "{name}"
    );
    for (i, (p, want)) in pairs.iter().zip(rows).enumerate() {
        let what = format!("{name} row {}", i + 1);
        assert!(p.templated, "{what}");
        assert_eq!(p.prompt, want["prompt_text"].as_str().unwrap(), "{what}");
        assert_eq!(p.chosen, want["chosen_text"].as_str().unwrap(), "{what}");
        assert_eq!(
            p.rejected,
            want["rejected_text"].as_str().unwrap(),
            "{what}"
        );
        let t = data::tokenize_pair(tok, p).unwrap();
        assert_eq!(t.prompt, u32s(&want["prompt_ids"]), "{what}: prompt ids");
        assert_eq!(t.chosen, u32s(&want["chosen_ids"]), "{what}: chosen ids");
        assert_eq!(
            t.rejected,
            u32s(&want["rejected_ids"]),
            "{what}: rejected ids"
        );
    }
}

#[test]
fn conversational_ids_match_trl() {
    let tok = chat_tok();
    assert_eq!(tok.eos, 321);
    assert_eq!(tok.inner.token_to_id("<|im_start|>"), Some(320));
    assert_eq!(tok.inner.token_to_id("<|im_end|>"), Some(321));
    assert_eq!(tok.vocab_size(), 322);
    let expected = read_json(&fixture("chat/expected_ids.json"));
    assert_eq!(expected["eos_token_id"], 321);
    let files = expected["files"].as_object().unwrap();
    assert_eq!(files.len(), 6, "three JSONL files and three Parquet shards");
    assert_eq!(expected["trl"], "1.16.0");
    for (name, rows) in files {
        let mut templates = TemplateResolver::new(TemplateSetting::Tokenizer, &tok);
        assert_rows_match(&tok, &fixture("chat").join(name), &mut templates, rows);
        // The template ends each turn with `<|im_end|>\n` and nothing is appended after it.
        for row in rows.as_array().unwrap() {
            for ids in [&row["chosen_ids"], &row["rejected_ids"]] {
                assert!(u32s(ids).ends_with(&[321, 201]), "{name}: {ids}");
            }
        }
    }
}

#[test]
fn a_token_spanning_the_end_of_the_prompt_starts_the_completion_as_in_trl() {
    // A template whose generation prompt ends with a space: "assistant: " + "the" is one token,
    // so TRL cuts where the ids part and the prompt's last token is left out; and a prompt
    // ending with an assistant message gets a new assistant turn.
    let tok = chat_tok();
    let expected = read_json(&fixture("chat/expected_ids.json"));
    let b = &expected["boundary"];
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("boundary.jsonl");
    let pairs = b["pairs"].as_array().unwrap();
    let lines: Vec<String> = pairs.iter().map(|p| p["row"].to_string()).collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let template = b["template"].as_str().unwrap();
    let mut templates = TemplateResolver::new(TemplateSetting::Inline(template.into()), &tok);
    assert_rows_match(&tok, &data, &mut templates, &b["pairs"]);
    let first = &pairs[0];
    assert_eq!(
        first["prompt_ids"].as_array().unwrap().len() + 1,
        tok.encode_rendered(first["prompt_text"].as_str().unwrap())
            .unwrap()
            .len(),
        "the prompt's trailing space is left out"
    );
    // `check` warns, naming what is left out.
    std::fs::write(tmp.path().join("boundary.jinja"), template).unwrap();
    let ws = chat_workspace(
        tmp.path(),
        "tiny-qwen2-chat",
        &data,
        None,
        &format!("chat_template = {:?}", tmp.path().join("boundary.jinja")),
    );
    let out = gaplab(&["check", ws.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("warning: the first pair's tokenized prompt is not a prefix of its tokenized conversations")
            && text.contains(r#"so its end " " is left out of training"#),
        "{text}"
    );
    // The fixture's own template ends its generation prompt on a token boundary: no warning.
    let ws = chat_workspace(
        &tmp.path().join("chatml"),
        "tiny-qwen2-chat",
        &chat("pairs.jsonl"),
        None,
        "",
    );
    let out = gaplab(&["check", ws.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!stdout(&out).contains("warning"), "{}", stdout(&out));
}

/// A copy of the chat fixture's tokenizer files in `dir`, with `config` as its
/// tokenizer_config.json.
fn tokenizer_dir(dir: &Path, config: Value) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(
        fixture("tiny-qwen2-chat/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).unwrap();
    dir.to_path_buf()
}

#[test]
fn tokenizer_templates_come_from_a_string_a_named_list_or_a_jinja_file() {
    let tmp = tempfile::tempdir().unwrap();
    let base = read_json(&fixture("tiny-qwen2-chat/tokenizer_config.json"));
    let chatml = base["chat_template"].as_str().unwrap().to_string();
    // A string in tokenizer_config.json.
    let tok = chat_tok();
    let src = tok.chat_template.as_ref().unwrap();
    assert_eq!(src.text, chatml);
    assert!(
        src.origin.ends_with("tokenizer_config.json"),
        "{}",
        src.origin
    );
    // A list of named templates: "default".
    let mut listed = base.clone();
    listed["chat_template"] = serde_json::json!([
        {"name": "tool_use", "template": "{{ 'tools' }}"},
        {"name": "default", "template": chatml},
    ]);
    let dir = tokenizer_dir(&tmp.path().join("list"), listed);
    let tok = Tok::load(&dir, None).unwrap();
    assert_eq!(tok.chat_template.as_ref().unwrap().text, chatml);
    // chat_template.jinja beside it wins (transformers 5 saves templates there).
    std::fs::write(dir.join("chat_template.jinja"), "{{ 'from the file' }}").unwrap();
    let tok = Tok::load(&dir, None).unwrap();
    let src = tok.chat_template.unwrap();
    assert_eq!(src.text, "{{ 'from the file' }}");
    assert!(src.origin.ends_with("chat_template.jinja"));
    // A list without "default" is an error naming the file.
    let mut bad = base.clone();
    bad["chat_template"] = serde_json::json!([{"name": "rag", "template": "x"}]);
    let dir = tokenizer_dir(&tmp.path().join("bad"), bad);
    let e = format!("{:#}", Tok::load(&dir, None).err().unwrap());
    assert!(
        e.contains("tokenizer_config.json") && e.contains("no template named \"default\""),
        "{e}"
    );
    // None at all.
    let mut none = base;
    none.as_object_mut().unwrap().remove("chat_template");
    let dir = tokenizer_dir(&tmp.path().join("none"), none);
    assert!(Tok::load(&dir, None).unwrap().chat_template.is_none());
}

fn chat(name: &str) -> PathBuf {
    fixture("chat").join(name)
}

/// A workspace on the fixture checkpoint `model` with `train` and `eval` data, and `extra`
/// lines in `[data]`.
fn chat_workspace(
    dir: &Path,
    model: &str,
    train: &Path,
    eval: Option<&Path>,
    extra: &str,
) -> PathBuf {
    let ws = dir.join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    let eval = eval.map_or(String::new(), |e| format!("eval = {e:?}"));
    let text = format!(
        r#"[model]
path = {model:?}

[data]
train = {train:?}
{eval}
max_len = 160
max_prompt_len = 120
{extra}

[train]
objective = "dpo"
lr = 1e-3
batch_size = 2
steps = 3
warmup_ratio = 0.0
seed = 1

[eval]
interval = 0
pairs = 2
batch_size = 2

[sample]
interval = 0
from_eval = 1
max_new_tokens = 4
"#,
        model = fixture(model),
    );
    std::fs::write(ws.join("gaplab.toml"), text).unwrap();
    ws
}

#[test]
fn check_prints_each_files_format_and_the_rendered_first_pair() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = chat_workspace(
        tmp.path(),
        "tiny-qwen2-chat",
        &chat("pairs.jsonl"),
        Some(&chat("ultrafeedback.jsonl")),
        "",
    );
    let out = gaplab(&["check", ws.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "pairs.jsonl: conversational, 4 pairs (4 with a prompt list, 0 with the prompt implicit in chosen/rejected), chat template ",
        "ultrafeedback.jsonl: conversational, 2 pairs (0 with a prompt list, 2 with the prompt implicit in chosen/rejected)",
        "tiny-qwen2-chat/tokenizer_config.json",
        r#"first prompt    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nwhat is the capital of france?<|im_end|>\n<|im_start|>assistant\n""#,
        r#"first chosen    "the capital of france is paris.<|im_end|>\n""#,
        r#"first chosen    "the text is short.<|im_end|>\n""#,
        "chosen longer in",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    assert!(!text.contains("first rejected  \"summarize"), "{text}");
    // Standard data says so.
    let out = gaplab(&["check", fixture("ws-tiny").to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("pairs.jsonl: standard, 6 pairs"));
}

#[test]
fn chat_template_from_the_workspace_a_file_inline_or_missing() {
    let tmp = tempfile::tempdir().unwrap();
    let check = |ws: &Path| gaplab(&["check", ws.to_str().unwrap()]);
    // tiny-qwen2 has no chat template: a one-line error naming the file and the setting.
    let ws = chat_workspace(
        &tmp.path().join("none"),
        "tiny-qwen2",
        &chat("pairs.jsonl"),
        Some(&chat("implicit.jsonl")),
        "",
    );
    let out = check(&ws);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("chat/pairs.jsonl: conversational data needs a chat template")
            && err.contains("set `data.chat_template`"),
        "{err}"
    );
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    // A .jinja file relative to the workspace.
    let ws = chat_workspace(
        &tmp.path().join("file"),
        "tiny-qwen2",
        &chat("pairs.jsonl"),
        Some(&chat("implicit.jsonl")),
        "chat_template = \"templates/plain.jinja\"",
    );
    std::fs::create_dir_all(ws.join("templates")).unwrap();
    std::fs::write(
        ws.join("templates/plain.jinja"),
        "{{ bos_token }}{% for m in messages %}\n{{ m.role }}: {{ m.content }}\n{% endfor %}\n{% if add_generation_prompt %}assistant:{% endif %}",
    )
    .unwrap();
    let out = check(&ws);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("templates/plain.jinja"), "{text}");
    assert!(
        text.contains(r#"first prompt    "<s>user: what is the capital of france?\nassistant:""#),
        "{text}"
    );
    assert!(
        text.contains(r#"first chosen    " the capital of france is paris.\n""#),
        "{text}"
    );
    // Inline (it contains `{%`), and field names of one's own.
    let data = tmp.path().join("own.jsonl");
    std::fs::write(
        &data,
        r#"{"q": "x", "good": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "bad": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go"}], "score": 1}"#,
    )
    .unwrap();
    let ws = chat_workspace(
        &tmp.path().join("inline"),
        "tiny-qwen2-chat",
        &data,
        None,
        "chat_template = \"{% for m in messages %}[{{ m.role }}] {{ m.content }} {% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}\"\nformat = \"conversational\"\nprompt_field = \"q\"\nchosen_field = \"good\"\nrejected_field = \"bad\"",
    );
    let out = check(&ws);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("chat template data.chat_template (inline)"),
        "{text}"
    );
    assert!(
        text.contains(r#"first prompt    "[user] hi [assistant]""#),
        "{text}"
    );
    assert!(text.contains(r#"first rejected  " go ""#), "{text}");
    // A file that is not there.
    let ws = chat_workspace(
        &tmp.path().join("missing"),
        "tiny-qwen2-chat",
        &chat("pairs.jsonl"),
        Some(&chat("implicit.jsonl")),
        "chat_template = \"nope.jinja\"",
    );
    let out = check(&ws);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("data.chat_template: cannot read") && err.contains("nope.jinja"),
        "{err}"
    );
}

#[test]
fn eval_prompts_are_templated() {
    let tmp = tempfile::tempdir().unwrap();
    let tok = chat_tok();
    let expected = read_json(&fixture("chat/expected_ids.json"));
    let want = |file: &str, row: usize| Prompt {
        text: expected["files"][file][row]["prompt_text"]
            .as_str()
            .unwrap()
            .to_string(),
        templated: true,
    };
    for (holdout, want_eval) in [
        (false, want("implicit.jsonl", 0)),
        (true, want("pairs.jsonl", 3)),
    ] {
        let (eval, extra) = if holdout {
            (None, "eval_holdout = 1")
        } else {
            (Some(chat("implicit.jsonl")), "")
        };
        let ws = chat_workspace(
            &tmp.path().join(holdout.to_string()),
            "tiny-qwen2-chat",
            &chat("pairs.jsonl"),
            eval.as_deref(),
            extra,
        );
        let w = gaplab::config::Workspace::load(&ws).unwrap();
        let cfg = w.run_config(&w.variant_names()[0]).unwrap();
        let d = gaplab::train::dataset::load_dataset(&cfg, &tok, 322).unwrap();
        assert_eq!(d.eval_prompts[0], want_eval, "holdout {holdout}");
        assert!(d.chat.is_some());
        let ids = u32s(&expected["files"]["pairs.jsonl"][0]["prompt_ids"]);
        assert_eq!(d.train[0].prompt, ids);
    }
}

#[test]
fn trains_on_conversational_data_with_templated_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let ws = chat_workspace(
        tmp.path(),
        "tiny-qwen2-chat",
        &chat("pairs.jsonl"),
        Some(&chat("implicit.jsonl")),
        "",
    );
    let text = std::fs::read_to_string(ws.join("gaplab.toml")).unwrap();
    std::fs::write(
        ws.join("gaplab.toml"),
        text.replace("from_eval = 1", "prompts = [\"say hi\"]"),
    )
    .unwrap();
    let out = gaplab(&["train", ws.to_str().unwrap(), "--headless"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let runs: Vec<PathBuf> = std::fs::read_dir(ws.join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let run = &runs[0];
    let status = read_json(&run.join("status.json"));
    assert_eq!(status["state"], "finished");
    let lines = |f: &str| -> Vec<Value> {
        std::fs::read_to_string(run.join(f))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let steps = lines("metrics.jsonl")
        .into_iter()
        .filter(|m| m["split"] == "train")
        .count();
    assert_eq!(steps, 3);
    let samples = lines("samples.jsonl");
    assert!(!samples.is_empty());
    for s in &samples {
        assert_eq!(
            s["prompt"],
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nsay hi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert!(u32s(&s["token_ids"]).iter().all(|&id| id < 322));
    }
    // The checkpoint keeps the template.
    let ckpt = run.join("checkpoints/step-3");
    let tok = Tok::load(&ckpt, None).unwrap();
    assert_eq!(
        tok.chat_template.unwrap().text,
        chat_tok().chat_template.unwrap().text
    );
}

#[test]
fn eval_scores_conversational_pairs_with_the_models_template() {
    let data = fixture("chat/implicit.jsonl");
    let run = |model: &str| {
        gaplab(&[
            "eval",
            "--model",
            fixture(model).to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--objective",
            "dpo",
            "--json",
        ])
    };
    let out = run("tiny-qwen2-chat");
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let expected = read_json(&fixture("chat/expected_ids.json"));
    let rows = expected["files"]["implicit.jsonl"].as_array().unwrap();
    let pairs = v["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), rows.len());
    for (p, want) in pairs.iter().zip(rows) {
        assert_eq!(
            p["chosen_tokens"].as_u64().unwrap() as usize,
            want["chosen_ids"].as_array().unwrap().len()
        );
        assert_eq!(
            p["rejected_tokens"].as_u64().unwrap() as usize,
            want["rejected_ids"].as_array().unwrap().len()
        );
    }
    let out = run("tiny-qwen2");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("implicit.jsonl: conversational data needs a chat template")
            && err.contains("tokenizer_config.json"),
        "{err}"
    );
}

#[test]
fn ultrafeedback_parquet_shards_train_through_a_glob() {
    let tmp = tempfile::tempdir().unwrap();
    let shards = chat("ultrafeedback");
    let ws = chat_workspace(
        tmp.path(),
        "tiny-qwen2-chat",
        &shards.join("train_prefs-*.parquet"),
        Some(&shards.join("test_prefs-*.parquet")),
        "",
    );
    let out = gaplab(&["check", ws.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for want in [
        "train_prefs-00000-of-00002.parquet: conversational, 2 pairs (0 with a prompt list, 2 with the prompt implicit in chosen/rejected)",
        "train_prefs-00001-of-00002.parquet: conversational, 1 pairs",
        "test_prefs-00000-of-00001.parquet: conversational, 1 pairs",
        r#"first chosen    "the text is short.<|im_end|>\n""#,
        "train (",
        "3 pairs",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let out = gaplab(&["train", ws.to_str().unwrap(), "--headless"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = std::fs::read_dir(ws.join("runs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
        .unwrap();
    assert_eq!(read_json(&run.join("status.json"))["state"], "finished");
    // The eval shard's prompt is a sampling prompt, rendered by the template.
    let samples = std::fs::read_to_string(run.join("samples.jsonl")).unwrap();
    assert!(samples.contains("list two fruits."), "{samples}");
}

#[test]
fn parquet_and_glob_errors_name_the_file_and_row() {
    let tmp = tempfile::tempdir().unwrap();
    // A pattern that matches nothing.
    let ws = chat_workspace(
        tmp.path(),
        "tiny-qwen2-chat",
        &chat("ultrafeedback").join("nothing-*.parquet"),
        None,
        "",
    );
    let out = gaplab(&["check", ws.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("nothing-*.parquet: the pattern matches no files"),
        "{}",
        stderr(&out)
    );
    // Not Parquet at all.
    let bad = tmp.path().join("broken.parquet");
    std::fs::write(&bad, "this is not parquet").unwrap();
    let ws = chat_workspace(tmp.path(), "tiny-qwen2-chat", &bad, None, "");
    let out = gaplab(&["check", ws.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("broken.parquet: not a readable Parquet file"),
        "{}",
        stderr(&out)
    );
    // Valid Parquet with other column names: the row and the missing field are named, and
    // the field names can be pointed at other columns.
    let ws = chat_workspace(
        tmp.path(),
        "tiny-qwen2-chat",
        &chat("ultrafeedback/test_prefs-00000-of-00001.parquet"),
        None,
        "chosen_field = \"good\"",
    );
    let out = gaplab(&["check", ws.to_str().unwrap()]);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(
        e.contains(
            "test_prefs-00000-of-00001.parquet: row 1: expected an object with string fields"
        ) && e.contains("missing field `good`"),
        "{e}"
    );
    let ws = chat_workspace(
        tmp.path(),
        "tiny-qwen2-chat",
        &chat("ultrafeedback/test_prefs-00000-of-00001.parquet"),
        None,
        "chosen_field = \"messages\"",
    );
    let out = gaplab(&["check", ws.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains(r#"first chosen    "apple and pear.<|im_end|>\n""#));
}

#[test]
fn generation_config_stop_tokens_end_sampling() {
    // eos (tokenizer_config) first, then the other ids generation_config.json lists.
    assert_eq!(chat_tok().stop, vec![321, 1]);
    let sample = |model: &Path| -> Vec<u32> {
        let out = gaplab(&[
            "sample",
            "--model",
            model.to_str().unwrap(),
            "--prompt",
            "the sea",
            "--max-new-tokens",
            "8",
            "--json",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
        u32s(&v["token_ids"])
    };
    let free = sample(&fixture("tiny-qwen2-chat"));
    assert_eq!(free.len(), 8, "random weights run to the limit: {free:?}");
    // The same checkpoint whose generation_config also stops at the third generated token:
    // sampling ends there, keeping it (as transformers' generate does).
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    for e in std::fs::read_dir(fixture("tiny-qwen2-chat"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
    }
    let stop = free[2];
    assert!(
        !free[..2].contains(&stop),
        "pick a token that first appears third: {free:?}"
    );
    let mut gen = read_json(&dir.join("generation_config.json"));
    gen["eos_token_id"] = serde_json::json!([321, stop]);
    std::fs::write(dir.join("generation_config.json"), gen.to_string()).unwrap();
    assert_eq!(sample(&dir), free[..3].to_vec());
}

#[test]
fn sample_chat_renders_the_prompt_like_transformers() {
    let expected = read_json(&fixture("chat/expected_ids.json"));
    let rows = &expected["files"]["pairs.jsonl"];
    let prompt_ids = |args: &[&str]| -> Vec<u32> {
        let model = fixture("tiny-qwen2-chat");
        let mut all = vec![
            "sample",
            "--model",
            model.to_str().unwrap(),
            "--max-new-tokens",
            "2",
            "--json",
        ];
        all.extend_from_slice(args);
        let out = gaplab(&all);
        assert!(out.status.success(), "{}", stderr(&out));
        let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
        u32s(&v["prompt_ids"])
    };
    assert_eq!(
        prompt_ids(&["--chat", "--prompt", "what is the capital of france?"]),
        u32s(&rows[0]["prompt_ids"])
    );
    assert_eq!(
        prompt_ids(&[
            "--chat",
            "--system",
            "answer in one short sentence.",
            "--prompt",
            "what is two plus two?"
        ]),
        u32s(&rows[1]["prompt_ids"])
    );
    // Without --chat the text is a plain prompt; a checkpoint without a template says so.
    let plain = prompt_ids(&["--prompt", "what is the capital of france?"]);
    assert!(!plain.contains(&320), "{plain:?}");
    let out = gaplab(&[
        "sample",
        "--model",
        fixture("tiny-llama").to_str().unwrap(),
        "--prompt",
        "hi",
        "--chat",
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("has no chat template"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn released_models_chat_templates_render_like_transformers() {
    // Templates of Qwen2.5, SmolLM2, Llama 3.2, Mistral v0.3 and Zephyr instruct models
    // (tests/fixtures/chat/templates/SOURCES.md), against transformers' apply_chat_template.
    let dir = chat("templates");
    let expected = read_json(&dir.join("expected.json"));
    let templates = expected["templates"].as_object().unwrap();
    assert_eq!(templates.len(), 5);
    let tok = chat_tok();
    for (name, cases) in templates {
        let src = format!(
            "{{%- set date_string = \"26 Jul 2024\" %}}{}",
            std::fs::read_to_string(dir.join(name)).unwrap()
        );
        let tpl = gaplab::data::chat::ChatTemplate::for_tok(&src, name.clone(), &tok).unwrap();
        for case in cases.as_array().unwrap() {
            let messages = case["messages"].as_array().unwrap().clone();
            let prompt = tpl.render(&messages, true).unwrap();
            assert_eq!(
                prompt,
                case["prompt"].as_str().unwrap(),
                "{name}: {messages:?}"
            );
            let mut all = messages.clone();
            all.push(serde_json::json!({"role": "assistant", "content": "blue."}));
            let full = tpl.render(&all, false).unwrap();
            assert_eq!(full, case["full"].as_str().unwrap(), "{name}: {all:?}");
        }
    }
}
