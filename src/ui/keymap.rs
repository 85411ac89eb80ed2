//! The keymap: one table that both the key handling and the help overlay read.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    FocusNext,
    FocusPrev,
    Expand,
    PauseResume,
    Step,
    SampleNow,
    Checkpoint,
    SmoothMore,
    SmoothLess,
    LogScale,
    Outliers,
    LockY,
    HeatmapMode,
    HeatmapMetric,
    NextPrompt,
    PrevPrompt,
    NextSampleStep,
    PrevSampleStep,
    SwapCompare,
    ScrollDown,
    ScrollUp,
    NextRun,
    Overlay,
    ThemeCycle,
    Help,
    Quit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Ctrl(char),
    Tab,
    BackTab,
    Enter,
    Esc,
    Up,
    Down,
    PageUp,
    PageDown,
}

impl Key {
    pub fn label(self) -> String {
        match self {
            Key::Char(' ') => "space".into(),
            Key::Char(c) => c.to_string(),
            Key::Ctrl(c) => format!("ctrl-{c}"),
            Key::Tab => "tab".into(),
            Key::BackTab => "shift-tab".into(),
            Key::Enter => "enter".into(),
            Key::Esc => "esc".into(),
            Key::Up => "↑".into(),
            Key::Down => "↓".into(),
            Key::PageUp => "pgup".into(),
            Key::PageDown => "pgdn".into(),
        }
    }

    fn matches(self, ev: &KeyEvent) -> bool {
        let ctrl = ev.modifiers.contains(KeyModifiers::CONTROL);
        match (self, ev.code) {
            (Key::Ctrl(c), KeyCode::Char(k)) => ctrl && k.eq_ignore_ascii_case(&c),
            (Key::Char(c), KeyCode::Char(k)) => !ctrl && k == c,
            (Key::Tab, KeyCode::Tab) => !ev.modifiers.contains(KeyModifiers::SHIFT),
            (Key::BackTab, KeyCode::BackTab) => true,
            (Key::BackTab, KeyCode::Tab) => ev.modifiers.contains(KeyModifiers::SHIFT),
            (Key::Enter, KeyCode::Enter) => true,
            (Key::Esc, KeyCode::Esc) => true,
            (Key::Up, KeyCode::Up) => true,
            (Key::Down, KeyCode::Down) => true,
            (Key::PageUp, KeyCode::PageUp) => true,
            (Key::PageDown, KeyCode::PageDown) => true,
            _ => false,
        }
    }
}

pub struct Binding {
    pub keys: &'static [Key],
    pub action: Action,
    pub group: &'static str,
    pub help: &'static str,
}

use Key::*;

pub const KEYMAP: &[Binding] = &[
    Binding {
        keys: &[Tab],
        action: Action::FocusNext,
        group: "panes",
        help: "focus next pane",
    },
    Binding {
        keys: &[BackTab],
        action: Action::FocusPrev,
        group: "panes",
        help: "focus previous pane",
    },
    Binding {
        keys: &[Enter, Char('z')],
        action: Action::Expand,
        group: "panes",
        help: "expand / collapse the focused pane",
    },
    Binding {
        keys: &[Char('j'), Down, PageDown],
        action: Action::ScrollDown,
        group: "panes",
        help: "scroll down (samples, log)",
    },
    Binding {
        keys: &[Char('k'), Up, PageUp],
        action: Action::ScrollUp,
        group: "panes",
        help: "scroll up (samples, log)",
    },
    Binding {
        keys: &[Char(' ')],
        action: Action::PauseResume,
        group: "training",
        help: "pause / resume training",
    },
    Binding {
        keys: &[Char('.')],
        action: Action::Step,
        group: "training",
        help: "one step while paused",
    },
    Binding {
        keys: &[Char('g')],
        action: Action::SampleNow,
        group: "training",
        help: "generate samples now",
    },
    Binding {
        keys: &[Char('c')],
        action: Action::Checkpoint,
        group: "training",
        help: "checkpoint now",
    },
    Binding {
        keys: &[Char('+'), Char('=')],
        action: Action::SmoothMore,
        group: "charts",
        help: "more smoothing",
    },
    Binding {
        keys: &[Char('-')],
        action: Action::SmoothLess,
        group: "charts",
        help: "less smoothing",
    },
    Binding {
        keys: &[Char('l')],
        action: Action::LogScale,
        group: "charts",
        help: "log scale (loss)",
    },
    Binding {
        keys: &[Char('o')],
        action: Action::Outliers,
        group: "charts",
        help: "ignore outliers (5th-95th percentile range)",
    },
    Binding {
        keys: &[Char('y')],
        action: Action::LockY,
        group: "charts",
        help: "lock / unlock the y-range",
    },
    Binding {
        keys: &[Char('a')],
        action: Action::Overlay,
        group: "charts",
        help: "overlay all runs / only the selected run",
    },
    Binding {
        keys: &[Char('r')],
        action: Action::NextRun,
        group: "charts",
        help: "select the next run (heatmap, samples, status)",
    },
    Binding {
        keys: &[Char('m')],
        action: Action::HeatmapMode,
        group: "heatmap",
        help: "heatmap: over training / per pair",
    },
    Binding {
        keys: &[Char('v')],
        action: Action::HeatmapMetric,
        group: "heatmap",
        help: "heatmap: prefix margin / prefix accuracy",
    },
    Binding {
        keys: &[Char('n')],
        action: Action::NextPrompt,
        group: "samples",
        help: "next prompt",
    },
    Binding {
        keys: &[Char('p')],
        action: Action::PrevPrompt,
        group: "samples",
        help: "previous prompt",
    },
    Binding {
        keys: &[Char(']')],
        action: Action::NextSampleStep,
        group: "samples",
        help: "later sampling step",
    },
    Binding {
        keys: &[Char('[')],
        action: Action::PrevSampleStep,
        group: "samples",
        help: "earlier sampling step",
    },
    Binding {
        keys: &[Char('s')],
        action: Action::SwapCompare,
        group: "samples",
        help: "compare with the reference / another variant",
    },
    Binding {
        keys: &[Char('t')],
        action: Action::ThemeCycle,
        group: "general",
        help: "next theme",
    },
    Binding {
        keys: &[Char('?'), Char('h')],
        action: Action::Help,
        group: "general",
        help: "help",
    },
    Binding {
        keys: &[Char('q'), Ctrl('c')],
        action: Action::Quit,
        group: "general",
        help: "quit (asks first while training runs)",
    },
];

