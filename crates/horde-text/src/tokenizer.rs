//! The tokenizers of a GGUF's vocabulary, as llama.cpp runs them: SentencePiece
//! (`tokenizer.ggml.model = "llama"`: Llama 1 and 2, Mistral) and byte-level BPE ("gpt2" with the
//! "llama-bpe" or "qwen2" pre-tokenizer: Llama 3, Qwen2).
//!
//! Why our own: the `tokenizers` crate cannot read a GGUF's vocabulary, and the numbers that
//! matter are llama.cpp's (a worker's prompt must become the tokens KoboldCpp would feed).
//! SentencePiece is llama.cpp's `llm_tokenizer_spm`: a space prefix, spaces as `▁`, one symbol
//! per UTF-8 character, then repeatedly merge the adjacent pair whose concatenation is the
//! highest-scoring token (ties to the leftmost), and bytes (`<0xXX>`) for what never became a
//! token. BPE is `llm_tokenizer_bpe`: the pre-tokenizer's regex splits the text into words, each
//! word's bytes become GPT-2's printable characters, and the pair with the lowest merge rank
//! merges first (for "llama-bpe", a word that is itself a token is taken whole).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use crate::gguf::Vocabulary;

const SPACE: &str = "\u{2581}";
const TYPE_UNKNOWN: i32 = 2;
const TYPE_CONTROL: i32 = 3;
const TYPE_BYTE: i32 = 6;

/// llama.cpp's pre-tokenizer regexes (`llama-vocab.cpp`), by `tokenizer.ggml.pre`.
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A vocabulary the tokenizer cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenizerError {
    #[error("tokenizer.ggml.model {0:?} is not supported (\"llama\", \"gpt2\")")]
    UnsupportedModel(String),
    #[error("tokenizer.ggml.pre {0:?} is not supported (\"llama-bpe\", \"qwen2\")")]
    UnsupportedPre(String),
    #[error("tokenizer.ggml.scores has {scores} entries for {tokens} tokens")]
    ScoresLength { scores: usize, tokens: usize },
    #[error("tokenizer.ggml.merges entry {0:?} is not two tokens")]
    BadMerge(String),
}

/// The BPE half: merge ranks, the pre-tokenizer, GPT-2's byte ↔ character maps.
#[derive(Clone, Debug)]
struct Bpe {
    ranks: HashMap<(String, String), usize>,
    split: fancy_regex::Regex,
    whole_words: bool,
    byte_chars: [char; 256],
    char_bytes: HashMap<char, u8>,
}

/// A tokenizer over a GGUF vocabulary.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    vocab: Vocabulary,
    ids: HashMap<String, u32>,
    bpe: Option<Bpe>,
}

/// A candidate merge of the symbols at `left` and `right` (higher score first).
#[derive(Debug, PartialEq)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl Eq for Bigram {}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        // Highest score first; on a tie, the leftmost pair.
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One symbol of the merge: a byte range of the text and its neighbours.
#[derive(Clone, Copy, Debug)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// GPT-2's map of the 256 bytes to printable characters.
fn byte_chars() -> [char; 256] {
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut chars = ['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let c = if printable(b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        chars[b as usize] = char::from_u32(c).unwrap_or('?');
    }
    chars
}

impl Bpe {
    fn new(vocab: &Vocabulary) -> Result<Self, TokenizerError> {
        let (pattern, whole_words) = match vocab.pre.as_deref() {
            Some("llama-bpe" | "llama3") => (LLAMA3_SPLIT, true),
            Some("qwen2") => (QWEN2_SPLIT, false),
            other => return Err(TokenizerError::UnsupportedPre(other.unwrap_or("").into())),
        };
        let split = fancy_regex::Regex::new(pattern)
            .map_err(|e| TokenizerError::UnsupportedPre(e.to_string()))?;
        let mut ranks = HashMap::new();
        for (rank, m) in vocab.merges.iter().enumerate() {
            let (l, r) = m
                .split_once(' ')
                .ok_or_else(|| TokenizerError::BadMerge(m.clone()))?;
            ranks.entry((l.to_owned(), r.to_owned())).or_insert(rank);
        }
        let byte_chars = byte_chars();
        let char_bytes = byte_chars
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();
        Ok(Self {
            ranks,
            split,
            whole_words,
            byte_chars,
            char_bytes,
        })
    }
}

