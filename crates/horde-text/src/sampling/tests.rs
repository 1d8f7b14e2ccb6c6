//! Each sampler against its definition. The definitions are checkers over (before, after); each
//! checker is also run on a deliberately mis-wired variant and must reject it, so a checker that
//! accepts anything cannot pass.

use super::*;

/// Logits whose probabilities are `probs` (up to a constant).
fn from_probs(probs: &[f32]) -> Vec<f32> {
    probs.iter().map(|p| p.ln()).collect()
}

/// A reproducible, unevenly spread vocabulary of `n` logits.
fn random_logits(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-6.0f32..6.0)).collect()
}

fn probs_of(logits: &[f32]) -> Vec<f32> {
    let mut c = Candidates::from_logits(logits);
    c.softmax();
    let mut p = vec![0.0; logits.len()];
    for t in c.items() {
        p[t.id as usize] = t.p;
    }
    p
}

/// Top-p's definition: the kept set is the most likely tokens, its mass reaches `p`, and
/// without its least likely token it would not.
fn check_top_p(logits: &[f32], p: f32, kept: &[u32]) -> Result<(), String> {
    let probs = probs_of(logits);
    let mut order: Vec<u32> = (0..logits.len() as u32).collect();
    order.sort_by(|a, b| probs[*b as usize].total_cmp(&probs[*a as usize]));
    let mut kept_sorted = kept.to_vec();
    kept_sorted.sort_by(|a, b| probs[*b as usize].total_cmp(&probs[*a as usize]));
    if kept_sorted != order[..kept.len()] {
        return Err("not the most likely tokens".into());
    }
    let mass: f32 = kept.iter().map(|&i| probs[i as usize]).sum();
    let last = probs[*kept_sorted.last().unwrap() as usize];
    if mass < p - 1e-6 {
        return Err(format!("mass {mass} below {p}"));
    }
    if mass - last >= p + 1e-6 {
        return Err(format!(
            "not the smallest set: {} already reaches {p}",
            mass - last
        ));
    }
    Ok(())
}

#[test]
fn top_p_keeps_the_smallest_set_whose_mass_reaches_p() {
    let logits = from_probs(&[0.05, 0.5, 0.15, 0.3]);
    for (p, want) in [
        (0.4, vec![1]),
        (0.75, vec![1, 3]),
        (0.85, vec![1, 3, 2]),
        (0.99, vec![1, 3, 2, 0]),
    ] {
        let mut c = Candidates::from_logits(&logits);
        top_p(&mut c, p);
        assert_eq!(c.ids(), want, "p = {p}");
        check_top_p(&logits, p, &c.ids()).unwrap();
    }
    for seed in 0..20 {
        let logits = random_logits(200, seed);
        for p in [0.1, 0.5, 0.9, 0.97] {
            let mut c = Candidates::from_logits(&logits);
            top_p(&mut c, p);
            check_top_p(&logits, p, &c.ids()).unwrap();
        }
    }
}

#[test]
fn a_mis_wired_top_p_fails_its_definition() {
    // Stopping before the token that reaches p (a strict `sum > p` on the mass before it).
    let logits = from_probs(&[0.05, 0.5, 0.15, 0.3]);
    let mut c = Candidates::from_logits(&logits);
    c.softmax();
    let mut sum = 0.0;
    let kept: Vec<u32> = c
        .items()
        .iter()
        .take_while(|t| {
            sum += t.p;
            sum < 0.75
        })
        .map(|t| t.id)
        .collect();
    assert!(check_top_p(&logits, 0.75, &kept).is_err());
    // Keeping one token too many.
    assert!(check_top_p(&logits, 0.75, &[1, 3, 2]).is_err());
}

#[test]
fn top_k_keeps_the_k_most_likely_and_zero_is_off() {
    let logits = vec![0.3, 2.0, -1.0, 1.5, 0.9];
    let mut c = Candidates::from_logits(&logits);
    top_k(&mut c, 2);
    assert_eq!(c.ids(), vec![1, 3]);
    let mut c = Candidates::from_logits(&logits);
    top_k(&mut c, 0);
    assert_eq!(c.len(), 5);
}

/// Top-a's definition: a token stays iff its probability ≥ a · p_max².
fn check_top_a(logits: &[f32], a: f32, kept: &[u32]) -> Result<(), String> {
    let probs = probs_of(logits);
    let max = probs.iter().copied().fold(0.0, f32::max);
    for (id, &p) in probs.iter().enumerate() {
        let stays = kept.contains(&(id as u32));
        if stays != (p >= a * max * max) {
            return Err(format!("token {id} (p {p}) stays: {stays}"));
        }
    }
    Ok(())
}

