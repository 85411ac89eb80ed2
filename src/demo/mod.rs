//! The demo task: sort a short list of numbers, with preference pairs built so that the
//! reward-generation gap shows up on a model small enough to train from scratch on a CPU.
//!
//! A prompt is `sort : 7 3 12 1 =` and the correct response is `1 3 7 12`. The closing `=` is
//! there because prompt and response are concatenated without a template: without it, a model
//! reading `sort : 7 3 12 1 1 3` cannot tell where the prompt's list ends and its own output
//! begins, and a tiny model would spend its capacity guessing the boundary instead of sorting.
//! The tokenizer is word-level, so every number is one token and a response of n numbers is n
//! tokens (plus EOS).
//!
//! Preference pairs copy two properties of real preference data:
//!
//! - **The quality difference shows in the first tokens.** The rejected response is the sorted
//!   list with one error at position 0 or 1, the rest right: the first two swapped, one of them
//!   replaced by a value that is not in the prompt, or the first dropped. Chosen and rejected
//!   therefore part at response word 0 or 1.
//! - **Length carries a spurious signal.** A fixed courtesy tail (`. hope this helps !` and two
//!   others) follows the chosen list with probability `tail_chosen` (0.7) and the rejected one
//!   with `tail_rejected` (0.2), the way verbosity follows the preferred answer in human data.
//!   The tail says nothing about the sort, but it makes the chosen response the longer one in most
//!   pairs.
//!
//! Why this opens a gap: an objective that scores whole responses can grow the chosen-rejected
//! margin on the tail, a handful of fixed, easy tokens that separate most pairs, so reward
//! accuracy rises while greedy generations sort no better (the [`judge`] measures that). POET
//! keeps only the first k = min(|chosen|, |rejected|) response tokens of a pair. The rejected
//! response is usually tail-free and at most as long as the list, so k covers the list, where the
//! informative difference lies, and cuts the chosen's tail: the margin can only come from the
//! prefix that carries quality.
//!
//! # The long-tail task (`gaplab demo-data DIR --task long-tail`)
//!
//! The same prompts, lists and errors, with the tails turned around to test POET's claim: the
//! chosen response never carries a tail (`tail_chosen` 0) and the rejected one always does
//! (`tail_rejected` 1), and that tail is long: 2 or 3 of the filler phrases above in a row
//! (8 to 15 words, [`LONG_TAIL_PHRASES`]). The quality difference still sits at response word 0
//! or 1. A full-response objective can now widen the margin on the rejected's tail alone (a dozen
//! easy, meaningless tokens on one side of every pair) without learning to sort; POET's k =
//! min(|chosen|, |rejected|) is the chosen list (+ EOS), so its margin has to come from the list.
//! The sort judge judges this task as it is (the tail shows in `tail` and `length`; a tail of
//! several phrases is not `well_formed`, which the in-loop metrics do not report). Draws follow
//! the same per-pair order as the sort task, with the tail's phrase count and phrases drawn
//! where the sort task draws its one phrase, so the data is deterministic per seed.
//!
//! Eval prompts are held out by content: no eval list, in any order, occurs in train, so eval
//! generations measure sorting, not recall. Eval is drawn first from its own random stream, so
//! changing `train_pairs` leaves it unchanged. Everything that reaches a file is ordered
//! explicitly (no hash-map iteration), so a seed gives the same bytes on every platform.

pub mod judge;

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokenizers::models::wordlevel::WordLevel;
use tokenizers::pre_tokenizers::whitespace::WhitespaceSplit;
use tokenizers::{AddedToken, Tokenizer};

use crate::rng::Rng;

/// The words before the numbers of a prompt.
pub const INSTRUCTION: [&str; 2] = ["sort", ":"];
/// The word after the numbers of a prompt.
pub const PROMPT_END: &str = "=";
/// The spurious tails. Few and short, so a tiny model learns them verbatim; their lengths differ
/// so that length alone does not identify the tail.
pub const TAILS: [&str; 3] = [". hope this helps !", ". all done !", ". happy to help !"];
/// How many filler phrases a long-tail task's tail strings together (inclusive): 8 to 15 words.
pub const LONG_TAIL_PHRASES: (usize, usize) = (2, 3);
/// The last response position a rejected response may first differ from the chosen one at.
pub const LAST_ERROR_POSITION: usize = 1;