/// The action bound to a key press, if any.
pub fn action_for(ev: &KeyEvent) -> Option<Action> {
    KEYMAP
        .iter()
        .find(|b| b.keys.iter().any(|k| k.matches(ev)))
        .map(|b| b.action)
}

/// Help overlay lines: (group, keys, description), in table order.
pub fn help_entries() -> Vec<(&'static str, String, &'static str)> {
    KEYMAP
        .iter()
        .map(|b| {
            let keys: Vec<String> = b.keys.iter().map(|k| k.label()).collect();
            (b.group, keys.join(" / "), b.help)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::crossterm::event::KeyEventKind;

    fn key(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent {
            code,
            modifiers,
            kind: KeyEventKind::Press,
            state: ratatui::crossterm::event::KeyEventState::NONE,
        }
    }

    #[test]
    fn no_key_is_bound_twice() {
        let all: Vec<Key> = KEYMAP.iter().flat_map(|b| b.keys.iter().copied()).collect();
        for (i, k) in all.iter().enumerate() {
            assert!(!all[i + 1..].contains(k), "{k:?} bound twice");
        }
    }

    #[test]
    fn every_action_has_a_key_and_help() {
        use Action::*;
        for a in [
            FocusNext,
            FocusPrev,
            Expand,
            PauseResume,
            Step,
            SampleNow,
            Checkpoint,
            SmoothMore,
            SmoothLess,
            LogScale,
            Outliers,
            LockY,
            HeatmapMode,
            HeatmapMetric,
            NextPrompt,
            PrevPrompt,
            NextSampleStep,
            PrevSampleStep,
            SwapCompare,
            ScrollDown,
            ScrollUp,
            NextRun,
            Overlay,
            ThemeCycle,
            Help,
            Quit,
        ] {
            let b = KEYMAP.iter().find(|b| b.action == a).expect("bound");
            assert!(!b.keys.is_empty() && !b.help.is_empty());
        }
        assert_eq!(help_entries().len(), KEYMAP.len());
    }

    #[test]
    fn lookup_respects_modifiers() {
        assert_eq!(
            action_for(&key(KeyCode::Char('q'), KeyModifiers::NONE)),
            Some(Action::Quit)
        );
        assert_eq!(
            action_for(&key(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Some(Action::Quit)
        );
        assert_eq!(
            action_for(&key(KeyCode::Char('c'), KeyModifiers::NONE)),
            Some(Action::Checkpoint)
        );
        assert_eq!(
            action_for(&key(KeyCode::Tab, KeyModifiers::SHIFT)),
            Some(Action::FocusPrev)
        );
        assert_eq!(
            action_for(&key(KeyCode::Char('?'), KeyModifiers::SHIFT)),
            Some(Action::Help)
        );
        assert_eq!(
            action_for(&key(KeyCode::Char('Z'), KeyModifiers::SHIFT)),
            None
        );
    }

    /// The README's key table is the keymap's, row for row, so the docs cannot drift.
    #[test]
    fn readme_lists_every_binding() {
        let readme = include_str!("../../README.md");
        let rows: Vec<&str> = readme
            .lines()
            .skip_while(|l| *l != "| keys | action |")
            .skip(2)
            .take_while(|l| l.starts_with('|'))
            .collect();
        let expected: Vec<String> = help_entries()
            .into_iter()
            .map(|(_, keys, help)| format!("| `{keys}` | {help} |"))
            .collect();
        assert_eq!(rows, expected, "README.md's key table differs from KEYMAP");
    }
}
