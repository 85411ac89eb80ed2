//! Judging with a reward model: what a reward model is given (gaplab's input convention, see the
//! README's "Reward models"), scoring a policy's generations and their k-token prefixes, and the
//! paper's prefix analyses (ΔQ(k) of preference data, prefix quality of generations).
//!
//! Input convention. Preference data is tokenized with the reward model's OWN tokenizer exactly
//! as gaplab tokenizes training data (standard: prompt with special tokens, response without
//! them and EOS appended; conversational: the reward model's chat template over prompt +
//! response), and a k-prefix is the prompt + the first k response ids (k ≥ the length gives the
//! whole response, EOS included). A policy's generation is text to the reward model: its first k
//! tokens are decoded with the policy's tokenizer and re-encoded with the reward model's (no
//! EOS); the full response gets the reward model's EOS when the policy stopped. When both
//! tokenizers are the same, the policy's ids are used as they are (no round trip through text).

pub mod analysis;
pub mod inputs;

use std::collections::HashMap;

use anyhow::{bail, Result};

use crate::data::chat::ChatTemplate;
use crate::model::reward::RewardModel;
use crate::model::Tok;

/// A policy generation to score: the prompt text as the policy saw it, the policy's generated ids
/// (a final stop token included when it stopped, as model::sample::generate returns them).
pub struct Generation<'a> {
    pub prompt: &'a str,
    pub ids: &'a [u32],
    pub stopped: bool,
}

/// The reward model's score of each generation's k-token prefixes (for each k of `ks`: the policy's
/// first k tokens, decoded with the policy's tokenizer and re-encoded by the RM's, no EOS; k >= the
/// generation's length gives the full response) and of the full response (RM EOS appended when it
/// stopped, as the data convention does for full responses).
#[derive(Clone, Debug, PartialEq)]
pub struct GenerationScores {
    pub prefix: Vec<f64>,
    pub full: f64,
}

/// Whether two tokenizers map text to the same ids (the same tokenizer.json): then a policy's
/// ids can be given to the reward model as they are.
pub fn same_tokenizer(a: &Tok, b: &Tok) -> bool {
    a.inner.to_string(false).ok() == b.inner.to_string(false).ok()
}

/// The reward model's ids of a prompt the policy saw as `text`: with the reward tokenizer's
/// special tokens (BOS), as standard data prompts are, unless the text already starts with its
/// BOS (a chat template rendered it), which would then be doubled.
pub fn rm_prompt_ids(rm_tok: &Tok, text: &str) -> Result<Vec<u32>> {
    let bos_text = rm_tok.bos.and_then(|b| rm_tok.inner.id_to_token(b));
    let ids = match bos_text {
        Some(b) if !b.is_empty() && text.starts_with(&b) => rm_tok.encode_rendered(text)?,
        _ => rm_tok.encode_prompt(text)?,
    };
    if ids.is_empty() {
        bail!("the prompt has no tokens for the reward model (its tokenizer adds no BOS and the text is empty)");
    }
    Ok(ids)
}

/// The reward model's response ids of one generation for each k of `ks`, then of the full
/// response (see [`GenerationScores`]). `same`: the tokenizers are the same.
pub fn generation_responses(
    rm_tok: &Tok,
    policy_tok: &Tok,
    g: &Generation,
    ks: &[usize],
    same: bool,
) -> Result<(Vec<Vec<u32>>, Vec<u32>)> {
    // The generated content: without the final stop token, which becomes the RM's EOS.
    let content = if g.stopped {
        &g.ids[..g.ids.len().saturating_sub(1)]
    } else {
        g.ids
    };
    let encode = |ids: &[u32]| -> Result<Vec<u32>> {
        if same {
            Ok(ids.to_vec())
        } else {
            rm_tok.encode(&policy_tok.decode(ids)?, false)
        }
    };
    let mut full = encode(content)?;
    if g.stopped {
        full.push(rm_tok.eos);
    }
    let prefixes = ks
        .iter()
        .map(|&k| {
            if k >= g.ids.len() {
                Ok(full.clone())
            } else {
                encode(&g.ids[..k])
            }
        })
        .collect::<Result<_>>()?;
    Ok((prefixes, full))
}

