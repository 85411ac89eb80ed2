//! The one font of the figures, carried in the binary: PNG text is drawn with it and token
//! boxes are measured by it, so a report looks the same on a machine without fonts. SVG text
//! names the `sans-serif` family and is drawn by whatever shows the file.

use std::sync::OnceLock;

use anyhow::Result;
use plotters::style::FontStyle;

/// DejaVu Sans cut to the characters the figures use (src/report/fonts: the script that cuts it
/// and the font's licence).
static DEJAVU_SANS: &[u8] = include_bytes!("fonts/DejaVuSans-subset.ttf");

pub const FAMILY: &str = "sans-serif";

/// Registers the font under [`FAMILY`] (once per process).
pub fn register() -> Result<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font(FAMILY, FontStyle::Normal, DEJAVU_SANS).is_ok()
    });
    anyhow::ensure!(ok, "the bundled font (DejaVu Sans) could not be read");
    Ok(())
}