#[test]
fn top_a_removes_tokens_below_a_times_the_squared_max() {
    // p_max = 0.6: threshold 0.5 · 0.36 = 0.18 keeps 0.6 and 0.2, drops 0.15 and 0.05.
    let logits = from_probs(&[0.15, 0.6, 0.05, 0.2]);
    let mut c = Candidates::from_logits(&logits);
    top_a(&mut c, 0.5);
    assert_eq!(c.ids(), vec![1, 3]);
    check_top_a(&logits, 0.5, &c.ids()).unwrap();
    // Mis-wired: a threshold of a · p_max (not squared) keeps only 0.6.
    assert!(check_top_a(&logits, 0.5, &[1]).is_err());
}

/// Min-p's definition: a token stays iff its probability ≥ p · p_max.
fn check_min_p(logits: &[f32], p: f32, kept: &[u32]) -> Result<(), String> {
    let probs = probs_of(logits);
    let max = probs.iter().copied().fold(0.0, f32::max);
    for (id, &q) in probs.iter().enumerate() {
        if kept.contains(&(id as u32)) != (q >= p * max * (1.0 - 1e-5)) {
            return Err(format!("token {id} (p {q}) misplaced"));
        }
    }
    Ok(())
}

#[test]
fn min_p_keeps_tokens_at_least_p_times_the_most_likely() {
    let logits = from_probs(&[0.1, 0.4, 0.25, 0.15, 0.1]);
    let mut c = Candidates::from_logits(&logits);
    min_p(&mut c, 0.5);
    let mut ids = c.ids();
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
    check_min_p(&logits, 0.5, &ids).unwrap();
    for seed in 0..10 {
        let logits = random_logits(100, seed);
        let mut c = Candidates::from_logits(&logits);
        min_p(&mut c, 0.05);
        check_min_p(&logits, 0.05, &c.ids()).unwrap();
    }
    // Mis-wired: an absolute threshold (p ≥ 0.3) drops the 0.25 token, which is ≥ 0.5 · 0.4.
    assert!(check_min_p(&logits, 0.5, &[1]).is_err());
}

#[test]
fn tail_free_cuts_where_the_second_derivative_mass_exceeds_z() {
    // Sorted p = [0.4, 0.3, 0.2, 0.06, 0.04]: first differences [0.1, 0.1, 0.14, 0.02],
    // |second| [0, 0.04, 0.12] / 0.16 = [0, 0.25, 0.75]; cumulative [0, 0.25, 1.0].
    let logits = from_probs(&[0.06, 0.4, 0.2, 0.3, 0.04]);
    let cut = |z: f32| {
        let mut c = Candidates::from_logits(&logits);
        tail_free(&mut c, z);
        c.ids()
    };
    // z = 0.5: first index past 0.5 is 2, so the two most likely stay.
    assert_eq!(cut(0.5), vec![1, 3]);
    // z = 0.2: index 1 is the first past 0.2 (index 0 may not cut), so one token stays.
    assert_eq!(cut(0.2), vec![1]);
    // z = 1 is off.
    assert_eq!(cut(1.0).len(), 5);
}

#[test]
fn typical_keeps_tokens_whose_surprise_is_closest_to_the_entropy() {
    let probs = [0.5f32, 0.2, 0.15, 0.1, 0.05];
    let logits = from_probs(&probs);
    let entropy: f32 = probs.iter().map(|p| -p * p.ln()).sum();
    let mut by_distance: Vec<usize> = (0..5).collect();
    by_distance.sort_by(|&a, &b| {
        let d = |i: usize| (-probs[i].ln() - entropy).abs();
        d(a).total_cmp(&d(b))
    });
    let mut c = Candidates::from_logits(&logits);
    typical(&mut c, 0.5);
    // The closest tokens until the mass first exceeds 0.5.
    let mut mass = 0.0;
    let want: Vec<u32> = by_distance
        .iter()
        .take_while(|&&i| {
            let before = mass;
            mass += probs[i];
            before <= 0.5
        })
        .map(|&i| i as u32)
        .collect();
    assert_eq!(c.ids(), want);
    // Not simply the most likely ones: entropy ≈ 1.33 nats, the 0.2 token (surprise 1.61) is
    // closer than the 0.5 one (0.69).
    assert_eq!(want[0], 1);
}

