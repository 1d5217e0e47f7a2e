//! The model a training run starts from, and the directory it ends as.
//!
//! `--model` takes what `check` takes: a GGUF file (dequantized to f32; its Q/K rows stay in
//! llama.cpp's interleaved order while training and are put back in Hugging Face's order when
//! saved), a Hugging Face model directory, a Hub repository id, or an alias. The output is always
//! a Hugging Face directory (safetensors with Hugging Face's tensor names, `config.json`, the
//! tokenizer files) that `check --model DIR` runs and transformers loads.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use guardreasoner_engine::backends::candle::llama::{Llama, LlamaConfig, RopeLayout, Weight};
use guardreasoner_engine::backends::candle::load::Weights;
use guardreasoner_engine::backends::candle::tokenizer::GuardTokenizer;
use guardreasoner_engine::backends::candle::{CandleEngine, CandleOptions};
use guardreasoner_engine::model::{self, ModelLocation};
use guardreasoner_engine::DeviceSpec;
use serde_json::{json, Value};

use crate::error::TrainError;

/// Where the starting weights came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A Hugging Face directory (its tokenizer files are copied to the output).
    Dir(PathBuf),
    /// A GGUF file (its tokenizer is written out as `tokenizer.json`).
    Gguf(PathBuf),
}

guardreasoner_protocol::choice! {
    /// The precision a training step computes in. The weights themselves (the optimizer's master
    /// copy) and AdamW's moments are f32 either way.
    #[derive(Default)]
    pub enum Precision("precision") {
        /// Everything in f32.
        #[default]
        F32 = "f32",
        /// Mixed precision, PyTorch autocast's rule for linear layers: the blocks' seven
        /// projections multiply in bf16 (a bf16 copy of each weight made in the step's graph, so
        /// that gradients flow back to the f32 variable); activations, norms, attention, the
        /// embedding, the output projection and the loss stay f32. What a GPU's tensor cores are
        /// fast at; on a CPU without bf16 units it is slower than f32.
        Bf16 = "bf16",
    }
}

impl Precision {
    /// The default on `device`: bf16 on a GPU, f32 on the CPU.
    pub fn auto(device: &Device) -> Self {
        if device.is_cpu() {
            Self::F32
        } else {
            Self::Bf16
        }
    }
}

/// `model` with its blocks' projections cast for `precision` (bf16: what a mixed-precision step
/// multiplies with; a cast of a variable stays in the graph, so its gradient reaches the f32
/// variable). Everything else is shared with `model`.
pub fn autocast(model: &Llama, precision: Precision) -> candle_core::Result<Llama> {
    let mut model = model.clone();
    if precision == Precision::Bf16 {
        for block in &mut model.blocks {
            for w in block.projections_mut() {
                *w = half(w, true)?;
            }
        }
    }
    Ok(model)
}

/// A projection in bf16: dense matrices cast, LoRA's base cast and its small adapter path left
/// f32; a variable only where `variables` says so (the frozen parts can be cast once ahead).
fn half(weight: &Weight, variables: bool) -> candle_core::Result<Weight> {
    Ok(match weight {
        Weight::Dense(t) if t.is_variable() && !variables => weight.clone(),
        Weight::Dense(t) => Weight::Dense(t.to_dtype(DType::BF16)?),
        Weight::Lora { base, a, b, scale } => Weight::Lora {
            base: Box::new(half(base, variables)?),
            a: a.clone(),
            b: b.clone(),
            scale: *scale,
        },
        Weight::Quantized(_) => weight.clone(),
    })
}

/// A model whose dense weights are variables, with their names.
#[derive(Clone)]
pub struct Trainable {
    /// The model (every dense weight a variable).
    pub model: Llama,
    /// The variables, named as [`Llama::trainable`] names them.
    pub vars: Vec<(String, Var)>,
    /// In bf16, and only then (its presence is what makes the steps mixed precision):
    /// [`Self::model`] with its frozen projections (LoRA's bases, matrices that are not
    /// variables) cast once; each step casts only the variables.
    step_base: Option<Llama>,
}

