//! `general.*` metadata as llama.cpp's converter derives it without a model card: the model's
//! name, organization, base name, fine-tune, version and size from its id (`_name_or_path` in
//! config.json, else the directory's name, else the name given), the parameter count's size
//! label, and default sampling settings from `generation_config.json`.
//!
//! A model card (README.md front matter: license, tags, languages, base models) is not read:
//! those keys are descriptive and llama.cpp does not use them.

use std::path::Path;

use regex::Regex;

use crate::gguf::Value;

/// The parts of a model id (`org/Name-1B-Instruct-v2`), as gguf-py's
/// `get_model_id_components` finds them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct IdParts {
    /// The name after the organization.
    pub name: Option<String>,
    /// The organization.
    pub organization: Option<String>,
    /// The base name (`Llama-3.2`).
    pub basename: Option<String>,
    /// The fine-tune (`Instruct`).
    pub finetune: Option<String>,
    /// The version (`v0.3`).
    pub version: Option<String>,
    /// The size (`1B`).
    pub size_label: Option<String>,
}

#[derive(Default, Clone)]
struct Tags {
    basename: bool,
    size_label: bool,
    finetune: bool,
    version: bool,
    kind: bool,
}

impl Tags {
    fn count(&self) -> usize {
        [
            self.basename,
            self.size_label,
            self.finetune,
            self.version,
            self.kind,
        ]
        .iter()
        .filter(|t| **t)
        .count()
    }
}

fn full(pattern: &str) -> Regex {
    Regex::new(&format!("^(?:{pattern})$")).expect("a valid pattern")
}

/// Splits a model id into its parts (`total_params` tells a size from a context length).
pub fn id_parts(model_id: &str, total_params: u64) -> IdParts {
    if model_id.contains(' ') {
        return IdParts {
            name: Some(model_id.to_string()),
            ..IdParts::default()
        };
    }
    let (org, name) = match model_id.split_once('/') {
        Some((org, name)) => (Some(org.to_string()), name.to_string()),
        None => (None, model_id.to_string()),
    };
    let org = org.filter(|o| !o.starts_with('.'));
    let version = full(r"(?i)(v|iter)?\d+([.]\d+)*");
    let kind = full(r"(?i)i?q\d(_\w)*|b?fp?(16|32)");
    let size = full(r"(?i)(([A]|\d+[x])?\d+([._]\d+)?[KMBT][\d]?|small|mini|medium|large|x?xl)");
    let finetune = full(r"(?i)chat|instruct|vision|lora");
    let mut parts: Vec<String> = name
        .split('-')
        .filter(|p| !p.is_empty())
        .map(String::from)
        .collect();
    let mut tags = vec![Tags::default(); parts.len()];
    for i in 0..parts.len() {
        let part = parts[i].clone();
        if version.is_match(&part) {
            tags[i].version = true;
        } else if kind.is_match(&part) {
            tags[i].kind = true;
            parts[i] = part.to_uppercase();
        } else if i > 0 && size.is_match(&part) {
            let mut part: Vec<char> = part.replace('_', ".").chars().collect();
            let n = part.len();
            if part[n - 1].is_ascii_digit() {
                // bloom-7b1 is 7.1b
                let (a, b) = (part[n - 2], part[n - 1]);
                part.truncate(n - 2);
                part.extend(['.', b, a]);
            }
            let n = part.len();
            if n > 1 && part[n - 2].is_ascii_digit() && "kmbt".contains(part[n - 1]) {
                part[n - 1] = part[n - 1].to_ascii_uppercase();
            }
            let text: String = part.iter().collect();
            let mut text = text;
            if total_params != 0 {
                let suffix = text.chars().last().unwrap_or(' ');
                if let Ok(number) = text[..text.len() - suffix.len_utf8()].parse::<f64>() {
                    let power = " KMBT".find(suffix).map(|p| p as i32).unwrap_or(-1);
                    let label = number * 1000f64.powi(power);
                    let total = total_params as f64;
                    if (label - total).abs() > (7 * total_params / 8) as f64 {
                        // A context length (`8k`), not the model's size.
                        tags[i].finetune = true;
                        text = format!(
                            "{}{}",
                            &text[..text.len() - suffix.len_utf8()],
                            suffix.to_ascii_lowercase()
                        );
                    }
                }
            }
            if tags[i].count() == 0 {
                tags[i].size_label = true;
            }
            parts[i] = text;
        } else if i > 0 && finetune.is_match(&part) {
            tags[i].finetune = true;
        }
    }
    let numeric_size = parts
        .iter()
        .zip(&tags)
        .any(|(p, t)| t.size_label && p.chars().any(|c| c.is_ascii_digit()));
    if numeric_size {
        for (p, t) in parts.iter().zip(tags.iter_mut()) {
            if t.size_label && p.chars().all(char::is_alphabetic) {
                t.size_label = false;
            }
        }
    }
    let mut at_start = true;
    for (p, t) in parts.iter().zip(tags.iter_mut()) {
        let first_alpha = p.chars().next().is_some_and(char::is_alphabetic);
        if at_start && ((t.count() == 0 && first_alpha) || t.version) {
            t.basename = true;
        } else {
            at_start = false;
            if t.count() == 0 {
                t.finetune = true;
            }
        }
    }
    for t in tags.iter_mut().rev() {
        if t.basename && t.count() > 1 {
            t.basename = false;
        } else {
            break;
        }
    }
    let join = |pick: &dyn Fn(&Tags) -> bool| {
        let picked: Vec<&str> = parts
            .iter()
            .zip(&tags)
            .filter(|(_, t)| pick(t))
            .map(|(p, _)| p.as_str())
            .collect();
        (!picked.is_empty()).then(|| picked.join("-"))
    };
    let mut basename = join(&|t| t.basename);
    let mut sizes: Vec<&str> = Vec::new();
    for (p, t) in parts.iter().zip(&tags) {
        if t.size_label && !sizes.contains(&p.as_str()) {
            sizes.push(p);
        }
    }
    let size_label = (!sizes.is_empty()).then(|| sizes.join("-"));
    let finetune = join(&|t| t.finetune);
    let version = join(&|t| t.version && !t.basename);
    if size_label.is_none() && finetune.is_none() && version.is_none() {
        basename = None;
    }
    IdParts {
        name: Some(name),
        organization: org,
        basename,
        finetune,
        version,
        size_label,
    }
}

