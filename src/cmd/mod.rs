//! The CLI's commands: each module holds its command's arguments (a clap `Args` struct) and
//! its body; `main.rs` only parses and dispatches. Flags several commands share are here.

pub mod analyze;
pub mod attach;
pub mod bench;
pub mod check;
pub mod demo_data;
pub mod eval;
pub mod export;
pub mod init;
pub mod merge;
pub mod report;
pub mod sample;
pub mod score;
pub mod train;
pub mod train_rm;

use std::io::Write;

use anyhow::{Context, Result};
use candle_core::{DType, Device};

use crate::ui::app::Options;
use crate::ui::theme::ColorDepth;

// The shared flag structs carry no doc comment: clap would make it the `about` of every
// command that flattens them.

// `--device` and `--dtype`, for the commands that run a model. A command whose dtype matters in
// its own way says so with `mut_arg("dtype", ...)` (a help string without the final period,
// as clap writes a one-sentence doc comment).
#[derive(clap::Args, Clone, Debug)]
pub struct DeviceArgs {
    /// auto, cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

impl DeviceArgs {
    /// The device, then the dtype (an unknown name of either is an error naming the flag).
    pub fn resolve(&self) -> Result<(Device, DType)> {
        let device = crate::model::select_device(&self.device)?;
        let dtype = crate::model::parse_dtype(&self.dtype)
            .with_context(|| format!("--dtype {}: expected f32, bf16 or f16", self.dtype))?;
        Ok((device, dtype))
    }
}

// The dashboard's flags, for `train` and `attach`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct UiArgs {
    /// Dashboard theme: a name (default, dark, light, mono, or themes/NAME.toml) or a path.
    #[arg(long)]
    pub theme: Option<String>,
    /// Colour depth: truecolor, 256, 16 or none (default: detected; NO_COLOR is honoured).
    #[arg(long)]
    pub color: Option<String>,
    /// Chart markers without Braille characters.
    #[arg(long)]
    pub ascii: bool,
    /// Do not reload gaplab.toml and the theme when they are edited.
    #[arg(long)]
    pub no_watch: bool,
    /// Watch edited files by polling (for file systems without change events, e.g. some
    /// network mounts; used automatically when native events are unavailable).
    #[arg(long, conflicts_with = "no_watch")]
    pub watch_poll: bool,
}

impl UiArgs {
    /// How edited files are watched (None: `--no-watch`).
    pub fn watch(&self) -> Option<crate::watch::Mode> {
        match (self.no_watch, self.watch_poll) {
            (true, _) => None,
            (false, true) => Some(crate::watch::Mode::Poll),
            (false, false) => Some(crate::watch::Mode::Native),
        }
    }

    /// The dashboard options the flags set; an unknown `--color` is an error.
    pub fn options(&self) -> Result<Options> {
        let color = match &self.color {
            Some(c) => Some(ColorDepth::parse(c).ok_or_else(|| {
                anyhow::anyhow!("--color: expected truecolor, 256, 16 or none, got \"{c}\"")
            })?),
            None => None,
        };
        Ok(Options {
            theme: self.theme.clone(),
            color,
            ascii: self.ascii,
            watch: self.watch(),
            ..Default::default()
        })
    }
}

/// A range checker's verdict (see [`crate::config::range`]) on the value of `--flag`.
pub fn check_flag(flag: &str, verdict: Result<(), String>) -> Result<()> {
    verdict.map_err(|m| anyhow::anyhow!("--{flag}: {m}"))
}

/// Writes a command's output to stdout.
pub fn print(text: &str) {
    // A closed pipe (`gaplab ... | head`) is not an error worth a panic.
    let _ = std::io::stdout().write_all(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_errors_name_the_flag() {
        let err = check_flag("beta", crate::config::range::beta(-0.5)).unwrap_err();
        assert_eq!(err.to_string(), "--beta: expected a number > 0, got -0.5");
        assert!(check_flag("top-p", crate::config::range::top_p(1.0)).is_ok());
    }

    #[test]
    fn watch_mode_follows_the_flags() {
        let ui = |no_watch, watch_poll| UiArgs {
            no_watch,
            watch_poll,
            ..Default::default()
        };
        assert_eq!(ui(true, false).watch(), None);
        assert_eq!(ui(false, true).watch(), Some(crate::watch::Mode::Poll));
        assert_eq!(ui(false, false).watch(), Some(crate::watch::Mode::Native));
    }

    #[test]
    fn an_unknown_color_is_an_error() {
        let ui = UiArgs {
            color: Some("bogus".into()),
            ..Default::default()
        };
        assert_eq!(
            ui.options().unwrap_err().to_string(),
            "--color: expected truecolor, 256, 16 or none, got \"bogus\""
        );
    }
}
