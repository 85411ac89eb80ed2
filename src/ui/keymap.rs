//! The keymap: one table that both the key handling and the help overlay read, with the keys of
//! the dialogs drawn over the dashboard beside the dashboard's own.

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
    /// The heatmap's cell cursor (when the heatmap pane has focus).
    CellLeft,
    CellRight,
    CellUp,
    CellDown,
    /// Opens (or closes) the token view of the pair under the heatmap cursor, or of the
    /// sample shown when the samples pane has focus.
    TokenView,
    /// The token view's cursor: previous / next token.
    TokenPrev,
    TokenNext,
    /// The token view: the other response (chosen / rejected).
    OtherResponse,
    /// The token view: next / previous eval pair.
    NextPair,
    PrevPair,
    /// The token view: later / earlier eval step.
    NextEvalStep,
    PrevEvalStep,
    Help,
    Quit,
    /// Closes the dialog on top (answering no to the quit question).
    Close,
    /// Yes to the quit question.
    ConfirmQuit,
}

/// Where a binding applies. A dialog over the dashboard takes keys first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    Dashboard,
    /// The key help: its own keys, then the dashboard's (most of which close it).
    Help,
    /// "Stop training and quit?": its own keys only; any other answers no.
    QuitQuestion,
    /// The dashboard with the heatmap pane focused: the arrows move its cell cursor.
    Heatmap,
    /// The token view is open: its own keys first, then the dashboard's.
    Tokens,
}

impl Scope {
    /// Where a key pressed in this scope is looked up, first match first.
    fn lookup(self) -> &'static [Scope] {
        match self {
            Scope::Dashboard => &[Scope::Dashboard],
            Scope::Help => &[Scope::Help, Scope::Dashboard],
            Scope::QuitQuestion => &[Scope::QuitQuestion],
            Scope::Heatmap => &[Scope::Heatmap, Scope::Dashboard],
            Scope::Tokens => &[Scope::Tokens, Scope::Dashboard],
        }
    }
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
    Left,
    Right,
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
            Key::Left => "←".into(),
            Key::Right => "→".into(),
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
            (Key::Left, KeyCode::Left) => true,
            (Key::Right, KeyCode::Right) => true,
            (Key::PageUp, KeyCode::PageUp) => true,
            (Key::PageDown, KeyCode::PageDown) => true,
            _ => false,
        }
    }
}

pub struct Binding {
    pub keys: &'static [Key],
    pub action: Action,
    pub scope: Scope,
    /// The help overlay's section.
    pub group: &'static str,
    pub help: &'static str,
}

use Key::*;

