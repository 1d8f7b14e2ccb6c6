//! What a worker's software can do, read from its `bridge_agent` (`name:version:url`), as the
//! public horde's bridge reference grants it (horde-api.md §10). A job needing a capability the
//! bridge lacks is skipped with reason `bridge_version` ("upgrade your worker").
//!
//! Known bridges: the reference worker "AI Horde Worker reGen" (LoRAs from version 2), its
//! legacy predecessor "AI Horde Worker" and the two WebUI bridges (treated as v1 reGen), and this
//! project's own `horde-worker`, which has everything its engine supports. An unrecognised
//! bridge has no optional capability at all, as on the public horde.

/// Optional features a job may need from the worker's software.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BridgeCapabilities {
    pub img2img: bool,
    pub painting: bool,
    pub post_processing: bool,
    /// Every post-processor the horde knows, rather than only the [`FIRST_POST_PROCESSORS`]
    /// (reGen from version 13: the new upscalers, `GFPGANv1.3`, `RestoreFormer`).
    pub all_post_processors: bool,
    pub tiling: bool,
    pub hires_fix: bool,
    pub controlnet: bool,
    pub clip_skip: bool,
    pub lora: bool,
}

/// The post-processors every bridge that has post-processing runs (reGen version 1's): the
/// first eight names of the API's list, which appends the later ones.
pub const FIRST_POST_PROCESSORS: &[&str] = horde_api::image::POST_PROCESSORS.split_at(8).0;

impl BridgeCapabilities {
    /// Whether the bridge runs the post-processor `name`.
    pub fn runs_post_processor(&self, name: &str) -> bool {
        self.post_processing && (self.all_post_processors || FIRST_POST_PROCESSORS.contains(&name))
    }

    const ALL: BridgeCapabilities = BridgeCapabilities {
        img2img: true,
        painting: true,
        post_processing: true,
        all_post_processors: true,
        tiling: true,
        hires_fix: true,
        controlnet: true,
        clip_skip: true,
        lora: true,
    };

    /// The capabilities of the bridge named in `bridge_agent`.
    pub fn of(bridge_agent: &str) -> BridgeCapabilities {
        let mut parts = bridge_agent.split(':');
        let name = parts.next().unwrap_or_default();
        let version: u32 = parts
            .next()
            .and_then(|v| v.split('.').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        match name {
            "horde-worker" => BridgeCapabilities::ALL,
            "AI Horde Worker reGen" => BridgeCapabilities {
                lora: version >= 2,
                all_post_processors: version >= 13,
                ..BridgeCapabilities::ALL
            },
            "AI Horde Worker" | "SD-WebUI Stable Horde Worker Bridge" | "HordeAutoWebBridge" => {
                BridgeCapabilities {
                    lora: false,
                    all_post_processors: false,
                    ..BridgeCapabilities::ALL
                }
            }
            _ => BridgeCapabilities::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_follow_the_bridge_name_and_version() {
        assert_eq!(
            BridgeCapabilities::of("AI Horde Worker reGen:13.0.1:https://x"),
            BridgeCapabilities::ALL
        );
        assert_eq!(
            BridgeCapabilities::of("AI Horde Worker reGen:9.0.1:https://x"),
            BridgeCapabilities {
                all_post_processors: false,
                ..BridgeCapabilities::ALL
            }
        );
        let v1 = BridgeCapabilities::of("AI Horde Worker reGen:1.2:https://x");
        assert!(v1.tiling && !v1.lora);
        assert!(v1.runs_post_processor("GFPGAN") && v1.runs_post_processor("strip_background"));
        assert!(!v1.runs_post_processor("4xNomos8kSC") && !v1.runs_post_processor("RestoreFormer"));
        let v13 = BridgeCapabilities::of("AI Horde Worker reGen:13.0.0:https://x");
        assert!(v13.runs_post_processor("4xNomos8kSC") && v13.runs_post_processor("GFPGANv1.3"));
        let legacy = BridgeCapabilities::of("AI Horde Worker:24:https://x");
        assert!(
            legacy.runs_post_processor("CodeFormers")
                && !legacy.runs_post_processor("RestoreFormer")
        );
        assert!(!BridgeCapabilities::of("my-bridge:1:x").runs_post_processor("GFPGAN"));
        assert_eq!(
            BridgeCapabilities::of("horde-worker:0.1.0:https://x"),
            BridgeCapabilities::ALL
        );
        assert_eq!(
            BridgeCapabilities::of("my-bridge:1:x"),
            BridgeCapabilities::default()
        );
        assert_eq!(BridgeCapabilities::of(""), BridgeCapabilities::default());
    }
}
