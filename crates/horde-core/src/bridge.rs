//! What a worker's software can do, read from its `bridge_agent` (`name:version:url`), as the
//! public horde's bridge reference grants it (horde-api.md §10). A job needing a capability the
//! bridge lacks is skipped with reason `bridge_version` ("upgrade your worker").
//!
//! Known bridges: the reference worker "AI Horde Worker reGen" (LoRAs and textual inversions
//! from version 2, LoRAs by version id from 3), its legacy predecessor "AI Horde Worker" (treated
//! as v1 reGen, with ControlNet, LoRAs and textual inversions from the versions the public
//! bridge reference grants them), the two WebUI bridges (as v1 reGen, without ControlNet, LoRAs
//! or textual inversions), and this project's own `horde-worker`, which has everything its
//! engine supports. An unrecognised bridge has no optional capability at all, as on the public
//! horde.

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
    /// Takes a control map as the source image (`image_is_control`); the public horde asks it
    /// of every control job.
    pub image_is_control: bool,
    pub return_control_map: bool,
    pub clip_skip: bool,
    pub lora: bool,
    /// LoRAs named by CivitAI version id (`is_version`).
    pub lora_versions: bool,
    pub textual_inversion: bool,
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
        image_is_control: true,
        return_control_map: true,
        clip_skip: true,
        lora: true,
        lora_versions: true,
        textual_inversion: true,
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
                textual_inversion: version >= 2,
                lora_versions: version >= 3,
                all_post_processors: version >= 13,
                ..BridgeCapabilities::ALL
            },
            "AI Horde Worker" => BridgeCapabilities::legacy(version),
            "SD-WebUI Stable Horde Worker Bridge" | "HordeAutoWebBridge" => BridgeCapabilities {
                controlnet: false,
                image_is_control: false,
                return_control_map: false,
                ..BridgeCapabilities::none_of_the_networks()
            },
            _ => BridgeCapabilities::default(),
        }
    }

    /// Everything but the later post-processors, LoRAs and textual inversions.
    fn none_of_the_networks() -> BridgeCapabilities {
        BridgeCapabilities {
            lora: false,
            lora_versions: false,
            textual_inversion: false,
            all_post_processors: false,
            ..BridgeCapabilities::ALL
        }
    }

    /// The legacy "AI Horde Worker": ControlNet from version 15, returning the control map from
    /// 18, LoRAs from 22, control maps as source images from 23, textual inversions from 24,
    /// never LoRAs by version (the public horde's bridge reference).
    fn legacy(version: u32) -> BridgeCapabilities {
        BridgeCapabilities {
            controlnet: version >= 15,
            return_control_map: version >= 18,
            lora: version >= 22,
            image_is_control: version >= 23,
            textual_inversion: version >= 24,
            ..BridgeCapabilities::none_of_the_networks()
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
        assert!(v1.tiling && v1.controlnet && v1.image_is_control && v1.return_control_map);
        assert!(!v1.lora && !v1.textual_inversion && !v1.lora_versions);
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
        let webui = BridgeCapabilities::of("SD-WebUI Stable Horde Worker Bridge:4:x");
        assert!(webui.tiling && !webui.controlnet && !webui.lora && !webui.textual_inversion);
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

    #[test]
    fn lora_and_textual_inversion_follow_the_bridge_reference_versions() {
        let regen = |v: &str| BridgeCapabilities::of(&format!("AI Horde Worker reGen:{v}:x"));
        let (v2, v3) = (regen("2.0.0"), regen("3.1.0"));
        assert!(v2.lora && v2.textual_inversion && !v2.lora_versions);
        assert!(v3.lora && v3.textual_inversion && v3.lora_versions);
        let legacy = |v: u32| BridgeCapabilities::of(&format!("AI Horde Worker:{v}:x"));
        let steps = [
            (14, [false, false, false, false, false]),
            (15, [true, false, false, false, false]),
            (18, [true, true, false, false, false]),
            (22, [true, true, true, false, false]),
            (23, [true, true, true, true, false]),
            (24, [true, true, true, true, true]),
        ];
        for (version, expected) in steps {
            let c = legacy(version);
            let got = [
                c.controlnet,
                c.return_control_map,
                c.lora,
                c.image_is_control,
                c.textual_inversion,
            ];
            assert_eq!(got, expected, "AI Horde Worker {version}");
            assert!(!c.lora_versions);
        }
    }
}