/// Scores every sequence once (equal sequences, e.g. prefixes longer than their response, share
/// one forward pass); results in the order given.
pub fn score_unique(rm: &RewardModel, seqs: &[Vec<u32>], batch_size: usize) -> Result<Vec<f64>> {
    let mut at: HashMap<&[u32], usize> = HashMap::new();
    let mut unique: Vec<Vec<u32>> = Vec::new();
    let idx: Vec<usize> = seqs
        .iter()
        .map(|s| {
            *at.entry(s.as_slice()).or_insert_with(|| {
                unique.push(s.clone());
                unique.len() - 1
            })
        })
        .collect();
    let scores = rm.score(&unique, batch_size)?;
    Ok(idx.into_iter().map(|i| scores[i]).collect())
}

pub fn score_generations(
    rm: &RewardModel,
    rm_tok: &Tok,
    policy_tok: &Tok,
    gens: &[Generation],
    ks: &[usize],
    batch_size: usize,
) -> Result<Vec<GenerationScores>> {
    check_k_list(ks, "prefix lengths")?;
    let same = same_tokenizer(rm_tok, policy_tok);
    let per = ks.len() + 1;
    let mut seqs = Vec::with_capacity(gens.len() * per);
    for g in gens {
        let prompt = rm_prompt_ids(rm_tok, g.prompt)?;
        let (prefixes, full) = generation_responses(rm_tok, policy_tok, g, ks, same)?;
        for r in prefixes.into_iter().chain(std::iter::once(full)) {
            let mut s = prompt.clone();
            s.extend(r);
            seqs.push(s);
        }
    }
    by_generation(score_unique(rm, &seqs, batch_size)?, ks.len())
}

/// Scores laid out as each generation's `prefixes` k-prefixes, then its full response.
fn by_generation(scores: Vec<f64>, prefixes: usize) -> Result<Vec<GenerationScores>> {
    Ok(scores
        .chunks(prefixes + 1)
        .map(|c| GenerationScores {
            prefix: c[..prefixes].to_vec(),
            full: c[prefixes],
        })
        .collect())
}

/// [`score_generations`] for generations from chat prompts, given as the prompt `messages` of
/// each generation, when the reward model has a chat template: its own template renders the
/// prompt (with the generation prompt) and the conversation prompt + the generated text as the
/// assistant's reply. A k-prefix is the rendered prompt + the reward tokenizer's ids of the
/// policy's first k tokens as text (no end of turn); the full response of a generation that
/// stopped is the rendered conversation (the template's end of turn included), of one cut by
/// the token limit the rendered prompt + its text.
pub fn score_chat_generations(
    rm: &RewardModel,
    rm_tok: &Tok,
    policy_tok: &Tok,
    messages: &[&[serde_json::Value]],
    gens: &[Generation],
    ks: &[usize],
    batch_size: usize,
) -> Result<Vec<GenerationScores>> {
    check_k_list(ks, "prefix lengths")?;
    anyhow::ensure!(
        messages.len() == gens.len(),
        "{} prompts for {} generations",
        messages.len(),
        gens.len()
    );
    let src = rm_tok.chat_template.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "{}: the reward model's tokenizer has no chat template for chat prompts",
            rm_tok.dir.display()
        )
    })?;
    let tpl = ChatTemplate::for_tok(&src.text, src.origin.clone(), rm_tok)?;
    let per = ks.len() + 1;
    let mut seqs = Vec::with_capacity(gens.len() * per);
    for (g, m) in gens.iter().zip(messages) {
        let prompt = rm_tok.encode_rendered(&tpl.render(m, true)?)?;
        let content = if g.stopped {
            &g.ids[..g.ids.len().saturating_sub(1)]
        } else {
            g.ids
        };
        let text = |ids: &[u32]| -> Result<Vec<u32>> {
            let mut s = prompt.clone();
            s.extend(rm_tok.encode(&policy_tok.decode(ids)?, false)?);
            Ok(s)
        };
        let full = if g.stopped {
            let mut conv = m.to_vec();
            conv.push(
                serde_json::json!({"role": "assistant", "content": policy_tok.decode(content)?}),
            );
            rm_tok.encode_rendered(&tpl.render(&conv, false)?)?
        } else {
            text(content)?
        };
        for &k in ks {
            seqs.push(if k >= g.ids.len() {
                full.clone()
            } else {
                text(&g.ids[..k])?
            });
        }
        seqs.push(full);
    }
    by_generation(score_unique(rm, &seqs, batch_size)?, ks.len())
}

