//! Running an image network on a large image in overlapping tiles, blended without seams.
//!
//! A tile is run with its neighbours' edges around it; where two tiles overlap, their outputs
//! are mixed with weights that fall to zero towards each tile's cut (a cross fade, [`ramp`]),
//! so no tile's border shows: a network that sees no further than a quarter of the overlap
//! gives the same image tiled as whole. Memory is that of one tile's activations, whatever the
//! image's size.

use candle_core::{Result, Tensor};

/// How an image is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tiling {
    /// The largest tile side, in input pixels; an image no larger on both sides is run whole.
    pub tile: usize,
    /// Input pixels shared by neighbouring tiles.
    pub overlap: usize,
    /// Tile sides and offsets are multiples of this (a network's pixel-unshuffle factor).
    pub multiple: usize,
}

impl Default for Tiling {
    /// 256-pixel tiles sharing 32: an RRDBNet with 64 features needs about 1 GiB for one.
    fn default() -> Self {
        Tiling {
            tile: 256,
            overlap: 32,
            multiple: 1,
        }
    }
}

/// Where the tiles start along a side of `len` pixels (each `tile` long, the last ending at
/// `len`).
fn starts(len: usize, tile: usize, overlap: usize, multiple: usize) -> Vec<usize> {
    if len <= tile {
        return vec![0];
    }
    let step = (tile - overlap).max(multiple) / multiple * multiple;
    let last = (len - tile) / multiple * multiple;
    let mut at: Vec<usize> = (0..).map(|i| i * step).take_while(|&s| s < last).collect();
    at.push(last);
    at
}

/// The weight of output row (or column) `i` of a tile `len` long whose first `before` and last
/// `after` rows overlap a neighbour. Across an overlap the weight is zero for its outer
/// quarter (where the tile lacked the context beyond its cut), then rises linearly to one over
/// its middle half: the neighbour's weight falls as this one's rises, and the outer quarter,
/// the least trustworthy, is left to the neighbour.
fn ramp(i: usize, len: usize, before: usize, after: usize) -> f32 {
    let rise = |from_cut: usize, overlap: usize| {
        let o = overlap as f32;
        ((from_cut as f32 + 0.5 - o / 4.0) / (o / 2.0)).clamp(0.0, 1.0)
    };
    let mut w = 1.0f32;
    if before > 0 && i < before {
        w = w.min(rise(i, before));
    }
    if after > 0 && i >= len - after {
        w = w.min(rise(len - 1 - i, after));
    }
    w
}

/// For each tile starting at `starts` (each `len` input pixels long), the [`ramp`] weights of
/// its `len · scale` output pixels along that side, from how far it overlaps its neighbours.
fn side_weights(starts: &[usize], len: usize, scale: usize) -> Vec<Vec<f32>> {
    (0..starts.len())
        .map(|i| {
            let before = match i {
                0 => 0,
                _ => (starts[i - 1] + len).saturating_sub(starts[i]) * scale,
            };
            let after = match starts.get(i + 1) {
                None => 0,
                Some(next) => (starts[i] + len).saturating_sub(*next) * scale,
            };
            let out = len * scale;
            (0..out).map(|p| ramp(p, out, before, after)).collect()
        })
        .collect()
}

/// `run` applied to `image` (`[1, C, H, W]`, `H` and `W` multiples of `tiling.multiple`), whose
/// output is `scale` times larger on each side: whole when it fits one tile, else tile by tile.
pub fn run_tiled(
    image: &Tensor,
    scale: usize,
    tiling: Tiling,
    run: impl Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (_, channels, height, width) = image.dims4()?;
    let tile = tiling.tile.max(tiling.overlap + tiling.multiple);
    if height <= tile && width <= tile {
        return run(image);
    }
    let rows = starts(height, tile, tiling.overlap, tiling.multiple);
    let cols = starts(width, tile, tiling.overlap, tiling.multiple);
    let (out_h, out_w) = (height * scale, width * scale);
    let (th, tw) = (tile.min(height), tile.min(width));
    // Each tile's blend weights along a side, by its place on that side.
    let row_weights = side_weights(&rows, th, scale);
    let col_weights = side_weights(&cols, tw, scale);
    let mut sum = vec![0f32; channels * out_h * out_w];
    let mut weights = vec![0f32; out_h * out_w];
    for (&y0, wys) in rows.iter().zip(&row_weights) {
        for (&x0, wxs) in cols.iter().zip(&col_weights) {
            let piece = image.narrow(2, y0, th)?.narrow(3, x0, tw)?.contiguous()?;
            let out = run(&piece)?.squeeze(0)?.to_vec3::<f32>()?;
            for (y, wy) in wys.iter().enumerate() {
                for (x, wx) in wxs.iter().enumerate() {
                    let w = wy * wx;
                    let at = (y0 * scale + y) * out_w + x0 * scale + x;
                    weights[at] += w;
                    for (c, plane) in out.iter().enumerate() {
                        sum[c * out_h * out_w + at] += w * plane[y][x];
                    }
                }
            }
        }
    }
    for plane in sum.chunks_mut(out_h * out_w) {
        for (value, w) in plane.iter_mut().zip(&weights) {
            *value /= w.max(f32::MIN_POSITIVE);
        }
    }
    Tensor::from_vec(sum, (1, channels, out_h, out_w), image.device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_a_side_and_end_at_its_end() {
        assert_eq!(starts(100, 256, 32, 1), vec![0]);
        assert_eq!(starts(500, 256, 32, 1), vec![0, 224, 244]);
        let at = starts(1001, 256, 32, 2);
        assert!(at.iter().all(|s| s % 2 == 0));
        assert_eq!(
            *at.last().unwrap() + 256,
            1000,
            "the last tile ends at the even edge"
        );
    }

    #[test]
    fn a_pointwise_network_comes_back_exactly_through_the_tiles() {
        // A per-pixel function has no context: tiled and whole must agree to rounding, which
        // they only do if the blend weights of every output pixel sum to one.
        let device = candle_core::Device::Cpu;
        let image = Tensor::rand(0f32, 1f32, (1, 3, 70, 90), &device).unwrap();
        let pointwise = |t: &Tensor| {
            let (_, _, h, w) = t.dims4()?;
            (t.sqr()? * 3.0)?.upsample_nearest2d(h * 2, w * 2)
        };
        let whole = pointwise(&image).unwrap();
        let tiled = run_tiled(
            &image,
            2,
            Tiling {
                tile: 32,
                overlap: 8,
                multiple: 1,
            },
            pointwise,
        )
        .unwrap();
        let diff = (whole - tiled).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-5);
    }
}
