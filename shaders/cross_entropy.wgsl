// Cross-entropy over rows of logits, forward and backward in one pass: for row i with label
// LABELS[i], LOSS[i] = logsumexp(x) - x[label], and the row is overwritten with its gradient
// d(mean loss)/dx = (softmax(x) - onehot(label)) * GRAD_SCALE (1 / number of loss positions).
// One workgroup per row: two reductions (max, then sum of exp) over the vocabulary. A label
// of 0xffffffff marks a padding row: no loss and a zero gradient. Labels and losses are read
// from LABEL0 on, so a long list can be processed in chunks of rows.

struct Params {
    n: u32,            // vocabulary (row length)
    rows: u32,
    grad_scale: f32,
    label0: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read> LABELS: array<u32>;
@group(0) @binding(3) var<storage, read_write> LOSS: array<f32>;

var<workgroup> red: array<f32, 256>;

fn reduce_max(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] = max(red[li], red[li + s]);
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

fn reduce_sum(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] = red[li] + red[li + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let row = wid.x;
    if (row >= p.rows) {
        return;
    }
    let base = row * p.n;
    let label = LABELS[p.label0 + row];
    if (label == 0xffffffffu) {
        for (var i = li; i < p.n; i += 256u) {
            X[base + i] = 0.0;
        }
        if (li == 0u) {
            LOSS[p.label0 + row] = 0.0;
        }
        return;
    }
    var m = -3.4e38;
    for (var i = li; i < p.n; i += 256u) {
        m = max(m, X[base + i]);
    }
    m = reduce_max(li, m);
    var s = 0.0;
    for (var i = li; i < p.n; i += 256u) {
        s += exp(X[base + i] - m);
    }
    s = reduce_sum(li, s);
    let lse = m + log(s);
    if (li == 0u) {
        LOSS[p.label0 + row] = lse - X[base + label];
    }
    workgroupBarrier();
    let inv = 1.0 / s;
    for (var i = li; i < p.n; i += 256u) {
        var g = exp(X[base + i] - m) * inv;
        if (i == label) {
            g -= 1.0;
        }
        X[base + i] = g * p.grad_scale;
    }
}
