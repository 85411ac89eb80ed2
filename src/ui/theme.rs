//! Colour themes: TOML theme files resolved for the terminal's colour depth.
//!
//! A theme file ([`ThemeFile`]) describes colours once, in whatever notation suits its author
//! (ANSI names that follow the user's terminal palette, `#rrggbb`, or xterm indices). The
//! dashboard draws with a [`Theme`], which is that file resolved for one [`ColorDepth`]: hex
//! colours become the nearest colour the terminal can show, and in monochrome every colour is
//! dropped while modifiers (bold, reversed, ...) keep the important elements visible.
//!
//! Four themes are built into the binary ([`BUILTIN`]); users can add or override themes by
//! dropping `<name>.toml` files into a theme directory ([`find`], [`available`]).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use ratatui::style::{Color, Modifier, Style};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

// ---------------------------------------------------------------------------------------------
// Colour depth
// ---------------------------------------------------------------------------------------------

/// How many colours the terminal can show; decides how theme colours are converted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ColorDepth {
    /// 24-bit colour: `#rrggbb` is shown as is.
    TrueColor,
    /// The xterm 256-colour palette.
    C256,
    /// The 16 ANSI colours only.
    C16,
    /// No colour at all (`NO_COLOR`, dumb terminals): modifiers only.
    Mono,
}

impl ColorDepth {
    /// From the environment: NO_COLOR set and non-empty -> Mono; COLORTERM "truecolor"/"24bit"
    /// or TERM ending in "-direct" -> TrueColor; TERM containing "256color" -> C256; TERM
    /// "dumb" -> Mono; else C16.
    pub fn detect() -> Self {
        let var = |name: &str| std::env::var(name).ok();
        Self::detect_from(
            var("NO_COLOR").as_deref(),
            var("COLORTERM").as_deref(),
            var("TERM").as_deref(),
        )
    }

    /// [`ColorDepth::detect`] on explicit values, so the rules can be tested without touching
    /// the process environment. `NO_COLOR` wins over everything (it is the user's explicit wish).
    pub fn detect_from(
        no_color: Option<&str>,
        colorterm: Option<&str>,
        term: Option<&str>,
    ) -> Self {
        if no_color.is_some_and(|v| !v.is_empty()) {
            return ColorDepth::Mono;
        }
        let colorterm = colorterm.unwrap_or("").trim().to_ascii_lowercase();
        if colorterm == "truecolor" || colorterm == "24bit" {
            return ColorDepth::TrueColor;
        }
        let term = term.unwrap_or("").trim().to_ascii_lowercase();
        // terminfo's 24-bit entries are named `*-direct` (xterm-direct, tmux-direct).
        if term.ends_with("-direct") {
            ColorDepth::TrueColor
        } else if term.contains("256color") {
            ColorDepth::C256
        } else if term == "dumb" {
            ColorDepth::Mono
        } else {
            ColorDepth::C16
        }
    }

    /// `ui.color` of a workspace; None for auto (detect).
    pub fn from_setting(c: crate::config::ColorSetting) -> Option<Self> {
        use crate::config::ColorSetting;
        match c {
            ColorSetting::Auto => None,
            ColorSetting::TrueColor => Some(ColorDepth::TrueColor),
            ColorSetting::C256 => Some(ColorDepth::C256),
            ColorSetting::C16 => Some(ColorDepth::C16),
            ColorSetting::None => Some(ColorDepth::Mono),
        }
    }

    /// Parses a user's choice (command line, config): "truecolor" | "24bit" | "256" | "16" |
    /// "none" | "mono" (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "truecolor" | "24bit" => Some(ColorDepth::TrueColor),
            "256" => Some(ColorDepth::C256),
            "16" => Some(ColorDepth::C16),
            "none" | "mono" => Some(ColorDepth::Mono),
            _ => None,
        }
    }

    /// The canonical name, accepted back by [`ColorDepth::parse`].
    pub fn name(self) -> &'static str {
        match self {
            ColorDepth::TrueColor => "truecolor",
            ColorDepth::C256 => "256",
            ColorDepth::C16 => "16",
            ColorDepth::Mono => "mono",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Colours as written in a theme file, and their conversion to a depth
// ---------------------------------------------------------------------------------------------

/// The 16 ANSI colours with the standard xterm RGB values, in palette order (index 0-15).
/// The RGB values are only used to find the nearest ANSI colour to a hex colour; the names
/// themselves are drawn in the user's own palette.
const ANSI: [(Color, [u8; 3]); 16] = [
    (Color::Black, [0, 0, 0]),
    (Color::Red, [205, 0, 0]),
    (Color::Green, [0, 205, 0]),
    (Color::Yellow, [205, 205, 0]),
    (Color::Blue, [0, 0, 238]),
    (Color::Magenta, [205, 0, 205]),
    (Color::Cyan, [0, 205, 205]),
    (Color::Gray, [229, 229, 229]),
    (Color::DarkGray, [127, 127, 127]),
    (Color::LightRed, [255, 0, 0]),
    (Color::LightGreen, [0, 255, 0]),
    (Color::LightYellow, [255, 255, 0]),
    (Color::LightBlue, [92, 92, 255]),
    (Color::LightMagenta, [255, 0, 255]),
    (Color::LightCyan, [0, 255, 255]),
    (Color::White, [255, 255, 255]),
];

/// Colour names as written in theme files, normalised (lower case, no '-', '_' or spaces).
const NAMES: [(&str, Color); 19] = [
    ("black", Color::Black),
    ("red", Color::Red),
    ("green", Color::Green),
    ("yellow", Color::Yellow),
    ("blue", Color::Blue),
    ("magenta", Color::Magenta),
    ("cyan", Color::Cyan),
    ("gray", Color::Gray),
    ("grey", Color::Gray),
    ("darkgray", Color::DarkGray),
    ("darkgrey", Color::DarkGray),
    ("lightred", Color::LightRed),
    ("lightgreen", Color::LightGreen),
    ("lightyellow", Color::LightYellow),
    ("lightblue", Color::LightBlue),
    ("lightmagenta", Color::LightMagenta),
    ("lightcyan", Color::LightCyan),
    ("white", Color::White),
    ("reset", Color::Reset),
];

/// What a theme file's colour value means: `Named` are the 16 ANSI colours or `Reset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ColorSpec {
    /// An ANSI colour or `Color::Reset`; follows the terminal's palette at every depth.
    Named(Color),
    /// `#rrggbb`.
    Rgb(u8, u8, u8),
    /// An xterm-256 palette index.
    Index(u8),
}

