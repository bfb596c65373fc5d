//! Where a model's tensors come from (a Hugging Face folder of safetensors or a GGUF
//! file), the layers that use them on both the inference and the training path
//! ([`Linear`], [`Embedding`]), and [`Model`], which picks the architecture of a file.
//!
//! One model file per architecture serves every case: weights are dense tensors (plain,
//! or the tensors of trainable `Var`s registered in a `VarMap` under their Hugging Face
//! names) or quantized GGUF matrices, and the layers hide which.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor, gguf_file};
use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Module, Tensor, Var};
use candle_nn::VarMap;

use crate::gpt2::Gpt2;
use crate::llama::Llama;
use crate::lora::LoraLayer;
use crate::quant_kernels::{PackedMatrix, PackedType};
use crate::{Cache, LanguageModel, ModelError, Result};

/// Whether the loaded weights become trainable variables.
#[derive(Clone, Copy)]
pub enum Trainable<'a> {
    /// Plain tensors: inference only, nothing recorded for backpropagation.
    No,
    /// Every weight becomes a `Var` registered in this map under its Hugging Face name,
    /// so an optimizer can train them and `VarMap::save` writes a Hugging Face file.
    Yes(&'a VarMap),
}

impl std::fmt::Debug for Trainable<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str(match self {
            Trainable::No => "Trainable::No",
            Trainable::Yes(_) => "Trainable::Yes",
        })
    }
}

/// How GGUF weights are held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// As stored (Q4_0, Q8_0, ...), multiplied by candle's quantized kernels.
    Quantized,
    /// Dequantized to f32: needed for training, and a reference for the quantized path.
    F32,
}

/// The weight of a linear layer.
#[derive(Debug, Clone)]
pub enum Weight {
    /// `[out, in]`, as `torch.nn.Linear` stores it.
    Dense(Tensor),
    /// `[in, out]`, as GPT-2's `Conv1D` stores it; kept in that layout so that a trained
    /// variable saves back into the layout Hugging Face expects.
    DenseInOut(Tensor),
    /// A quantized GGUF matrix (`[out, in]`) of a type without a kernel of ours (the
    /// K-quants, f16), multiplied by candle; shared with a tied embedding if any.
    Quantized(Arc<QMatMul>),
    /// A Q8_0, Q4_0 or Q4_1 GGUF matrix (`[out, in]`) multiplied by agora's kernels
    /// ([`crate::quant_kernels`]); shared with a tied embedding if any.
    Packed(Arc<PackedMatrix>),
}

/// `xs · Wᵀ + b` over the last dimension of `xs`, plus a LoRA adapter's
/// `scale · dropout(xs) · Aᵀ · Bᵀ` when one is attached (see [`crate::lora`]).
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Weight,
    pub bias: Option<Tensor>,
    /// Shared with the [`crate::lora::LoraAdapters`] that attached it, which switch it on
    /// and off and hold its trainable variables.
    pub lora: Option<Arc<LoraLayer>>,
}

impl Linear {
    /// A layer without an adapter.
    pub fn new(weight: Weight, bias: Option<Tensor>) -> Linear {
        Linear { weight, bias, lora: None }
    }

    /// `xs · matrix + bias` for a dense `[in, out]` matrix: one fused op with the bias,
    /// whose backward skips the gradients nobody wants (a frozen weight's), for f32 in CPU
    /// memory; candle's matmul otherwise.
    fn dense_forward(&self, xs: &Tensor, matrix: &Tensor) -> Result<Tensor> {
        if crate::fused::applies(&[xs, matrix]) {
            return crate::fused::linear_op(xs, matrix, self.bias.as_ref());
        }
        self.add_bias(matmul_last_dim(xs, matrix)?)
    }

