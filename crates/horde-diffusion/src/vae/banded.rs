//! Decoding in bands of rows (tiled decoding) that equals the whole decode; the encoder's
//! bands (`encoder`) are made of the same parts.
//!
//! The decoder's memory peaks at full resolution, where a residual block holds its input, the
//! normalised input, its convolutions' outputs and their padded copies at once, and the last
//! upsampling holds the map before and after (`[1, 256, 512, 512]` is 256 MiB in f32; at
//! 1024² each is four times that). Here every map at full or half resolution is computed in
//! bands of whole rows, so those temporaries exist for one band at a time; only two maps are
//! kept whole: a residual block's input and its first convolution's output, over which the
//! block's output is then written band by band.
//!
//! The usual tiled decoders (diffusers' `enable_tiling`, ComfyUI's tiled VAE) normalise each
//! tile with its own statistics and blend overlapping tiles to hide the seams; the colours
//! then drift from tile to tile. Here nothing is approximated: each group norm uses the
//! statistics of the whole map, measured on the stored map before it is used band by band,
//! and each band's convolution reads the rows its 3×3 kernel reaches from its neighbours. A
//! banded decode equals the whole decode to f32 rounding (the tests hold them within 1e-5).
//!
//! The mid block (with its attention over every pixel) runs whole, at the latent's size.

use super::{Decoder, ResnetBlock};
use crate::nn::Conv2d;
use candle_core::{Module, Result, Tensor};
use std::ops::Range;

/// A band's size: about this many output pixels, in whole rows (at least two rows). Small
/// enough that a band's temporaries stay a few MiB per channel hundred, large enough that the
/// rows read twice (one above and one below each band) cost little.
pub const BAND_PIXELS: usize = 32 * 1024;

/// Output rows per band for maps `width` wide.
pub(super) fn band_rows(width: usize, band_pixels: usize) -> usize {
    (band_pixels / width.max(1)).max(2)
}

/// `0..height` in bands of `rows`.
pub(super) fn bands(height: usize, rows: usize) -> impl Iterator<Item = Range<usize>> {
    (0..height)
        .step_by(rows)
        .map(move |start| start..(start + rows).min(height))
}

/// Runs `conv` over a map `height` rows high, band by band: `input(rows)` gives the rows of
/// the convolution's input that a band reaches (the band and one row either side, within the
/// map). The result is one new map.
pub(super) fn convolve_in_bands(
    conv: &Conv2d,
    height: usize,
    rows: usize,
    input: impl Fn(Range<usize>) -> Result<Tensor>,
) -> Result<Tensor> {
    let mut out: Option<Tensor> = None;
    for band in bands(height, rows) {
        let reach = band.start.saturating_sub(1)..(band.end + 1).min(height);
        let y = conv.forward_band(&input(reach)?, band.start == 0, band.end == height)?;
        let out = match &out {
            Some(out) => out,
            None => {
                let (batch, channels, _, width) = y.dims4()?;
                let shape = (batch, channels, height, width);
                out.insert(Tensor::zeros(shape, y.dtype(), y.device())?)
            }
        };
        out.slice_set(&y, 2, band.start)?;
    }
    out.ok_or_else(|| candle_core::Error::Msg("an empty map has no bands".into()))
}

impl ResnetBlock {
    /// [`ResnetBlock::forward`] in bands of `band_pixels`.
    pub(super) fn forward_in_bands(&self, xs: &Tensor, band_pixels: usize) -> Result<Tensor> {
        let (_, _, height, width) = xs.dims4()?;
        let rows = band_rows(width, band_pixels);
        let first = self.norm1.statistics(xs)?;
        let h = convolve_in_bands(&self.conv1, height, rows, |reach| {
            let input = xs.narrow(2, reach.start, reach.len())?;
            self.norm1.forward_with(&input, &first, true)
        })?;
        let second = self.norm2.statistics(&h)?;
        // The output is written over `h`, band by band; the row of `h` just above a band is
        // overwritten by then, so the previous band keeps a copy of it.
        let mut row_above: Option<Tensor> = None;
        for band in bands(height, rows) {
            let end = (band.end + 1).min(height);
            let rest = h.narrow(2, band.start, end - band.start)?;
            let reach = match &row_above {
                Some(above) => Tensor::cat(&[above, &rest], 2)?,
                None => rest,
            };
            let normed = self.norm2.forward_with(&reach, &second, true)?;
            let residual = xs.narrow(2, band.start, band.len())?;
            let residual = match &self.shortcut {
                Some(shortcut) => shortcut.forward(&residual)?,
                None => residual,
            };
            let convolved =
                self.conv2
                    .forward_band(&normed, band.start == 0, band.end == height)?;
            let out = crate::nn::add(&convolved, &residual)?;
            row_above = Some(h.narrow(2, band.end - 1, 1)?.force_contiguous()?);
            h.slice_set(&out, 2, band.start)?;
        }
        Ok(h)
    }
}

