//! The quantized kernels the worker's speed rests on (candle-core, patched
//! in `vendor/`): the SIMD Q4_1 dot product agrees with the scalar reference
//! and with f32 arithmetic, and a matmul over many rows (a prompt) gives
//! exactly what the same rows give one at a time (decode).

// Matrix dimensions and operands keep their usual one-letter names.
#![allow(clippy::unwrap_used, clippy::many_single_char_names)]

use candle_core::quantized::k_quants::{BlockQ4_1, BlockQ8_1, GgmlType};
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};

/// Deterministic values in [-1, 1) with a per-seed offset, so that Q4_1's
/// minimum is not always the same (a cheap LCG; no dependency needed).
fn values(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
    let offset = (seed % 7) as f32 * 0.1 - 0.3;
    (0..len)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 + offset
        })
        .collect()
}

fn quantize<T: GgmlType>(xs: &[f32]) -> Vec<T> {
    let mut out = vec![T::zeros(); xs.len() / T::BLCK_SIZE];
    T::from_float(xs, &mut out);
    out
}

#[test]
fn q4_1_dot_product_matches_the_scalar_reference_and_f32() {
    for (n, seed) in [(32, 1), (64, 2), (576, 3), (1536, 4), (4096, 5)] {
        let w = values(n, seed);
        let x = values(n, seed + 100);
        let wq = quantize::<BlockQ4_1>(&w);
        let xq = quantize::<BlockQ8_1>(&x);

        let simd = BlockQ4_1::vec_dot(n, &wq, &xq);
        let scalar = BlockQ4_1::vec_dot_unopt(n, &wq, &xq);
        // Same integer products; only the order of the f32 sums differs.
        let scale: f32 = w.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
        assert!(
            (simd - scalar).abs() <= 1e-5 * scale,
            "n={n}: simd {simd} vs scalar {scalar}"
        );

        // Against the unquantized dot product: Q4_1 keeps 16 levels per
        // block and Q8_1 255, so the error is a few percent of the sum of
        // magnitudes at most.
        let exact: f32 = w.iter().zip(&x).map(|(a, b)| a * b).sum();
        assert!(
            (simd - exact).abs() <= 0.02 * scale,
            "n={n}: simd {simd} vs f32 {exact} (scale {scale})"
        );
    }
}

/// `m` rows through one matmul, and each row through its own.
fn matmul_both_ways(dtype: GgmlDType, m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
    let dev = Device::Cpu;
    let w = Tensor::from_vec(values(n * k, 7), (n, k), &dev).unwrap();
    let mm = QMatMul::from_qtensor(QTensor::quantize(&w, dtype).unwrap()).unwrap();
    let x = Tensor::from_vec(values(m * k, 8), (m, k), &dev).unwrap();

    let together = mm.forward(&x).unwrap();
    assert_eq!(together.dims(), &[m, n]);
    let apart: Vec<Tensor> = (0..m)
        .map(|i| mm.forward(&x.narrow(0, i, 1).unwrap()).unwrap())
        .collect();
    let apart = Tensor::cat(&apart, 0).unwrap();
    (
        together.flatten_all().unwrap().to_vec1().unwrap(),
        apart.flatten_all().unwrap().to_vec1().unwrap(),
    )
}

#[test]
fn a_prompt_matmul_equals_its_rows_one_at_a_time() {
    // n neither a multiple of the decode kernel's 4 rows nor of the prompt
    // path's 16 columns; m across a row tile boundary.
    for dtype in [GgmlDType::Q4_1, GgmlDType::Q8_0, GgmlDType::Q4K] {
        let k = if dtype == GgmlDType::Q4K { 512 } else { 576 };
        for m in [2, 5, 64, 70, 131] {
            let (together, apart) = matmul_both_ways(dtype, m, k, 102);
            assert!(
                together == apart,
                "{dtype:?} m={m}: batched and per-row results differ"
            );
        }
    }
}

#[test]
fn a_q4_1_matmul_matches_f32_on_the_dequantized_weights() {
    let (m, k, n) = (9, 576, 48);
    let dev = Device::Cpu;
    let w = Tensor::from_vec(values(n * k, 11), (n, k), &dev).unwrap();
    let x = Tensor::from_vec(values(m * k, 12), (m, k), &dev).unwrap();
    let qw = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
    let w_dq = qw.dequantize(&dev).unwrap();
    let mm = QMatMul::from_qtensor(qw).unwrap();

    let got: Vec<f32> = mm
        .forward(&x)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let want: Vec<f32> = x
        .matmul(&w_dq.t().unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    // With the same (dequantized) weights on both sides, the only error left
    // is the activations' Q8_1 rounding: half a step of 1.3/127 per value,
    // about 0.5% of an output's magnitude over 576 products. A kernel that
    // misread nibbles or dropped the blocks' minimum would be off by tens of
    // percent.
    let rms = |v: &mut dyn Iterator<Item = f32>| {
        let (sum, count) = v.fold((0f32, 0usize), |(s, c), x| (s + x * x, c + 1));
        (sum / count as f32).sqrt()
    };
    let err = rms(&mut got.iter().zip(&want).map(|(a, b)| a - b));
    let scale = rms(&mut want.iter().copied());
    assert!(err <= 0.02 * scale, "rms error {err} against rms {scale}");
}
