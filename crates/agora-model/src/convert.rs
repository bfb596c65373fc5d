//! Re-quantizing a GGUF file to a type candle runs fast (`agora model convert`).
//!
//! Why: candle has no SIMD kernel for Q4_1, the type of the embedded default model, so it
//! decodes at about 7 tok/s on one core against about 33 for Q4_0 and 28 for Q8_0
//! (NOTES.md). Converting once at set-up buys that speed for every later run.
//!
//! What changes: every weight matrix (rank 2 or more, rows a multiple of the target's
//! block size) is dequantized to f32 and quantized to the target, `token_embd` included:
//! with tied embeddings (SmolLM2) it is also the output head, the largest matrix product
//! of a decoding step, so it gains the most; the loader dequantizes it for the embedding
//! lookup either way. Vectors (norms, biases) and matrices whose rows do not fit the
//! target's blocks become f32 (exact). Metadata is copied unchanged except
//! `general.file_type`, set to the target's llama.cpp file type so the file does not
//! misdescribe itself, and `general.alignment`, which must say 32 because that is how
//! candle's writer aligns tensors. Keys are written in sorted order and tensors in their
//! original order, so the same input always gives the same bytes.
//!
//! Converting from a 4-bit type adds the target's rounding to the source's. Measured on
//! the default model (Q4_1): Q8_0 stays within 0.4% of each tensor's largest value and
//! moved the next-token logits of a chat prompt by at most 0.97 (same greedy reply);
//! Q4_0 rounds a second time at 4 bits (up to 12%), moved those logits by up to 15 and
//! changed the greedy reply after a few tokens. Prefer Q8_0 unless memory is tight.

use std::fs;
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::Device;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

/// The tensor type a GGUF file is converted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvertTarget {
    Q8_0,
    Q4_0,
    F16,
    F32,
}

impl ConvertTarget {
    pub const ALL: [ConvertTarget; 4] =
        [ConvertTarget::Q8_0, ConvertTarget::Q4_0, ConvertTarget::F16, ConvertTarget::F32];

    /// The lowercase name used on the command line and in file names (`q8_0`).
    pub fn name(self) -> &'static str {
        match self {
            ConvertTarget::Q8_0 => "q8_0",
            ConvertTarget::Q4_0 => "q4_0",
            ConvertTarget::F16 => "f16",
            ConvertTarget::F32 => "f32",
        }
    }

    pub fn ggml_dtype(self) -> GgmlDType {
        match self {
            ConvertTarget::Q8_0 => GgmlDType::Q8_0,
            ConvertTarget::Q4_0 => GgmlDType::Q4_0,
            ConvertTarget::F16 => GgmlDType::F16,
            ConvertTarget::F32 => GgmlDType::F32,
        }
    }

    /// llama.cpp's `llama_ftype` value for `general.file_type`.
    pub fn file_type(self) -> u32 {
        match self {
            ConvertTarget::F32 => 0,
            ConvertTarget::F16 => 1,
            ConvertTarget::Q4_0 => 2,
            ConvertTarget::Q8_0 => 7,
        }
    }
}

impl std::fmt::Display for ConvertTarget {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(self.name())
    }
}

impl FromStr for ConvertTarget {
    type Err = ModelError;

    fn from_str(text: &str) -> Result<ConvertTarget> {
        ConvertTarget::ALL.into_iter().find(|target| target.name().eq_ignore_ascii_case(text)).ok_or_else(
            || {
                ModelError::Config(format!(
                    "unknown conversion target {text:?}: expected one of q8_0, q4_0, f16, f32"
                ))
            },
        )
    }
}

/// What a conversion did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConvertReport {
    pub output: PathBuf,
    pub tensors: usize,
    /// Tensors stored as the target type.
    pub converted: usize,
    /// Tensors stored as f32 (vectors, and matrices whose rows do not fit the blocks).
    pub kept_f32: usize,
    pub input_bytes: u64,
    pub output_bytes: u64,
}

