//! The tokenizer as GGUF metadata, from `tokenizer.json` (and `tokenizer_config.json`,
//! `config.json`, `chat_template.jinja`), following llama.cpp's converter for byte-level BPE
//! ("gpt2") tokenizers: the vocabulary with each token's type, the merges, the pre-tokenizer's
//! name, the special token ids, whether BOS/EOS/SEP are added, and the chat template.

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use crate::error::ConvertError;
use crate::gguf::Value;

/// The text llama.cpp's converter tokenizes to tell pre-tokenizers apart (its `chktxt`): the
/// SHA-256 of the ids, printed as a Python list, names the split.
const CHECK_TEXT: &str = "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u{200d}🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL";

/// Pre-tokenizers converted here: the hash of [`CHECK_TEXT`]'s ids and llama.cpp's name for the
/// split (from llama.cpp's `convert_hf_to_gguf_update.py` registry, for the Llama-architecture
/// models this converter takes).
const PRE_TOKENIZERS: [(&str, &str); 2] = [
    // Llama 3, 3.1, 3.2 (meta-llama/Meta-Llama-3-8B).
    (
        "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5",
        "llama-bpe",
    ),
    // SmolLM, SmolLM2 (HuggingFaceTB/SmolLM-135M).
    (
        "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249",
        "smollm",
    ),
];

/// GGUF token types.
const NORMAL: i32 = 1;
const UNUSED: i32 = 5;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// The special token kinds, in the order llama.cpp's `SpecialVocab` visits them, with their
/// GGUF key (`cls` has none: the converter drops it).
const SPECIAL_KINDS: [(&str, Option<&str>); 7] = [
    ("bos", Some("tokenizer.ggml.bos_token_id")),
    ("eos", Some("tokenizer.ggml.eos_token_id")),
    ("unk", Some("tokenizer.ggml.unknown_token_id")),
    ("sep", Some("tokenizer.ggml.seperator_token_id")),
    ("pad", Some("tokenizer.ggml.padding_token_id")),
    ("cls", None),
    ("mask", Some("tokenizer.ggml.mask_token_id")),
];

fn read_json(path: &Path) -> Result<Option<Json>, ConvertError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(ConvertError::io(path))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ConvertError::file(path, format!("not valid JSON: {e}")))
}

/// The tokenizer's metadata, in the order llama.cpp's converter writes it.
pub fn metadata(dir: &Path, vocab_size: usize) -> Result<Vec<(String, Value)>, ConvertError> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        let hint = if dir.join("tokenizer.model").is_file() {
            " (only tokenizer.model: SentencePiece tokenizers such as Llama 2's are not converted here; llama.cpp's convert_hf_to_gguf.py converts them)"
        } else {
            ""
        };
        return Err(ConvertError::file(&path, format!("missing{hint}")));
    }
    if dir.join("tokenizer.model").is_file() {
        return Err(ConvertError::file(
            &dir.join("tokenizer.model"),
            "a SentencePiece tokenizer (llama.cpp's converter prefers it over tokenizer.json): not converted here; use llama.cpp's convert_hf_to_gguf.py",
        ));
    }
    let json = read_json(&path)?.expect("checked above");
    let cannot = |why: String| {
        ConvertError::file(&path, format!("cannot map this tokenizer to GGUF: {why}"))
    };
    let model = &json["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(cannot(format!(
            "its model is {}, not byte-level BPE",
            model["type"]
        )));
    }
    if model["byte_fallback"].as_bool() == Some(true) {
        return Err(cannot("a byte-fallback (SentencePiece-style) BPE; llama.cpp's convert_hf_to_gguf.py converts it".into()));
    }
    let tokenizer = tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| ConvertError::file(&path, format!("not a readable tokenizer: {e}")))?;
    let config = read_json(&dir.join("tokenizer_config.json"))?;

    let mut out: Vec<(String, Value)> = Vec::new();
    if let Some(add_prefix_space) = config
        .as_ref()
        .and_then(|c| c.get("add_prefix_space"))
        .and_then(|v| v.as_bool())
    {
        out.push((
            "tokenizer.ggml.add_space_prefix".into(),
            Value::Bool(add_prefix_space),
        ));
    }
    let (tokens, types) = vocabulary(&path, &tokenizer, &json, vocab_size)?;
    let pre = pre_tokenizer(&path, &tokenizer)?;
    out.push(("tokenizer.ggml.model".into(), Value::String("gpt2".into())));
    out.push(("tokenizer.ggml.pre".into(), Value::String(pre.into())));
    out.push(("tokenizer.ggml.tokens".into(), Value::Strings(tokens)));
    out.push(("tokenizer.ggml.token_type".into(), Value::I32s(types)));
    let merges = merges(&path, &json)?;
    if !merges.is_empty() {
        out.push(("tokenizer.ggml.merges".into(), Value::Strings(merges)));
    }
    out.extend(special_vocab(dir, &json, config)?);
    // llama.cpp's converter turns BOS off for every 49,152-token vocabulary (SmolLM's).
    if vocab_size == 49_152 {
        set(&mut out, "tokenizer.ggml.add_bos_token", Value::Bool(false));
    }
    Ok(out)
}