/// Python's `str.title()`: a cased letter after an uncased character is upper-cased, every
/// other cased letter lower-cased.
fn python_title(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    let mut previous_cased = false;
    for c in word.chars() {
        let cased = c.is_lowercase() || c.is_uppercase();
        if cased {
            if previous_cased {
                out.extend(c.to_lowercase());
            } else {
                out.extend(c.to_uppercase());
            }
        } else {
            out.push(c);
        }
        previous_cased = cased;
    }
    out
}

/// gguf-py's `id_to_title`: dashes to spaces, all-lowercase words title-cased unless they are
/// versions or start with a digit.
pub fn id_to_title(id: &str) -> String {
    let keep = full(r"v\d+(?:\.\d+)*|\d.*");
    id.trim()
        .replace('-', " ")
        .split_whitespace()
        .map(|w| {
            let has_cased = w.chars().any(|c| c.is_lowercase() || c.is_uppercase());
            let is_lower = has_cased && !w.chars().any(char::is_uppercase);
            if is_lower && !keep.is_match(w) {
                python_title(w)
            } else {
                w.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// llama.cpp's size label for a parameter count: two significant digits at least, with K, M, B
/// or T (`135M`, `1.2B`, `8.3M`).
pub fn size_label(total: u64) -> String {
    let n = total as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    // Python's round() is to nearest even; the digit count of the integer part is what matters.
    let rounded = scaled.round_ties_even() as u64;
    let digits = rounded.to_string().trim_start_matches('0').len();
    let fraction = 2usize.saturating_sub(digits);
    format!("{scaled:.fraction$}{suffix}")
}

/// The `general.*` keys after `general.type`, in llama.cpp's order: sampling defaults, then
/// name, version, organization, fine-tune, base name and size label where known.
pub fn general(
    dir: &Path,
    name_hint: Option<&str>,
    config: &serde_json::Value,
    total_params: u64,
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    out.extend(sampling(dir));
    let mut name: Option<String> = None;
    let mut organization = None;
    let mut basename = None;
    let mut finetune = None;
    let mut version = None;
    let mut size = None;
    let mut fill = |id: &str| {
        let parts = id_parts(id, total_params);
        if name.is_none() {
            name = parts.name.as_deref().map(id_to_title);
        }
        if organization.is_none() {
            organization = parts.organization.as_deref().map(id_to_title);
        }
        basename = basename.take().or(parts.basename);
        finetune = finetune.take().or(parts.finetune);
        version = version.take().or(parts.version);
        size = size.take().or(parts.size_label);
    };
    if let Some(id) = config["_name_or_path"]
        .as_str()
        .filter(|id| id.matches('/').count() <= 1)
    {
        fill(id);
    }
    let dir_name = name_hint
        .map(String::from)
        .or_else(|| dir.file_name().map(|n| n.to_string_lossy().into_owned()));
    if let Some(dir_name) = dir_name.as_deref() {
        fill(dir_name);
    }
    let size = size.or_else(|| (total_params > 0).then(|| size_label(total_params)));
    for (key, value) in [
        ("general.name", name),
        ("general.version", version),
        ("general.organization", organization),
        ("general.finetune", finetune),
        ("general.basename", basename),
        ("general.size_label", size),
    ] {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.push((key.to_string(), Value::String(value)));
        }
    }
    out
}

/// `general.sampling.*` from `generation_config.json`, in llama.cpp's order.
fn sampling(dir: &Path) -> Vec<(String, Value)> {
    let Some(config) = std::fs::read_to_string(dir.join("generation_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let float = |key: &str| {
        config
            .get(key)
            .and_then(|v| v.as_f64())
            .map(|v| Value::F32(v as f32))
    };
    let int = |key: &str| {
        config
            .get(key)
            .and_then(|v| v.as_i64())
            .map(|v| Value::I32(v as i32))
    };
    let fields: [(&str, Option<Value>); 12] = [
        (
            "sequence",
            config
                .get("sequence")
                .and_then(|v| v.as_str())
                .map(|s| Value::String(s.into())),
        ),
        ("top_k", int("top_k")),
        ("top_p", float("top_p")),
        ("min_p", float("min_p")),
        ("xtc_probability", float("xtc_probability")),
        ("xtc_threshold", float("xtc_threshold")),
        ("temp", float("temperature")),
        ("penalty_last_n", int("penalty_last_n")),
        (
            "penalty_repeat",
            float("penalty_repeat").or_else(|| float("repetition_penalty")),
        ),
        ("mirostat", int("mirostat")),
        ("mirostat_tau", float("mirostat_tau")),
        ("mirostat_eta", float("mirostat_eta")),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            out.push((format!("general.sampling.{key}"), value));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_split_as_llama_cpp_splits_them() {
        let p = id_parts("SmolLM2-135M-Instruct", 134_515_008);
        assert_eq!(p.basename.as_deref(), Some("SmolLM2"));
        assert_eq!(p.finetune.as_deref(), Some("Instruct"));
        assert_eq!(p.size_label.as_deref(), Some("135M"));
        let p = id_parts("Llama-3.2-1B-Instruct", 1_235_814_400);
        assert_eq!(p.basename.as_deref(), Some("Llama-3.2"));
        assert_eq!(p.size_label.as_deref(), Some("1B"));
        let p = id_parts("Mistral-7B-Instruct-v0.3", 7_000_000_000);
        assert_eq!(p.version.as_deref(), Some("v0.3"));
        let p = id_parts("HuggingFaceTB/smollm2-135M-8k-lc100k-mix1-ep2", 134_515_008);
        assert_eq!(
            id_to_title(p.name.as_deref().unwrap()),
            "Smollm2 135M 8k Lc100K Mix1 Ep2"
        );
        assert_eq!(p.organization.as_deref(), Some("HuggingFaceTB"));
        assert_eq!(p.finetune.as_deref(), Some("8k-lc100k-mix1-ep2"));
        assert_eq!(p.basename.as_deref(), Some("smollm2"));
        let p = id_parts("tiny-llama3", 8_282_504);
        assert_eq!(id_to_title(p.name.as_deref().unwrap()), "Tiny Llama3");
        assert_eq!((p.basename, p.size_label), (None, None));
    }

    #[test]
    fn size_labels_keep_two_significant_digits() {
        for (n, label) in [
            (134_515_008, "135M"),
            (1_235_814_400, "1.2B"),
            (4_100_000, "4.1M"),
            (8_030_261_248, "8.0B"),
            (70_553_706_496, "71B"),
            (1_000_000, "1000K"),
            (12_345, "12K"),
            (500, "0.50K"),
        ] {
            assert_eq!(size_label(n), label, "{n}");
        }
    }
}
