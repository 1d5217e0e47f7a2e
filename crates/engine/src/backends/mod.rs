//! The generation backends, each behind the [`Generate`](crate::Generate) trait.

#[cfg(feature = "candle")]
pub mod candle;
#[cfg(feature = "llama-cpp")]
pub mod llama_cpp;
pub mod openai;