impl Trainable {
    /// A trainable copy of `model` (quantized weights dequantized, everything f32).
    pub fn new(model: &Llama) -> Result<Self, TrainError> {
        let (model, vars) = model
            .trainable()
            .map_err(TrainError::tensor("making the weights trainable"))?;
        Ok(Self::from_parts(model, vars))
    }

    /// A trainable model from its parts, in f32.
    pub fn from_parts(model: Llama, vars: Vec<(String, Var)>) -> Self {
        Self {
            model,
            vars,
            step_base: None,
        }
    }

    /// The precision of the training steps.
    pub fn precision(&self) -> Precision {
        match self.step_base {
            Some(_) => Precision::Bf16,
            None => Precision::F32,
        }
    }

    /// Sets the precision of the training steps (in bf16, casting the frozen projections once).
    pub fn set_precision(&mut self, precision: Precision) -> candle_core::Result<()> {
        self.step_base = match precision {
            Precision::F32 => None,
            Precision::Bf16 => {
                let mut base = self.model.clone();
                for block in &mut base.blocks {
                    for w in block.projections_mut() {
                        *w = half(w, false)?;
                    }
                }
                Some(base)
            }
        };
        Ok(())
    }

    /// The model a training step runs, in [`Self::precision`]: the model itself in f32; in bf16,
    /// a copy whose projections are bf16, the variables' casts made anew each call so that they
    /// follow the optimizer's updates.
    pub fn step_model(&self) -> candle_core::Result<Llama> {
        match &self.step_base {
            None => Ok(self.model.clone()),
            Some(base) => autocast(base, Precision::Bf16),
        }
    }

    /// The device the model is on.
    pub fn device(&self) -> Device {
        self.model.norm.device().clone()
    }

    /// The current weights without gradient tracking (evaluation, sampling during training).
    pub fn detached(&self) -> Llama {
        fn dense(w: &Weight) -> Weight {
            match w {
                Weight::Dense(t) => Weight::Dense(t.detach()),
                Weight::Lora { base, a, b, scale } => Weight::Lora {
                    base: Box::new(dense(base)),
                    a: a.detach(),
                    b: b.detach(),
                    scale: *scale,
                },
                other => other.clone(),
            }
        }
        let mut model = self.model.clone();
        model.embedding.table = model.embedding.table.detach();
        model.norm = model.norm.detach();
        model.lm_head = dense(&model.lm_head);
        for block in &mut model.blocks {
            block.attention_norm = block.attention_norm.detach();
            block.mlp_norm = block.mlp_norm.detach();
            for w in block.projections_mut() {
                *w = dense(w);
            }
        }
        model
    }

    /// The variables alone (for the optimizer).
    pub fn var_list(&self) -> Vec<Var> {
        self.vars.iter().map(|(_, var)| var.clone()).collect()
    }
}

/// A model ready to train: the trainable copy, the frozen start, the tokenizer.
pub struct TrainModel {
    /// The weights being trained.
    pub trainable: Trainable,
    /// The frozen model the run started from (the DPO reference).
    pub frozen: Llama,
    engine: CandleEngine,
    origin: Origin,
}