    fn add_bias(&self, output: Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(bias) => Ok(output.broadcast_add(bias)?),
            None => Ok(output),
        }
    }

    /// `log softmax(self.forward(hidden))[row, targets[row]]` for the rows of `hidden`
    /// (`[rows, in]`): `[rows]`, differentiable. A dense layer without bias or adapter
    /// (every model's output layer) takes the fused op, which never builds the
    /// `[rows, out]` logits in the graph; anything else computes the logits first.
    pub fn target_logprobs(&self, hidden: &Tensor, targets: &[u32]) -> Result<Tensor> {
        match (&self.weight, &self.bias, &self.lora) {
            (Weight::Dense(weight), None, None) => {
                crate::fused::linear_target_logprobs(hidden, weight, targets)
            }
            (Weight::DenseInOut(weight), None, None) => {
                crate::fused::linear_target_logprobs(hidden, &weight.t()?, targets)
            }
            _ => crate::ops::target_logprobs(&self.forward(hidden)?, targets),
        }
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let output = match &self.weight {
            Weight::Dense(weight) => self.dense_forward(xs, &weight.t()?)?,
            Weight::DenseInOut(weight) => self.dense_forward(xs, weight)?,
            Weight::Quantized(weight) => self.add_bias(weight.forward(xs)?)?,
            Weight::Packed(weight) => self.add_bias(weight.forward(xs)?)?,
        };
        match &self.lora {
            Some(adapter) => adapter.add_to(xs, output),
            None => Ok(output),
        }
    }

    /// `(in_features, out_features)`, read from the weight's shape and layout.
    pub fn features(&self) -> Result<(usize, usize)> {
        Ok(match &self.weight {
            Weight::Dense(weight) => {
                let (out_features, in_features) = weight.dims2()?;
                (in_features, out_features)
            }
            Weight::DenseInOut(weight) => weight.dims2()?,
            Weight::Quantized(weight) => {
                let (out_features, in_features) = match weight.as_ref() {
                    QMatMul::QTensor(table) => table.shape().dims2()?,
                    QMatMul::Tensor(table) | QMatMul::TensorF16(table) => table.dims2()?,
                };
                (in_features, out_features)
            }
            Weight::Packed(weight) => (weight.columns(), weight.rows()),
        })
    }

    /// The dense weight in its stored layout (`[out, in]`, or `[in, out]` for
    /// [`Weight::DenseInOut`]); an error for a quantized one, which LoRA and saving
    /// cannot use.
    pub fn dense_weight(&self) -> Result<&Tensor> {
        match &self.weight {
            Weight::Dense(weight) | Weight::DenseInOut(weight) => Ok(weight),
            Weight::Quantized(_) | Weight::Packed(_) => Err(ModelError::Config(
                "the weights are quantized; load the model with precision f32 for LoRA, merging \
                 or saving"
                    .to_string(),
            )),
        }
    }
}

/// Appends `module.weight` (and `module.bias`) of a dense layer to a list of named
/// tensors being saved.
pub(crate) fn push_linear(tensors: &mut Vec<(String, Tensor)>, module: &str, linear: &Linear) -> Result<()> {
    if linear.lora.is_some() {
        return Err(ModelError::Config(format!(
            "`{module}` still carries a LoRA adapter; merge the adapters (or save them with \
             save_peft) before saving the model"
        )));
    }
    let weight = linear.dense_weight().map_err(|error| ModelError::Config(format!("`{module}`: {error}")))?;
    tensors.push((format!("{module}.weight"), weight.clone()));
    if let Some(bias) = &linear.bias {
        tensors.push((format!("{module}.bias"), bias.clone()));
    }
    Ok(())
}

/// Linear layers that read the same input (a layer's q/k/v projections, or its gate and
/// up projections). When all are bias-free matrices of one packed type, they are stacked
/// into one matrix at load time: one quantization of the activations and one pass over
/// the thread pool instead of several. Otherwise (dense or trainable weights, biases)
/// each runs alone, so gradients reach every one as before.
#[derive(Debug, Clone)]
pub enum ParallelLinear {
    Fused { linear: Linear, widths: Vec<usize> },
    Separate(Vec<Linear>),
}

impl ParallelLinear {
    pub fn new(layers: Vec<Linear>) -> Result<ParallelLinear> {
        let packed: Option<Vec<&PackedMatrix>> = layers
            .iter()
            .map(|layer| match (&layer.weight, &layer.bias) {
                (Weight::Packed(matrix), None) => Some(matrix.as_ref()),
                _ => None,
            })
            .collect();
        let Some(packed) = packed.filter(|parts| parts.len() > 1) else {
            return Ok(ParallelLinear::Separate(layers));
        };
        let fused = match PackedMatrix::stack_rows(&packed) {
            Ok(fused) => fused,
            // Different types (a mixed-quantization file): run them one by one.
            Err(_) => return Ok(ParallelLinear::Separate(layers)),
        };
        let widths = packed.iter().map(|matrix| matrix.rows()).collect();
        Ok(ParallelLinear::Fused { linear: Linear::new(Weight::Packed(Arc::new(fused)), None), widths })
    }

    /// Each layer's output, in the order given to [`ParallelLinear::new`].
    pub fn forward(&self, xs: &Tensor) -> Result<Vec<Tensor>> {
        match self {
            ParallelLinear::Separate(layers) => layers.iter().map(|layer| layer.forward(xs)).collect(),
            ParallelLinear::Fused { linear, widths } => {
                let output = linear.forward(xs)?;
                let last = output.rank().saturating_sub(1);
                let mut start = 0;
                let mut outputs = Vec::with_capacity(widths.len());
                for &width in widths {
                    outputs.push(output.narrow(last, start, width)?);
                    start += width;
                }
                Ok(outputs)
            }
        }
    }
}

/// `xs [.., in] · matrix [in, out]` with the leading dimensions flattened, because
/// candle's matmul wants equal batch dimensions on both sides.
pub(crate) fn matmul_last_dim(xs: &Tensor, matrix: &Tensor) -> Result<Tensor> {
    let mut dims = xs.dims().to_vec();
    let inner = dims.pop().unwrap_or(1);
    let rows: usize = dims.iter().product();
    let flat = xs.reshape((rows, inner))?;
    let output = if xs.track_op() && !matrix.track_op() && xs.device().is_cpu() {
        frozen_matmul(&flat, matrix)?
    } else {
        flat.matmul(matrix)?
    };
    dims.push(matrix.dim(1)?);
    Ok(output.reshape(dims)?)
}