/// Sets `key`, in place where it is already there (as a Python dict keeps its first position).
fn set(out: &mut Vec<(String, Value)>, key: &str, value: Value) {
    match out.iter_mut().find(|(k, _)| k == key) {
        Some(slot) => slot.1 = value,
        None => out.push((key.into(), value)),
    }
}

/// Every id below `vocab_size` with its text and type (`[PAD{i}]`, unused, for ids the
/// tokenizer lacks).
fn vocabulary(
    path: &Path,
    tokenizer: &tokenizers::Tokenizer,
    json: &Json,
    vocab_size: usize,
) -> Result<(Vec<String>, Vec<i32>), ConvertError> {
    let vocab = tokenizer.get_vocab(true);
    if let Some(max) = vocab.values().max() {
        if *max as usize >= vocab_size {
            return Err(ConvertError::file(
                path,
                format!(
                    "token id {max} is past config.json's vocab_size {vocab_size}: the tokenizer is not this model's"
                ),
            ));
        }
    }
    let mut reverse: Vec<Option<&str>> = vec![None; vocab_size];
    for (text, id) in &vocab {
        reverse[*id as usize] = Some(text);
    }
    // Added tokens: (special, normalized) by id.
    let mut added: HashMap<u32, (bool, bool)> = HashMap::new();
    for token in json["added_tokens"].as_array().into_iter().flatten() {
        if let Some(id) = token["id"].as_u64() {
            added.insert(
                id as u32,
                (
                    token["special"].as_bool().unwrap_or(false),
                    token["normalized"].as_bool().unwrap_or(true),
                ),
            );
        }
    }
    let mut tokens = Vec::with_capacity(vocab_size);
    let mut types = Vec::with_capacity(vocab_size);
    for (id, text) in reverse.into_iter().enumerate() {
        let Some(text) = text else {
            tokens.push(format!("[PAD{id}]"));
            types.push(UNUSED);
            continue;
        };
        let Some(&(special, normalized)) = added.get(&(id as u32)) else {
            tokens.push(text.to_string());
            types.push(NORMAL);
            continue;
        };
        let mut text = text.to_string();
        if !normalized {
            // llama.cpp's tokenizer expects added tokens pre-normalized: the converter
            // round-trips each through the tokenizer.
            let ids = tokenizer.encode(text.as_str(), false).map_err(|e| {
                ConvertError::file(path, format!("encoding added token {text:?}: {e}"))
            })?;
            text = tokenizer.decode(ids.get_ids(), false).map_err(|e| {
                ConvertError::file(path, format!("decoding added token {text:?}: {e}"))
            })?;
        }
        if special || looks_special(&text) {
            types.push(CONTROL);
        } else {
            text = text.replace('\u{2581}', " ");
            types.push(USER_DEFINED);
        }
        tokens.push(text);
    }
    Ok((tokens, types))
}

/// Added tokens some models forget to mark special (llama.cpp's `does_token_look_special`).
fn looks_special(text: &str) -> bool {
    matches!(text, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (text.starts_with("<|") && text.ends_with("|>"))
        || (text.starts_with("<｜") && text.ends_with("｜>"))
        || (text.starts_with("<unused") && text.ends_with('>'))
}

/// llama.cpp's name for the tokenizer's split, found by the ids it gives [`CHECK_TEXT`].
fn pre_tokenizer(
    path: &Path,
    tokenizer: &tokenizers::Tokenizer,
) -> Result<&'static str, ConvertError> {
    let ids = tokenizer
        .encode(CHECK_TEXT, true)
        .map_err(|e| ConvertError::file(path, format!("tokenizing the check text: {e}")))?;
    let printed = format!(
        "[{}]",
        ids.get_ids()
            .iter()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let hash = format!("{:x}", Sha256::digest(printed.as_bytes()));
    PRE_TOKENIZERS
        .iter()
        .find(|(known, _)| *known == hash)
        .map(|(_, name)| *name)
        .ok_or_else(|| {
            ConvertError::file(
                path,
                format!(
                    "cannot map this tokenizer to GGUF: its pre-tokenizer (check hash {hash}) is none of {} that this converter knows; llama.cpp's convert_hf_to_gguf.py knows more",
                    PRE_TOKENIZERS.iter().map(|(_, n)| *n).collect::<Vec<_>>().join(", ")
                ),
            )
        })
}

/// The merges as "left right" strings (pairs stored as lists have their spaces written as
/// U+0120, as llama.cpp's converter does).
fn merges(path: &Path, json: &Json) -> Result<Vec<String>, ConvertError> {
    let Some(list) = json["model"]["merges"].as_array() else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|merge| match merge {
            Json::String(s) => Ok(s.clone()),
            Json::Array(pair) if pair.len() == 2 => {
                let part = |v: &Json| v.as_str().map(|s| s.replace(' ', "\u{0120}"));
                match (part(&pair[0]), part(&pair[1])) {
                    (Some(a), Some(b)) => Ok(format!("{a} {b}")),
                    _ => Err(ConvertError::file(
                        path,
                        format!("merge {merge} is not two strings"),
                    )),
                }
            }
            other => Err(ConvertError::file(
                path,
                format!("merge {other} is neither a string nor a pair"),
            )),
        })
        .collect()
}

