// Inverted dropout of LoRA inputs without a stored mask: whether feature k of row t is kept
// is a hash of (seed, t, k), so the forward's down projection and the backward's dA and dX
// products recompute the same mask. Returns 0 (dropped) or 1 / (1 - p) (kept).

fn dropout_hash(x: u32) -> u32 {
    // "lowbias32" integer hash (Chris Wellons' hash-prospector).
    var h = x;
    h ^= h >> 16u;
    h *= 0x7feb352du;
    h ^= h >> 15u;
    h *= 0x846ca68bu;
    h ^= h >> 16u;
    return h;
}

fn dropout_keep(seed: u32, t: u32, k: u32, p: f32) -> f32 {
    let h = dropout_hash(seed ^ dropout_hash(t ^ dropout_hash(k + 0x9e3779b9u)));
    let u = f32(h >> 8u) * (1.0 / 16777216.0);
    return select(0.0, 1.0 / (1.0 - p), u >= p);
}