#[test]
fn temperature_divides_logits_and_zero_is_greedy() {
    let logits = vec![1.0, -2.0, 3.0];
    let mut c = Candidates::from_logits(&logits);
    temperature(&mut c, 2.0);
    let got: Vec<f32> = c.items().iter().map(|t| t.logit).collect();
    assert_eq!(got, vec![0.5, -1.0, 1.5]);
    let mut c = Candidates::from_logits(&logits);
    temperature(&mut c, 0.0);
    assert_eq!(c.ids(), vec![2]);
}

#[test]
fn dynamic_temperature_follows_the_normalised_entropy() {
    let check = |probs: &[f32], want_temp: f32| {
        let logits = from_probs(probs);
        let mut c = Candidates::from_logits(&logits);
        dynamic_temperature(&mut c, 0.5, 1.5, 2.0);
        for t in c.items() {
            let want = logits[t.id as usize] / want_temp;
            assert!(
                (t.logit - want).abs() < 1e-5,
                "{probs:?}: {} != {want}",
                t.logit
            );
        }
    };
    // Flat: normalised entropy 1, the hottest end.
    check(&[0.25; 4], 1.5);
    // p = [0.7, 0.1, 0.1, 0.1]: H / ln 4 = 0.6784, squared 0.4602: 0.5 + 0.4602 = 0.9602.
    let probs = [0.7f32, 0.1, 0.1, 0.1];
    let h: f32 = probs.iter().map(|p| -p * p.ln()).sum::<f32>() / 4f32.ln();
    assert!((h - 0.6784).abs() < 1e-4);
    check(&probs, 0.5 + h * h);
    // Through the chain: the range replaces the plain temperature.
    let params = SamplerParams {
        temperature: 1.0,
        dynatemp_range: 0.5,
        dynatemp_exponent: 2.0,
        sampler_order: vec![SamplerKind::Temperature],
        ..Default::default()
    };
    let logits = from_probs(&probs);
    let c = apply_chain(&logits, &params, &[]);
    let got = c.items().iter().find(|t| t.id == 0).unwrap().logit;
    assert!((got - logits[0] / (0.5 + h * h)).abs() < 1e-5);
}

/// The repetition penalty's definition for one token: divided when positive, multiplied when
/// not, by the full penalty in the recent half and the reduced one in the older half.
fn penalised(logit: f32, penalty: f32) -> f32 {
    if logit <= 0.0 {
        logit * penalty
    } else {
        logit / penalty
    }
}

fn check_rep_pen(
    before: &[f32],
    after: &[Candidate],
    near: &[u32],
    far: &[u32],
    rp: RepetitionPenalty,
) -> Result<(), String> {
    let reduced = 1.0 + (rp.penalty - 1.0) * rp.slope;
    for t in after {
        let l = before[t.id as usize];
        let want = if near.contains(&t.id) {
            penalised(l, rp.penalty)
        } else if far.contains(&t.id) {
            penalised(l, reduced)
        } else {
            l
        };
        if (t.logit - want).abs() > 1e-6 {
            return Err(format!("token {}: {} != {want}", t.id, t.logit));
        }
    }
    Ok(())
}

#[test]
fn repetition_penalty_divides_positive_and_multiplies_negative_logits() {
    let logits = vec![2.0, -1.0, 0.5, -0.5, 3.0, 1.0];
    // History 9 9 | 0 3 | 1 2, range 4: window [0, 3, 1, 2]; far half [0, 3], near half [1, 2].
    let history = [5, 4, 0, 3, 1, 2];
    let rp = RepetitionPenalty {
        penalty: 1.5,
        range: 4,
        slope: 0.5,
    };
    let mut c = Candidates::from_logits(&logits);
    repetition_penalty(&mut c, &history, rp);
    check_rep_pen(&logits, c.items(), &[1, 2], &[0, 3], rp).unwrap();
    // Spelled out: 2.0 / 1.25, −1 × 1.5, 0.5 / 1.5, −0.5 × 1.25; 4 and 5 are out of range.
    let got: Vec<f32> = c.items().iter().map(|t| t.logit).collect();
    assert_eq!(got, vec![1.6, -1.5, 0.5 / 1.5, -0.625, 3.0, 1.0]);
    // Mis-wired: dividing every logit (the paper's naive rule) fails the definition.
    let naive: Vec<Candidate> = Candidates::from_logits(&logits)
        .items()
        .iter()
        .map(|t| {
            let p = if [1, 2].contains(&t.id) {
                1.5
            } else if [0, 3].contains(&t.id) {
                1.25
            } else {
                1.0
            };
            Candidate {
                logit: t.logit / p,
                ..*t
            }
        })
        .collect();
    assert!(check_rep_pen(&logits, &naive, &[1, 2], &[0, 3], rp).is_err());
}