impl ColorSpec {
    /// Parses the string notation: an ANSI name, "reset" or "#rrggbb".
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if let Some(hex) = s.strip_prefix('#') {
            return parse_hex(hex).map(|[r, g, b]| ColorSpec::Rgb(r, g, b));
        }
        let key: String = s
            .chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .map(|c| c.to_ascii_lowercase())
            .collect();
        NAMES
            .iter()
            .find(|(name, _)| *name == key)
            .map(|&(_, color)| ColorSpec::Named(color))
    }

    /// The colour to draw at `depth`.
    pub fn resolve(self, depth: ColorDepth) -> Color {
        match (depth, self) {
            (ColorDepth::Mono, _) => Color::Reset,
            (_, ColorSpec::Named(color)) => color,
            (ColorDepth::TrueColor, ColorSpec::Rgb(r, g, b)) => Color::Rgb(r, g, b),
            (ColorDepth::C256, ColorSpec::Rgb(r, g, b)) => Color::Indexed(nearest_256([r, g, b])),
            (ColorDepth::C16, ColorSpec::Rgb(r, g, b)) => nearest_ansi([r, g, b]),
            (ColorDepth::TrueColor | ColorDepth::C256, ColorSpec::Index(i)) => Color::Indexed(i),
            (ColorDepth::C16, ColorSpec::Index(i)) => match ANSI.get(usize::from(i)) {
                Some(&(color, _)) => color,
                None => nearest_ansi(xterm_rgb(i)),
            },
        }
    }
}

/// `rrggbb` (without the '#') to its three bytes.
fn parse_hex(hex: &str) -> Option<[u8; 3]> {
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let byte = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).ok();
    Some([byte(0)?, byte(2)?, byte(4)?])
}

/// The RGB value xterm gives a palette index: the ANSI table for 0-15, the 6x6x6 cube for
/// 16-231 and the gray ramp for 232-255.
pub(crate) fn xterm_rgb(i: u8) -> [u8; 3] {
    match i {
        0..=15 => ANSI[usize::from(i)].1,
        16..=231 => {
            let c = i - 16;
            [
                cube_level(c / 36),
                cube_level((c / 6) % 6),
                cube_level(c % 6),
            ]
        }
        _ => {
            let v = 8 + 10 * (i - 232);
            [v, v, v]
        }
    }
}

/// Channel value of one of the six xterm cube steps (0, 95, 135, 175, 215, 255).
fn cube_level(step: u8) -> u8 {
    if step == 0 {
        0
    } else {
        55 + 40 * step
    }
}

fn distance(a: [u8; 3], b: [u8; 3]) -> u32 {
    a.iter()
        .zip(b)
        .map(|(&x, y)| {
            let d = i32::from(x) - i32::from(y);
            d.unsigned_abs().pow(2)
        })
        .sum()
}

/// Nearest xterm-256 index among the cube and the grays (0-15 are skipped: terminals redefine
/// them, so they would not show the intended colour). Ties keep the lower index.
fn nearest_256(rgb: [u8; 3]) -> u8 {
    (16..=255u8)
        .min_by_key(|&i| distance(rgb, xterm_rgb(i)))
        .unwrap_or(16)
}

/// Nearest of the 16 ANSI colours by their standard xterm values.
fn nearest_ansi(rgb: [u8; 3]) -> Color {
    ANSI.iter()
        .min_by_key(|(_, value)| distance(rgb, *value))
        .map_or(Color::Reset, |&(color, _)| color)
}

impl<'de> Deserialize<'de> for ColorSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ColorSpecVisitor)
    }
}

struct ColorSpecVisitor;

impl Visitor<'_> for ColorSpecVisitor {
    type Value = ColorSpec;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a colour: an ANSI name, \"reset\", \"#rrggbb\" or an xterm index 0-255")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<ColorSpec, E> {
        ColorSpec::parse(s).ok_or_else(|| {
            E::custom(format!(
                "unknown colour {s:?}: expected an ANSI name (black, red, green, yellow, blue, \
                 magenta, cyan, gray, dark-gray, light-red, ..., white), \"reset\" or \"#rrggbb\""
            ))
        })
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ColorSpec, E> {
        u8::try_from(v)
            .map(ColorSpec::Index)
            .map_err(|_| E::custom(format!("colour index {v} is out of range 0-255")))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ColorSpec, E> {
        u8::try_from(v)
            .map(ColorSpec::Index)
            .map_err(|_| E::custom(format!("colour index {v} is out of range 0-255")))
    }
}

// ---------------------------------------------------------------------------------------------
// The theme file
// ---------------------------------------------------------------------------------------------

/// A text style as written in a theme file; everything optional.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StyleSpec {
    pub fg: Option<ColorSpec>,
    pub bg: Option<ColorSpec>,
    #[serde(default)]
    pub bold: bool,
    #[serde(default)]
    pub italic: bool,
    #[serde(default)]
    pub dim: bool,
    #[serde(default)]
    pub reversed: bool,
    #[serde(default)]
    pub underlined: bool,
}

impl StyleSpec {
    fn modifiers(&self) -> Modifier {
        let flags = [
            (self.bold, Modifier::BOLD),
            (self.italic, Modifier::ITALIC),
            (self.dim, Modifier::DIM),
            (self.reversed, Modifier::REVERSED),
            (self.underlined, Modifier::UNDERLINED),
        ];
        flags
            .into_iter()
            .filter(|&(on, _)| on)
            .fold(Modifier::empty(), |acc, (_, m)| acc | m)
    }

    /// The style at `depth`. In Mono a style left with neither colour nor modifier would be
    /// indistinguishable from plain text, so it gets `mono_fallback` instead.
    fn resolve(&self, depth: ColorDepth, mono_fallback: Modifier) -> Style {
        let mut style = Style::default().add_modifier(self.modifiers());
        style.fg = self.fg.map(|c| c.resolve(depth));
        style.bg = self.bg.map(|c| c.resolve(depth));
        let colourless = |c: Option<Color>| matches!(c, None | Some(Color::Reset));
        if depth == ColorDepth::Mono
            && style.add_modifier.is_empty()
            && colourless(style.fg)
            && colourless(style.bg)
        {
            style = style.add_modifier(mono_fallback);
        }
        style
    }
}

/// `[styles]`: the text styles of the dashboard.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StylesSpec {
    pub text: StyleSpec,
    pub dim: StyleSpec,
    pub border: StyleSpec,
    pub border_focused: StyleSpec,
    pub title: StyleSpec,
    pub title_focused: StyleSpec,
    pub status: StyleSpec,
    pub status_accent: StyleSpec,
    pub ok: StyleSpec,
    pub warn: StyleSpec,
    pub error: StyleSpec,
    /// The first differing token in chosen/rejected samples.
    pub highlight: StyleSpec,
    pub selection: StyleSpec,
    /// Key names in the help overlay.
    pub key: StyleSpec,
}