/// `xs · matrix` where only `xs` needs a gradient (a frozen weight under LoRA). candle's
/// matmul backward computes the gradient of both operands whether or not one is a
/// variable, so every frozen layer would cost a second matrix product in the backward
/// pass and hold a weight-sized gradient: the whole model's size again. The product is
/// computed outside the graph and re-attached to `xs` by an op whose backward is
/// `grad · matrixᵀ` alone.
fn frozen_matmul(xs: &Tensor, matrix: &Tensor) -> Result<Tensor> {
    let product = xs.detach().matmul(matrix)?.contiguous()?;
    let op = FrozenMatmul { matrix: matrix.clone(), product: std::sync::Mutex::new(Some(product)) };
    Ok(xs.apply_op1(op)?)
}

struct FrozenMatmul {
    matrix: Tensor,
    /// Taken by the forward call, so the graph does not keep a second copy of the output.
    product: std::sync::Mutex<Option<Tensor>>,
}

impl candle_core::CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(
        &self,
        _xs: &candle_core::CpuStorage,
        _layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let product = self
            .product
            .lock()
            .map_err(|_| candle_core::Error::Msg("frozen-matmul: lock poisoned".to_string()))?
            .take()
            .ok_or_else(|| candle_core::Error::Msg("frozen-matmul: forward ran twice".to_string()))?;
        let (storage, layout) = product.storage_and_layout();
        match (&*storage, layout.contiguous_offsets()) {
            (candle_core::Storage::Cpu(cpu), Some((0, end))) if end == layout.shape().elem_count() => {
                Ok((cpu.clone(), layout.shape().clone()))
            }
            _ => Err(candle_core::Error::Msg("frozen-matmul: product not contiguous on the CPU".to_string())),
        }
    }

    fn bwd(&self, _xs: &Tensor, _result: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.matrix.t()?)?))
    }
}

/// A token (or position) embedding table, `[rows, hidden]`.
#[derive(Debug, Clone)]
pub enum Embedding {
    Dense(Tensor),
    /// Quantized rows are dequantized only for the ids looked up.
    Quantized(Arc<QTensor>),
    /// The same for the block types of agora's kernels.
    Packed(Arc<PackedMatrix>),
}

impl Embedding {
    /// Rows of `ids` (`[batch, seq]`, u32): `[batch, seq, hidden]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        // Out-of-range ids are user input, not a reason to index out of bounds.
        let rows = self.rows()?;
        if ids.elem_count() > 0 {
            let largest = ids.flatten_all()?.max(0)?.to_dtype(candle_core::DType::U32)?;
            let largest = largest.to_scalar::<u32>()? as usize;
            if largest >= rows {
                return Err(ModelError::Config(format!(
                    "token id {largest} is outside the embedding table ({rows} rows)"
                )));
            }
        }
        match self {
            Embedding::Dense(table) => {
                let (batch, seq) = ids.dims2()?;
                let hidden = table.dim(1)?;
                Ok(table.index_select(&ids.flatten_all()?, 0)?.reshape((batch, seq, hidden))?)
            }
            Embedding::Quantized(table) => Ok(table.embedding(ids)?),
            Embedding::Packed(table) => {
                let (batch, seq) = ids.dims2()?;
                let ids = ids.flatten_all()?.to_dtype(DType::U32)?.to_vec1::<u32>()?;
                let rows = table.select_rows(&ids).map_err(ModelError::Config)?;
                Ok(Tensor::from_vec(rows, (batch, seq, table.columns()), &Device::Cpu)?)
            }
        }
    }

    pub fn rows(&self) -> Result<usize> {
        Ok(match self {
            Embedding::Dense(table) => table.dim(0)?,
            Embedding::Quantized(table) => table.shape().dims2()?.0,
            Embedding::Packed(table) => table.rows(),
        })
    }

    /// The same table as the weight of an output layer (tied embeddings).
    pub fn as_linear(&self) -> Result<Linear> {
        let weight = match self {
            Embedding::Dense(table) => Weight::Dense(table.clone()),
            Embedding::Quantized(table) => Weight::Quantized(Arc::new(QMatMul::from_arc(table.clone())?)),
            Embedding::Packed(table) => Weight::Packed(table.clone()),
        };
        Ok(Linear::new(weight, None))
    }
}

/// How the rows of a stored matrix are ordered relative to Hugging Face's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowOrder {
    AsStored,
    /// llama.cpp's converter permutes the rows of Llama's q/k projections (per head, it
    /// interleaves the two halves that `rotate_half` pairs) so that its interleaved rope
    /// applies. Loading undoes it, so one rotary implementation serves both formats.
    LlamaCppRope {
        heads: usize,
    },
}