pub const KEYMAP: &[Binding] = &[
    Binding {
        keys: &[Tab],
        action: Action::FocusNext,
        scope: Scope::Dashboard,
        group: "panes",
        help: "focus next pane",
    },
    Binding {
        keys: &[BackTab],
        action: Action::FocusPrev,
        scope: Scope::Dashboard,
        group: "panes",
        help: "focus previous pane",
    },
    Binding {
        keys: &[Enter, Char('z')],
        action: Action::Expand,
        scope: Scope::Dashboard,
        group: "panes",
        help: "expand / collapse the focused pane",
    },
    Binding {
        keys: &[Char('j'), Down, PageDown],
        action: Action::ScrollDown,
        scope: Scope::Dashboard,
        group: "panes",
        help: "scroll down (samples, log, help)",
    },
    Binding {
        keys: &[Char('k'), Up, PageUp],
        action: Action::ScrollUp,
        scope: Scope::Dashboard,
        group: "panes",
        help: "scroll up (samples, log, help)",
    },
    Binding {
        keys: &[Char(' ')],
        action: Action::PauseResume,
        scope: Scope::Dashboard,
        group: "training",
        help: "pause / resume training",
    },
    Binding {
        keys: &[Char('.')],
        action: Action::Step,
        scope: Scope::Dashboard,
        group: "training",
        help: "one step while paused",
    },
    Binding {
        keys: &[Char('g')],
        action: Action::SampleNow,
        scope: Scope::Dashboard,
        group: "training",
        help: "generate samples now",
    },
    Binding {
        keys: &[Char('c')],
        action: Action::Checkpoint,
        scope: Scope::Dashboard,
        group: "training",
        help: "checkpoint now",
    },
    Binding {
        keys: &[Char('+'), Char('=')],
        action: Action::SmoothMore,
        scope: Scope::Dashboard,
        group: "charts",
        help: "more smoothing",
    },
    Binding {
        keys: &[Char('-')],
        action: Action::SmoothLess,
        scope: Scope::Dashboard,
        group: "charts",
        help: "less smoothing",
    },
    Binding {
        keys: &[Char('l')],
        action: Action::LogScale,
        scope: Scope::Dashboard,
        group: "charts",
        help: "log scale (loss)",
    },
    Binding {
        keys: &[Char('o')],
        action: Action::Outliers,
        scope: Scope::Dashboard,
        group: "charts",
        help: "ignore outliers (5th-95th percentile range)",
    },
    Binding {
        keys: &[Char('y')],
        action: Action::LockY,
        scope: Scope::Dashboard,
        group: "charts",
        help: "lock / unlock the y-range",
    },
    Binding {
        keys: &[Char('a')],
        action: Action::Overlay,
        scope: Scope::Dashboard,
        group: "charts",
        help: "overlay all runs / only the selected run",
    },
    Binding {
        keys: &[Char('r')],
        action: Action::NextRun,
        scope: Scope::Dashboard,
        group: "charts",
        help: "select the next run (heatmap, samples, status)",
    },
    Binding {
        keys: &[Char('m')],
        action: Action::HeatmapMode,
        scope: Scope::Dashboard,
        group: "heatmap",
        help: "heatmap: over training / per pair",
    },
    Binding {
        keys: &[Char('v')],
        action: Action::HeatmapMetric,
        scope: Scope::Dashboard,
        group: "heatmap",
        help: "heatmap: prefix margin / accuracy / KL",
    },
    Binding {
        keys: &[Char('T')],
        action: Action::TokenView,
        scope: Scope::Dashboard,
        group: "heatmap",
        help: "token view: the pair under the cursor (the sample, from samples)",
    },
    Binding {
        keys: &[Left],
        action: Action::CellLeft,
        scope: Scope::Heatmap,
        group: "heatmap cursor (heatmap pane focused)",
        help: "cell cursor left",
    },
    Binding {
        keys: &[Right],
        action: Action::CellRight,
        scope: Scope::Heatmap,
        group: "heatmap cursor (heatmap pane focused)",
        help: "cell cursor right (scrolls the per-pair view)",
    },
    Binding {
        keys: &[Up],
        action: Action::CellUp,
        scope: Scope::Heatmap,
        group: "heatmap cursor (heatmap pane focused)",
        help: "cell cursor up",
    },
    Binding {
        keys: &[Down],
        action: Action::CellDown,
        scope: Scope::Heatmap,
        group: "heatmap cursor (heatmap pane focused)",
        help: "cell cursor down",
    },
    Binding {
        keys: &[Char('n')],
        action: Action::NextPrompt,
        scope: Scope::Dashboard,
        group: "samples",
        help: "next prompt",
    },
    Binding {
        keys: &[Char('p')],
        action: Action::PrevPrompt,
        scope: Scope::Dashboard,
        group: "samples",
        help: "previous prompt",
    },
    Binding {
        keys: &[Char(']')],
        action: Action::NextSampleStep,
        scope: Scope::Dashboard,
        group: "samples",
        help: "later sampling step",
    },
    Binding {
        keys: &[Char('[')],
        action: Action::PrevSampleStep,
        scope: Scope::Dashboard,
        group: "samples",
        help: "earlier sampling step",
    },
    Binding {
        keys: &[Char('s')],
        action: Action::SwapCompare,
        scope: Scope::Dashboard,
        group: "samples",
        help: "compare with the reference / another variant",
    },
    Binding {
        keys: &[Char('t')],
        action: Action::ThemeCycle,
        scope: Scope::Dashboard,
        group: "general",
        help: "next theme",
    },
    Binding {
        keys: &[Char('?'), Char('h')],
        action: Action::Help,
        scope: Scope::Dashboard,
        group: "general",
        help: "help",
    },
    Binding {
        keys: &[Char('q'), Ctrl('c')],
        action: Action::Quit,
        scope: Scope::Dashboard,
        group: "general",
        help: "quit (asks first while training runs)",
    },
    Binding {
        keys: &[Char('y'), Char('Y')],
        action: Action::ConfirmQuit,
        scope: Scope::QuitQuestion,
        group: "quit question",
        help: "answer yes: stop training and quit",
    },
    Binding {
        keys: &[Char('n'), Esc],
        action: Action::Close,
        scope: Scope::QuitQuestion,
        group: "quit question",
        help: "answer no: keep training (any other key too)",
    },
    Binding {
        keys: &[Left, Char('h')],
        action: Action::TokenPrev,
        scope: Scope::Tokens,
        group: "token view",
        help: "previous token",
    },
    Binding {
        keys: &[Right, Char('l')],
        action: Action::TokenNext,
        scope: Scope::Tokens,
        group: "token view",
        help: "next token",
    },
    Binding {
        keys: &[Up, Down],
        action: Action::OtherResponse,
        scope: Scope::Tokens,
        group: "token view",
        help: "other response (chosen / rejected)",
    },
    Binding {
        keys: &[Char('n')],
        action: Action::NextPair,
        scope: Scope::Tokens,
        group: "token view",
        help: "next pair (next prompt for a sample)",
    },
    Binding {
        keys: &[Char('p')],
        action: Action::PrevPair,
        scope: Scope::Tokens,
        group: "token view",
        help: "previous pair (previous prompt for a sample)",
    },
    Binding {
        keys: &[Char(']')],
        action: Action::NextEvalStep,
        scope: Scope::Tokens,
        group: "token view",
        help: "later eval (sampling) step",
    },
    Binding {
        keys: &[Char('[')],
        action: Action::PrevEvalStep,
        scope: Scope::Tokens,
        group: "token view",
        help: "earlier eval (sampling) step",
    },
    Binding {
        keys: &[Esc, Char('T')],
        action: Action::Close,
        scope: Scope::Tokens,
        group: "token view",
        help: "close the token view",
    },
    Binding {
        keys: &[Esc],
        action: Action::Close,
        scope: Scope::Help,
        group: "help",
        help: "close the help (most other keys too)",
    },
];