/// `[chart]`: colours of the metric charts.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartSpec {
    pub chosen: ColorSpec,
    pub rejected: ColorSpec,
    pub margin: ColorSpec,
    pub accuracy: ColorSpec,
    /// Eval series and markers.
    pub eval: ColorSpec,
    pub axis: ColorSpec,
}

/// `[series]`: colours of overlaid runs, in order; `faded` are the raw (unsmoothed) curves
/// drawn behind the smoothed ones.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeriesSpec {
    #[serde(deserialize_with = "non_empty")]
    pub colors: Vec<ColorSpec>,
    #[serde(deserialize_with = "non_empty")]
    pub faded: Vec<ColorSpec>,
}

/// `[heatmap]`: colour ramps as stops. `diverging` runs negative .. zero .. positive,
/// `sequential` low .. high. The optional `_256` / `_16` ramps replace the converted stops at
/// those depths, because a few hand-picked palette colours read better than converted ones.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeatmapSpec {
    #[serde(deserialize_with = "ramp")]
    pub diverging: Vec<ColorSpec>,
    #[serde(deserialize_with = "ramp")]
    pub sequential: Vec<ColorSpec>,
    #[serde(default, deserialize_with = "optional_ramp")]
    pub diverging_256: Option<Vec<ColorSpec>>,
    #[serde(default, deserialize_with = "optional_ramp")]
    pub sequential_256: Option<Vec<ColorSpec>>,
    #[serde(default, deserialize_with = "optional_ramp")]
    pub diverging_16: Option<Vec<ColorSpec>>,
    #[serde(default, deserialize_with = "optional_ramp")]
    pub sequential_16: Option<Vec<ColorSpec>>,
}

impl HeatmapSpec {
    /// The (diverging, sequential) stops to use at `depth`.
    fn stops(&self, depth: ColorDepth) -> (&[ColorSpec], &[ColorSpec]) {
        let (div, seq) = match depth {
            ColorDepth::C256 => (&self.diverging_256, &self.sequential_256),
            ColorDepth::C16 => (&self.diverging_16, &self.sequential_16),
            ColorDepth::TrueColor | ColorDepth::Mono => (&None, &None),
        };
        (
            div.as_deref().unwrap_or(&self.diverging),
            seq.as_deref().unwrap_or(&self.sequential),
        )
    }
}

/// Series lists are indexed cyclically, so they need at least one colour.
fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ColorSpec>, D::Error> {
    let colors = Vec::<ColorSpec>::deserialize(d)?;
    if colors.is_empty() {
        return Err(de::Error::custom("needs at least one colour"));
    }
    Ok(colors)
}

/// A ramp needs two stops to interpolate between.
fn ramp<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ColorSpec>, D::Error> {
    let stops = Vec::<ColorSpec>::deserialize(d)?;
    if stops.len() < 2 {
        return Err(de::Error::custom("a ramp needs at least two colours"));
    }
    Ok(stops)
}

fn optional_ramp<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<ColorSpec>>, D::Error> {
    ramp(d).map(Some)
}

/// A parsed theme file; [`ThemeFile::resolve`] turns it into a drawable [`Theme`].
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThemeFile {
    pub name: String,
    pub styles: StylesSpec,
    pub chart: ChartSpec,
    pub series: SeriesSpec,
    pub heatmap: HeatmapSpec,
}

impl ThemeFile {
    /// Parses theme text. `origin` (a path, or a built-in's name) prefixes errors, which are one
    /// line: `<origin>:<line>:<col>: <field path>: <message>`, so they fit a status bar.
    pub fn parse(text: &str, origin: &str) -> Result<ThemeFile> {
        toml::from_str(text).map_err(|err| anyhow!(describe_error(&err, text, origin)))
    }