enum Store {
    Safetensors {
        tensors: MmapedSafetensors,
        /// `model.safetensors`, or the index of a sharded checkpoint.
        origin: PathBuf,
        /// The shard holding each tensor, for error messages.
        files: HashMap<String, PathBuf>,
    },
    Gguf {
        content: gguf_file::Content,
        file: File,
        path: PathBuf,
        precision: Precision,
        /// The architecture's map from Hugging Face names to GGUF names.
        stored_name: fn(&str) -> String,
    },
}

/// The tensors of one model file (or folder), handed out by Hugging Face name.
pub struct WeightSource<'a> {
    store: Store,
    device: Device,
    trainable: Trainable<'a>,
}

impl std::fmt::Debug for WeightSource<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "WeightSource({})", self.path().display())
    }
}

impl<'a> WeightSource<'a> {
    /// The safetensors of a Hugging Face folder: `model.safetensors`, or the shards
    /// listed by `model.safetensors.index.json`, memory-mapped.
    pub fn from_hf_dir(dir: &Path, device: &Device, trainable: Trainable<'a>) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let (origin, shards) = if single.is_file() {
            (single.clone(), vec![single])
        } else if index.is_file() {
            (index.clone(), shard_files(dir, &index)?)
        } else {
            return Err(ModelError::file(
                dir,
                "no model.safetensors or model.safetensors.index.json in this folder",
            ));
        };
        // Each shard alone first, so a broken one is named in the error.
        let mut files = HashMap::new();
        for shard in &shards {
            let one = mmap_safetensors(std::slice::from_ref(shard))?;
            for (name, _) in one.tensors() {
                files.insert(name, shard.clone());
            }
        }
        let tensors = mmap_safetensors(&shards)?;
        Ok(WeightSource {
            store: Store::Safetensors { tensors, origin, files },
            device: device.clone(),
            trainable,
        })
    }

    /// A GGUF file already opened and parsed (see [`read_gguf`]).
    pub fn from_gguf(
        gguf: Gguf,
        device: &Device,
        precision: Precision,
        trainable: Trainable<'a>,
        stored_name: fn(&str) -> String,
    ) -> Self {
        // Training needs dense f32 variables whatever was asked.
        let precision = if matches!(trainable, Trainable::Yes(_)) { Precision::F32 } else { precision };
        WeightSource {
            store: Store::Gguf {
                content: gguf.content,
                file: gguf.file,
                path: gguf.path,
                precision,
                stored_name,
            },
            device: device.clone(),
            trainable,
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn path(&self) -> &Path {
        match &self.store {
            Store::Safetensors { origin, .. } => origin,
            Store::Gguf { path, .. } => path,
        }
    }

    fn stored_name(&self, name: &str) -> String {
        match &self.store {
            Store::Safetensors { .. } => name.to_string(),
            Store::Gguf { stored_name, .. } => stored_name(name),
        }
    }

    /// The file that holds (or would hold) `name`, for error messages.
    fn file_of(&self, name: &str) -> PathBuf {
        match &self.store {
            Store::Safetensors { files, .. } => {
                files.get(name).cloned().unwrap_or_else(|| self.path().to_path_buf())
            }
            Store::Gguf { path, .. } => path.clone(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.store {
            Store::Safetensors { files, .. } => files.contains_key(name),
            Store::Gguf { content, stored_name, .. } => content.tensor_infos.contains_key(&stored_name(name)),
        }
    }

    fn error(&self, name: &str, message: impl std::fmt::Display) -> ModelError {
        ModelError::file(self.file_of(name), format!("tensor `{}`: {message}", self.stored_name(name)))
    }

    fn check_shape(&self, name: &str, actual: &[usize], expected: &[usize]) -> Result<()> {
        if actual != expected {
            return Err(self.error(name, format!("has shape {actual:?}, expected {expected:?}")));
        }
        Ok(())
    }

    /// A dense f32 tensor of the given shape (dequantized if stored quantized), made a
    /// trainable variable when asked.
    pub fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let tensor = self.read_dense(name, shape)?;
        self.register(name, tensor)
    }

    fn read_dense(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        match &self.store {
            Store::Safetensors { tensors, .. } => {
                let view = tensors.get(name).map_err(|_| self.error(name, "missing from the checkpoint"))?;
                self.check_shape(name, view.shape(), shape)?;
                let tensor = view.load(&self.device).map_err(|error| self.error(name, describe(error)))?;
                Ok(tensor.to_dtype(DType::F32)?)
            }
            Store::Gguf { .. } => {
                let quantized = self.read_quantized(name, shape)?;
                quantized.dequantize(&self.device).map_err(|error| self.error(name, describe(error)))
            }
        }
    }

    fn read_quantized(&self, name: &str, shape: &[usize]) -> Result<QTensor> {
        let Store::Gguf { content, file, .. } = &self.store else {
            return Err(self.error(name, "quantized weights only come from GGUF files"));
        };
        let stored = self.stored_name(name);
        let info = content
            .tensor_infos
            .get(&stored)
            .ok_or_else(|| self.error(name, "missing from the GGUF file"))?;
        self.check_shape(name, info.shape.dims(), shape)?;
        let mut reader = file;
        info.read(&mut reader, content.tensor_data_offset, &self.device)
            .map_err(|error| self.error(name, describe(error)))
    }

    /// The stored bytes of a Q8_0, Q4_0 or Q4_1 matrix for agora's CPU kernels, read
    /// straight from the file into their final buffer (no intermediate copy, which keeps
    /// the peak memory of loading near the file size); `None` for other types or devices.
    fn read_packed(&self, name: &str, shape: &[usize], order: RowOrder) -> Result<Option<PackedMatrix>> {
        let Store::Gguf { content, file, .. } = &self.store else {
            return Ok(None);
        };
        let stored = self.stored_name(name);
        let info = content
            .tensor_infos
            .get(&stored)
            .ok_or_else(|| self.error(name, "missing from the GGUF file"))?;
        self.check_shape(name, info.shape.dims(), shape)?;
        let Some(kind) = PackedType::from_ggml(info.ggml_dtype) else {
            return Ok(None);
        };
        if !self.device.is_cpu() {
            return Ok(None);
        }
        let [rows, columns] = *shape else {
            return Ok(None);
        };
        let dtype = info.ggml_dtype;
        let bytes = rows * columns / dtype.block_size() * dtype.type_size();
        let mut data = vec![0u8; bytes];
        let mut reader = file;
        reader
            .seek(SeekFrom::Start(content.tensor_data_offset + info.offset))
            .and_then(|_| reader.read_exact(&mut data))
            .map_err(|error| self.error(name, format!("cannot read its {bytes} bytes: {error}")))?;
        if let RowOrder::LlamaCppRope { heads } = order {
            data = unpermute_row_bytes(&data, rows, heads).map_err(|error| self.error(name, error))?;
        }
        PackedMatrix::new(kind, rows, columns, data).map(Some).map_err(|error| self.error(name, error))
    }

    fn register(&self, name: &str, tensor: Tensor) -> Result<Tensor> {
        match self.trainable {
            Trainable::No => Ok(tensor),
            Trainable::Yes(varmap) => register_var(varmap, name, tensor),
        }
    }

    /// A token or position table `[rows, hidden]`; quantized when the GGUF is.
    pub fn embedding(&self, name: &str, rows: usize, hidden: usize) -> Result<Embedding> {
        if self.quantized() {
            if let Some(table) = self.read_packed(name, &[rows, hidden], RowOrder::AsStored)? {
                return Ok(Embedding::Packed(Arc::new(table)));
            }
            let table = self.read_quantized(name, &[rows, hidden])?;
            return Ok(Embedding::Quantized(Arc::new(table)));
        }
        Ok(Embedding::Dense(self.tensor(name, &[rows, hidden])?))
    }

    fn quantized(&self) -> bool {
        matches!(self.store, Store::Gguf { precision: Precision::Quantized, .. })
    }

    /// A `torch.nn.Linear` weight `[out, in]` (with `bias` when given the bias name).
    pub fn linear(
        &self,
        name: &str,
        out_features: usize,
        in_features: usize,
        bias: Option<&str>,
        order: RowOrder,
    ) -> Result<Linear> {
        let shape = [out_features, in_features];
        let packed = if self.quantized() { self.read_packed(name, &shape, order)? } else { None };
        let weight = if let Some(packed) = packed {
            Weight::Packed(Arc::new(packed))
        } else if self.quantized() {
            let mut table = self.read_quantized(name, &shape)?;
            if let RowOrder::LlamaCppRope { heads } = order {
                table = unpermute_quantized_rows(&table, heads, &self.device)
                    .map_err(|error| self.error(name, error))?;
            }
            Weight::Quantized(Arc::new(QMatMul::from_arc(Arc::new(table))?))
        } else {
            let mut tensor = self.read_dense(name, &shape)?;
            if let RowOrder::LlamaCppRope { heads } = order {
                tensor = unpermute_rows(&tensor, heads).map_err(|error| self.error(name, error))?;
            }
            Weight::Dense(self.register(name, tensor)?)
        };
        let bias = match bias {
            Some(bias_name) => {
                let mut tensor = self.read_dense(bias_name, &[out_features])?;
                if let RowOrder::LlamaCppRope { heads } = order {
                    tensor = unpermute_rows(&tensor.unsqueeze(1)?, heads)
                        .and_then(|rows| Ok(rows.squeeze(1)?))
                        .map_err(|error| self.error(bias_name, error))?;
                }
                Some(self.register(bias_name, tensor)?)
            }
            None => None,
        };
        Ok(Linear::new(weight, bias))
    }

    /// A GPT-2 `Conv1D` weight, stored `[in, out]`, with its bias.
    pub fn conv1d(&self, name: &str, in_features: usize, out_features: usize, bias: &str) -> Result<Linear> {
        let weight = self.tensor(name, &[in_features, out_features])?;
        let bias = self.tensor(bias, &[out_features])?;
        Ok(Linear::new(Weight::DenseInOut(weight), Some(bias)))
    }
}

/// Puts `tensor` into `varmap` as a variable named `name` (replacing any variable of that
/// name) and returns the variable's tensor, so that gradients reach the map.
pub(crate) fn register_var(varmap: &VarMap, name: &str, tensor: Tensor) -> Result<Tensor> {
    let var = Var::from_tensor(&tensor)?;
    let tensor = var.as_tensor().clone();
    let mut vars =
        varmap.data().lock().map_err(|_| ModelError::Config("the VarMap lock is poisoned".to_string()))?;
    vars.insert(name.to_string(), var);
    Ok(tensor)
}

/// Undoes llama.cpp's q/k permutation on a dense `[heads * head_dim, in]` matrix: GGUF
/// rows are `(head, pair, half)`, Hugging Face rows `(head, half, pair)`.
fn unpermute_rows(tensor: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, columns) = tensor.dims2()?;
    if heads == 0 || rows % (2 * heads) != 0 {
        return Err(ModelError::Config(format!("{rows} rows cannot be split into {heads} rotary heads")));
    }
    let half = rows / heads / 2;
    Ok(tensor.reshape((heads, half, 2, columns))?.transpose(1, 2)?.contiguous()?.reshape((rows, columns))?)
}

/// The same row permutation on quantized bytes: quantized blocks run along rows, so
/// whole rows move untouched.
fn unpermute_quantized_rows(table: &QTensor, heads: usize, device: &Device) -> Result<QTensor> {
    let (rows, columns) = table.shape().dims2()?;
    let dtype: GgmlDType = table.dtype();
    let output = unpermute_row_bytes(&table.data()?, rows, heads)?;
    let storage = QStorage::from_data(Cow::Owned(output), device, dtype)?;
    Ok(QTensor::new(storage, (rows, columns))?)
}

/// The permutation of [`unpermute_rows`] on `rows` rows of bytes of equal length.
fn unpermute_row_bytes(data: &[u8], rows: usize, heads: usize) -> Result<Vec<u8>> {
    if heads == 0 || !rows.is_multiple_of(2 * heads) || !data.len().is_multiple_of(rows) {
        return Err(ModelError::Config(format!("{rows} rows cannot be split into {heads} rotary heads")));
    }
    let row_bytes = data.len() / rows;
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut output = vec![0u8; data.len()];
    for head in 0..heads {
        for pair in 0..2 {
            for index in 0..half {
                let hugging_face_row = head * head_dim + pair * half + index;
                let gguf_row = head * head_dim + index * 2 + pair;
                let source = data.get(gguf_row * row_bytes..(gguf_row + 1) * row_bytes);
                let target = output.get_mut(hugging_face_row * row_bytes..(hugging_face_row + 1) * row_bytes);
                let (Some(source), Some(target)) = (source, target) else {
                    return Err(ModelError::Config("quantized rows shorter than their shape".into()));
                };
                target.copy_from_slice(source);
            }
        }
    }
    Ok(output)
}

fn shard_files(dir: &Path, index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index)
        .map_err(|source| ModelError::Io { path: index.to_path_buf(), source })?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|error| ModelError::file(index, format!("invalid JSON: {error}")))?;
    let map = json
        .get("weight_map")
        .and_then(|map| map.as_object())
        .ok_or_else(|| ModelError::file(index, "no `weight_map` object"))?;
    let mut shards: Vec<PathBuf> = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| ModelError::file(index, format!("`weight_map.{tensor}` is not a string")))?;
        let path = dir.join(file);
        if !shards.contains(&path) {
            shards.push(path);
        }
    }
    Ok(shards)
}