/// "1,2,4,8" -> [1,2,4,8]; an error (naming `what`, e.g. "--k" or "judge.prefix_lengths") for
/// non-positive, non-integer or non-increasing entries.
pub fn parse_k_list(s: &str, what: &str) -> Result<Vec<usize>> {
    let expected = "expected positive integers in increasing order, e.g. \"1,2,4,8\"";
    if s.trim().is_empty() {
        bail!("{what}: the list is empty; {expected}");
    }
    let ks = s
        .split(',')
        .map(|e| {
            let e = e.trim();
            match e.parse::<i64>() {
                Ok(k) if k > 0 => Ok(k as usize),
                Ok(k) => bail!("{what}: entry {k} of \"{s}\" is not positive; {expected}"),
                Err(_) => bail!("{what}: entry \"{e}\" of \"{s}\" is not an integer; {expected}"),
            }
        })
        .collect::<Result<Vec<usize>>>()?;
    if let Some(w) = ks.windows(2).find(|w| w[1] <= w[0]) {
        bail!(
            "{what}: {} follows {} in \"{s}\", the list must increase; {expected}",
            w[1],
            w[0]
        );
    }
    Ok(ks)
}

pub fn check_k_list(ks: &[usize], what: &str) -> Result<()> {
    let expected = "expected positive integers in increasing order, e.g. [1, 2, 4, 8]";
    if ks.is_empty() {
        bail!("{what}: the list is empty; {expected}");
    }
    if ks.contains(&0) {
        bail!("{what}: 0 is not a positive prefix length; {expected}");
    }
    if let Some(w) = ks.windows(2).find(|w| w[1] <= w[0]) {
        bail!(
            "{what}: {} follows {}, the list must increase; {expected}",
            w[1],
            w[0]
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn k_lists_parse_and_bad_ones_name_the_flag() {
        assert_eq!(parse_k_list("1,2,4,8", "--k").unwrap(), [1, 2, 4, 8]);
        assert_eq!(parse_k_list(" 3 , 16", "--k").unwrap(), [3, 16]);
        for (bad, says) in [
            ("", "empty"),
            ("1,,2", "not an integer"),
            ("1,2.5", "\"2.5\""),
            ("0,1", "not positive"),
            ("-2", "not positive"),
            ("4,2", "2 follows 4"),
            ("2,2", "2 follows 2"),
            ("x", "not an integer"),
        ] {
            let e = parse_k_list(bad, "--k").unwrap_err().to_string();
            assert!(e.starts_with("--k: ") && e.contains(says), "{bad}: {e}");
        }
        let e = check_k_list(&[1, 0], "judge.prefix_lengths")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("judge.prefix_lengths: 0"), "{e}");
        assert!(check_k_list(&[], "x").is_err());
    }

    fn fixture_tok() -> Tok {
        Tok::load(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-llama"),
            None,
        )
        .unwrap()
    }

    #[test]
    fn generations_become_prefixes_and_a_full_response() {
        let tok = fixture_tok();
        let content = tok.encode(" the answer is yes.", false).unwrap();
        let mut ids = content.clone();
        ids.push(tok.eos);
        let g = Generation {
            prompt: "Question: is the sun a star?\nAnswer:",
            ids: &ids,
            stopped: true,
        };
        for same in [true, false] {
            let (prefixes, full) =
                generation_responses(&tok, &tok, &g, &[1, 2, ids.len()], same).unwrap();
            assert_eq!(full, ids, "same tokenizer {same}");
            assert_eq!(prefixes[0], content[..1]);
            assert_eq!(prefixes[1], content[..2]);
            assert_eq!(prefixes[2], ids);
        }
        // A generation cut by max_new_tokens gets no EOS.
        let g = Generation {
            stopped: false,
            ids: &content,
            ..g
        };
        let (_, full) = generation_responses(&tok, &tok, &g, &[1], false).unwrap();
        assert_eq!(full, content);
        // The prompt gets BOS once, also when it is already there.
        let p = rm_prompt_ids(&tok, "hello").unwrap();
        assert_eq!(p[0], tok.bos.unwrap());
        assert_eq!(rm_prompt_ids(&tok, "<s>hello").unwrap(), p);
    }
}
