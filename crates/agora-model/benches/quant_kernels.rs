//! Throughput of the quantized matrix kernels at every SIMD level this CPU has, for one
//! activation row (decode) and many (prefill, batched decode), on SmolLM2-135M shapes.
//!
//! `cargo bench -p agora-model --bench quant_kernels`; threads from `RAYON_NUM_THREADS`.

use std::borrow::Cow;
use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{Device, Module, Tensor};

use agora_model::quant_kernels::{PackedMatrix, PackedType, SimdLevel};

fn main() -> Result<(), String> {
    let shapes = [(1536, 576), (49152, 576)];
    for kind in [PackedType::Q8_0, PackedType::Q4_1, PackedType::Q4_0] {
        for (rows, columns) in shapes {
            // Arbitrary bytes with small scales (f16 0x1000 ≈ 2^-11): any bit pattern is valid.
            let block_bytes = kind.block_bytes();
            let mut data: Vec<u8> =
                (0..rows * columns / 32 * block_bytes).map(|index| (index * 7 + 3) as u8).collect();
            for block in data.chunks_exact_mut(block_bytes) {
                block[0] = 0x00;
                block[1] = 0x10;
                if kind == PackedType::Q4_1 {
                    block[2] = 0x00;
                    block[3] = 0x10;
                }
            }
            let matrix = PackedMatrix::new(kind, rows, columns, data)?;
            for count in [1, 64] {
                let input: Vec<f32> =
                    (0..count * columns).map(|index| ((index % 17) as f32 - 8.0) / 8.0).collect();
                let mut line = format!("{kind:?} {rows:>5}x{columns:<5} x {count:>2} rows:");
                for level in SimdLevel::available().into_iter().skip(1) {
                    let repeats = (2_000_000_000 / (rows * columns * count)).clamp(3, 2000);
                    let _ = matrix.matmul(&input, level)?;
                    let started = Instant::now();
                    for _ in 0..repeats {
                        std::hint::black_box(matrix.matmul(&input, level)?);
                    }
                    let seconds = started.elapsed().as_secs_f64() / repeats as f64;
                    let gmacs = (rows * columns * count) as f64 / seconds / 1e9;
                    line.push_str(&format!("  {level:?} {:>8.1} us {gmacs:>6.1} GMAC/s", seconds * 1e6));
                }
                if kind != PackedType::Q4_1 || count > 0 {
                    // candle's own kernel on the same bytes, for comparison.
                    let dtype = match kind {
                        PackedType::Q8_0 => GgmlDType::Q8_0,
                        PackedType::Q4_0 => GgmlDType::Q4_0,
                        PackedType::Q4_1 => GgmlDType::Q4_1,
                    };
                    let storage = QStorage::from_data(Cow::Owned(matrix.gguf_bytes()), &Device::Cpu, dtype)
                        .map_err(|error| error.to_string())?;
                    let qtensor =
                        QTensor::new(storage, (rows, columns)).map_err(|error| error.to_string())?;
                    let qmatmul = QMatMul::from_qtensor(qtensor).map_err(|error| error.to_string())?;
                    let xs = Tensor::from_vec(input.clone(), (count, columns), &Device::Cpu)
                        .map_err(|error| error.to_string())?;
                    let repeats = (2_000_000_000 / (rows * columns * count)).clamp(3, 2000);
                    let started = Instant::now();
                    for _ in 0..repeats {
                        std::hint::black_box(qmatmul.forward(&xs).map_err(|error| error.to_string())?);
                    }
                    let seconds = started.elapsed().as_secs_f64() / repeats as f64;
                    let gmacs = (rows * columns * count) as f64 / seconds / 1e9;
                    line.push_str(&format!("  candle {:>8.1} us {gmacs:>6.1} GMAC/s", seconds * 1e6));
                }
                if count > 1 {
                    // The same product in f32 on the dequantized weights (candle's matmul,
                    // the gemm crate), with and without the dequantization in the timing.
                    let weights = Tensor::from_vec(matrix.dequantize(), (rows, columns), &Device::Cpu)
                        .map_err(|error| error.to_string())?;
                    let xs = Tensor::from_vec(input.clone(), (count, columns), &Device::Cpu)
                        .map_err(|error| error.to_string())?;
                    let repeats = (2_000_000_000 / (rows * columns * count)).clamp(3, 2000);
                    let started = Instant::now();
                    for _ in 0..repeats {
                        std::hint::black_box(
                            xs.matmul(&weights.t().map_err(|error| error.to_string())?)
                                .map_err(|error| error.to_string())?,
                        );
                    }
                    let seconds = started.elapsed().as_secs_f64() / repeats as f64;
                    let gmacs = (rows * columns * count) as f64 / seconds / 1e9;
                    line.push_str(&format!("  f32 gemm {:>8.1} us {gmacs:>6.1} GMAC/s", seconds * 1e6));
                    let started = Instant::now();
                    for _ in 0..repeats {
                        std::hint::black_box(matrix.dequantize());
                    }
                    let seconds = started.elapsed().as_secs_f64() / repeats as f64;
                    line.push_str(&format!("  dequantize {:>8.1} us", seconds * 1e6));
                }
                println!("{line}");
            }
        }
    }
    Ok(())
}
