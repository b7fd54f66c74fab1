//! CLIP's byte-level BPE tokenizer, read from a Hugging Face `tokenizer.json` (the `model.vocab`
//! and `model.merges` of the `openai/clip-vit-*` repositories).
//!
//! Text → lower case, runs of white space → one space, trimmed; split into `<|startoftext|>`,
//! `<|endoftext|>`, the contractions `'s 't 're 've 'm 'll 'd`, runs of letters, single digits,
//! and runs of other non-space characters (CLIP's pattern); each piece is byte-level encoded
//! (GPT-2's byte → unicode table), `</w>` is appended to its last symbol, and BPE merges are
//! applied by rank. The sequence is `<|startoftext|>` tokens `<|endoftext|>`, truncated to the
//! context length (keeping the end token) and padded with the pad token (default `<|endoftext|>`).
//! Not done: NFC normalisation and ftfy's mojibake repair (identity on ASCII prompts).
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;

pub const START_TOKEN: &str = "<|startoftext|>";
pub const END_TOKEN: &str = "<|endoftext|>";

/// GPT-2's reversible byte → unicode-character map.
fn bytes_to_unicode() -> [char; 256] {
    let mut table = ['\0'; 256];
    let printable =
        |b: u32| (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
    let mut n = 0u32;
    for b in 0..256u32 {
        table[b as usize] = if printable(b) {
            char::from_u32(b).unwrap_or('?')
        } else {
            let c = char::from_u32(256 + n).unwrap_or('?');
            n += 1;
            c
        };
    }
    table
}

#[derive(Debug, Clone)]
pub struct ClipTokenizer {
    vocab: HashMap<String, i64>,
    ranks: HashMap<(String, String), usize>,
    byte_map: [char; 256],
    pub start_id: i64,
    pub end_id: i64,
    pub pad_id: i64,
    pub context_length: usize,
}

impl ClipTokenizer {
    /// Builds a tokenizer from a vocabulary and merge list.
    pub fn new(
        vocab: HashMap<String, i64>,
        merges: Vec<(String, String)>,
        context_length: usize,
    ) -> Result<Self> {
        let id = |t: &str| {
            vocab
                .get(t)
                .copied()
                .with_context(|| format!("tokenizer vocabulary lacks {t}"))
        };
        let start_id = id(START_TOKEN)?;
        let end_id = id(END_TOKEN)?;
        if context_length < 2 {
            bail!("tokenizer context length must be >= 2");
        }
        let ranks = merges
            .into_iter()
            .enumerate()
            .map(|(i, m)| (m, i))
            .collect();
        Ok(Self {
            vocab,
            ranks,
            byte_map: bytes_to_unicode(),
            start_id,
            end_id,
            pad_id: end_id,
            context_length,
        })
    }

    /// Reads a Hugging Face `tokenizer.json` (BPE model; merges as `"a b"` strings or pairs).
    pub fn from_file(path: &Path, context_length: usize) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
        let model = &json["model"];
        let vocab_json = model["vocab"]
            .as_object()
            .with_context(|| format!("{}: no model.vocab object", path.display()))?;
        let mut vocab = HashMap::with_capacity(vocab_json.len());
        for (k, v) in vocab_json {
            let id = v.as_i64().with_context(|| {
                format!(
                    "{}: vocabulary id of {k:?} is not an integer",
                    path.display()
                )
            })?;
            vocab.insert(k.clone(), id);
        }
        // Added tokens (the special tokens) may only be listed there.
        if let Some(added) = json["added_tokens"].as_array() {
            for t in added {
                if let (Some(c), Some(id)) = (t["content"].as_str(), t["id"].as_i64()) {
                    vocab.entry(c.to_string()).or_insert(id);
                }
            }
        }
        let merges_json = model["merges"]
            .as_array()
            .with_context(|| format!("{}: no model.merges list", path.display()))?;
        let mut merges = Vec::with_capacity(merges_json.len());
        for m in merges_json {
            let pair = if let Some(s) = m.as_str() {
                s.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            } else if let Some(a) = m.as_array() {
                match (
                    a.first().and_then(|x| x.as_str()),
                    a.get(1).and_then(|x| x.as_str()),
                ) {
                    (Some(x), Some(y)) if a.len() == 2 => Some((x.to_string(), y.to_string())),
                    _ => None,
                }
            } else {
                None
            };
            merges.push(pair.with_context(|| format!("{}: bad merge entry {m}", path.display()))?);
        }
        let mut tok = Self::new(vocab, merges, context_length)?;
        if let Some(pad) = json["padding"]["pad_id"].as_i64() {
            tok.pad_id = pad;
        }
        Ok(tok)
    }

    /// Reads the slow-tokenizer files of a diffusers `tokenizer/` folder: `vocab.json` (token →
    /// id) and `merges.txt` (one `a b` pair per line after a `#version` header).
    pub fn from_vocab_merges(
        vocab_path: &Path,
        merges_path: &Path,
        context_length: usize,
    ) -> Result<Self> {
        let text = std::fs::read_to_string(vocab_path)
            .with_context(|| format!("reading {}", vocab_path.display()))?;
        let vocab: HashMap<String, i64> = serde_json::from_str(&text)
            .with_context(|| format!("{}: not a token → id JSON object", vocab_path.display()))?;
        let text = std::fs::read_to_string(merges_path)
            .with_context(|| format!("reading {}", merges_path.display()))?;
        let mut merges = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.starts_with("#version") || line.trim().is_empty() {
                continue;
            }
            let (a, b) = line.split_once(' ').with_context(|| {
                format!(
                    "{}:{}: bad merge line {line:?}",
                    merges_path.display(),
                    i + 1
                )
            })?;
            merges.push((a.to_string(), b.to_string()));
        }
        Self::new(vocab, merges, context_length)
    }

    /// CLIP's pre-tokenisation of normalised text.
    fn pieces(text: &str) -> Vec<String> {
        let chars: Vec<char> = text.chars().collect();
        let mut out = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let rest: String = chars[i..chars.len().min(i + 16)].iter().collect();
            if let Some(t) = [START_TOKEN, END_TOKEN]
                .iter()
                .find(|t| rest.starts_with(**t))
            {
                out.push(t.to_string());
                i += t.chars().count();
                continue;
            }
            let c = chars[i];
            if c.is_whitespace() {
                i += 1;
                continue;
            }
            if c == '\'' {
                let contraction = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
                    .iter()
                    .find(|t| rest.starts_with(**t));
                if let Some(t) = contraction {
                    out.push(t.to_string());
                    i += t.len();
                    continue;
                }
            }
            let start = i;
            if c.is_alphabetic() {
                while i < chars.len() && chars[i].is_alphabetic() {
                    i += 1;
                }
            } else if c.is_numeric() {
                i += 1;
            } else {
                while i < chars.len()
                    && !chars[i].is_whitespace()
                    && !chars[i].is_alphabetic()
                    && !chars[i].is_numeric()
                {
                    i += 1;
                }
            }
            out.push(chars[start..i].iter().collect());
        }
        out
    }

    fn bpe(&self, piece: &str) -> Result<Vec<i64>> {
        if piece == START_TOKEN {
            return Ok(vec![self.start_id]);
        }
        if piece == END_TOKEN {
            return Ok(vec![self.end_id]);
        }
        let mut word: Vec<String> = piece
            .bytes()
            .map(|b| self.byte_map[b as usize].to_string())
            .collect();
        if let Some(last) = word.last_mut() {
            last.push_str("</w>");
        }
        while word.len() > 1 {
            let best = (0..word.len() - 1)
                .filter_map(|i| {
                    self.ranks
                        .get(&(word[i].clone(), word[i + 1].clone()))
                        .map(|&r| (r, i))
                })
                .min();
            let Some((_, i)) = best else { break };
            let (a, b) = (word[i].clone(), word[i + 1].clone());
            // Merge every occurrence of the pair, left to right.
            let mut merged = Vec::with_capacity(word.len());
            let mut i = 0;
            while i < word.len() {
                if i + 1 < word.len() && word[i] == a && word[i + 1] == b {
                    merged.push(format!("{a}{b}"));
                    i += 2;
                } else {
                    merged.push(word[i].clone());
                    i += 1;
                }
            }
            word = merged;
        }
        word.iter()
            .map(|s| {
                self.vocab
                    .get(s)
                    .copied()
                    .with_context(|| format!("token {s:?} of {piece:?} is not in the vocabulary"))
            })
            .collect()
    }

    /// Token ids of `text` without start/end tokens.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<i64>> {
        let norm = text
            .to_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let mut ids = Vec::new();
        for p in Self::pieces(&norm) {
            ids.extend(self.bpe(&p)?);
        }
        Ok(ids)
    }

    /// `[start, tokens…, end, pad…]` of exactly `context_length` ids (tokens truncated).
    pub fn encode(&self, text: &str) -> Result<Vec<i64>> {
        let mut ids = vec![self.start_id];
        let raw = self.encode_raw(text)?;
        let keep = raw.len().min(self.context_length - 2);
        ids.extend_from_slice(&raw[..keep]);
        ids.push(self.end_id);
        ids.resize(self.context_length, self.pad_id);
        Ok(ids)
    }

    /// A `[B, context_length]` int64 tensor of the encoded texts.
    pub fn encode_batch(&self, texts: &[String]) -> Result<tch::Tensor> {
        let mut all = Vec::with_capacity(texts.len() * self.context_length);
        for t in texts {
            all.extend(self.encode(t)?);
        }
        Ok(tch::Tensor::from_slice(&all).view([texts.len() as i64, self.context_length as i64]))
    }
}