/// Special token ids, whether BOS/EOS/SEP are added, and the chat template: llama.cpp's
/// `SpecialVocab` (tokenizer.json's post-processor and added tokens, tokenizer_config.json,
/// then config.json's ids).
fn special_vocab(
    dir: &Path,
    json: &Json,
    mut config: Option<Json>,
) -> Result<Vec<(String, Value)>, ConvertError> {
    let mut ids: Vec<(String, u32)> = Vec::new();
    let mut add: Vec<(&'static str, bool)> = Vec::new();
    let kinds: Vec<&'static str> = SPECIAL_KINDS.iter().map(|(k, _)| *k).collect();
    let set_add = |add: &mut Vec<(&'static str, bool)>,
                   kind: &'static str,
                   value: bool,
                   only_if_absent: bool| {
        match add.iter_mut().find(|(k, _)| *k == kind) {
            Some(slot) if !only_if_absent => slot.1 = value,
            Some(_) => {}
            None => add.push((kind, value)),
        }
    };
    let config_str = |config: &Option<Json>, key: &str| -> Option<String> {
        config
            .as_ref()
            .and_then(|c| c.get(key))
            .and_then(token_content)
    };
    let mut bos = config_str(&config, "bos_token");
    let mut cls = config_str(&config, "cls_token");
    let mut eos = config_str(&config, "eos_token");
    let sep = config_str(&config, "sep_token");
    if bos.is_none() && cls.is_some() {
        if let Some(c) = config.as_mut() {
            bos = cls.clone();
            c["bos_token"] = Json::String(bos.clone().unwrap_or_default());
        }
    }
    if eos.is_none() && sep.is_some() {
        if let Some(c) = config.as_mut() {
            eos = sep.clone();
            c["eos_token"] = Json::String(eos.clone().unwrap_or_default());
        }
    }
    let post = &json["post_processor"];
    let processors: Vec<&Json> = match post.get("processors").and_then(|p| p.as_array()) {
        Some(list) => list.iter().collect(),
        None if !post.is_null() => vec![post],
        None => Vec::new(),
    };
    for processor in processors {
        match processor["type"].as_str() {
            Some("ByteLevel") => {
                set_add(&mut add, "bos", false, true);
                set_add(&mut add, "eos", false, true);
            }
            Some("TemplateProcessing") => {
                let single = processor["single"].as_array().cloned().unwrap_or_default();
                let special_id =
                    |item: &Json| item["SpecialToken"]["id"].as_str().map(String::from);
                if single.len() > 1 {
                    if let Some(first) = special_id(&single[0]) {
                        let unknown = Some(&first) != bos.as_ref() && Some(&first) != cls.as_ref();
                        match config.as_mut() {
                            None => bos = Some(first.clone()),
                            Some(config) if unknown => {
                                if bos.is_none() {
                                    bos = Some(first.clone());
                                    config["bos_token"] = Json::String(first.clone());
                                }
                                if cls.is_none() {
                                    cls = Some(first.clone());
                                    config["cls_token"] = Json::String(first.clone());
                                }
                            }
                            Some(_) => {}
                        }
                        let known = Some(&first) == bos.as_ref() || Some(&first) == cls.as_ref();
                        set_add(&mut add, "bos", known, false);
                    }
                    if let Some(last) = special_id(single.last().expect("len > 1")) {
                        if config.is_none() {
                            eos = Some(last.clone());
                        } else if Some(&last) != eos.as_ref() {
                            // Llama-architecture tokenizers do not end single sequences with a
                            // token other than EOS; the converter's EOT/EOM shuffle is not
                            // reproduced.
                            return Err(ConvertError::file(
                                &dir.join("tokenizer.json"),
                                format!("cannot map this tokenizer to GGUF: its template ends sequences with {last}, not the EOS token"),
                            ));
                        }
                        set_add(&mut add, "eos", Some(&last) == eos.as_ref(), false);
                    }
                }
                if let Some(add_sep) =
                    template_adds_sep(processor, &single, sep.as_deref(), eos.as_deref())
                {
                    set_add(&mut add, "sep", add_sep, false);
                }
            }
            Some("RobertaProcessing") => {
                return Err(ConvertError::file(
                    &dir.join("tokenizer.json"),
                    "cannot map this tokenizer to GGUF: a RoBERTa post-processor is not a Llama tokenizer's",
                ));
            }
            _ => {}
        }
    }
    let added_tokens: Vec<(String, u32)> = json["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| Some((t["content"].as_str()?.to_string(), t["id"].as_u64()? as u32)))
        .collect();
    let mut chat_template: Option<String> = None;
    if let Some(config) = &config {
        let jinja = dir.join("chat_template.jinja");
        let json_file = dir.join("chat_template.json");
        let alternative = if jinja.is_file() {
            Some(std::fs::read_to_string(&jinja).map_err(ConvertError::io(&jinja))?)
        } else if json_file.is_file() {
            read_json(&json_file)?.and_then(|j| {
                j.get("chat_template")
                    .and_then(|t| t.as_str())
                    .map(String::from)
            })
        } else {
            None
        };
        chat_template = match config.get("chat_template") {
            Some(Json::String(s)) => Some(s.clone()),
            Some(Json::Array(list)) => list
                .iter()
                .find(|t| t["name"] == "default")
                .and_then(|t| t["template"].as_str())
                .map(String::from),
            Some(_) => None,
            None => alternative,
        };
        for kind in kinds.iter().copied() {
            if let Some(value) = config
                .get(format!("add_{kind}_token"))
                .and_then(|v| v.as_bool())
            {
                set_add(&mut add, kind, value, true);
            }
            let Some(content) = config.get(format!("{kind}_token")).and_then(token_content) else {
                continue;
            };
            if let Some((_, id)) = added_tokens.iter().find(|(c, _)| *c == content) {
                if !ids.iter().any(|(k, _)| k == kind) {
                    ids.push((kind.to_string(), *id));
                }
            }
        }
    }
    // config.json's ids where the tokenizer named none.
    if let Some(model_config) = read_json(&dir.join("config.json"))? {
        for kind in &kinds {
            if let Some(id) = model_config
                .get(format!("{kind}_token_id"))
                .and_then(|v| v.as_u64())
            {
                if !ids.iter().any(|(k, _)| k == kind) {
                    ids.push((kind.to_string(), id as u32));
                }
            }
        }
    }
    let mut out = Vec::new();
    for (kind, id) in ids {
        if let Some((_, Some(key))) = SPECIAL_KINDS.iter().find(|(k, _)| *k == kind) {
            out.push((key.to_string(), Value::U32(id)));
        }
    }
    for (kind, value) in add {
        out.push((
            format!("tokenizer.ggml.add_{kind}_token"),
            Value::Bool(value),
        ));
    }
    if let Some(template) = chat_template {
        out.push(("tokenizer.chat_template".into(), Value::String(template)));
    }
    Ok(out)
}

/// Whether a template's pair form puts a separator between its sequences
/// (`A [sep] [eos] B`), as llama.cpp's converter reads it; `None` where it says nothing.
fn template_adds_sep(
    processor: &Json,
    single: &[Json],
    sep: Option<&str>,
    eos: Option<&str>,
) -> Option<bool> {
    let pair = processor["pair"].as_array()?;
    if pair.is_empty() {
        return None;
    }
    let special_id = |item: &Json| item["SpecialToken"]["id"].as_str().map(String::from);
    let first = if single.len() > 1 {
        special_id(&single[0])
    } else {
        None
    };
    let last = if single.len() > 1 {
        special_id(single.last()?)
    } else {
        None
    };
    let start = usize::from(first.is_some() && special_id(&pair[0]) == first);
    let stop = if last.is_some() && special_id(pair.last()?) == last {
        pair.len() - 1
    } else {
        pair.len()
    };
    let inner = pair.get(start..stop)?;
    if inner.is_empty() {
        return None;
    }
    let a = inner[0]["Sequence"]["id"].as_str();
    let b = inner[inner.len() - 1]["Sequence"]["id"].as_str();
    if a != Some("A") || b != Some("B") || inner.len() < 3 {
        return None;
    }
    let middle = &inner[1..inner.len() - 1];
    let is_sep = |id: &Option<String>| {
        id.as_deref()
            .is_some_and(|t| Some(t) == sep || Some(t) == eos)
    };
    let mut add_sep = false;
    let entry = special_id(&middle[0]);
    if is_sep(&entry) && last.is_none() {
        add_sep = true;
    }
    if middle.len() == 2 && is_sep(&special_id(&middle[1])) {
        add_sep = true;
    }
    Some(add_sep)
}

/// A special token's text: a string, or an object's `content`.
fn token_content(value: &Json) -> Option<String> {
    match value {
        Json::String(s) => Some(s.clone()),
        Json::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}