    /// Reads and parses a theme file.
    pub fn load(path: &Path) -> Result<ThemeFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading theme {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// The theme for a terminal with `depth` colours.
    pub fn resolve(&self, depth: ColorDepth) -> Theme {
        let s = &self.styles;
        let style = |spec: &StyleSpec| spec.resolve(depth, Modifier::empty());
        let marked = |spec: &StyleSpec, fallback| spec.resolve(depth, fallback);
        let color = |spec: ColorSpec| spec.resolve(depth);
        let colors = |specs: &[ColorSpec]| specs.iter().map(|&c| c.resolve(depth)).collect();
        let (diverging, sequential) = self.heatmap.stops(depth);
        Theme {
            name: self.name.clone(),
            depth,
            text: style(&s.text),
            dim: marked(&s.dim, Modifier::DIM),
            border: style(&s.border),
            border_focused: marked(&s.border_focused, Modifier::BOLD),
            title: style(&s.title),
            title_focused: marked(&s.title_focused, Modifier::BOLD),
            status: style(&s.status),
            status_accent: marked(&s.status_accent, Modifier::REVERSED),
            ok: style(&s.ok),
            warn: style(&s.warn),
            error: marked(&s.error, Modifier::BOLD),
            highlight: marked(&s.highlight, Modifier::REVERSED),
            selection: marked(&s.selection, Modifier::REVERSED),
            key: marked(&s.key, Modifier::BOLD),
            chosen: color(self.chart.chosen),
            rejected: color(self.chart.rejected),
            margin: color(self.chart.margin),
            accuracy: color(self.chart.accuracy),
            eval: color(self.chart.eval),
            axis: color(self.chart.axis),
            series: colors(&self.series.colors),
            series_faded: colors(&self.series.faded),
            diverging_ramp: colors(diverging),
            sequential_ramp: colors(sequential),
            diverging_cells: heat_levels(diverging, depth, Ramp::Diverging),
            sequential_cells: heat_levels(sequential, depth, Ramp::Sequential),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parse errors
// ---------------------------------------------------------------------------------------------

/// One-line description of a TOML/serde error: `<origin>:<line>:<col>: <path>: <message>`.
fn describe_error(err: &toml::de::Error, text: &str, origin: &str) -> String {
    let site = crate::config::locate::error_site(err, text);
    let path = if site.path.is_empty() {
        "(top level)"
    } else {
        &site.path
    };
    match site.at {
        Some((line, col)) => format!("{origin}:{line}:{col}: {path}: {}", site.message),
        None => format!("{origin}: {path}: {}", site.message),
    }
}

// ---------------------------------------------------------------------------------------------
// The resolved theme
// ---------------------------------------------------------------------------------------------

/// A theme resolved for one colour depth: ratatui types only, ready to draw with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Theme {
    pub name: String,
    pub depth: ColorDepth,
    pub text: Style,
    pub dim: Style,
    pub border: Style,
    pub border_focused: Style,
    pub title: Style,
    pub title_focused: Style,
    pub status: Style,
    pub status_accent: Style,
    pub ok: Style,
    pub warn: Style,
    pub error: Style,
    /// The first differing token in chosen/rejected samples.
    pub highlight: Style,
    pub selection: Style,
    /// Key names in the help overlay.
    pub key: Style,
    pub chosen: Color,
    pub rejected: Color,
    pub margin: Color,
    pub accuracy: Color,
    pub eval: Color,
    pub axis: Color,
    /// Colours of overlaid runs; use [`Theme::series()`], which cycles.
    pub series: Vec<Color>,
    /// Colours of the raw curves behind the smoothed ones; use [`Theme::series_faded()`].
    pub series_faded: Vec<Color>,
    /// Diverging heatmap stops at this depth (negative .. zero .. positive).
    pub diverging_ramp: Vec<Color>,
    /// Sequential heatmap stops at this depth (low .. high).
    pub sequential_ramp: Vec<Color>,
    /// Heatmap cells of the diverging ramp, most negative .. zero (the middle) .. most
    /// positive; use [`Theme::heat_cell`].
    pub diverging_cells: Vec<HeatCell>,
    /// Heatmap cells of the sequential ramp, low .. high.
    pub sequential_cells: Vec<HeatCell>,
}

/// Characters for heatmap cells without colour, from empty to full.
const SHADES: [char; 5] = [' ', '░', '▒', '▓', '█'];

impl Theme {
    /// Colour of the `i`-th overlaid run; cycles when there are more runs than colours.
    pub fn series(&self, i: usize) -> Color {
        cycle(&self.series, i)
    }

    /// Faded (raw curve) colour of the `i`-th run; cycles like [`Theme::series()`].
    pub fn series_faded(&self, i: usize) -> Color {
        cycle(&self.series_faded, i)
    }

    /// Colour of a diverging value in [-1, 1] (clamped; NaN -> the zero stop). TrueColor
    /// interpolates between hex stops in RGB; C256/C16 use the nearest stop, a discrete ramp
    /// with one level per stop (interpolated colours would be re-quantised into noise).
    /// Mono returns `Color::Reset`: use [`Theme::shade`] instead.
    pub fn diverging(&self, v: f64) -> Color {
        let t = if v.is_nan() {
            0.5
        } else {
            (v.clamp(-1.0, 1.0) + 1.0) / 2.0
        };
        ramp_at(&self.diverging_ramp, t, self.depth)
    }

    /// Colour of a value in [0, 1] on the sequential ramp (clamped; NaN -> the low stop);
    /// same rules as [`Theme::diverging`].
    pub fn sequential(&self, v: f64) -> Color {
        let t = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
        ramp_at(&self.sequential_ramp, t, self.depth)
    }

    /// A heatmap cell without colour: " ░▒▓█" by |v| (clamped to 1; NaN -> ' '), so heatmaps
    /// stay readable in Mono. Works for diverging values (magnitude) and sequential ones.
    pub fn shade(v: f64) -> char {
        if v.is_nan() {
            return SHADES[0];
        }
        let level = (v.abs().min(1.0) * (SHADES.len() - 1) as f64).round() as usize;
        SHADES[level.min(SHADES.len() - 1)]
    }
}

impl Theme {
    /// The cells of `ramp`, one per level, in order.
    pub fn heat_cells(&self, ramp: Ramp) -> &[HeatCell] {
        match ramp {
            Ramp::Diverging => &self.diverging_cells,
            Ramp::Sequential => &self.sequential_cells,
        }
    }

    /// The level of `v` on `ramp`: a diverging value in [-1, 1] or a sequential one in
    /// [0, 1] (clamped); None for NaN, which has no level.
    pub fn heat_level(&self, ramp: Ramp, v: f64) -> Option<usize> {
        if v.is_nan() {
            return None;
        }
        let n = self.heat_cells(ramp).len();
        let t = match ramp {
            Ramp::Diverging => (v.clamp(-1.0, 1.0) + 1.0) / 2.0,
            Ramp::Sequential => v.clamp(0.0, 1.0),
        };
        Some(((t * n.saturating_sub(1) as f64).round() as usize).min(n.saturating_sub(1)))
    }

    /// How a heatmap cell of value `v` is drawn (see [`Theme::heat_level`]); a missing value
    /// (NaN) is a dim dot, so it never reads as zero.
    pub fn heat_cell(&self, ramp: Ramp, v: f64) -> HeatCell {
        match self.heat_level(ramp, v) {
            Some(level) => self.heat_cells(ramp)[level],
            None => (MISSING, self.dim),
        }
    }
}

/// Which ramp a heatmap value is drawn on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ramp {
    /// Signed values around zero (margins, reward differences, KL estimates): two hues.
    Diverging,
    /// A quantity from low to high (accuracy in 0..1).
    Sequential,
}

/// One heatmap level as drawn: its symbol and style.
pub type HeatCell = (char, Style);

/// A heatmap cell without a value.
pub const MISSING: char = '·';

/// Levels of the colour ramps where colours can be blended: xterm-256 (where a theme lists
/// fewer stops) and 24-bit colour. Diverging counts are odd so that zero has its own level.
const LEVELS_256: (usize, usize) = (17, 16);
const LEVELS_TRUECOLOR: (usize, usize) = (33, 32);

/// The cells of one ramp at `depth`, from its stops as written in the theme file.
///
/// - Mono: shade characters by magnitude (the sign only shows in the value readout).
/// - 16 colours: the colours alone give a level per stop, which is too few to read a heatmap
///   (a 3-stop ramp makes most cells the middle colour). Shade characters multiply the
///   levels: between two neighbouring stops `a` (inner) and `b` (outer) come `░▒▓█` in `b` on
///   `a`. Diverging ramps build both sides outwards from the middle stop (zero), so the two
///   hues never mix; five stops give 17 levels, three give 9.
/// - 256 colours and 24-bit: a coloured background per level. A 256-colour ramp that lists
///   at least as many stops as levels is used stop by stop (hand-picked palette entries read
///   better than converted ones); otherwise the stops are blended in RGB and converted.
///   Named stops follow the user's palette, whose RGB is unknown: one level per stop.
fn heat_levels(stops: &[ColorSpec], depth: ColorDepth, ramp: Ramp) -> Vec<HeatCell> {
    let plain = Style::default();
    match depth {
        ColorDepth::Mono => {
            let shades = SHADES.iter().map(|&c| (c, plain));
            match ramp {
                Ramp::Sequential => shades.collect(),
                Ramp::Diverging => SHADES[1..]
                    .iter()
                    .rev()
                    .map(|&c| (c, plain))
                    .chain(shades)
                    .collect(),
            }
        }
        ColorDepth::C16 => {
            let colors: Vec<Color> = stops.iter().map(|c| c.resolve(depth)).collect();
            match ramp {
                Ramp::Sequential => shade_steps(&colors),
                Ramp::Diverging => {
                    let mid = colors.len() / 2;
                    let (neg, pos): (Vec<Color>, Vec<Color>) = if colors.len() % 2 == 1 {
                        (colors[..=mid].to_vec(), colors[mid..].to_vec())
                    } else {
                        // No middle stop: zero is the terminal's own background.
                        let mut neg = colors[..mid].to_vec();
                        neg.push(Color::Reset);
                        let mut pos = vec![Color::Reset];
                        pos.extend(&colors[mid..]);
                        (neg, pos)
                    };
                    let neg: Vec<Color> = neg.into_iter().rev().collect();
                    let mut cells: Vec<HeatCell> = shade_steps(&neg).into_iter().rev().collect();
                    cells.extend(shade_steps(&pos).into_iter().skip(1));
                    cells
                }
            }
        }
        ColorDepth::C256 | ColorDepth::TrueColor => {
            let (div, seq) = if depth == ColorDepth::C256 {
                LEVELS_256
            } else {
                LEVELS_TRUECOLOR
            };
            let n = match ramp {
                Ramp::Diverging => div,
                Ramp::Sequential => seq,
            };
            let rgb: Option<Vec<[u8; 3]>> = stops
                .iter()
                .map(|c| match *c {
                    ColorSpec::Rgb(r, g, b) => Some([r, g, b]),
                    ColorSpec::Index(i) => Some(xterm_rgb(i)),
                    ColorSpec::Named(_) => None,
                })
                .collect();
            let colors: Vec<Color> = match rgb {
                Some(rgb) if stops.len() < n || depth == ColorDepth::TrueColor => (0..n)
                    .map(|i| {
                        let c = blend(&rgb, i as f64 / (n - 1) as f64);
                        if depth == ColorDepth::TrueColor {
                            Color::Rgb(c[0], c[1], c[2])
                        } else {
                            Color::Indexed(nearest_256(c))
                        }
                    })
                    .collect(),
                _ => stops.iter().map(|c| c.resolve(depth)).collect(),
            };
            colors.into_iter().map(|c| (' ', plain.bg(c))).collect()
        }
    }
}

/// The cells from `stops[0]` outwards: `stops[0]` itself (a blank), then `░▒▓█` of each stop
/// over the one before it.
fn shade_steps(stops: &[Color]) -> Vec<HeatCell> {
    let Some(&first) = stops.first() else {
        return vec![];
    };
    let mut out = vec![(' ', Style::default().bg(first))];
    for w in stops.windows(2) {
        for g in ['░', '▒', '▓', '█'] {
            out.push((g, Style::default().fg(w[1]).bg(w[0])));
        }
    }
    out
}

/// The colour at `t` in [0, 1] along RGB `stops`, blended linearly.
fn blend(stops: &[[u8; 3]], t: f64) -> [u8; 3] {
    let last = stops.len().saturating_sub(1);
    if last == 0 {
        return stops.first().copied().unwrap_or([0, 0, 0]);
    }
    let pos = t.clamp(0.0, 1.0) * last as f64;
    let i = (pos.floor() as usize).min(last - 1);
    let f = pos - i as f64;
    let mix = |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * f).round() as u8;
    let (a, b) = (stops[i], stops[i + 1]);
    [mix(a[0], b[0]), mix(a[1], b[1]), mix(a[2], b[2])]
}

fn cycle(colors: &[Color], i: usize) -> Color {
    if colors.is_empty() {
        Color::Reset
    } else {
        colors[i % colors.len()]
    }
}

/// The colour at position `t` in [0, 1] along `stops`.
fn ramp_at(stops: &[Color], t: f64, depth: ColorDepth) -> Color {
    if depth == ColorDepth::Mono || stops.is_empty() {
        return Color::Reset;
    }
    let last = stops.len() - 1;
    let pos = t.clamp(0.0, 1.0) * last as f64;
    if depth == ColorDepth::TrueColor && last > 0 {
        let i = (pos.floor() as usize).min(last - 1);
        if let (Color::Rgb(r0, g0, b0), Color::Rgb(r1, g1, b1)) = (stops[i], stops[i + 1]) {
            let f = pos - i as f64;
            let mix =
                |a: u8, b: u8| (f64::from(a) + (f64::from(b) - f64::from(a)) * f).round() as u8;
            return Color::Rgb(mix(r0, r1), mix(g0, g1), mix(b0, b1));
        }
    }
    // Named stops follow the user's palette, whose RGB is unknown: no interpolation.
    stops[(pos.round() as usize).min(last)]
}

// ---------------------------------------------------------------------------------------------
// Built-in themes and lookup
// ---------------------------------------------------------------------------------------------

/// Themes embedded in the binary: (name, TOML text).
pub const BUILTIN: &[(&str, &str)] = &[
    ("default", include_str!("../../themes/default.toml")),
    ("dark", include_str!("../../themes/dark.toml")),
    ("light", include_str!("../../themes/light.toml")),
    ("mono", include_str!("../../themes/mono.toml")),
];

/// A theme by name or path: a path (contains a path separator or ends with .toml) is loaded
/// from disk; a name is looked up first as `<dir>/<name>.toml` in each of `dirs` (user themes
/// override built-ins), then among the built-ins. The path is `Some` when the theme came from
/// a file, so the caller can watch it for changes.
pub fn find(name: &str, dirs: &[PathBuf]) -> Result<(ThemeFile, Option<PathBuf>)> {
    if is_path(name) {
        let path = PathBuf::from(name);
        return Ok((ThemeFile::load(&path)?, Some(path)));
    }
    for dir in dirs {
        let path = dir.join(format!("{name}.toml"));
        if path.is_file() {
            return Ok((ThemeFile::load(&path)?, Some(path)));
        }
    }
    match BUILTIN.iter().find(|(builtin, _)| *builtin == name) {
        Some((_, text)) => Ok((
            ThemeFile::parse(text, &format!("built-in theme {name}"))?,
            None,
        )),
        None => Err(anyhow!(
            "unknown theme `{name}` (available: {})",
            available(dirs).join(", ")
        )),
    }
}

fn is_path(name: &str) -> bool {
    name.contains('/') || name.contains(std::path::MAIN_SEPARATOR) || name.ends_with(".toml")
}

/// Names available: built-ins plus `*.toml` files in `dirs`, sorted and deduplicated (for
/// cycling through themes with a key). Unreadable directories are skipped.
pub fn available(dirs: &[PathBuf]) -> Vec<String> {
    let mut names: Vec<String> = BUILTIN.iter().map(|(name, _)| name.to_string()).collect();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        names.extend(
            entries
                .flatten()
                .filter_map(|entry| theme_name(&entry.path())),
        );
    }
    names.sort();
    names.dedup();
    names
}

