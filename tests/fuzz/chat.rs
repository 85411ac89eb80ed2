//! Chat templates: hostile Jinja (unclosed tags, loops that never end, runaway recursion, huge
//! outputs, undefined variables, raise_exception) rendering hostile messages (roles that do
//! not alternate, missing or non-string content, control characters). A template compiles or
//! is rejected, and renders or fails, in bounded time and memory.

use gaplab::data::chat::ChatTemplate;
use proptest::prelude::*;
use serde_json::Value;

use crate::data::messages;
use crate::harness::{bounded, fuzz};

const REAL: [&str; 5] = [
    include_str!("../fixtures/chat/templates/llama-3.2-instruct.jinja"),
    include_str!("../fixtures/chat/templates/mistral-7b-instruct-v0.3.jinja"),
    include_str!("../fixtures/chat/templates/qwen2.5-instruct.jinja"),
    include_str!("../fixtures/chat/templates/smollm2-instruct.jinja"),
    include_str!("../fixtures/chat/templates/zephyr.jinja"),
];

/// Pieces of templates, hostile ones among them.
const PIECES: &[&str] = &[
    "{% for message in messages %}",
    "{% endfor %}",
    "{{ message['role'] }}",
    "{{ message.content }}",
    "{{ message['content'] | trim }}",
    "{{ message.content | tojson }}",
    "{{ messages[0]['content'].strip().upper() }}",
    "{% if add_generation_prompt %}",
    "{% if message.role == 'user' %}",
    "{% elif loop.last %}",
    "{% else %}",
    "{% endif %}",
    "{{ bos_token }}",
    "{{ eos_token }}",
    "{{ undefined_variable }}",
    "{{ undefined_variable.attr }}",
    "{{ messages[99].content }}",
    "{{ raise_exception('roles must alternate') }}",
    "{{ strftime_now('%Y-%m-%d') }}",
    "{% set ns = namespace(n=0) %}",
    "{% set ns.n = ns.n + 1 %}",
    "{% for x in range(10**9) %}",
    "{% for x in range(100000) %}{% for y in range(100000) %}{{ x }}{% endfor %}{% endfor %}",
    "{% for x in range(100000) %}{{ 'x' * 1000000 }}{% endfor %}",
    "{{ 'x' * 10**12 }}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{% macro g(n) %}{{ g(n) ~ g(n) }}{% endmacro %}{{ g(0) }}",
    "{% set l = [1] %}{% for i in range(30) %}{% set l = l + l %}{% endfor %}{{ l | length }}",
    "{% for m in messages recursive %}{{ loop(messages) }}{% endfor %}",
    "{{ (messages * 100000) | tojson }}",
    "{{ messages | map(attribute='content') | join('\\n') }}",
    "{{ 1 / 0 }}",
    "{{ message.content.split('</think>')[-1] }}",
    "{% break %}",
    "{% continue %}",
    "{{",
    "{%",
    "}}",
    "{% for %}",
    "{% endmacro %}",
    "{# comment",
    "{{ ((((((((((((((((((((1)))))))))))))))))))) }}",
    "<|im_start|>",
    "\n",
    "text",
];

/// A template: a real one, pieces strung together, a real one with pieces inserted, or
/// random characters.
fn template() -> impl Strategy<Value = String> {
    let pieces = proptest::collection::vec(proptest::sample::select(PIECES.to_vec()), 1..10);
    prop_oneof![
        1 => proptest::sample::select(REAL.to_vec()).prop_map(str::to_string),
        4 => pieces.clone().prop_map(|p| p.concat()),
        2 => (proptest::sample::select(REAL.to_vec()), any::<usize>(), pieces).prop_map(
            |(real, at, p)| {
                let mut at = at % (real.len() + 1);
                while !real.is_char_boundary(at) {
                    at -= 1;
                }
                format!("{}{}{}", &real[..at], p.concat(), &real[at..])
            }
        ),
        1 => ".{0,60}",
    ]
}

/// What a render may produce at most: its output is bounded by the template's budget.
const MAX_OUTPUT: usize = 256 << 20;

fn check(source: String, msgs: Value, generation: bool) -> &'static str {
    let tpl = match ChatTemplate::new(
        &source,
        "fuzz.jinja",
        Some("<s>".into()),
        Some("</s>".into()),
        None,
    ) {
        Ok(t) => t,
        Err(e) => {
            let shown = format!("{e:#}");
            assert!(shown.starts_with("fuzz.jinja: "), "{shown}");
            return "rejected when compiled";
        }
    };
    let list = msgs.as_array().cloned().unwrap_or_default();
    match tpl.render(&list, generation) {
        Ok(out) => {
            assert!(out.len() <= MAX_OUTPUT, "{} bytes", out.len());
            "rendered"
        }
        Err(e) => {
            let shown = format!("{e:#}");
            assert!(shown.starts_with("chat template (fuzz.jinja): "), "{shown}");
            if shown.contains("chat_template:") {
                "failed when rendered, at a template line"
            } else {
                "failed when rendered"
            }
        }
    }
}

#[test]
fn chat_templates() {
    let cases = (template(), messages(), any::<bool>());
    fuzz(
        "chat_templates",
        600,
        cases,
        |(source, msgs, generation)| {
            bounded("chat_templates", move || check(source, msgs, generation))
        },
    );
}