impl Tokenizer {
    pub fn new(vocab: Vocabulary) -> Result<Self, TokenizerError> {
        let bpe = match vocab.model.as_str() {
            "llama" if vocab.scores.len() != vocab.tokens.len() => {
                return Err(TokenizerError::ScoresLength {
                    scores: vocab.scores.len(),
                    tokens: vocab.tokens.len(),
                });
            }
            "llama" => None,
            "gpt2" => Some(Bpe::new(&vocab)?),
            other => return Err(TokenizerError::UnsupportedModel(other.into())),
        };
        let ids = vocab
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        Ok(Self { vocab, ids, bpe })
    }

    pub fn vocabulary(&self) -> &Vocabulary {
        &self.vocab
    }

    pub fn bos(&self) -> Option<u32> {
        self.vocab.bos
    }

    pub fn eos(&self) -> Option<u32> {
        self.vocab.eos
    }

    /// The tokens of `text`, after BOS when the vocabulary asks for it.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .vocab
            .bos
            .filter(|_| self.vocab.add_bos)
            .into_iter()
            .collect();
        if text.is_empty() {
            return out;
        }
        match &self.bpe {
            None => {
                let escaped = format!(" {text}").replace(' ', SPACE);
                self.encode_word(&escaped, &mut out);
            }
            Some(bpe) => {
                for word in bpe.split.find_iter(text).filter_map(Result::ok) {
                    let mapped: String = word
                        .as_str()
                        .bytes()
                        .map(|b| bpe.byte_chars[b as usize])
                        .collect();
                    match self.ids.get(&mapped) {
                        Some(&id) if bpe.whole_words => out.push(id),
                        _ => self.encode_word(&mapped, &mut out),
                    }
                }
            }
        }
        out
    }

    /// Merges `word` and appends its tokens.
    fn encode_word(&self, word: &str, out: &mut Vec<u32>) {
        let symbols = self.merge(word);
        let mut at = Some(0);
        while let Some(i) = at {
            let s = symbols[i];
            self.emit(&word[s.start..s.start + s.len], out);
            at = s.next;
        }
    }

    /// Merges the characters of `text` by score; the surviving symbols stay linked from 0.
    fn merge(&self, text: &str) -> Vec<Symbol> {
        let starts: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
        let n = starts.len();
        let mut symbols: Vec<Symbol> = starts
            .iter()
            .enumerate()
            .map(|(i, &start)| Symbol {
                start,
                len: starts.get(i + 1).copied().unwrap_or(text.len()) - start,
                prev: i.checked_sub(1),
                next: (i + 1 < n).then_some(i + 1),
            })
            .collect();
        let mut queue = BinaryHeap::new();
        for i in 1..n {
            self.push_bigram(text, &symbols, i - 1, i, &mut queue);
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (symbols[b.left], symbols[b.right]);
            // Stale: one side was merged away since this pair was queued.
            if l.len == 0 || r.len == 0 || l.len + r.len != b.len {
                continue;
            }
            symbols[b.left].len += r.len;
            symbols[b.right].len = 0;
            symbols[b.left].next = r.next;
            if let Some(next) = r.next {
                symbols[next].prev = Some(b.left);
            }
            if let Some(prev) = l.prev {
                self.push_bigram(text, &symbols, prev, b.left, &mut queue);
            }
            if let Some(next) = r.next {
                self.push_bigram(text, &symbols, b.left, next, &mut queue);
            }
        }
        symbols
    }

    fn push_bigram(
        &self,
        text: &str,
        symbols: &[Symbol],
        left: usize,
        right: usize,
        queue: &mut BinaryHeap<Bigram>,
    ) {
        let (l, r) = (symbols[left], symbols[right]);
        let (lt, rt) = (
            &text[l.start..l.start + l.len],
            &text[r.start..r.start + r.len],
        );
        let score = match &self.bpe {
            // SentencePiece: the joined piece's score.
            None => self
                .ids
                .get(&text[l.start..r.start + r.len])
                .map(|&id| self.vocab.scores[id as usize]),
            // BPE: the lowest rank first.
            Some(bpe) => bpe
                .ranks
                .get(&(lt.to_owned(), rt.to_owned()))
                .map(|&rank| -(rank as f32)),
        };
        if let Some(score) = score {
            queue.push(Bigram {
                score,
                left,
                right,
                len: l.len + r.len,
            });
        }
    }

    /// A final symbol: its token, or else its bytes' tokens (SentencePiece `<0xXX>`, or unknown)
    /// or, for BPE, its characters' tokens.
    fn emit(&self, piece: &str, out: &mut Vec<u32>) {
        if let Some(&id) = self.ids.get(piece) {
            out.push(id);
            return;
        }
        if self.bpe.is_some() {
            out.extend(
                piece
                    .chars()
                    .filter_map(|c| self.ids.get(c.encode_utf8(&mut [0; 4]) as &str).copied()),
            );
            return;
        }
        for b in piece.bytes() {
            if let Some(id) = self
                .ids
                .get(&format!("<0x{b:02X}>"))
                .copied()
                .or(self.vocab.unk)
            {
                out.push(id);
            }
        }
    }

    /// The bytes token `id` stands for: `▁` as a space (SentencePiece), GPT-2's characters as
    /// their bytes (BPE), byte tokens as their byte, control tokens as nothing.
    pub fn piece(&self, id: u32) -> Vec<u8> {
        let Some(text) = self.vocab.tokens.get(id as usize) else {
            return Vec::new();
        };
        match (
            self.vocab.types.get(id as usize).copied().unwrap_or(1),
            &self.bpe,
        ) {
            (TYPE_CONTROL, _) => Vec::new(),
            (TYPE_BYTE, _) => byte_token(text).map(|b| vec![b]).unwrap_or_default(),
            // llama.cpp shows an unknown token as "▅".
            (TYPE_UNKNOWN, _) => "\u{2585}".as_bytes().to_vec(),
            (_, Some(bpe)) => text
                .chars()
                .filter_map(|c| bpe.char_bytes.get(&c).copied())
                .collect(),
            (_, None) => text.replace(SPACE, " ").into_bytes(),
        }
    }

    /// The text of `ids` (invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> String {
        let bytes: Vec<u8> = ids.iter().flat_map(|&id| self.piece(id)).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// The byte of a `<0xXX>` token.
