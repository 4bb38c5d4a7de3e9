//! The GGUF reader, the model config and tokenizer built from its metadata, and the CPU
//! dequantizer and GPU re-layout of every tensor it accepts.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = lamina::gguf::GgufFile::from_bytes("fuzz.gguf", data.to_vec()) else {
        return;
    };
    let _ = lamina::model::Config::from_gguf(&g);
    let _ = lamina::tokenizer::Tokenizer::from_gguf(&g);
    for t in &g.tensors {
        let bytes = g.tensor_bytes(t);
        assert_eq!(bytes.len() as u64, t.n_bytes);
        if bytes.len() <= 1 << 16 {
            if let Ok(v) = lamina::quant::dequantize(t.ty, bytes) {
                assert_eq!(v.len() as u64, t.n_elements());
            }
            let cols = t.dims.first().copied().unwrap_or(0) as usize;
            if let Ok(w) = lamina::quant::to_gpu_layout(t.ty, bytes, cols) {
                let rows = bytes.len() / (cols / t.ty.block_size() * t.ty.block_bytes());
                assert_eq!(w.len(), rows * t.ty.gpu_row_vec4s(cols) * 4);
            }
        }
    }
});