/// Memory-maps safetensors files and parses their headers.
#[allow(unsafe_code)]
fn mmap_safetensors(files: &[PathBuf]) -> Result<MmapedSafetensors> {
    for file in files {
        if !file.is_file() {
            return Err(ModelError::file(file, "missing safetensors file"));
        }
    }
    // SAFETY: the map is read-only; it is undefined behaviour only if another process
    // truncates or rewrites a checkpoint while a model is loading from it, the same
    // contract as every mmap-based loader (safetensors, llama.cpp). Headers and tensor
    // bounds are validated by the safetensors crate before any tensor is read.
    let tensors = unsafe { MmapedSafetensors::multi(files) };
    tensors.map_err(|error| {
        let path = files.first().cloned().unwrap_or_default();
        ModelError::file(path, format!("not a valid safetensors file: {}", describe(error)))
    })
}

/// A parsed GGUF header and the open file its tensors are read from.
#[derive(Debug)]
pub struct Gguf {
    pub content: gguf_file::Content,
    pub file: File,
    pub path: PathBuf,
}

/// Opens a GGUF file and parses its metadata and tensor directory (tensors are read
/// later, one at a time).
pub fn read_gguf(path: &Path) -> Result<Gguf> {
    let mut file = File::open(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    let content = gguf_file::Content::read(&mut file).map_err(|error| {
        let mut message = format!("not a valid GGUF file: {}", describe(error));
        if message.contains("unknown dtype") {
            message.push_str(
                " (a GGUF tensor type candle cannot read, such as the IQ* and TQ* families; \
                 re-quantize with llama.cpp's llama-quantize to Q4_0, Q4_K, Q8_0 or F16)",
            );
        }
        ModelError::file(path, message)
    })?;
    Ok(Gguf { content, file, path: path.to_path_buf() })
}

impl Gguf {
    pub fn architecture(&self) -> Result<String> {
        Ok(self.string("general.architecture")?.to_string())
    }

    fn value(&self, key: &str) -> Result<&gguf_file::Value> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| ModelError::file(&self.path, format!("metadata `{key}` is missing")))
    }

    pub fn string(&self, key: &str) -> Result<&str> {
        let value = self.value(key)?;
        value
            .to_string()
            .map(String::as_str)
            .map_err(|_| ModelError::file(&self.path, format!("metadata `{key}` is not a string")))
    }

    /// An integer setting (stored as any integer type).
    pub fn usize(&self, key: &str) -> Result<usize> {
        use gguf_file::Value;
        let value = match self.value(key)? {
            Value::U8(v) => Some(u64::from(*v)),
            Value::U16(v) => Some(u64::from(*v)),
            Value::U32(v) => Some(u64::from(*v)),
            Value::U64(v) => Some(*v),
            Value::I8(v) => u64::try_from(*v).ok(),
            Value::I16(v) => u64::try_from(*v).ok(),
            Value::I32(v) => u64::try_from(*v).ok(),
            Value::I64(v) => u64::try_from(*v).ok(),
            _ => None,
        };
        value.and_then(|v| usize::try_from(v).ok()).ok_or_else(|| {
            ModelError::file(&self.path, format!("metadata `{key}` is not a non-negative integer"))
        })
    }

    pub fn f64(&self, key: &str) -> Result<f64> {
        use gguf_file::Value;
        match self.value(key)? {
            Value::F32(v) => Ok(f64::from(*v)),
            Value::F64(v) => Ok(*v),
            _ => self.usize(key).map(|v| v as f64),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    pub fn tensor_dims(&self, name: &str) -> Result<Vec<usize>> {
        self.content
            .tensor_infos
            .get(name)
            .map(|info| info.shape.dims().to_vec())
            .ok_or_else(|| ModelError::file(&self.path, format!("tensor `{name}` is missing")))
    }

    /// A small f32 tensor read whole (e.g. llama.cpp's `rope_freqs.weight`).
    pub fn dense(&mut self, name: &str, device: &Device) -> Result<Tensor> {
        let path = self.path.clone();
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| ModelError::file(&path, format!("tensor `{name}` is missing")))?;
        let tensor = info
            .read(&mut self.file, self.content.tensor_data_offset, device)
            .and_then(|tensor| tensor.dequantize(device))
            .map_err(|error| ModelError::file(&path, format!("tensor `{name}`: {}", describe(error))))?;
        Ok(tensor)
    }
}