impl TrainModel {
    /// Loads `spec` (path, repo id or alias) for training, RoPE tables for `max_positions`:
    /// every weight trainable, or LoRA adapters only.
    pub fn load(
        spec: &str,
        max_positions: usize,
        device: DeviceSpec,
        lora: Option<&crate::lora::LoraConfig>,
    ) -> Result<Self, TrainError> {
        let options = CandleOptions {
            context_per_sequence: max_positions,
            weights: Weights::F32,
            device,
        };
        let (engine, origin) = match model::resolve(spec)? {
            ModelLocation::Gguf(path) => {
                (CandleEngine::load_gguf(&path, options)?, Origin::Gguf(path))
            }
            ModelLocation::HuggingFaceDir(dir) => {
                (CandleEngine::load_dir(&dir, options)?, Origin::Dir(dir))
            }
            ModelLocation::HuggingFaceRepo(repo) => {
                let dir = guardreasoner_engine::hub::download(&repo)?;
                (CandleEngine::load_dir(&dir, options)?, Origin::Dir(dir))
            }
        };
        let frozen = engine.model().clone();
        let trainable = match lora {
            Some(config) => crate::lora::with_adapters(&frozen, config)?,
            None => Trainable::new(&frozen)?,
        };
        Ok(Self {
            trainable,
            frozen,
            engine,
            origin,
        })
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &GuardTokenizer {
        self.engine.tokenizer()
    }

    /// Where the weights came from.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The token that ends an output in `format`: `<|eot_id|>` for the llama3 chat template (as
    /// LLaMA-Factory's `llama3` template ends a response), else the tokenizer's first EOS.
    pub fn end_token(&self, format: guardreasoner_protocol::PromptFormat) -> Option<u32> {
        use guardreasoner_protocol::PromptFormat;
        let tokenizer = self.tokenizer();
        match format {
            PromptFormat::Llama3Chat => tokenizer
                .token_id("<|eot_id|>")
                .or_else(|| tokenizer.eos.first().copied()),
            _ => tokenizer.eos.first().copied(),
        }
    }

    /// Writes the current weights as a Hugging Face model directory.
    pub fn save(&self, dir: &Path, dtype: DType) -> Result<(), TrainError> {
        save_hf_dir(
            dir,
            &self.trainable.model,
            self.tokenizer(),
            &self.origin,
            dtype,
        )
    }
}

/// Hugging Face's name for one of our variables.
pub fn hf_name(name: &str) -> Option<String> {
    let simple = match name {
        "embedding" => return Some("model.embed_tokens.weight".into()),
        "norm" => return Some("model.norm.weight".into()),
        "lm_head" => return Some("lm_head.weight".into()),
        other => other,
    };
    let rest = simple.strip_prefix("blocks.")?;
    let (layer, part) = rest.split_once('.')?;
    let part = match part {
        "attention_norm" => "input_layernorm",
        "wq" => "self_attn.q_proj",
        "wk" => "self_attn.k_proj",
        "wv" => "self_attn.v_proj",
        "wo" => "self_attn.o_proj",
        "mlp_norm" => "post_attention_layernorm",
        "w_gate" => "mlp.gate_proj",
        "w_up" => "mlp.up_proj",
        "w_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{part}.weight"))
}

/// Undoes llama.cpp's Q/K row permutation (`convert_hf_to_gguf.py`'s `permute`: rows of each head
/// go from `[2, d/2]` to `[d/2, 2]` order) for `heads` heads.
pub fn unpermute_rows(weight: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, columns) = weight.dims2()?;
    let half = rows / heads / 2;
    weight
        .reshape((heads, half, 2, columns))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, columns))
}

/// llama.cpp's Q/K row permutation (`convert_hf_to_gguf.py`'s `permute`), the inverse of
/// [`unpermute_rows`].
pub fn permute_rows(weight: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, columns) = weight.dims2()?;
    weight
        .reshape((heads, 2, rows / heads / 2, columns))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, columns))
}