/// The theme name of a `<name>.toml` file.
fn theme_name(path: &Path) -> Option<String> {
    if path.extension()? != "toml" || !path.is_file() {
        return None;
    }
    path.file_stem()?.to_str().map(str::to_string)
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const DEPTHS: [ColorDepth; 4] = [
        ColorDepth::TrueColor,
        ColorDepth::C256,
        ColorDepth::C16,
        ColorDepth::Mono,
    ];

    fn builtin(name: &str) -> ThemeFile {
        let (file, path) = find(name, &[]).unwrap();
        assert!(path.is_none());
        file
    }

    /// Every colour value written in a theme file.
    fn all_colors(file: &ThemeFile) -> Vec<ColorSpec> {
        let s = &file.styles;
        let styles = [
            &s.text,
            &s.dim,
            &s.border,
            &s.border_focused,
            &s.title,
            &s.title_focused,
            &s.status,
            &s.status_accent,
            &s.ok,
            &s.warn,
            &s.error,
            &s.highlight,
            &s.selection,
            &s.key,
        ];
        let c = &file.chart;
        let h = &file.heatmap;
        let mut out: Vec<ColorSpec> = styles
            .iter()
            .flat_map(|st| st.fg.into_iter().chain(st.bg))
            .collect();
        out.extend([c.chosen, c.rejected, c.margin, c.accuracy, c.eval, c.axis]);
        out.extend(file.series.colors.iter().chain(&file.series.faded));
        out.extend(h.diverging.iter().chain(&h.sequential));
        for ramp in [
            &h.diverging_256,
            &h.sequential_256,
            &h.diverging_16,
            &h.sequential_16,
        ] {
            out.extend(ramp.iter().flatten());
        }
        out
    }

    fn theme(depth: ColorDepth) -> Theme {
        builtin("dark").resolve(depth)
    }

    #[test]
    fn builtins_parse_and_resolve_at_every_depth() {
        for (name, _) in BUILTIN {
            let file = builtin(name);
            assert_eq!(file.name, *name);
            for depth in DEPTHS {
                let t = file.resolve(depth);
                assert_eq!(t.depth, depth);
                assert!(!t.series.is_empty() && !t.series_faded.is_empty());
                assert!(t.diverging_ramp.len() >= 2 && t.sequential_ramp.len() >= 2);
                if depth == ColorDepth::Mono {
                    assert!(!t.highlight.add_modifier.is_empty(), "{name}: highlight");
                    assert!(!t.selection.add_modifier.is_empty(), "{name}: selection");
                }
            }
        }
    }

    /// The default theme's interface colours follow the terminal's palette (names only); its
    /// heatmap ramps are named at 16 colours and exact (hex, xterm-256 indices 16-255, which
    /// terminals do not redefine) where the terminal has more.
    #[test]
    fn default_theme_uses_names_except_in_rich_heatmap_ramps() {
        let file = builtin("default");
        let h = &file.heatmap;
        let mut named = all_colors(&ThemeFile {
            heatmap: HeatmapSpec {
                diverging: vec![],
                sequential: vec![],
                diverging_256: None,
                sequential_256: None,
                ..h.clone()
            },
            ..file.clone()
        });
        named.retain(|c| !matches!(c, ColorSpec::Named(_)));
        assert!(named.is_empty(), "{named:?}");
        for ramp in [&h.diverging_256, &h.sequential_256] {
            for c in ramp.iter().flatten() {
                assert!(matches!(c, ColorSpec::Index(16..)), "{c:?}");
            }
        }
        for c in h.diverging.iter().chain(&h.sequential) {
            assert!(matches!(c, ColorSpec::Rgb(..)), "{c:?}");
        }
    }

    /// Every built-in theme (but mono) reads at least 9 heatmap levels at 16 colours and 16 at
    /// 256 and 24-bit colour, pairwise distinct, with zero in the middle of the diverging ramp
    /// on the terminal's own background where the theme says so.
    #[test]
    fn heatmap_levels_are_many_and_distinct_at_every_colour_depth() {
        for (name, _) in BUILTIN.iter().filter(|(n, _)| *n != "mono") {
            for (depth, min) in [
                (ColorDepth::C16, 9),
                (ColorDepth::C256, 16),
                (ColorDepth::TrueColor, 16),
            ] {
                let t = builtin(name).resolve(depth);
                for ramp in [Ramp::Diverging, Ramp::Sequential] {
                    let cells = t.heat_cells(ramp);
                    assert!(
                        cells.len() >= min,
                        "{name} {depth:?} {ramp:?}: {}",
                        cells.len()
                    );
                    let distinct: std::collections::HashSet<String> =
                        cells.iter().map(|c| format!("{c:?}")).collect();
                    assert_eq!(distinct.len(), cells.len(), "{name} {depth:?} {ramp:?}");
                }
                let div = t.heat_cells(Ramp::Diverging);
                assert_eq!(div.len() % 2, 1, "{name} {depth:?}: zero has its own level");
                assert_eq!(t.heat_level(Ramp::Diverging, 0.0), Some(div.len() / 2));
            }
        }
        let c16 = builtin("default").resolve(ColorDepth::C16);
        let cells = c16.heat_cells(Ramp::Diverging);
        assert_eq!(cells.len(), 17);
        assert_eq!(cells[8], (' ', Style::default().bg(Color::Reset)), "zero");
        assert_eq!(
            cells[9],
            ('░', Style::default().fg(Color::Red).bg(Color::Reset))
        );
        assert_eq!(
            cells[12],
            ('█', Style::default().fg(Color::Red).bg(Color::Reset))
        );
        assert_eq!(
            cells[13],
            ('░', Style::default().fg(Color::LightRed).bg(Color::Red))
        );
        assert_eq!(
            cells[7],
            ('░', Style::default().fg(Color::Blue).bg(Color::Reset))
        );
        assert_eq!(
            cells[0],
            ('█', Style::default().fg(Color::LightBlue).bg(Color::Blue))
        );
    }

    #[test]
    fn heat_levels_quantise_and_missing_values_have_none() {
        let t = builtin("default").resolve(ColorDepth::C16);
        assert_eq!(t.heat_level(Ramp::Diverging, -1.0), Some(0));
        assert_eq!(t.heat_level(Ramp::Diverging, -9.0), Some(0));
        assert_eq!(t.heat_level(Ramp::Diverging, 1.0), Some(16));
        assert_eq!(t.heat_level(Ramp::Diverging, 0.5), Some(12));
        assert_eq!(t.heat_level(Ramp::Sequential, 0.0), Some(0));
        assert_eq!(t.heat_level(Ramp::Sequential, 1.0), Some(16));
        assert_eq!(t.heat_level(Ramp::Sequential, f64::NAN), None);
        assert_eq!(t.heat_cell(Ramp::Sequential, f64::NAN), (MISSING, t.dim));
        // Mono: shades by magnitude.
        let m = builtin("default").resolve(ColorDepth::Mono);
        assert_eq!(m.heat_cell(Ramp::Diverging, -1.0).0, '█');
        assert_eq!(m.heat_cell(Ramp::Diverging, 0.0).0, ' ');
        assert_eq!(m.heat_cell(Ramp::Diverging, 0.5).0, '▒');
        assert_eq!(m.heat_cell(Ramp::Sequential, 0.75).0, '▓');
        // A 256-colour ramp with fewer stops than levels is blended, then converted.
        let few = ThemeFile {
            heatmap: HeatmapSpec {
                diverging_256: Some(vec![ColorSpec::Index(21), ColorSpec::Index(196)]),
                ..builtin("default").heatmap
            },
            ..builtin("default")
        }
        .resolve(ColorDepth::C256);
        let cells = few.heat_cells(Ramp::Diverging);
        assert_eq!(cells.len(), 17);
        assert_eq!(cells[0].1.bg, Some(Color::Indexed(21)));
        assert_eq!(cells[16].1.bg, Some(Color::Indexed(196)));
    }

    #[test]
    fn mono_theme_uses_only_reset_white_black() {
        for color in all_colors(&builtin("mono")) {
            assert!(
                matches!(
                    color,
                    ColorSpec::Named(Color::Reset | Color::White | Color::Black)
                ),
                "{color:?}"
            );
        }
    }

    #[test]
    fn detect_from_table() {
        use ColorDepth::*;
        let cases = [
            (Some("1"), Some("truecolor"), Some("xterm-256color"), Mono),
            (Some(""), Some("truecolor"), None, TrueColor),
            (None, Some("24bit"), Some("xterm"), TrueColor),
            (None, None, Some("xterm-256color"), C256),
            (None, Some("yes"), Some("screen-256color"), C256),
            (None, None, Some("dumb"), Mono),
            (None, None, Some("xterm"), C16),
            (None, None, Some("tmux-direct"), TrueColor),
            (None, None, Some("screen"), C16),
            (None, None, None, C16),
        ];
        for (no_color, colorterm, term, want) in cases {
            assert_eq!(
                ColorDepth::detect_from(no_color, colorterm, term),
                want,
                "{no_color:?} {colorterm:?} {term:?}"
            );
        }
    }

    #[test]
    fn depth_names_round_trip() {
        for depth in DEPTHS {
            assert_eq!(ColorDepth::parse(depth.name()), Some(depth));
        }
        assert_eq!(ColorDepth::parse("24bit"), Some(ColorDepth::TrueColor));
        assert_eq!(ColorDepth::parse("none"), Some(ColorDepth::Mono));
        assert_eq!(ColorDepth::parse("8"), None);
    }

    #[test]
    fn a_workspace_colour_setting_means_what_its_name_means_on_the_command_line() {
        for name in ["auto", "truecolor", "24bit", "256", "16", "none", "mono"] {
            let setting: crate::config::ColorSetting =
                serde_json::from_value(serde_json::json!(name)).unwrap();
            assert_eq!(
                ColorDepth::from_setting(setting),
                ColorDepth::parse(name),
                "{name}"
            );
        }
    }

    #[test]
    fn colour_notations() {
        assert_eq!(
            ColorSpec::parse("dark-gray"),
            Some(ColorSpec::Named(Color::DarkGray))
        );
        assert_eq!(
            ColorSpec::parse("dark_gray"),
            Some(ColorSpec::Named(Color::DarkGray))
        );
        assert_eq!(
            ColorSpec::parse("LightBlue"),
            Some(ColorSpec::Named(Color::LightBlue))
        );
        assert_eq!(
            ColorSpec::parse("gray"),
            Some(ColorSpec::Named(Color::Gray))
        );
        assert_eq!(
            ColorSpec::parse("reset"),
            Some(ColorSpec::Named(Color::Reset))
        );
        assert_eq!(
            ColorSpec::parse("#0a0B0c"),
            Some(ColorSpec::Rgb(10, 11, 12))
        );
        assert_eq!(ColorSpec::parse("#fff"), None);
        assert_eq!(ColorSpec::parse("#gggggg"), None);
        assert_eq!(ColorSpec::parse("purple"), None);
    }

    #[test]
    fn hex_conversions() {
        let cases = [
            ((255, 0, 0), 196, Color::LightRed),
            ((0, 0, 0), 16, Color::Black),
            ((128, 128, 128), 244, Color::DarkGray),
        ];
        for ((r, g, b), index, ansi) in cases {
            let spec = ColorSpec::Rgb(r, g, b);
            assert_eq!(spec.resolve(ColorDepth::TrueColor), Color::Rgb(r, g, b));
            assert_eq!(spec.resolve(ColorDepth::C256), Color::Indexed(index));
            assert_eq!(spec.resolve(ColorDepth::C16), ansi);
            assert_eq!(spec.resolve(ColorDepth::Mono), Color::Reset);
        }
    }

    #[test]
    fn index_and_name_conversions() {
        let idx = ColorSpec::Index(196);
        assert_eq!(idx.resolve(ColorDepth::TrueColor), Color::Indexed(196));
        assert_eq!(idx.resolve(ColorDepth::C256), Color::Indexed(196));
        assert_eq!(idx.resolve(ColorDepth::C16), Color::LightRed);
        assert_eq!(
            ColorSpec::Index(9).resolve(ColorDepth::C16),
            Color::LightRed
        );
        assert_eq!(
            ColorSpec::Index(244).resolve(ColorDepth::C16),
            Color::DarkGray
        );
        let red = ColorSpec::Named(Color::Red);
        for depth in [ColorDepth::TrueColor, ColorDepth::C256, ColorDepth::C16] {
            assert_eq!(red.resolve(depth), Color::Red);
        }
        assert_eq!(red.resolve(ColorDepth::Mono), Color::Reset);
    }

    #[test]
    fn truecolor_ramps_interpolate_between_stops() {
        let t = theme(ColorDepth::TrueColor);
        let file = builtin("dark");
        let stop = |spec: &ColorSpec| spec.resolve(ColorDepth::TrueColor);
        let div = &file.heatmap.diverging;
        assert_eq!(t.diverging(-1.0), stop(&div[0]));
        assert_eq!(t.diverging(0.0), stop(&div[1]));
        assert_eq!(t.diverging(1.0), stop(&div[2]));
        assert_eq!(t.diverging(-7.0), stop(&div[0]));
        assert_eq!(t.diverging(f64::NAN), stop(&div[1]));
        let seq = &file.heatmap.sequential;
        assert_eq!(t.sequential(0.0), stop(&seq[0]));
        assert_eq!(t.sequential(1.0), stop(seq.last().unwrap()));

        let ramp = Theme {
            diverging_ramp: vec![Color::Rgb(0, 0, 0), Color::Rgb(100, 200, 50)],
            ..t
        };
        assert_eq!(ramp.diverging(0.0), Color::Rgb(50, 100, 25));
    }

    #[test]
    fn named_stops_are_not_interpolated() {
        let t = builtin("mono").resolve(ColorDepth::TrueColor);
        for v in [-1.0, -0.3, 0.0, 0.6, 1.0] {
            assert!(t.diverging_ramp.contains(&t.diverging(v)));
        }
    }

    #[test]
    fn c16_ramps_are_discrete() {
        let t = theme(ColorDepth::C16);
        for i in -10..=10 {
            let v = f64::from(i) / 10.0;
            assert!(t.diverging_ramp.contains(&t.diverging(v)));
            assert!(t.sequential_ramp.contains(&t.sequential(v.abs())));
        }
        assert_eq!(t.diverging(-1.0), t.diverging_ramp[0]);
        assert_eq!(t.diverging(1.0), *t.diverging_ramp.last().unwrap());
    }

    #[test]
    fn mono_ramps_use_shades() {
        let t = theme(ColorDepth::Mono);
        assert_eq!(t.diverging(0.5), Color::Reset);
        assert_eq!(t.sequential(0.5), Color::Reset);
        assert_eq!(Theme::shade(0.0), ' ');
        assert_eq!(Theme::shade(1.0), '█');
        assert_eq!(Theme::shade(-1.0), '█');
        assert_eq!(Theme::shade(0.5), '▒');
        assert_eq!(Theme::shade(f64::NAN), ' ');
        assert_eq!(Theme::shade(9.0), '█');
    }

    #[test]
    fn mono_keeps_modifiers_and_marks_plain_styles() {
        let t = theme(ColorDepth::Mono);
        assert_eq!(t.chosen, Color::Reset);
        assert_eq!(t.series(3), Color::Reset);
        // dark.toml: highlight is colours only, so Mono must add REVERSED.
        assert!(t.highlight.add_modifier.contains(Modifier::REVERSED));
        assert!(t.border_focused.add_modifier.contains(Modifier::BOLD));
        assert!(t.text.add_modifier.is_empty());
    }

    #[test]
    fn series_cycle() {
        let t = theme(ColorDepth::TrueColor);
        let n = t.series.len();
        assert_eq!(t.series(n), t.series(0));
        assert_eq!(t.series_faded(n + 1), t.series_faded(1));
        let empty = Theme {
            series: Vec::new(),
            ..t
        };
        assert_eq!(empty.series(5), Color::Reset);
    }

    fn dark_text() -> &'static str {
        BUILTIN.iter().find(|(n, _)| *n == "dark").unwrap().1
    }

    fn error_of(text: &str) -> String {
        ThemeFile::parse(text, "bad.toml").unwrap_err().to_string()
    }

    fn line_of(text: &str, needle: &str) -> usize {
        text.lines().position(|l| l.starts_with(needle)).unwrap() + 1
    }

    #[test]
    fn bad_value_reports_line_column_and_field() {
        let text = dark_text().replace("chosen = \"#87d787\"", "chosen = 3.5");
        let err = error_of(&text);
        let line = line_of(&text, "chosen = 3.5");
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.starts_with(&format!("bad.toml:{line}:10: chart.chosen: ")),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_rejected() {
        let text = dark_text().replace("axis = ", "axes = ");
        let err = error_of(&text);
        let line = line_of(&text, "axes = ");
        assert!(!err.contains('\n'), "{err}");
        assert!(
            err.starts_with(&format!("bad.toml:{line}:1: chart.axes: ")),
            "{err}"
        );
        assert!(err.contains("axes"), "{err}");
    }

    #[test]
    fn bad_colours_and_ramps_are_errors() {
        let text = dark_text().replace("text = { fg = \"#d0d0d0\" }", "text = { fg = \"purple\" }");
        let err = error_of(&text);
        assert!(
            err.contains(": styles.text.fg: unknown colour \"purple\""),
            "{err}"
        );

        let text = dark_text().replace("rejected = \"#ff5f5f\"", "rejected = 300");
        assert!(error_of(&text).contains("chart.rejected: colour index 300"));

        let text = dark_text().replace(
            "diverging_16 = [\"light-blue\", \"blue\", \"reset\", \"red\", \"light-red\"]",
            "diverging_16 = [\"blue\"]",
        );
        let err = error_of(&text);
        assert!(
            err.contains("heatmap.diverging_16: a ramp needs at least two colours"),
            "{err}"
        );
    }

    #[test]
    fn syntax_errors_and_missing_fields_are_one_line() {
        let err = error_of("name = \"x\"\n[chart\n");
        assert!(err.starts_with("bad.toml:2:"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = error_of("name = \"x\"\n");
        assert!(err.contains("missing field"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = error_of("name = \"x\"\n[charts]  # [comment]\n");
        assert!(
            err.starts_with("bad.toml:2:2: charts: unknown field"),
            "{err}"
        );
        let err = error_of("nmae = \"x\"\n");
        assert!(
            err.starts_with("bad.toml:1:1: nmae: unknown field"),
            "{err}"
        );
    }

    #[test]
    fn user_themes_override_builtins_and_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let custom = dark_text().replace("name = \"dark\"", "name = \"my dark\"");
        std::fs::write(dir.path().join("dark.toml"), &custom).unwrap();
        std::fs::write(dir.path().join("solar.toml"), &custom).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "").unwrap();
        let dirs = vec![dir.path().to_path_buf()];

        let (file, path) = find("dark", &dirs).unwrap();
        assert_eq!(file.name, "my dark");
        assert_eq!(path, Some(dir.path().join("dark.toml")));
        let (file, path) = find("light", &dirs).unwrap();
        assert_eq!((file.name.as_str(), path), ("light", None));

        let by_path = dir.path().join("solar.toml");
        let (file, path) = find(by_path.to_str().unwrap(), &[]).unwrap();
        assert_eq!((file.name.as_str(), path), ("my dark", Some(by_path)));

        assert_eq!(
            available(&dirs),
            ["dark", "default", "light", "mono", "solar"]
        );
        let err = find("nope", &dirs).unwrap_err().to_string();
        assert!(
            err.contains("unknown theme `nope`") && err.contains("solar"),
            "{err}"
        );
    }
}
