//! What the keys talk to (the dashboard or a dialog over it), and how far the dashboard is from
//! closing.

use crate::ui::keymap::Scope;

/// The dashboard, or the dialog drawn over it; a dialog takes keys first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Dashboard,
    /// The key help; `scroll` is its first line shown (when it is taller than the terminal).
    Help {
        scroll: u16,
    },
    /// "Stop training and quit?"
    QuitQuestion,
}

impl Mode {
    /// The keymap bindings that apply.
    pub fn scope(self) -> Scope {
        match self {
            Mode::Dashboard => Scope::Dashboard,
            Mode::Help { .. } => Scope::Help,
            Mode::QuitQuestion => Scope::QuitQuestion,
        }
    }
}

/// How far the dashboard is from closing. Independent of [`Mode`]: the help can be opened
/// while a stopping run finishes its step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Stay,
    /// The run this dashboard owns was asked to stop; it closes once the engine has ended.
    Stopping,
    /// Close now.
    Now,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_has_its_keys() {
        assert_eq!(Mode::Dashboard.scope(), Scope::Dashboard);
        assert_eq!(Mode::Help { scroll: 3 }.scope(), Scope::Help);
        assert_eq!(Mode::QuitQuestion.scope(), Scope::QuitQuestion);
    }
}