/// The message of a candle error without the backtrace and the path candle may attach
/// (our errors name the file themselves).
pub(crate) fn describe(error: candle_core::Error) -> String {
    match error {
        candle_core::Error::WithBacktrace { inner, .. } | candle_core::Error::WithPath { inner, .. } => {
            describe(*inner)
        }
        other => other.to_string(),
    }
}

/// Reads and parses a Hugging Face `config.json`.
pub fn read_config<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    serde_json::from_str(&text).map_err(|error| ModelError::file(path, format!("{error}")))
}

/// A model of any supported architecture.
#[derive(Debug)]
pub enum Model {
    Gpt2(Gpt2),
    Llama(Llama),
}

/// Which architecture a `config.json` describes.
#[derive(serde::Deserialize)]
struct ArchitectureProbe {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
}

impl Model {
    /// Loads a Hugging Face folder (dense f32) or a `.gguf` file (quantized), detecting
    /// the architecture from `config.json` (`model_type`, `architectures`) or the GGUF
    /// `general.architecture`.
    pub fn load(path: &Path, device: &Device) -> Result<Model> {
        if path.is_dir() {
            Model::from_hf_dir(path, device, Trainable::No)
        } else {
            Model::from_gguf(path, device, Precision::Quantized, Trainable::No)
        }
    }