pub const PAD: &str = "<pad>";
pub const EOS: &str = "<eos>";
pub const UNK: &str = "<unk>";
/// In id order: pad 0, eos 1, unk 2.
const SPECIAL_TOKENS: [&str; 3] = [PAD, EOS, UNK];

/// Which tails the task's responses carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// One short courtesy phrase, mostly on the chosen response (the shipped demo).
    #[default]
    Sort,
    /// Several phrases in a row, on the rejected response (see the module doc).
    LongTail,
}

impl TaskKind {
    fn is_sort(&self) -> bool {
        *self == TaskKind::Sort
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TaskConfig {
    /// Written to task.json only when it is not the shipped sort task, so that task's files keep
    /// their bytes.
    #[serde(skip_serializing_if = "TaskKind::is_sort")]
    pub kind: TaskKind,
    pub seed: u64,
    pub train_pairs: usize,
    pub eval_pairs: usize,
    /// Fewest numbers in a prompt (at least 2: the rejected response corrupts position 0 or 1).
    pub min_len: usize,
    pub max_len: usize,
    /// Numbers are drawn from 0..max_value.
    pub max_value: u32,
    /// Probability that the chosen response carries a tail.
    pub tail_chosen: f64,
    /// Probability that the rejected response carries a tail.
    pub tail_rejected: f64,
    /// Whether a rejected response may drop the first number (a list one shorter). Without it,
    /// every rejected list is as long as the chosen one and the pair's lengths differ only by
    /// the tail.
    pub drop_first: bool,
}

impl Default for TaskConfig {
    fn default() -> Self {
        Self {
            kind: TaskKind::Sort,
            seed: 0,
            train_pairs: 2000,
            eval_pairs: 64,
            min_len: 3,
            max_len: 6,
            max_value: 20,
            tail_chosen: 0.7,
            tail_rejected: 0.2,
            drop_first: true,
        }
    }
}

impl TaskConfig {
    /// The defaults of task `kind`: the long-tail task puts its tail on every rejected response
    /// and on no chosen one.
    pub fn for_kind(kind: TaskKind) -> Self {
        match kind {
            TaskKind::Sort => Self::default(),
            TaskKind::LongTail => Self {
                kind,
                tail_chosen: 0.0,
                tail_rejected: 1.0,
                ..Self::default()
            },
        }
    }

    /// Checks that every pair can be built and that the held-out split can be filled.
    pub fn validate(&self) -> Result<()> {
        if self.train_pairs == 0 || self.eval_pairs == 0 {
            // The pair reader rejects empty files.
            bail!("train_pairs and eval_pairs must be at least 1");
        }
        if self.min_len < 2 {
            bail!(
                "min_len is {}; it must be at least 2 so that a rejected response can err at position 0 or 1 and stay non-empty",
                self.min_len
            );
        }
        if self.min_len > self.max_len {
            bail!(
                "min_len ({}) is larger than max_len ({})",
                self.min_len,
                self.max_len
            );
        }
        if self.max_value as usize <= self.max_len {
            bail!(
                "max_value ({}) must exceed max_len ({}) so that every list misses some value a rejected response can put in",
                self.max_value,
                self.max_len
            );
        }
        for (name, p) in [
            ("tail_chosen", self.tail_chosen),
            ("tail_rejected", self.tail_rejected),
        ] {
            if !(0.0..=1.0).contains(&p) {
                bail!("{name} is {p}; it must be a probability in [0, 1]");
            }
        }
        let lists = distinct_lists(self.min_len, self.max_len, self.max_value);
        if lists < 2 * self.eval_pairs as u128 {
            bail!(
                "only {lists} distinct number lists exist for these lengths and values; eval_pairs ({}) needs at least twice as many so that train prompts remain",
                self.eval_pairs
            );
        }
        Ok(())
    }
}

/// How many lists differ as multisets: eval holds out multisets, so this bounds the split.
fn distinct_lists(min_len: usize, max_len: usize, max_value: u32) -> u128 {
    let v = max_value as u128;
    (min_len..=max_len)
        .map(|n| multisets(v, n as u128))
        .fold(0u128, u128::saturating_add)
}

/// C(v + n - 1, n), saturating.
fn multisets(v: u128, n: u128) -> u128 {
    let mut c: u128 = 1;
    for i in 1..=n {
        // c * (v + i - 1) / i is a binomial coefficient at every step, so the division is exact.
        match c.checked_mul(v + i - 1) {
            Some(x) => c = x / i,
            None => return u128::MAX,
        }
    }
    c
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DemoPair {
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    pub train: Vec<DemoPair>,
    pub eval: Vec<DemoPair>,
}

impl Generated {
    fn pairs(&self) -> impl Iterator<Item = &DemoPair> {
        self.train.iter().chain(&self.eval)
    }
}

/// The train and eval pairs of `cfg`.
///
/// # Panics
/// If `cfg` fails [`TaskConfig::validate`]; [`write_data`] checks first and returns the error.
pub fn generate(cfg: &TaskConfig) -> Generated {
    if let Err(e) = cfg.validate() {
        panic!("invalid demo task config: {e:#}");
    }
    let mut root = Rng::new(cfg.seed);
    let mut eval_rng = Rng::new(root.next_u64());
    let mut train_rng = Rng::new(root.next_u64());

    // Distinct eval lists make every eval generation a new problem; validate() guarantees there
    // are enough of them.
    let mut held_out = BTreeSet::new();
    let mut eval = Vec::with_capacity(cfg.eval_pairs);
    while eval.len() < cfg.eval_pairs {
        let numbers = draw_numbers(&mut eval_rng, cfg);
        if held_out.insert(sorted(&numbers)) {
            eval.push(make_pair(&numbers, cfg, &mut eval_rng));
        }
    }
    let mut train = Vec::with_capacity(cfg.train_pairs);
    while train.len() < cfg.train_pairs {
        let numbers = draw_numbers(&mut train_rng, cfg);
        if !held_out.contains(&sorted(&numbers)) {
            train.push(make_pair(&numbers, cfg, &mut train_rng));
        }
    }
    Generated { train, eval }
}

fn draw_numbers(rng: &mut Rng, cfg: &TaskConfig) -> Vec<u32> {
    let n = cfg.min_len + rng.below(cfg.max_len - cfg.min_len + 1);
    (0..n)
        .map(|_| rng.below(cfg.max_value as usize) as u32)
        .collect()
}

fn sorted(xs: &[u32]) -> Vec<u32> {
    let mut v = xs.to_vec();
    v.sort_unstable();
    v
}

fn make_pair(numbers: &[u32], cfg: &TaskConfig, rng: &mut Rng) -> DemoPair {
    let target = sorted(numbers);
    let wrong = corrupt(&target, cfg.max_value, cfg.drop_first, rng);
    let chosen_tail = draw_tail(rng, cfg.tail_chosen, cfg.kind);
    let rejected_tail = draw_tail(rng, cfg.tail_rejected, cfg.kind);
    DemoPair {
        prompt: prompt_text(numbers),
        chosen: response_text(&target, chosen_tail.as_deref()),
        rejected: response_text(&wrong, rejected_tail.as_deref()),
    }
}

/// A tail with probability `p`: one phrase for the sort task, 2 or 3 in a row for the long-tail
/// task. The sort task draws exactly as it always has (its data files keep their bytes).
fn draw_tail(rng: &mut Rng, p: f64, kind: TaskKind) -> Option<String> {
    if rng.uniform() >= p {
        return None;
    }
    match kind {
        TaskKind::Sort => Some(TAILS[rng.below(TAILS.len())].to_string()),
        TaskKind::LongTail => {
            let (lo, hi) = LONG_TAIL_PHRASES;
            let n = lo + rng.below(hi - lo + 1);
            let phrases: Vec<&str> = (0..n).map(|_| TAILS[rng.below(TAILS.len())]).collect();
            Some(phrases.join(" "))
        }
    }
}

/// The ways a rejected response goes wrong. Each leaves the list wrong as a whole (not a correct
/// sort) but right after the error, so the pair differs only early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Corruption {
    SwapFirstTwo,
    ReplaceEarly,
    DropFirst,
}

impl Corruption {
    const ALL: [Corruption; 3] = [Self::SwapFirstTwo, Self::ReplaceEarly, Self::DropFirst];

    /// Whether the corruption changes `target` within the first positions: swapping equal
    /// values changes nothing, and dropping the first of a run `2 2 2 ...` only shows later.
    fn applies(self, target: &[u32]) -> bool {
        match self {
            Self::SwapFirstTwo => target[0] != target[1],
            Self::ReplaceEarly => true,
            Self::DropFirst => {
                first_divergence(target, &target[1..]).is_some_and(|i| i <= LAST_ERROR_POSITION)
            }
        }
    }
}

/// A wrong response list for the sorted `target` (at least two numbers, and some value in
/// 0..max_value missing from it, as validate() guarantees).
fn corrupt(target: &[u32], max_value: u32, drop_first: bool, rng: &mut Rng) -> Vec<u32> {
    let kinds: Vec<Corruption> = Corruption::ALL
        .into_iter()
        .filter(|k| k.applies(target) && (drop_first || *k != Corruption::DropFirst))
        .collect();
    let mut list = target.to_vec();
    match kinds[rng.below(kinds.len())] {
        Corruption::SwapFirstTwo => list.swap(0, 1),
        Corruption::ReplaceEarly => {
            // A value from outside the prompt: a plausible-looking error that no reordering of the
            // prompt can produce.
            let missing: Vec<u32> = (0..max_value).filter(|x| !target.contains(x)).collect();
            let position = rng.below(LAST_ERROR_POSITION + 1);
            list[position] = missing[rng.below(missing.len())];
        }
        Corruption::DropFirst => {
            list.remove(0);
        }
    }
    list
}

/// The index of the first position where `a` and `b` differ (running out counts as differing);
/// `None` when they are equal.
pub fn first_divergence<T: PartialEq>(a: &[T], b: &[T]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

fn join_numbers(xs: &[u32]) -> String {
    xs.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
}

/// The prompt for `numbers`, in the order given.
pub fn prompt_text(numbers: &[u32]) -> String {
    format!(
        "{} {} {PROMPT_END}",
        INSTRUCTION.join(" "),
        join_numbers(numbers)
    )
}

fn response_text(list: &[u32], tail: Option<&str>) -> String {
    match tail {
        Some(t) => format!("{} {t}", join_numbers(list)),
        None => join_numbers(list),
    }
}

/// Every word of the task's text once, in id order: special tokens, numbers ascending (so that
/// a number's id is easy to read off a heatmap), then the other words in byte order.
fn vocabulary(g: &Generated) -> Vec<String> {
    let words: BTreeSet<&str> = g
        .pairs()
        .flat_map(|p| [&p.prompt, &p.chosen, &p.rejected])
        .flat_map(|text| text.split_whitespace())
        .filter(|w| !SPECIAL_TOKENS.contains(w))
        .collect();
    let mut numbers: Vec<u32> = words.iter().filter_map(|w| number_word(w)).collect();
    numbers.sort_unstable();
    let others = words.iter().filter(|w| number_word(w).is_none());
    SPECIAL_TOKENS
        .iter()
        .map(|s| s.to_string())
        .chain(numbers.iter().map(u32::to_string))
        .chain(others.map(|w| w.to_string()))
        .collect()
}

/// The value of a word written the way the task writes numbers: plain decimal digits without
/// leading zeros. Other spellings (`+3`, `03`) are no word of the vocabulary, so they are not
/// numbers to the judge either.
fn number_word(w: &str) -> Option<u32> {
    let canonical =
        !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit()) && (w == "0" || !w.starts_with('0'));
    if !canonical {
        return None;
    }
    w.parse().ok()
}

/// Word-level tokenizer built with the tokenizers crate from the task's own text: a WordLevel
/// model over every word of `g` with a whitespace-split pre-tokenizer, so each word is one
/// token. `<pad>` (id 0), `<eos>` (id 1) and `<unk>` (id 2) are special added tokens; there is
/// no BOS and no post-processor, so encoding adds nothing. With no decoder set, decoding joins
/// the words with single spaces, which is exactly the task's text.
///
/// The vocabulary is laid out directly rather than by `WordLevelTrainer`, whose frequency order
/// would scatter the numbers' ids.
pub fn build_tokenizer(g: &Generated) -> Result<Tokenizer> {
    let vocab: serde_json::Map<String, serde_json::Value> = vocabulary(g)
        .into_iter()
        .enumerate()
        .map(|(id, w)| (w, json!(id)))
        .collect();
    // WordLevel's builder wants the crate's own hash map type, but its serde form takes a plain
    // map. It only deserializes from text: it borrows its `type` string.
    let spec = json!({"type": "WordLevel", "vocab": vocab, "unk_token": UNK}).to_string();
    let model: WordLevel =
        serde_json::from_str(&spec).context("cannot build the word-level model")?;
    let mut tok = Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(WhitespaceSplit));
    tok.add_special_tokens(SPECIAL_TOKENS.map(|t| AddedToken::from(t, true)))
        .map_err(|e| anyhow!("cannot register the special tokens: {e}"))?;
    Ok(tok)
}

fn jsonl(pairs: &[DemoPair]) -> Result<String> {
    let mut out = String::new();
    for p in pairs {
        out.push_str(&serde_json::to_string(p)?);
        out.push('\n');
    }
    Ok(out)
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// Writes DIR/train.jsonl, DIR/eval.jsonl (one `{"prompt","chosen","rejected"}` object per
/// line), DIR/tokenizer/tokenizer.json, DIR/tokenizer/tokenizer_config.json and DIR/task.json
/// (the config, so a reader knows how the data was made). The bytes depend only on `cfg`.
pub fn write_data(dir: &Path, cfg: &TaskConfig) -> Result<()> {
    cfg.validate().context("invalid demo task config")?;
    let g = generate(cfg);
    let tok = build_tokenizer(&g)?;
    let tok_dir = dir.join("tokenizer");
    std::fs::create_dir_all(&tok_dir)
        .with_context(|| format!("cannot create {}", tok_dir.display()))?;
    write_file(&dir.join("train.jsonl"), &jsonl(&g.train)?)?;
    write_file(&dir.join("eval.jsonl"), &jsonl(&g.eval)?)?;
    let tok_json = tok
        .to_string(true)
        .map_err(|e| anyhow!("cannot serialize the tokenizer: {e}"))?;
    write_file(&tok_dir.join("tokenizer.json"), &tok_json)?;
    let tok_config = json!({"eos_token": EOS, "pad_token": PAD, "unk_token": UNK});
    write_file(
        &tok_dir.join("tokenizer_config.json"),
        &(serde_json::to_string_pretty(&tok_config)? + "\n"),
    )?;
    write_file(
        &dir.join("task.json"),
        &(serde_json::to_string_pretty(cfg)? + "\n"),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::judge::judge;
    use super::*;

    const FILES: [&str; 5] = [
        "train.jsonl",
        "eval.jsonl",
        "tokenizer/tokenizer.json",
        "tokenizer/tokenizer_config.json",
        "task.json",
    ];

    fn words(text: &str) -> Vec<&str> {
        text.split_whitespace().collect()
    }

    fn prompt_numbers(prompt: &str) -> Vec<u32> {
        judge::parse_prompt(prompt).unwrap()
    }

    #[test]
    fn generation_is_deterministic_per_seed() {
        let cfg = TaskConfig::default();
        let a = generate(&cfg);
        assert_eq!(a, generate(&cfg));
        assert_eq!(a.train.len(), 2000);
        assert_eq!(a.eval.len(), 64);
        let b = generate(&TaskConfig { seed: 1, ..cfg });
        assert_ne!(a.train, b.train);
        assert_ne!(a.eval, b.eval);
    }

    #[test]
    fn eval_does_not_depend_on_train_size() {
        let cfg = TaskConfig::default();
        let small = generate(&TaskConfig {
            train_pairs: 10,
            ..cfg.clone()
        });
        let full = generate(&cfg);
        assert_eq!(small.eval, full.eval);
        assert_eq!(small.train[..], full.train[..10]);
    }

    #[test]
    fn write_data_is_byte_identical_per_seed() {
        let cfg = TaskConfig::default();
        let (a, b, c) = (
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
            tempfile::tempdir().unwrap(),
        );
        write_data(a.path(), &cfg).unwrap();
        write_data(b.path(), &cfg).unwrap();
        write_data(c.path(), &TaskConfig { seed: 9, ..cfg }).unwrap();
        let read = |dir: &Path, f: &str| std::fs::read(dir.join(f)).unwrap();
        for f in FILES {
            assert_eq!(read(a.path(), f), read(b.path(), f), "{f} differs");
        }
        assert_ne!(read(a.path(), "train.jsonl"), read(c.path(), "train.jsonl"));
    }

    #[test]
    fn written_files_read_back() {
        let cfg = TaskConfig {
            seed: 3,
            train_pairs: 50,
            ..TaskConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        write_data(dir.path(), &cfg).unwrap();
        let task: TaskConfig =
            serde_json::from_slice(&std::fs::read(dir.path().join("task.json")).unwrap()).unwrap();
        assert_eq!(task, cfg);
        let train = std::fs::read_to_string(dir.path().join("train.jsonl")).unwrap();
        let pairs: Vec<DemoPair> = train
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(pairs, generate(&cfg).train);
        let first: serde_json::Value = serde_json::from_str(train.lines().next().unwrap()).unwrap();
        let keys: Vec<&String> = first.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["chosen", "prompt", "rejected"]);
        let tok = Tokenizer::from_file(dir.path().join("tokenizer/tokenizer.json")).unwrap();
        assert_eq!(tok.token_to_id(EOS), Some(1));
        let tcfg: serde_json::Value = serde_json::from_slice(
            &std::fs::read(dir.path().join("tokenizer/tokenizer_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(
            tcfg,
            json!({"eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"})
        );
    }

    #[test]
    fn pairs_have_the_designed_structure() {
        let g = generate(&TaskConfig::default());
        let (mut chosen_longer, mut chosen_tail, mut rejected_tail) = (0, 0, 0);
        let (mut swaps, mut replaced, mut dropped) = (0, 0, 0);
        for p in g.pairs() {
            let good = judge(&p.prompt, &p.chosen).unwrap();
            let bad = judge(&p.prompt, &p.rejected).unwrap();
            assert!(good.correct && good.well_formed, "{p:?}");
            assert!(!bad.correct && bad.well_formed, "{p:?}");
            assert_ne!(p.chosen, p.rejected);
            let (cw, rw) = (words(&p.chosen), words(&p.rejected));
            let split = first_divergence(&cw, &rw).unwrap();
            assert!(split <= LAST_ERROR_POSITION, "parts at word {split}: {p:?}");
            chosen_longer += usize::from(cw.len() > rw.len());
            chosen_tail += usize::from(good.tail);
            rejected_tail += usize::from(bad.tail);

            let target = sorted(&prompt_numbers(&p.prompt));
            let list: Vec<u32> = rw.iter().map_while(|w| number_word(w)).collect();
            if list.len() < target.len() {
                dropped += 1;
            } else if sorted(&list) == target {
                swaps += 1;
            } else {
                replaced += 1;
            }
        }
        let n = (g.train.len() + g.eval.len()) as f64;
        let share = |k: usize| k as f64 / n;
        println!(
            "chosen longer in {:.3} of {n} pairs; tails: chosen {:.3}, rejected {:.3}; errors: swap {:.3}, replace {:.3}, drop {:.3}",
            share(chosen_longer),
            share(chosen_tail),
            share(rejected_tail),
            share(swaps),
            share(replaced),
            share(dropped)
        );
        assert!(share(chosen_longer) > 0.6);
        assert!((share(chosen_tail) - 0.7).abs() < 0.04);
        assert!((share(rejected_tail) - 0.2).abs() < 0.04);
        for kind in [swaps, replaced, dropped] {
            assert!(share(kind) > 0.2, "an error kind is rare: {kind}");
        }
    }

    #[test]
    fn long_tail_pairs_put_a_long_tail_on_every_rejected_response_only() {
        let cfg = TaskConfig::for_kind(TaskKind::LongTail);
        let g = generate(&cfg);
        assert_eq!(g, generate(&cfg), "deterministic per seed");
        assert_ne!(
            g.train,
            generate(&TaskConfig {
                seed: 1,
                ..cfg.clone()
            })
            .train
        );
        let sort = generate(&TaskConfig::default());
        // Same prompts (the draws before the tails are the sort task's), other responses.
        assert_eq!(g.eval[0].prompt, sort.eval[0].prompt);
        let mut tail_words = BTreeSet::new();
        for p in g.pairs() {
            let good = judge(&p.prompt, &p.chosen).unwrap();
            let bad = judge(&p.prompt, &p.rejected).unwrap();
            assert!(good.correct && good.well_formed && !good.tail, "{p:?}");
            assert!(!bad.correct && bad.tail, "{p:?}");
            let (cw, rw) = (words(&p.chosen), words(&p.rejected));
            let split = first_divergence(&cw, &rw).unwrap();
            assert!(split <= LAST_ERROR_POSITION, "parts at word {split}: {p:?}");
            let list = rw.iter().take_while(|w| number_word(w).is_some()).count();
            let tail = rw.len() - list;
            assert!((8..=15).contains(&tail), "tail of {tail} words: {p:?}");
            // The judge counts the tail in the length.
            assert_eq!(bad.length, rw.len());
            assert!(rw.len() > cw.len());
            tail_words.insert(tail);
        }
        assert!(tail_words.len() >= 4, "tail lengths vary: {tail_words:?}");
        // task.json names the task; the sort task's leaves the field out (its bytes unchanged).
        let dir = tempfile::tempdir().unwrap();
        write_data(dir.path(), &cfg).unwrap();
        let text = std::fs::read_to_string(dir.path().join("task.json")).unwrap();
        assert!(text.contains("\"kind\": \"long-tail\""), "{text}");
        let back: TaskConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        let sort_json = serde_json::to_string(&TaskConfig::default()).unwrap();
        assert!(!sort_json.contains("kind"), "{sort_json}");
        // The vocabulary is the sort task's: the same phrases, the same numbers.
        assert_eq!(
            build_tokenizer(&g).unwrap().to_string(false).unwrap(),
            build_tokenizer(&sort).unwrap().to_string(false).unwrap()
        );
    }

    #[test]
    fn eval_prompts_are_held_out() {
        let g = generate(&TaskConfig::default());
        let train_prompts: BTreeSet<&str> = g.train.iter().map(|p| p.prompt.as_str()).collect();
        let train_lists: BTreeSet<Vec<u32>> = g
            .train
            .iter()
            .map(|p| sorted(&prompt_numbers(&p.prompt)))
            .collect();
        let eval_lists: BTreeSet<Vec<u32>> = g
            .eval
            .iter()
            .map(|p| sorted(&prompt_numbers(&p.prompt)))
            .collect();
        assert_eq!(eval_lists.len(), g.eval.len(), "eval lists repeat");
        for p in &g.eval {
            assert!(!train_prompts.contains(p.prompt.as_str()), "{}", p.prompt);
        }
        assert!(eval_lists.is_disjoint(&train_lists));
    }

    #[test]
    fn prompts_follow_the_config() {
        let cfg = TaskConfig {
            eval_pairs: 8,
            min_len: 2,
            max_len: 3,
            max_value: 5,
            ..TaskConfig::default()
        };
        let g = generate(&cfg);
        for p in g.pairs() {
            let w = words(&p.prompt);
            assert_eq!(&w[..2], INSTRUCTION);
            assert_eq!(*w.last().unwrap(), PROMPT_END);
            let numbers = prompt_numbers(&p.prompt);
            assert!((2..=3).contains(&numbers.len()), "{}", p.prompt);
            assert!(numbers.iter().all(|&x| x < 5), "{}", p.prompt);
        }
        // Small values and short lists are where a corruption could come out right or late.
        for p in &g.train {
            assert!(!judge(&p.prompt, &p.rejected).unwrap().correct, "{p:?}");
            let split = first_divergence(&words(&p.chosen), &words(&p.rejected)).unwrap();
            assert!(split <= LAST_ERROR_POSITION, "{p:?}");
        }
    }

    #[test]
    fn corruption_handles_repeated_values() {
        let mut rng = Rng::new(5);
        for target in [
            vec![2, 2, 2],
            vec![2, 2, 5],
            vec![0, 0],
            vec![1, 1, 1, 1, 1],
        ] {
            for _ in 0..200 {
                let wrong = corrupt(&target, 6, true, &mut rng);
                assert_ne!(sorted(&wrong), target, "{target:?} -> {wrong:?}");
                let split = first_divergence(&target, &wrong).unwrap();
                assert!(split <= LAST_ERROR_POSITION, "{target:?} -> {wrong:?}");
            }
        }
    }

    #[test]
    fn without_drops_rejected_lists_keep_the_chosen_length() {
        let g = generate(&TaskConfig {
            drop_first: false,
            train_pairs: 300,
            ..TaskConfig::default()
        });
        let list_len = |text: &str| {
            text.split(' ')
                .take_while(|w| w.parse::<u32>().is_ok())
                .count()
        };
        for p in &g.train {
            assert_eq!(list_len(&p.chosen), list_len(&p.rejected), "{p:?}");
            assert!(!judge(&p.prompt, &p.rejected).unwrap().correct, "{p:?}");
        }
    }

    #[test]
    fn first_divergence_counts_running_out() {
        assert_eq!(first_divergence(&[1, 2, 3], &[1, 2, 3]), None);
        assert_eq!(first_divergence(&[1, 2, 3], &[1, 5, 3]), Some(1));
        assert_eq!(first_divergence(&[2, 2, 2], &[2, 2]), Some(2));
        assert_eq!(first_divergence::<u32>(&[], &[4]), Some(0));
    }

    #[test]
    fn validate_names_the_problem() {
        let ok = TaskConfig::default();
        assert!(ok.validate().is_ok());
        let cases = [
            (
                TaskConfig {
                    min_len: 1,
                    ..ok.clone()
                },
                "min_len",
            ),
            (
                TaskConfig {
                    min_len: 7,
                    ..ok.clone()
                },
                "larger than max_len",
            ),
            (
                TaskConfig {
                    max_value: 6,
                    ..ok.clone()
                },
                "max_value",
            ),
            (
                TaskConfig {
                    tail_chosen: 1.5,
                    ..ok.clone()
                },
                "tail_chosen",
            ),
            (
                TaskConfig {
                    eval_pairs: 0,
                    ..ok.clone()
                },
                "eval_pairs",
            ),
            (
                TaskConfig {
                    min_len: 2,
                    max_len: 2,
                    max_value: 3,
                    ..ok.clone()
                },
                "distinct number lists",
            ),
        ];
        for (cfg, expected) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(expected), "{e}");
        }
        let bad = TaskConfig { min_len: 1, ..ok };
        let e = write_data(tempfile::tempdir().unwrap().path(), &bad).unwrap_err();
        assert!(format!("{e:#}").contains("min_len"), "{e:#}");
    }

    #[test]
    fn multiset_count_matches_enumeration() {
        // Lists of length 2..=3 over 0..4, counted by brute force as sorted tuples.
        let mut brute = BTreeSet::new();
        for a in 0..4u32 {
            for b in 0..4 {
                brute.insert(sorted(&[a, b]));
                for c in 0..4 {
                    brute.insert(sorted(&[a, b, c]));
                }
            }
        }
        assert_eq!(distinct_lists(2, 3, 4), brute.len() as u128);
        assert_eq!(distinct_lists(1000, 1000, 1000), u128::MAX);
    }

    #[test]
    fn tokenizer_covers_the_task_word_by_word() {
        let g = generate(&TaskConfig::default());
        let tok = build_tokenizer(&g).unwrap();
        let vocab_size = tok.get_vocab_size(true);
        println!("vocab size {vocab_size}");
        assert!(vocab_size < 48, "{vocab_size}");
        assert_eq!(tok.token_to_id(PAD), Some(0));
        assert_eq!(tok.token_to_id(EOS), Some(1));
        assert_eq!(tok.token_to_id(UNK), Some(2));
        // Numbers come first and in order, so id - 3 is the value.
        for v in 0..20u32 {
            assert_eq!(tok.token_to_id(&v.to_string()), Some(v + 3));
        }
        let unk = tok.token_to_id(UNK).unwrap();
        for p in g.pairs() {
            for text in [&p.prompt, &p.chosen, &p.rejected] {
                let ids = tok.encode(text.as_str(), true).unwrap().get_ids().to_vec();
                assert_eq!(ids.len(), words(text).len(), "one token per word: {text}");
                assert!(!ids.contains(&unk), "unknown word in {text}");
                assert_eq!(&tok.decode(&ids, true).unwrap(), text);
            }
        }
        let ids = tok.encode("1 2 banana", false).unwrap().get_ids().to_vec();
        assert_eq!(ids[2], unk);
        // Special tokens are skipped on decode, so a stop token never reaches the judge.
        let mut ids = tok.encode("1 2", false).unwrap().get_ids().to_vec();
        ids.push(1);
        assert_eq!(tok.decode(&ids, true).unwrap(), "1 2");
        assert_eq!(tok.decode(&ids, false).unwrap(), "1 2 <eos>");
    }

    #[test]
    fn tokenizer_survives_a_save_and_load() {
        let g = generate(&TaskConfig {
            train_pairs: 100,
            ..TaskConfig::default()
        });
        let tok = build_tokenizer(&g).unwrap();
        let json = tok.to_string(false).unwrap();
        let back: Tokenizer = json.parse().unwrap();
        let text = &g.train[0].chosen;
        assert_eq!(
            back.encode(text.as_str(), false).unwrap().get_ids(),
            tok.encode(text.as_str(), false).unwrap().get_ids()
        );
        assert_eq!(back.to_string(false).unwrap(), json);
    }
}
