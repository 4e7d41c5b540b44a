//! Boxes in backend pixels, for placing a legend or a label where it covers the least.

/// An axis-aligned box in backend pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Rect {
    /// Left edge.
    pub(super) x0: f64,
    /// Top edge (y grows downwards).
    pub(super) y0: f64,
    /// Right edge.
    pub(super) x1: f64,
    /// Bottom edge.
    pub(super) y1: f64,
}

impl Rect {
    /// The box with top-left corner `(x0, y0)`, `w` wide and `h` high.
    pub(super) fn new(x0: f64, y0: f64, w: f64, h: f64) -> Rect {
        Rect {
            x0,
            y0,
            x1: x0 + w,
            y1: y0 + h,
        }
    }

    /// The area the two boxes share.
    pub(super) fn overlap(&self, o: &Rect) -> f64 {
        let w = self.x1.min(o.x1) - self.x0.max(o.x0);
        let h = self.y1.min(o.y1) - self.y0.max(o.y0);
        if w > 0.0 && h > 0.0 {
            w * h
        } else {
            0.0
        }
    }

    /// The box's area.
    pub(super) fn area(&self) -> f64 {
        (self.x1 - self.x0) * (self.y1 - self.y0)
    }

    /// Whether the point lies in the box, edges included.
    pub(super) fn contains(&self, (x, y): (f64, f64)) -> bool {
        x >= self.x0 && x <= self.x1 && y >= self.y0 && y <= self.y1
    }
}