/// Reads the GGUF `input`, converts its weight matrices to `target` (see the module
/// documentation) and writes `output` (through `<output>.partial` and a rename, so a
/// failed or killed conversion never leaves a file that looks complete).
pub fn convert_gguf(input: &Path, output: &Path, target: ConvertTarget) -> Result<ConvertReport> {
    let io_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ModelError::Io { path, source }
    };
    let file = fs::File::open(input).map_err(io_error(input))?;
    let input_bytes = file.metadata().map_err(io_error(input))?.len();
    let mut reader = BufReader::new(file);
    let content = gguf_file::Content::read(&mut reader)
        .map_err(|error| ModelError::file(input, format!("not a readable GGUF file: {error}")))?;

    // Tensors in file order (the reader keeps them in a hash map).
    let mut names: Vec<(&String, u64)> =
        content.tensor_infos.iter().map(|(name, info)| (name, info.offset)).collect();
    names.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(b.0)));

    let device = Device::Cpu;
    let block_size = target.ggml_dtype().block_size();
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(names.len());
    let (mut converted, mut kept_f32) = (0, 0);
    for (name, _) in names {
        let tensor_error =
            |error: candle_core::Error| ModelError::file(input, format!("tensor {name}: {error}"));
        let source = content.tensor(&mut reader, name, &device).map_err(tensor_error)?;
        let values = source.dequantize(&device).map_err(tensor_error)?;
        let dims = values.dims();
        let is_matrix = dims.len() >= 2 && dims.last().is_some_and(|&row| row % block_size == 0);
        let dtype = if is_matrix { target.ggml_dtype() } else { GgmlDType::F32 };
        if is_matrix {
            converted += 1;
        } else {
            kept_f32 += 1;
        }
        let result = if source.dtype() == dtype {
            source
        } else {
            QTensor::quantize(&values, dtype).map_err(tensor_error)?
        };
        tensors.push((name.clone(), result));
    }

    let mut metadata: Vec<(&str, gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(key, value)| {
            let value = match key.as_str() {
                "general.file_type" => gguf_file::Value::U32(target.file_type()),
                "general.alignment" => gguf_file::Value::U32(gguf_file::DEFAULT_ALIGNMENT as u32),
                _ => value.clone(),
            };
            (key.as_str(), value)
        })
        .collect();
    metadata.sort_by(|a, b| a.0.cmp(b.0));

    let partial = partial_path(output);
    let written = write_gguf(&partial, &metadata, &tensors);
    if let Err(error) = written {
        let _ = fs::remove_file(&partial);
        return Err(error);
    }
    fs::rename(&partial, output).map_err(io_error(output))?;
    let output_bytes = fs::metadata(output).map_err(io_error(output))?.len();
    Ok(ConvertReport {
        output: output.to_path_buf(),
        tensors: tensors.len(),
        converted,
        kept_f32,
        input_bytes,
        output_bytes,
    })
}

/// The conventional output name: `SmolLM2-135M-Instruct.Q4_1.gguf` -> `...Instruct.Q8_0.gguf`
/// (the last dotted part before `.gguf` is replaced when it names a GGUF type).
pub fn converted_file_name(input: &Path, target: ConvertTarget) -> PathBuf {
    let stem = input.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
    let base = match stem.rsplit_once('.') {
        Some((base, kind)) if looks_like_type(kind) => base.to_string(),
        _ => stem,
    };
    input.with_file_name(format!("{base}.{}.gguf", target.name().to_uppercase()))
}

fn looks_like_type(kind: &str) -> bool {
    let kind = kind.to_ascii_uppercase();
    kind == "F32"
        || kind == "F16"
        || kind == "BF16"
        || (kind.starts_with('Q') && kind[1..].starts_with(|c: char| c.is_ascii_digit()))
}

fn partial_path(output: &Path) -> PathBuf {
    let mut name = output.file_name().map(|name| name.to_os_string()).unwrap_or_default();
    name.push(".partial");
    output.with_file_name(name)
}

fn write_gguf(
    path: &Path,
    metadata: &[(&str, gguf_file::Value)],
    tensors: &[(String, QTensor)],
) -> Result<()> {
    let file =
        fs::File::create(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    let mut writer = BufWriter::new(file);
    let metadata: Vec<(&str, &gguf_file::Value)> =
        metadata.iter().map(|(key, value)| (*key, value)).collect();
    let tensors: Vec<(&str, &QTensor)> =
        tensors.iter().map(|(name, tensor)| (name.as_str(), tensor)).collect();
    gguf_file::write(&mut writer, &metadata, &tensors)
        .map_err(|error| ModelError::file(path, format!("writing GGUF: {error}")))?;
    let file = writer
        .into_inner()
        .map_err(|error| ModelError::Io { path: path.to_path_buf(), source: error.into_error() })?;
    file.sync_all().map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    Ok(())
}