/// The action bound to a key pressed in `scope`, if any.
pub fn action_for(scope: Scope, ev: &KeyEvent) -> Option<Action> {
    scope.lookup().iter().find_map(|&s| {
        KEYMAP
            .iter()
            .find(|b| b.scope == s && b.keys.iter().any(|k| k.matches(ev)))
            .map(|b| b.action)
    })
}

/// Help overlay lines: (group, keys, description), in table order (a group's bindings are
/// next to each other).
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

    const SCOPES: [Scope; 5] = [
        Scope::Dashboard,
        Scope::Help,
        Scope::QuitQuestion,
        Scope::Heatmap,
        Scope::Tokens,
    ];

    /// A dialog may rebind a dashboard key (y answers the quit question), but no key means two
    /// things where it is pressed.
    #[test]
    fn no_key_is_bound_twice_in_one_scope() {
        for scope in SCOPES {
            let all: Vec<Key> = KEYMAP
                .iter()
                .filter(|b| b.scope == scope)
                .flat_map(|b| b.keys.iter().copied())
                .collect();
            for (i, k) in all.iter().enumerate() {
                assert!(!all[i + 1..].contains(k), "{k:?} bound twice in {scope:?}");
            }
        }
    }

    /// The help shows one section per group: a group's bindings sit together and share a scope.
    #[test]
    fn groups_are_contiguous_and_of_one_scope() {
        let mut seen: Vec<&str> = Vec::new();
        for (i, b) in KEYMAP.iter().enumerate() {
            if i > 0 && KEYMAP[i - 1].group == b.group {
                assert_eq!(KEYMAP[i - 1].scope, b.scope, "{}", b.group);
            } else {
                assert!(!seen.contains(&b.group), "{} split", b.group);
                seen.push(b.group);
            }
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
            CellLeft,
            CellRight,
            CellUp,
            CellDown,
            TokenView,
            TokenPrev,
            TokenNext,
            OtherResponse,
            NextPair,
            PrevPair,
            NextEvalStep,
            PrevEvalStep,
            NextRun,
            Overlay,
            ThemeCycle,
            Help,
            Quit,
            Close,
            ConfirmQuit,
        ] {
            let b = KEYMAP.iter().find(|b| b.action == a).expect("bound");
            assert!(!b.keys.is_empty() && !b.help.is_empty());
        }
        assert_eq!(help_entries().len(), KEYMAP.len());
    }

    #[test]
    fn lookup_respects_modifiers() {
        let action_for = |ev: &KeyEvent| action_for(Scope::Dashboard, ev);
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

    #[test]
    fn dialogs_take_keys_first() {
        let y = key(KeyCode::Char('y'), KeyModifiers::NONE);
        let esc = key(KeyCode::Esc, KeyModifiers::NONE);
        let j = key(KeyCode::Char('j'), KeyModifiers::NONE);
        assert_eq!(action_for(Scope::Dashboard, &y), Some(Action::LockY));
        assert_eq!(
            action_for(Scope::QuitQuestion, &y),
            Some(Action::ConfirmQuit)
        );
        assert_eq!(
            action_for(
                Scope::QuitQuestion,
                &key(KeyCode::Char('Y'), KeyModifiers::SHIFT)
            ),
            Some(Action::ConfirmQuit)
        );
        assert_eq!(action_for(Scope::QuitQuestion, &j), None, "no fall-through");
        assert_eq!(action_for(Scope::Help, &j), Some(Action::ScrollDown));
        assert_eq!(action_for(Scope::Help, &esc), Some(Action::Close));
        assert_eq!(action_for(Scope::Dashboard, &esc), None);
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