    pub fn from_hf_dir(dir: &Path, device: &Device, trainable: Trainable) -> Result<Model> {
        let config_path = dir.join("config.json");
        let probe: ArchitectureProbe = read_config(&config_path)?;
        let model_type = probe.model_type.as_deref().unwrap_or_default();
        let architecture = probe.architectures.first().map(String::as_str).unwrap_or_default();
        match (model_type, architecture) {
            ("gpt2", _) | (_, "GPT2LMHeadModel") => {
                Ok(Model::Gpt2(Gpt2::from_hf_dir(dir, device, trainable)?))
            }
            ("llama" | "qwen2" | "mistral", _)
            | (_, "LlamaForCausalLM" | "Qwen2ForCausalLM" | "MistralForCausalLM") => {
                Ok(Model::Llama(Llama::from_hf_dir(dir, device, trainable)?))
            }
            _ => Err(ModelError::file(
                config_path,
                format!(
                    "unsupported architecture (model_type `{model_type}`, architectures \
                     {:?}); supported: gpt2, llama, qwen2, mistral",
                    probe.architectures
                ),
            )),
        }
    }

    pub fn from_gguf(
        path: &Path,
        device: &Device,
        precision: Precision,
        trainable: Trainable,
    ) -> Result<Model> {
        Model::from_parsed_gguf(read_gguf(path)?, device, precision, trainable)
    }

