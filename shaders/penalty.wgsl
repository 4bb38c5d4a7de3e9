// Repetition penalty (as llama.cpp and transformers apply it) on one row of logits, for the
// distinct recent token ids the sampler passes: positive logits are divided by the penalty,
// negative ones multiplied.

struct Params {
    n_tokens: u32,
    row_offset: u32,
    penalty: f32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> TOKENS: array<u32>;
@group(0) @binding(2) var<storage, read_write> X: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    if (gid.x >= p.n_tokens) {
        return;
    }
    let i = p.row_offset + TOKENS[gid.x];
    let v = X[i];
    if (v > 0.0) {
        X[i] = v / p.penalty;
    } else {
        X[i] = v * p.penalty;
    }
}
