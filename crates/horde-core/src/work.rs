//! How much work an image is: pixelsteps (width × height × steps, hires fix and second-order
//! samplers counted as the public horde counts them: [`ImageParams::accurate_steps`]). Speeds,
//! queues, quotas, deadlines, rewards and the status endpoints all measure in it, so it is
//! defined once, here.

use horde_api::image::ImageParams;

/// Pixelsteps of one image of `params`.
pub fn pixelsteps(params: &ImageParams) -> f64 {
    f64::from(params.width) * f64::from(params.height) * f64::from(params.accurate_steps())
}

/// Megapixelsteps of `images` images of `params`.
pub fn megapixelsteps(params: &ImageParams, images: u32) -> f64 {
    pixelsteps(params) * f64::from(images) / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_512_square_of_30_steps_is_7_86_megapixelsteps_an_image() {
        let mut params: ImageParams = serde_json::from_str("{}").unwrap();
        params.width = 512;
        params.height = 512;
        params.steps = Some(30);
        assert_eq!(pixelsteps(&params), 512.0 * 512.0 * 30.0);
        assert!((megapixelsteps(&params, 1) - 7.864_32).abs() < 1e-9);
        assert!((megapixelsteps(&params, 4) - 4.0 * 7.864_32).abs() < 1e-9);
        assert_eq!(megapixelsteps(&params, 0), 0.0);
    }
}