/// Every weight of `model` under our variable names (adapters merged), and whether the output
/// projection is the embedding (tied).
pub fn named_weights(model: &Llama) -> candle_core::Result<(Vec<(String, Tensor)>, bool)> {
    let dense = |w: &Weight| -> candle_core::Result<Tensor> {
        match crate::lora::merged(w)? {
            Weight::Dense(t) => Ok(t),
            Weight::Quantized(q) => q.dequantize_f16()?.to_dtype(DType::F32),
            Weight::Lora { .. } => candle_core::bail!("an adapter left unmerged"),
        }
    };
    let mut out = vec![("embedding".to_string(), model.embedding.table.clone())];
    for (i, block) in model.blocks.iter().enumerate() {
        let name = |part: &str| format!("blocks.{i}.{part}");
        out.push((name("attention_norm"), block.attention_norm.clone()));
        out.push((name("wq"), dense(&block.wq)?));
        out.push((name("wk"), dense(&block.wk)?));
        out.push((name("wv"), dense(&block.wv)?));
        out.push((name("wo"), dense(&block.wo)?));
        out.push((name("mlp_norm"), block.mlp_norm.clone()));
        out.push((name("w_gate"), dense(&block.w_gate)?));
        out.push((name("w_up"), dense(&block.w_up)?));
        out.push((name("w_down"), dense(&block.w_down)?));
    }
    out.push(("norm".to_string(), model.norm.clone()));
    let tied =
        matches!(&model.lm_head, Weight::Dense(head) if head.id() == model.embedding.table.id());
    if !tied {
        out.push(("lm_head".to_string(), dense(&model.lm_head)?));
    }
    Ok((out, tied))
}

/// How many heads a weight's rows hold when its rows are RoPE's (Q, K, and a LoRA B on them,
/// whose rows are its base's output rows); `None` for every other weight.
fn rope_heads(config: &LlamaConfig, name: &str) -> Option<usize> {
    let name = name.strip_suffix(".lora_b").unwrap_or(name);
    match name.rsplit('.').next() {
        Some("wq") => Some(config.num_heads),
        Some("wk") => Some(config.num_kv_heads),
        _ => None,
    }
}

/// The Hugging Face row order of a weight of ours (`name` is our variable name, adapters'
/// included): Q and K rows put back where llama.cpp's conversion permuted them.
pub fn hf_layout(config: &LlamaConfig, name: &str, tensor: Tensor) -> candle_core::Result<Tensor> {
    match rope_heads(config, name) {
        Some(heads) if config.rope_layout == RopeLayout::Interleaved => {
            unpermute_rows(&tensor, heads)
        }
        _ => Ok(tensor),
    }
}

/// The inverse of [`hf_layout`]: a weight in Hugging Face's row order, in the model's.
pub fn model_layout(
    config: &LlamaConfig,
    name: &str,
    tensor: Tensor,
) -> candle_core::Result<Tensor> {
    match rope_heads(config, name) {
        Some(heads) if config.rope_layout == RopeLayout::Interleaved => {
            permute_rows(&tensor, heads)
        }
        _ => Ok(tensor),
    }
}

