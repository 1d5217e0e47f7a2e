//! What a trained model and its data become for other tools: GGUF for llama.cpp, and datasets,
//! configs and a trainer patch for LLaMA-Factory (multi-GPU, multi-node runs with DeepSpeed).

pub mod gguf;
pub mod llamafactory;