/// `conv(upsample_nearest(xs, 2×))` in bands: each band upsamples only the rows it reaches.
fn upsample_in_bands(conv: &Conv2d, xs: &Tensor, band_pixels: usize) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    let (height, width) = (2 * h, 2 * w);
    convolve_in_bands(conv, height, band_rows(width, band_pixels), |reach| {
        let (first, last) = (reach.start / 2, (reach.end - 1) / 2);
        let source = xs.narrow(2, first, last - first + 1)?;
        source
            .upsample_nearest2d(2 * (last - first + 1), width)?
            .narrow(2, reach.start - 2 * first, reach.len())
    })
}

impl Decoder {
    /// [`Decoder::decode_whole`] in bands of about `band_pixels` output pixels, one image at a
    /// time. Zero padding only (not inside `nn::with_tiling`).
    pub fn decode_in_bands(&self, latents: &Tensor, band_pixels: usize) -> Result<Tensor> {
        crate::kernels::kept::without_keeping(|| {
            let images = (0..latents.dim(0)?)
                .map(|i| self.decode_image_in_bands(&latents.narrow(0, i, 1)?, band_pixels))
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&images, 0)
        })
    }

    fn decode_image_in_bands(&self, latents: &Tensor, band_pixels: usize) -> Result<Tensor> {
        let h = self
            .conv_in
            .forward(&self.post_quant_conv.forward(latents)?)?;
        let mut h = self.mid.forward(&h)?;
        for level in &self.up {
            for block in &level.blocks {
                h = block.forward_in_bands(&h, band_pixels)?;
            }
            if let Some(conv) = &level.resample {
                h = upsample_in_bands(conv, &h, band_pixels)?;
            }
        }
        let (_, _, height, width) = h.dims4()?;
        let statistics = self.norm_out.statistics(&h)?;
        convolve_in_bands(
            &self.conv_out,
            height,
            band_rows(width, band_pixels),
            |reach| {
                let input = h.narrow(2, reach.start, reach.len())?;
                self.norm_out.forward_with(&input, &statistics, true)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::VaeConfig;
    use crate::kernels::test_support::{max_abs, max_difference};
    use crate::sampling::SeededNoise;
    use crate::tiny::random_var_builder;
    use crate::vae::Vae;
    use candle_core::Device;

    /// The largest difference, relative to the largest value of `whole`.
    fn relative_difference(banded: &Tensor, whole: &Tensor) -> f32 {
        max_difference(banded, whole) / max_abs(whole)
    }

    /// A small decoder with the real structure, including channel changes (shortcut
    /// convolutions) between levels.
    fn decoder() -> Vae {
        let config = VaeConfig {
            base_channels: 32,
            channel_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            latent_channels: 4,
        };
        Vae::new(&config, random_var_builder(7)).unwrap()
    }

    #[test]
    fn a_banded_decode_equals_the_whole_decode() {
        let vae = decoder();
        // 2 images of 12×10 latents: 48×40 pixels; bands of 2 rows (the smallest), of an odd
        // 7 rows (bands that split the upsampled rows' pairs), and of the whole map.
        let latents = SeededNoise::new(&[1, 2])
            .sample(&[4, 12, 10], &Device::Cpu)
            .unwrap();
        let whole = vae.decoder.decode_whole(&latents).unwrap();
        assert_eq!(whole.dims(), [2, 3, 48, 40]);
        for band_pixels in [1, 7 * 40, 48 * 40] {
            let banded = vae.decoder.decode_in_bands(&latents, band_pixels).unwrap();
            assert_eq!(banded.dims(), whole.dims());
            let off = relative_difference(&banded, &whole);
            assert!(off < 1e-5, "bands of {band_pixels} pixels: off by {off}");
        }
    }

    #[test]
    fn bands_on_winograd_sized_maps_equal_the_whole_decode() {
        // 64×64 pixels: bands of 16 rows × 64 columns reach the Winograd kernel (32×32 pixels
        // and up) at full size, and the direct kernel on the smaller levels.
        let vae = decoder();
        let latents = SeededNoise::new(&[3])
            .sample(&[4, 16, 16], &Device::Cpu)
            .unwrap();
        let whole = vae.decoder.decode_whole(&latents).unwrap();
        let banded = vae.decoder.decode_in_bands(&latents, 16 * 64).unwrap();
        let off = relative_difference(&banded, &whole);
        assert!(off < 1e-5, "off by {off}");
    }

    #[test]
    fn bands_are_whole_rows_covering_the_map_once() {
        let covered: Vec<Range<usize>> = bands(10, 4).collect();
        assert_eq!(covered, [0..4, 4..8, 8..10]);
        assert_eq!(band_rows(512, BAND_PIXELS), 64);
        assert_eq!(band_rows(100_000, BAND_PIXELS), 2, "at least two rows");
    }
}
