//! GGUF conversion: a tiny GGUF written in the test goes through every target with its
//! values within quantization tolerance and its metadata intact; unreadable input is a
//! clear error and leaves no output behind.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use agora_model::convert::{ConvertTarget, convert_gguf, converted_file_name};
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};

/// Deterministic values in about [-1, 1].
fn values(shape: &[usize], phase: f32) -> Tensor {
    let count: usize = shape.iter().product();
    let data: Vec<f32> =
        (0..count).map(|i| ((i as f32) * 0.37 + phase).sin() * (1.0 + (i % 7) as f32 / 7.0)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

fn metadata() -> Vec<(&'static str, gguf_file::Value)> {
    use gguf_file::Value;
    vec![
        ("general.architecture", Value::String("llama".to_string())),
        ("general.file_type", Value::U32(3)),
        ("general.alignment", Value::U32(32)),
        ("llama.block_count", Value::U32(1)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        (
            "tokenizer.ggml.tokens",
            Value::Array(vec![Value::String("a".into()), Value::String("<|im_end|>".into())]),
        ),
        ("tokenizer.ggml.token_type", Value::Array(vec![Value::I32(1), Value::I32(3)])),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
    ]
}

/// Tensors of every kind the converter meets: quantized and f16 matrices, an f32
/// vector, and a matrix whose rows do not fit a quantization block.
fn tensors() -> Vec<(&'static str, QTensor)> {
    let quantize =
        |shape: &[usize], phase: f32, dtype| QTensor::quantize(&values(shape, phase), dtype).unwrap();
    vec![
        ("token_embd.weight", quantize(&[8, 64], 0.1, GgmlDType::Q8_0)),
        ("blk.0.attn_q.weight", quantize(&[64, 64], 0.2, GgmlDType::Q4_1)),
        ("blk.0.attn_norm.weight", quantize(&[64], 0.3, GgmlDType::F32)),
        ("blk.0.ffn_up.weight", quantize(&[16, 32], 0.4, GgmlDType::F16)),
        ("odd.weight", quantize(&[3, 10], 0.5, GgmlDType::F32)),
    ]
}

fn write_tiny_gguf(path: &Path) {
    let metadata = metadata();
    let tensors = tensors();
    let metadata: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
    let mut file = fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &metadata, &tensors).unwrap();
}

fn read(path: &Path) -> (gguf_file::Content, HashMap<String, QTensor>) {
    let mut file = fs::File::open(path).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let tensors = content
        .tensor_infos
        .keys()
        .map(|name| (name.clone(), content.tensor(&mut file, name, &Device::Cpu).unwrap()))
        .collect();
    (content, tensors)
}

fn max_abs(tensor: &Tensor) -> f32 {
    tensor.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Converts the tiny file to `target` and checks types, values and metadata.
fn check(target: ConvertTarget, tolerance: f32) {
    let temp = tempfile::tempdir().unwrap();
    let input = temp.path().join("tiny.Q4_1.gguf");
    write_tiny_gguf(&input);
    let output = converted_file_name(&input, target);
    let report = convert_gguf(&input, &output, target).unwrap();
    assert_eq!(report.tensors, 5);
    assert_eq!(report.output, output);
    assert_eq!(report.output_bytes, fs::metadata(&output).unwrap().len());
    let (source_content, source) = read(&input);
    let (content, converted) = read(&output);

    let block = target.ggml_dtype().block_size();
    let mut expected_converted = 0;
    for (name, original) in &source {
        let result = &converted[name];
        assert_eq!(result.shape(), original.shape(), "{target} {name}");
        let dims = original.shape().dims();
        let is_matrix = dims.len() == 2 && dims[1] % block == 0;
        expected_converted += usize::from(is_matrix);
        let expected_dtype = if is_matrix { target.ggml_dtype() } else { GgmlDType::F32 };
        assert_eq!(result.dtype(), expected_dtype, "{target} {name}");
        let original = original.dequantize(&Device::Cpu).unwrap();
        let difference = (result.dequantize(&Device::Cpu).unwrap() - &original).unwrap();
        let error = max_abs(&difference);
        let allowed = if is_matrix { tolerance * max_abs(&original) } else { 0.0 };
        assert!(error <= allowed, "{target} {name}: error {error} > {allowed}");
    }
    assert_eq!(report.converted, expected_converted);
    assert_eq!(report.kept_f32, 5 - expected_converted);

    // Metadata: identical but for the file type.
    assert_eq!(content.metadata.len(), source_content.metadata.len());
    for (key, value) in &source_content.metadata {
        let got = format!("{:?}", content.metadata[key]);
        if key == "general.file_type" {
            assert_eq!(got, format!("{:?}", gguf_file::Value::U32(target.file_type())));
        } else {
            assert_eq!(got, format!("{value:?}"), "{target} {key}");
        }
    }
    // Same input, same bytes.
    let again = temp.path().join("again.gguf");
    convert_gguf(&input, &again, target).unwrap();
    assert_eq!(fs::read(&output).unwrap(), fs::read(&again).unwrap(), "{target}");
    let left: Vec<_> = fs::read_dir(temp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(!left.iter().any(|name| name.to_string_lossy().ends_with(".partial")), "{left:?}");
}

#[test]
fn converts_to_every_target_within_tolerance() {
    // Q8_0 rounds to 1/254 of a block's largest value. Q4_0 rounds to 1/16, but maps the
    // largest value to -8 so an opposite value of the same size clamps at +7: up to 1/8.
    // f16 keeps about 3 decimal digits; f32 is exact.
    check(ConvertTarget::Q8_0, 1.0 / 200.0);
    check(ConvertTarget::Q4_0, 1.0 / 7.5);
    check(ConvertTarget::F16, 1e-3);
    check(ConvertTarget::F32, 0.0);
}

#[test]
fn targets_parse_and_name_output_files() {
    for target in ConvertTarget::ALL {
        assert_eq!(target.name().parse::<ConvertTarget>().unwrap(), target);
    }
    assert_eq!("Q8_0".parse::<ConvertTarget>().unwrap(), ConvertTarget::Q8_0);
    assert!("q4_1".parse::<ConvertTarget>().unwrap_err().to_string().contains("q8_0, q4_0, f16, f32"));
    let check = |input: &str, target, expected: &str| {
        assert_eq!(converted_file_name(Path::new(input), target), Path::new(expected));
    };
    check(
        "models/SmolLM2-135M-Instruct.Q4_1.gguf",
        ConvertTarget::Q8_0,
        "models/SmolLM2-135M-Instruct.Q8_0.gguf",
    );
    check("m/tiny.f16.gguf", ConvertTarget::Q4_0, "m/tiny.Q4_0.gguf");
    check("m/model-v1.5.gguf", ConvertTarget::F32, "m/model-v1.5.F32.gguf");
    check("m/plain.gguf", ConvertTarget::F16, "m/plain.F16.gguf");
}

#[test]
fn an_unsupported_tensor_type_is_an_error_naming_the_file() {
    let temp = tempfile::tempdir().unwrap();
    let input = temp.path().join("tiny.gguf");
    write_tiny_gguf(&input);
    // Patch odd.weight's type (after its name: u32 dims, 2 x u64 sizes, u32 type) to 20,
    // IQ4_NL, a type candle cannot read.
    let mut bytes = fs::read(&input).unwrap();
    let at = bytes.windows(10).position(|w| w == b"odd.weight").unwrap() + 10 + 4 + 16;
    assert_eq!(u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()), 0);
    bytes[at..at + 4].copy_from_slice(&20u32.to_le_bytes());
    fs::write(&input, bytes).unwrap();
    let output = temp.path().join("out.gguf");
    let message = convert_gguf(&input, &output, ConvertTarget::Q8_0).unwrap_err().to_string();
    assert!(message.contains("tiny.gguf") && message.contains("dtype"), "{message}");
    assert!(!output.exists());
}

#[test]
fn a_truncated_file_is_an_error_naming_the_tensor_and_leaves_no_output() {
    let temp = tempfile::tempdir().unwrap();
    let input = temp.path().join("tiny.gguf");
    write_tiny_gguf(&input);
    let bytes = fs::read(&input).unwrap();
    let output = temp.path().join("out.gguf");
    // Cut inside the tensor data: the last tensor is missing its bytes.
    fs::write(&input, &bytes[..bytes.len() - 100]).unwrap();
    let message = convert_gguf(&input, &output, ConvertTarget::Q4_0).unwrap_err().to_string();
    assert!(message.contains("tiny.gguf") && message.contains("tensor odd.weight"), "{message}");
    // Cut inside the header.
    fs::write(&input, &bytes[..40]).unwrap();
    let message = convert_gguf(&input, &output, ConvertTarget::Q4_0).unwrap_err().to_string();
    assert!(message.contains("not a readable GGUF file"), "{message}");
    let missing = convert_gguf(&temp.path().join("none.gguf"), &output, ConvertTarget::Q4_0).unwrap_err();
    assert!(missing.to_string().contains("none.gguf"), "{missing}");
    let left: Vec<_> = fs::read_dir(temp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec!["tiny.gguf"]);
}

#[test]
fn converted_default_models_keep_the_original_layout() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let original = models.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    if !original.is_file() {
        eprintln!("skipped: {} is absent", original.display());
        return;
    }
    let header = |path: &Path| gguf_file::Content::read(&mut fs::File::open(path).unwrap()).unwrap();
    let source = header(&original);
    for target in [ConvertTarget::Q8_0, ConvertTarget::Q4_0] {
        let converted = converted_file_name(&original, target);
        if !converted.is_file() {
            eprintln!("skipped: {} is absent", converted.display());
            continue;
        }
        let content = header(&converted);
        assert_eq!(content.metadata.len(), source.metadata.len());
        assert_eq!(content.tensor_infos.len(), source.tensor_infos.len());
        for (name, info) in &source.tensor_infos {
            let new = &content.tensor_infos[name];
            assert_eq!(new.shape, info.shape, "{name}");
            let expected = if info.shape.rank() >= 2 { target.ggml_dtype() } else { GgmlDType::F32 };
            assert_eq!(new.ggml_dtype, expected, "{name}");
        }
    }
}