    /// [`Model::from_gguf`] on a file already parsed (so that the tokenizer can be read
    /// from the same parse: one copy of the metadata in memory, not two).
    pub fn from_parsed_gguf(
        gguf: Gguf,
        device: &Device,
        precision: Precision,
        trainable: Trainable,
    ) -> Result<Model> {
        let path = gguf.path.clone();
        match gguf.architecture()?.as_str() {
            "llama" | "qwen2" => {
                Ok(Model::Llama(Llama::from_gguf_parsed(gguf, device, precision, trainable)?))
            }
            other => Err(ModelError::file(
                path,
                format!(
                    "unsupported GGUF architecture `{other}` (metadata general.architecture); \
                     supported: llama, qwen2"
                ),
            )),
        }
    }

    /// Every linear layer of the transformer blocks under its Hugging Face module name
    /// (`model.layers.0.self_attn.q_proj`, `transformer.h.0.attn.c_attn`), in model
    /// order; the output head is not among them. An error for a quantized GGUF model
    /// whose projections were fused into one matrix at load.
    pub fn linear_layers_mut(&mut self) -> Result<Vec<(String, &mut Linear)>> {
        match self {
            Model::Gpt2(model) => Ok(model.linear_layers_mut()),
            Model::Llama(model) => model.linear_layers_mut(),
        }
    }

    /// Every tensor under its Hugging Face name, as `save_pretrained` writes them; an
    /// error for quantized weights or layers that still carry a LoRA adapter.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        match self {
            Model::Gpt2(model) => model.named_tensors(),
            Model::Llama(model) => model.named_tensors(),
        }
    }

    /// Writes the model as a Hugging Face folder (`model.safetensors` + `config.json`)
    /// that [`Model::load`] and transformers read; the tokenizer files are the caller's.
    pub fn save_hf(&self, dir: &Path) -> Result<()> {
        crate::checkpoint::save_model(self, dir)
    }

    fn inner(&self) -> &dyn LanguageModel {
        match self {
            Model::Gpt2(model) => model,
            Model::Llama(model) => model,
        }
    }
}

impl LanguageModel for Model {
    fn forward(&self, tokens: &Tensor, mask: Option<&Tensor>, cache: &mut Cache) -> Result<Tensor> {
        self.inner().forward(tokens, mask, cache)
    }

    fn forward_last(&self, tokens: &Tensor, mask: Option<&Tensor>, cache: &mut Cache) -> Result<Tensor> {
        self.inner().forward_last(tokens, mask, cache)
    }

    fn target_logprobs(&self, batch: &crate::scoring::ScoringBatch) -> Result<Tensor> {
        self.inner().target_logprobs(batch)
    }

    fn new_cache(&self) -> Cache {
        self.inner().new_cache()
    }

    fn vocab_size(&self) -> usize {
        self.inner().vocab_size()
    }

    fn max_context(&self) -> usize {
        self.inner().max_context()
    }

    fn device(&self) -> &Device {
        self.inner().device()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frozen product gives the same values and input gradient as candle's matmul,
    /// and no gradient at all for the frozen matrix.
    #[test]
    fn frozen_matmul_matches_matmul_without_a_weight_gradient() {
        let device = Device::Cpu;
        let input =
            Var::from_tensor(&Tensor::arange(0f32, 12.0, &device).unwrap().reshape((2, 2, 3)).unwrap())
                .unwrap();
        let matrix = (Tensor::arange(0f32, 12.0, &device).unwrap().reshape((3, 4)).unwrap() * 0.1).unwrap();
        let frozen = matmul_last_dim(input.as_tensor(), &matrix).unwrap();
        let plain =
            input.as_tensor().reshape((4, 3)).unwrap().matmul(&matrix).unwrap().reshape((2, 2, 4)).unwrap();
        assert_eq!(frozen.to_vec3::<f32>().unwrap(), plain.to_vec3::<f32>().unwrap());
        let weights = Tensor::arange(0f32, 16.0, &device).unwrap().reshape((2, 2, 4)).unwrap();
        let frozen_grads = (frozen * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        let plain_grads = (plain * &weights).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(
            frozen_grads.get(input.as_tensor()).unwrap().to_vec3::<f32>().unwrap(),
            plain_grads.get(input.as_tensor()).unwrap().to_vec3::<f32>().unwrap()
        );
        assert!(frozen_grads.get(&matrix).is_none());
        assert!(plain_grads.get(&matrix).is_some(), "candle's own matmul does compute it");
    }
}
