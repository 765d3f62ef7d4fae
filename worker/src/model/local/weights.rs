//! The transformer of a GGUF file, by `general.architecture`: candle's quantized llama (Llama,
//! Mistral, SmolLM, TinyLlama, …) and gemma3. Weights are reference-counted tensors, so a
//! clone is cheap and starts with an empty KV cache of its own.
//!
//! On x86-64 candle has SIMD kernels for Q4_0, Q8_0 and the K-quants but multiplies Q4_1,
//! Q5_0 and Q5_1 with scalar code, many times slower; tensors of those types are requantized
//! to Q8_0 (finer than all three) while loading.

use std::io::{Cursor, Read, Seek};

use candle_core::quantized::gguf_file::{self, Content};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use candle_transformers::models::{quantized_gemma3, quantized_llama};

/// A loaded model, ready to run.
#[derive(Clone)]
pub(super) enum Weights {
    /// The llama family.
    Llama(quantized_llama::ModelWeights),
    /// Gemma 3.
    Gemma3(quantized_gemma3::ModelWeights),
}

impl Weights {
    /// Reads the tensors of an architecture candle runs.
    pub(super) fn load<R: Read + Seek>(
        architecture: &str,
        content: Content,
        reader: &mut R,
    ) -> Result<Self, String> {
        let slow = content
            .tensor_infos
            .values()
            .any(|info| scalar_only(info.ggml_dtype));
        if cfg!(target_arch = "x86_64") && slow {
            let (content, mut buffer) =
                requantize(content, reader).map_err(|e| format!("requantizing to Q8_0: {e}"))?;
            return Self::build(architecture, content, &mut buffer);
        }
        Self::build(architecture, content, reader)
    }

    fn build<R: Read + Seek>(
        architecture: &str,
        content: Content,
        reader: &mut R,
    ) -> Result<Self, String> {
        let device = Device::Cpu;
        let loaded = match architecture {
            "llama" => {
                quantized_llama::ModelWeights::from_gguf(content, reader, &device).map(Self::Llama)
            }
            "gemma3" => quantized_gemma3::ModelWeights::from_gguf(content, reader, &device)
                .map(Self::Gemma3),
            other => {
                return Err(format!(
                    "architecture {other:?} is not supported by the local backend (llama, gemma3)"
                ));
            }
        };
        loaded.map_err(|e| format!("loading {architecture} weights: {e}"))
    }

    /// The most positions the implementation has rotary tables for.
    pub(super) fn max_positions(&self) -> usize {
        match self {
            Self::Llama(_) => quantized_llama::MAX_SEQ_LEN,
            Self::Gemma3(_) => quantized_gemma3::MAX_SEQ_LEN,
        }
    }

    /// Runs `tokens` at positions `position..`, extending the KV cache, and returns the
    /// next-token logits after the last one.
    pub(super) fn forward(
        &mut self,
        tokens: &[u32],
        position: usize,
    ) -> candle_core::Result<Vec<f32>> {
        let input = Tensor::new(tokens, &Device::Cpu)?.unsqueeze(0)?;
        let logits = match self {
            Self::Llama(model) => model.forward(&input, position)?,
            Self::Gemma3(model) => model.forward(&input, position)?,
        };
        logits.squeeze(0)?.to_dtype(DType::F32)?.to_vec1()
    }
}

/// Whether candle multiplies this type with scalar code only on x86-64.
fn scalar_only(dtype: GgmlDType) -> bool {
    matches!(dtype, GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1)
}

/// The file rewritten in memory with its scalar-only tensors requantized to Q8_0, ready to be
/// read like the original.
fn requantize<R: Read + Seek>(
    content: Content,
    reader: &mut R,
) -> candle_core::Result<(Content, Cursor<Vec<u8>>)> {
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let tensor = content.tensor(reader, name, &Device::Cpu)?;
        let tensor = if scalar_only(tensor.dtype()) {
            QTensor::quantize(&tensor.dequantize(&Device::Cpu)?, GgmlDType::Q8_0)?
        } else {
            tensor
        };
        tensors.push((name.as_str(), tensor));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(key, value)| (key.as_str(), value))
        .collect();
    let tensors: Vec<(&str, &QTensor)> = tensors
        .iter()
        .map(|(name, tensor)| (*name, tensor))
        .collect();
    let mut buffer = Cursor::new(Vec::new());
    gguf_file::write(&mut buffer, &metadata, &tensors)?;
    buffer.set_position(0);
    let content = Content::read(&mut buffer)?;
    Ok((content, buffer))
}