fn byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(pieces: &[&str]) -> Vocabulary {
        let mut tokens: Vec<String> = ["<unk>", "<s>", "</s>"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        tokens.extend((0..=255u8).map(|b| format!("<0x{b:02X}>")));
        tokens.extend(pieces.iter().map(|s| s.to_string()));
        let mut scores = vec![0.0; 259];
        scores.extend((0..pieces.len()).map(|i| -(i as f32)));
        let mut types = vec![2, 3, 3];
        types.extend([6; 256]);
        types.extend(vec![1; pieces.len()]);
        Vocabulary {
            model: "llama".into(),
            tokens,
            scores,
            merges: Vec::new(),
            pre: None,
            types,
            bos: Some(1),
            eos: Some(2),
            unk: Some(0),
            add_bos: true,
        }
    }

    #[test]
    fn merges_by_score_and_falls_back_to_bytes() {
        // "ab" outranks "bc", so "abc" is "ab" + "c"; "é" is not a token: its two bytes.
        let t = Tokenizer::new(vocab(&["▁", "ab", "bc", "a", "b", "c"])).unwrap();
        let ids = t.encode("abc é");
        let ab = t.ids["ab"];
        let c = t.ids["c"];
        let space = t.ids["▁"];
        assert_eq!(ids, vec![1, space, ab, c, space, 3 + 0xC3, 3 + 0xA9]);
        assert_eq!(t.decode(&ids), " abc é");
        // With "bc" ranked first, the other split.
        let t = Tokenizer::new(vocab(&["▁", "bc", "ab", "a", "b", "c"])).unwrap();
        assert_eq!(t.encode("abc")[2..], [t.ids["a"], t.ids["bc"]]);
    }

    #[test]
    fn refuses_unknown_models_and_pre_tokenizers() {
        let v = Vocabulary {
            model: "bert".into(),
            ..vocab(&[])
        };
        assert_eq!(
            Tokenizer::new(v).unwrap_err(),
            TokenizerError::UnsupportedModel("bert".into())
        );
        let v = Vocabulary {
            model: "gpt2".into(),
            pre: Some("default".into()),
            ..vocab(&[])
        };
        assert_eq!(
            Tokenizer::new(v).unwrap_err(),
            TokenizerError::UnsupportedPre("default".into())
        );
    }

    #[test]
    fn gpt2_bytes_map_to_printable_characters_and_back() {
        let chars = byte_chars();
        assert_eq!(
            (
                chars[b' ' as usize],
                chars[b'\n' as usize],
                chars[b'a' as usize]
            ),
            ('Ġ', 'Ċ', 'a')
        );
        let distinct: std::collections::HashSet<char> = chars.iter().copied().collect();
        assert_eq!(distinct.len(), 256);
    }
}