#[test]
fn repetition_penalty_gives_an_odd_windows_middle_token_the_full_penalty() {
    // Window [0, 1, 2]: far is the older ⌊3/2⌋ = 1 token, near the latest 2.
    let logits = vec![2.0, 2.0, 2.0];
    let rp = RepetitionPenalty {
        penalty: 2.0,
        range: 3,
        slope: 0.5,
    };
    let mut c = Candidates::from_logits(&logits);
    repetition_penalty(&mut c, &[0, 1, 2], rp);
    check_rep_pen(&logits, c.items(), &[1, 2], &[0], rp).unwrap();
    assert!(check_rep_pen(&logits, c.items(), &[2], &[0, 1], rp).is_err());
}

#[test]
fn repetition_penalty_with_no_range_or_a_penalty_of_one_is_off() {
    let logits = vec![2.0, -1.0];
    for rp in [
        RepetitionPenalty {
            penalty: 1.5,
            range: 0,
            slope: 1.0,
        },
        RepetitionPenalty {
            penalty: 1.0,
            range: 10,
            slope: 1.0,
        },
    ] {
        let mut c = Candidates::from_logits(&logits);
        repetition_penalty(&mut c, &[0, 1], rp);
        assert_eq!(
            c.items().iter().map(|t| t.logit).collect::<Vec<_>>(),
            logits
        );
    }
}

#[test]
fn sampler_order_parses_kobold_numbers_and_is_followed() {
    let order: Vec<SamplerKind> = [6, 0, 1, 3, 4, 2, 5]
        .into_iter()
        .map(|n| SamplerKind::try_from(n).unwrap())
        .collect();
    assert_eq!(order, DEFAULT_ORDER);
    assert_eq!(SamplerKind::try_from(7), Err(UnknownSampler(7)));
    // Temperature before top-p flattens the distribution, so top-p keeps more tokens than
    // with top-p first.
    let logits = from_probs(&[0.6, 0.25, 0.1, 0.05]);
    let run = |order: Vec<SamplerKind>| {
        let params = SamplerParams {
            temperature: 3.0,
            top_p: 0.8,
            sampler_order: order,
            ..Default::default()
        };
        apply_chain(&logits, &params, &[]).len()
    };
    assert_eq!(run(vec![SamplerKind::TopP, SamplerKind::Temperature]), 2);
    assert_eq!(run(vec![SamplerKind::Temperature, SamplerKind::TopP]), 3);
}

#[test]
fn min_p_runs_with_top_p() {
    let logits = from_probs(&[0.5, 0.3, 0.15, 0.05]);
    let params = SamplerParams {
        min_p: 0.5,
        sampler_order: vec![SamplerKind::TopP],
        ..Default::default()
    };
    let mut ids = apply_chain(&logits, &params, &[]).ids();
    ids.sort();
    assert_eq!(ids, vec![0, 1]);
}

#[test]
fn seeded_draws_repeat_and_follow_the_probabilities() {
    let logits = from_probs(&[0.5, 0.3, 0.2]);
    let draws = |seed: u64| {
        let mut s = Sampler::new(SamplerParams {
            seed,
            ..Default::default()
        });
        (0..20_000)
            .map(|_| s.sample(&logits, &[]))
            .collect::<Vec<u32>>()
    };
    let a = draws(7);
    assert_eq!(a, draws(7));
    assert_ne!(a, draws(8));
    for (id, p) in [(0u32, 0.5f64), (1, 0.3), (2, 0.2)] {
        let freq = a.iter().filter(|&&t| t == id).count() as f64 / a.len() as f64;
        // Four standard deviations of a binomial proportion over 20 000 draws.
        let sd = (p * (1.0 - p) / a.len() as f64).sqrt();
        assert!((freq - p).abs() < 4.0 * sd, "token {id}: {freq} vs {p}");
    }
}

#[test]
fn temperature_zero_is_greedy_whatever_the_seed() {
    let logits = random_logits(500, 3);
    let argmax = logits
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0 as u32;
    for seed in 0..20 {
        let mut s = Sampler::new(SamplerParams {
            temperature: 0.0,
            seed,
            ..Default::default()
        });
        assert_eq!(s.sample(&logits, &[]), argmax);
    }
}
