//! A1111-style prompt attention: `(word)` ×1.1, `[word]` ÷1.1, `(word:1.3)` ×1.3, nesting
//! multiplies, `\(` `\)` `\[` `\]` `\\` are literal characters, unbalanced brackets apply to
//! the end of the prompt. The result is the prompt as runs of text with their weights.

/// A run of prompt text and its attention weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Fragment {
    pub text: String,
    pub weight: f32,
}

enum Token<'a> {
    Literal(&'a str),
    Open(char),
    /// `:weight)`, with the text as written (kept when no `(` is open).
    CloseWithWeight(f32, &'a str),
    Close(char),
    Text(&'a str),
}

/// Splits a prompt into the tokens of A1111's attention regex.
fn tokens(prompt: &str) -> Vec<Token<'_>> {
    let bytes = prompt.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\\' => {
                let len = prompt[i + 1..]
                    .chars()
                    .next()
                    .map(char::len_utf8)
                    .unwrap_or(0);
                if len > 0 && matches!(bytes[i + 1], b'(' | b')' | b'[' | b']' | b'\\') {
                    out.push(Token::Literal(&prompt[i + 1..i + 2]));
                    i += 2;
                } else {
                    out.push(Token::Text(&prompt[i..i + 1]));
                    i += 1;
                }
            }
            b'(' | b'[' => {
                out.push(Token::Open(c as char));
                i += 1;
            }
            b')' | b']' => {
                out.push(Token::Close(c as char));
                i += 1;
            }
            b':' => match weight_then_close(&prompt[i + 1..]) {
                Some((weight, consumed)) => {
                    out.push(Token::CloseWithWeight(weight, &prompt[i..i + 1 + consumed]));
                    i += 1 + consumed;
                }
                None => {
                    out.push(Token::Text(":"));
                    i += 1;
                }
            },
            _ => {
                let end = prompt[i..]
                    .find(['\\', '(', ')', '[', ']', ':'])
                    .map(|e| i + e)
                    .unwrap_or(prompt.len());
                out.push(Token::Text(&prompt[i..end]));
                i = end;
            }
        }
    }
    out
}

/// Matches `\s*([+-]?[.\d]+)\s*\)` at the start of `rest`.
fn weight_then_close(rest: &str) -> Option<(f32, usize)> {
    let trimmed = rest.trim_start();
    let lead = rest.len() - trimmed.len();
    let number_len = trimmed
        .char_indices()
        .take_while(|(i, c)| {
            c.is_ascii_digit() || *c == '.' || (*i == 0 && (*c == '+' || *c == '-'))
        })
        .count();
    let weight: f32 = trimmed[..number_len].parse().ok()?;
    let after = &trimmed[number_len..];
    let after_trimmed = after.trim_start();
    after_trimmed.starts_with(')').then(|| {
        (
            weight,
            lead + number_len + (after.len() - after_trimmed.len()) + 1,
        )
    })
}

/// Parses `prompt` into weighted fragments; runs with equal weights are merged.
pub fn parse(prompt: &str) -> Vec<Fragment> {
    let mut res: Vec<Fragment> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |res: &mut Vec<Fragment>, from: usize, by: f32| {
        res[from..].iter_mut().for_each(|f| f.weight *= by)
    };
    for token in tokens(prompt) {
        match token {
            Token::Literal(text) | Token::Text(text) => res.push(Fragment {
                text: text.to_string(),
                weight: 1.0,
            }),
            Token::Open('(') => round.push(res.len()),
            Token::Open(_) => square.push(res.len()),
            Token::CloseWithWeight(weight, written) => match round.pop() {
                Some(from) => multiply(&mut res, from, weight),
                None => res.push(Fragment {
                    text: written.to_string(),
                    weight: 1.0,
                }),
            },
            Token::Close(')') => match round.pop() {
                Some(from) => multiply(&mut res, from, 1.1),
                None => res.push(Fragment {
                    text: ")".into(),
                    weight: 1.0,
                }),
            },
            Token::Close(_) => match square.pop() {
                Some(from) => multiply(&mut res, from, 1.0 / 1.1),
                None => res.push(Fragment {
                    text: "]".into(),
                    weight: 1.0,
                }),
            },
        }
    }
    for from in round {
        multiply(&mut res, from, 1.1);
    }
    for from in square {
        multiply(&mut res, from, 1.0 / 1.1);
    }
    let mut merged: Vec<Fragment> = Vec::new();
    for fragment in res {
        match merged.last_mut() {
            Some(last) if (last.weight - fragment.weight).abs() < 1e-6 => {
                last.text.push_str(&fragment.text)
            }
            _ => merged.push(fragment),
        }
    }
    if merged.is_empty() {
        merged.push(Fragment {
            text: String::new(),
            weight: 1.0,
        });
    }
    merged
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_unmatched_weight_keeps_its_text_as_written() {
        // Found by the `prompt` fuzzer: the weight was written back as a number (":0.4)"),
        // inventing text. A1111 keeps the match as written.
        for prompt in ["s:.4)n", "a : +1.50 ) b", "x:1e)"] {
            let parsed = parse(prompt);
            assert_eq!(parsed.len(), 1, "{prompt:?}: {parsed:?}");
            assert_eq!(parsed[0].text, prompt);
            assert_eq!(parsed[0].weight, 1.0);
        }
    }

    use super::*;

    fn weights(prompt: &str) -> Vec<(String, f32)> {
        parse(prompt)
            .into_iter()
            .map(|f| (f.text, (f.weight * 1000.0).round() / 1000.0))
            .collect()
    }

    #[test]
    fn matches_a1111_examples() {
        assert_eq!(weights("normal text"), vec![("normal text".into(), 1.0)]);
        assert_eq!(
            weights("an (important) word"),
            vec![
                ("an ".into(), 1.0),
                ("important".into(), 1.1),
                (" word".into(), 1.0)
            ]
        );
        assert_eq!(weights("(unbalanced"), vec![("unbalanced".into(), 1.1)]);
        assert_eq!(weights("\\(literal\\]"), vec![("(literal]".into(), 1.0)]);
        assert_eq!(
            weights("(unnecessary)(parens)"),
            vec![("unnecessaryparens".into(), 1.1)]
        );
        assert_eq!(
            weights("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky)))."),
            vec![
                ("a ".into(), 1.0),
                ("house".into(), 1.573),
                (" ".into(), 1.1),
                ("on".into(), 1.0),
                (" a ".into(), 1.1),
                ("hill".into(), 0.55),
                (", sun, ".into(), 1.1),
                ("sky".into(), 1.464),
                (".".into(), 1.1),
            ]
        );
    }

    #[test]
    fn stray_colons_and_closers_are_text() {
        assert_eq!(weights("ratio 3:2 ]"), vec![("ratio 3:2 ]".into(), 1.0)]);
        assert_eq!(weights(""), vec![("".into(), 1.0)]);
    }
}
