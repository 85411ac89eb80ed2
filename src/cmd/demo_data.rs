//! `gaplab demo-data`: the demo task's data (see `crate::demo`).

use std::path::PathBuf;

use anyhow::Result;

use crate::demo::{write_data, TaskConfig, TaskKind};

/// Write the demo task's data into DIR: train and held-out eval pairs, a word-level
/// tokenizer built from the task's text, and task.json (deterministic for a seed).
#[derive(clap::Args, Clone, Debug)]
pub struct DemoDataArgs {
    pub dir: PathBuf,
    /// sort: the shipped demo (a short courtesy tail, mostly on the chosen response);
    /// long-tail: every rejected response, and no chosen one, ends in a long filler tail.
    #[arg(long, value_enum, default_value_t = TaskKind::Sort)]
    pub task: TaskKind,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long)]
    pub train_pairs: Option<usize>,
    #[arg(long)]
    pub eval_pairs: Option<usize>,
    /// Rejected responses never drop a number: their lists are as long as the chosen ones.
    #[arg(long)]
    pub same_length: bool,
}

impl DemoDataArgs {
    /// The task the flags describe; unset counts are the task's defaults.
    pub fn task(&self) -> TaskConfig {
        let defaults = TaskConfig::for_kind(self.task);
        TaskConfig {
            seed: self.seed,
            drop_first: !self.same_length,
            train_pairs: self.train_pairs.unwrap_or(defaults.train_pairs),
            eval_pairs: self.eval_pairs.unwrap_or(defaults.eval_pairs),
            ..defaults
        }
    }
}

pub fn run(args: &DemoDataArgs) -> Result<()> {
    let task = args.task();
    write_data(&args.dir, &task)?;
    super::print(&format!(
        "wrote the {} task's {} train and {} eval pairs, tokenizer/ and task.json to {}\n",
        match task.kind {
            TaskKind::Sort => "sort",
            TaskKind::LongTail => "long-tail",
        },
        task.train_pairs,
        task.eval_pairs,
        args.dir.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unset_counts_are_the_tasks_defaults() {
        let args = DemoDataArgs {
            dir: PathBuf::from("d"),
            task: TaskKind::Sort,
            seed: 3,
            train_pairs: Some(5),
            eval_pairs: None,
            same_length: true,
        };
        let task = args.task();
        let defaults = TaskConfig::default();
        assert_eq!(
            (
                task.seed,
                task.train_pairs,
                task.eval_pairs,
                task.drop_first
            ),
            (3, 5, defaults.eval_pairs, false)
        );
        let long = DemoDataArgs {
            task: TaskKind::LongTail,
            ..args
        }
        .task();
        assert_eq!(
            (long.kind, long.tail_chosen, long.tail_rejected, long.seed),
            (TaskKind::LongTail, 0.0, 1.0, 3)
        );
    }
}
