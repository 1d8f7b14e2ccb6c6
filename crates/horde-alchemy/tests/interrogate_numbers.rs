//! The `interrogation` form against horde-clipfree's `Interrogator.rank` (as the alchemist called
//! it: top 5 of each list) on the tiny random CLIP of `tools/alchemy-fixtures/clip.py`, over the
//! horde's seven committed term lists (7465 terms), for two real photographs.
//!
//! Tolerance: the same terms in the same order (two neighbours may swap only where their
//! confidences are within the tolerance, an effective tie), confidences (percent) within
//! 1e-3 + 1e-3 × the value. The fixture's manifest records how far each ranking is from a tie.

use std::path::PathBuf;

use candle_core::Device;
use horde_alchemy::clip::Clip;
use horde_alchemy::interrogate::{Interrogator, TermLists, TOP_COUNT};

const LISTS: [&str; 7] = [
    "tags",
    "sites",
    "artists",
    "flavors",
    "mediums",
    "movements",
    "techniques",
];

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip")
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-3 + 1e-3 * b.abs()
}

fn compare(name: &str, list: &str, got: &[serde_json::Value], want: &[serde_json::Value]) -> f64 {
    assert_eq!(got.len(), want.len(), "{name}/{list}: count");
    let mut worst = 0f64;
    for (g, w) in got.iter().zip(want) {
        let (gc, wc) = (
            g["confidence"].as_f64().unwrap(),
            w["confidence"].as_f64().unwrap(),
        );
        if g["text"] != w["text"] {
            let other = want.iter().find(|o| o["text"] == g["text"]);
            let swapped = other.is_some_and(|o| close(o["confidence"].as_f64().unwrap(), wc));
            assert!(
                swapped,
                "{name}/{list}: {} where transformers ranks {}",
                g["text"], w["text"]
            );
        }
        assert!(close(gc, wc), "{name}/{list}: confidence {gc} vs {wc}");
        worst = worst.max((gc - wc).abs());
    }
    worst
}

#[test]
fn rankings_match_the_horde_interrogator() {
    let clip = Clip::load(&fixtures(), &Device::Cpu).unwrap();
    let interrogator = Interrogator::new(clip, TermLists::horde());
    let reference: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("ranking.json")).unwrap())
            .unwrap();
    for name in ["lake", "flower"] {
        let image = image::open(fixtures().join(format!("{name}.png")))
            .unwrap()
            .to_rgb8();
        let result = interrogator.interrogate(&image).unwrap();
        let details = result["interrogation"].as_object().unwrap();
        let mut keys: Vec<&str> = details.keys().map(String::as_str).collect();
        keys.sort_unstable();
        let mut sorted = LISTS.to_vec();
        sorted.sort_unstable();
        assert_eq!(keys, sorted, "{name}: the public result's keys");
        for list in LISTS {
            let got = details[list].as_array().unwrap();
            assert_eq!(got.len(), TOP_COUNT);
            let want = reference[name]["interrogation"][list].as_array().unwrap();
            let worst = compare(name, list, got, want);
            println!(
                "{name}/{list}: top {} equal, max |confidence diff| {worst:e}",
                got.len()
            );
        }
    }
}

#[test]
fn the_horde_lists_are_the_committed_files() {
    let lists = TermLists::horde();
    let counts: Vec<(&str, usize)> = lists
        .lists()
        .iter()
        .map(|(n, t)| (n.as_str(), t.len()))
        .collect();
    assert_eq!(
        counts,
        [
            ("tags", 1921),
            ("sites", 18),
            ("artists", 5000),
            ("flavors", 187),
            ("mediums", 76),
            ("movements", 200),
            ("techniques", 63)
        ]
    );
    assert_eq!(lists.lists()[2].1[0], "Vincent van Gogh");
    assert!(lists
        .lists()
        .iter()
        .all(|(_, terms)| terms.iter().all(|t| !t.ends_with('\r'))));
}
