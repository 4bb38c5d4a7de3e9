// The KV cache element type: f16 where the device has shader-f16 (half the memory and the
// bandwidth of attention, as llama.cpp's default cache), f32 otherwise. Included first.
#if F16
enable f16;
alias kv_t = f16;
// v as the cache stores it: rounded to f16's precision (to nearest, ties to even) in f32
// arithmetic, since compilers may drop an f32 -> f16 -> f32 round trip as if it were exact
// (llvmpipe does). The step is f16's spacing at v's exponent (2^-24 below f16's normal range);
// values beyond f16's range are not clamped.
fn kv_round(v: vec4<f32>) -> vec4<f32> {
    let e = max(vec4<i32>((bitcast<vec4<u32>>(v) >> vec4<u32>(23u)) & vec4<u32>(0xFFu)) - 127,
        vec4<i32>(-14));
    let step = bitcast<vec4<f32>>(vec4<u32>(e + 117) << vec4<u32>(23u));
    let inv = bitcast<vec4<f32>>(vec4<u32>(137 - e) << vec4<u32>(23u));
    return round(v * inv) * step;
}
#else
alias kv_t = f32;
fn kv_round(v: vec4<f32>) -> vec4<f32> {
    return v;
}
#endif
