//! What every figure of the report is drawn with: its size and scale, plotters' error type,
//! the figure trait and the diverging colour map the heatmap and the token strips share.

use plotters::coord::Shift;
use plotters::prelude::*;

use super::font::FAMILY;

/// What a drawing returns: plotters' error for the backend it draws on.
pub type Drawn<DB> = Result<(), DrawingAreaErrorKind<<DB as DrawingBackend>::ErrorType>>;

/// How big things are drawn: 1 for SVG, more for PNG.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    pub scale: f64,
}

impl Ctx {
    /// A length in pixels.
    pub fn px(&self, v: f64) -> u32 {
        (v * self.scale).round().max(1.0) as u32
    }

    pub fn font(&self, size: f64) -> TextStyle<'static> {
        (FAMILY, size * self.scale).into_font().color(&BLACK)
    }

    pub fn stroke(&self, color: RGBColor, width: f64) -> ShapeStyle {
        color.stroke_width(self.px(width))
    }
}

/// A figure: its size at SVG scale and how it is drawn.
pub trait Figure {
    fn size(&self) -> (u32, u32);
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>, ctx: Ctx) -> Drawn<DB>;
}

/// A diverging colour for t in [-1, 1]: red (negative) through near-white (0) to blue
/// (positive), as ColorBrewer's RdBu; values outside are clamped, NaN is grey.
pub fn diverging(t: f64) -> RGBColor {
    if !t.is_finite() {
        return RGBColor(200, 200, 200);
    }
    let t = t.clamp(-1.0, 1.0);
    let (red, mid, blue) = (
        [178.0, 24.0, 43.0],
        [247.0, 247.0, 247.0],
        [33.0, 102.0, 172.0],
    );
    let (end, a) = if t < 0.0 { (red, -t) } else { (blue, t) };
    let c = |i: usize| (mid[i] + (end[i] - mid[i]) * a).round() as u8;
    RGBColor(c(0), c(1), c(2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diverging_colours_run_red_white_blue() {
        assert_eq!(diverging(-1.0), RGBColor(178, 24, 43));
        assert_eq!(diverging(0.0), RGBColor(247, 247, 247));
        assert_eq!(diverging(1.0), RGBColor(33, 102, 172));
        assert_eq!(diverging(5.0), diverging(1.0));
        assert_eq!(diverging(f64::NAN), RGBColor(200, 200, 200));
    }
}