fn save_hf_dir(
    dir: &Path,
    model: &Llama,
    tokenizer: &GuardTokenizer,
    origin: &Origin,
    dtype: DType,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    let config = &model.config;
    let (weights, tied) = named_weights(model).map_err(TrainError::tensor("merging adapters"))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (name, tensor) in weights {
        let hf = hf_name(&name).ok_or_else(|| {
            TrainError::Invalid(format!("weight `{name}` has no Hugging Face name"))
        })?;
        let tensor = hf_layout(config, &name, tensor)
            .and_then(|t| t.to_dtype(dtype))
            .and_then(|t| t.to_device(&Device::Cpu))
            .map_err(TrainError::tensor(format!("preparing {hf}")))?;
        tensors.insert(hf, tensor);
    }
    let weights = dir.join("model.safetensors");
    let partial = dir.join("model.safetensors.partial");
    candle_core::safetensors::save(&tensors, &partial)
        .map_err(TrainError::tensor(format!("writing {}", partial.display())))?;
    std::fs::rename(&partial, &weights).map_err(|e| TrainError::io(&weights, e))?;

    let eos: Vec<u32> = tokenizer.eos.clone();
    let mut hf_config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": tied,
        "attention_bias": false,
        "mlp_bias": false,
        "torch_dtype": dtype_name(dtype),
        "bos_token_id": tokenizer.bos(),
        "eos_token_id": if eos.len() == 1 { json!(eos[0]) } else { json!(eos) },
    });
    if let Some(s) = config.rope_scaling {
        hf_config["rope_scaling"] = json!({
            "rope_type": "llama3",
            "factor": s.factor,
            "low_freq_factor": s.low_freq_factor,
            "high_freq_factor": s.high_freq_factor,
            "original_max_position_embeddings": s.original_max_position_embeddings,
        });
    } else if config.rope_freq_factors.is_some() {
        return Err(TrainError::Invalid(
            "the GGUF model carries precomputed RoPE frequency factors (rope_freqs) but no \
             llama3 rope scaling parameters to write in config.json"
                .into(),
        ));
    }
    write_json(&dir.join("config.json"), &hf_config)?;

    // The GGUF the training began from, so that `export gguf` can reuse its tokenizer metadata.
    let gguf_origin = match origin {
        Origin::Gguf(path) => Some(path.canonicalize().unwrap_or_else(|_| path.clone())),
        Origin::Dir(source) => crate::export::gguf::origin_of(source),
    };
    if let Some(path) = gguf_origin {
        write_json(
            &dir.join(crate::export::gguf::ORIGIN_FILE),
            &json!({ "gguf": path }),
        )?;
    }
    match origin {
        Origin::Dir(source) => {
            for file in [
                "tokenizer.json",
                "tokenizer_config.json",
                "special_tokens_map.json",
                "generation_config.json",
                "chat_template.jinja",
            ] {
                let from = source.join(file);
                if from.is_file() {
                    let to = dir.join(file);
                    std::fs::copy(&from, &to).map_err(|e| TrainError::io(&to, e))?;
                }
            }
        }
        Origin::Gguf(_) => {
            tokenizer.save(&dir.join("tokenizer.json"))?;
            let token = |id: Option<u32>| id.and_then(|id| tokenizer.token_text(id));
            write_json(
                &dir.join("tokenizer_config.json"),
                &json!({
                    "tokenizer_class": "PreTrainedTokenizerFast",
                    "bos_token": token(tokenizer.bos()),
                    "eos_token": token(eos.first().copied()),
                    "add_bos_token": tokenizer.bos().is_some(),
                    "model_max_length": config.max_position_embeddings,
                }),
            )?;
        }
    }
    Ok(())
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "bfloat16",
        DType::F16 => "float16",
        _ => "float32",
    }
}

fn write_json(path: &Path, value: &Value) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).expect("serializable") + "\n";
    std::fs::write(path, text).map_err(|e| TrainError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variable_has_a_hugging_face_name() {
        assert_eq!(
            hf_name("blocks.3.w_gate").as_deref(),
            Some("model.layers.3.mlp.gate_proj.weight")
        );
        assert_eq!(
            hf_name("blocks.0.attention_norm").as_deref(),
            Some("model.layers.0.input_layernorm.weight")
        );
        assert_eq!(hf_name("blocks.0.nope"), None);
    }

    #[test]
    fn unpermuting_inverts_llama_cpps_permutation() {
        // convert_hf_to_gguf.py: w.reshape(heads, 2, d/2, cols).swapaxes(1, 2).reshape(w.shape)
        let hf = Tensor::arange(0f32, 48.0, &Device::Cpu)
            .unwrap()
            .reshape((8, 6))
            .unwrap();
        let gguf = hf
            .reshape((2, 2, 2, 6))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
            .reshape((8, 6))
            .unwrap();
        assert_eq!(
            permute_rows(&hf, 2).unwrap().to_vec2::<f32>().unwrap(),
            gguf.to_vec2::<f32>().unwrap()
        );
        let back = unpermute_rows(&gguf, 2).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), hf.to_vec2::<f32>().unwrap());
    }
}
