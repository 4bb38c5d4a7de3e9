#!/usr/bin/env python3
"""Writes the seed inputs of every fuzz target into fuzz/corpus/<target>/ (small, valid or
nearly valid files of each kind, so the fuzzer starts from real structure). Run once; the
fuzzer grows the corpus from here and `cargo fuzz cmin` keeps it small."""
import json, os, struct, sys

HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "..", "shared", "fixtures", "smollm2-2layer-hf", "checkpoint")
SEP = b"\xff"


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# --- GGUF -----------------------------------------------------------------------------------
def gstr(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gval(v):
    """(type id, bytes) of a metadata value."""
    if isinstance(v, bool):
        return 7, struct.pack("<B", v)
    if isinstance(v, int):
        return 4, struct.pack("<I", v)
    if isinstance(v, float):
        return 6, struct.pack("<f", v)
    if isinstance(v, str):
        return 8, gstr(v)
    if isinstance(v, list):
        et = gval(v[0])[0] if v else 4
        body = b"".join(gval(x)[1] for x in v)
        return 9, struct.pack("<IQ", et, len(v)) + body
    raise TypeError(v)


def gguf(meta, tensors, align=32):
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(meta))
    for k, v in meta:
        t, b = gval(v)
        out += gstr(k) + struct.pack("<I", t) + b
    off = 0
    for name, dims, ty, data in tensors:
        out += gstr(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ty, off)
        off += (len(data) + align - 1) // align * align
    out += b"\0" * ((-len(out)) % align)
    for _, _, _, data in tensors:
        out += data + b"\0" * ((-len(data)) % align)
    return out


def q8_0_block(seed):
    return struct.pack("<e", 0.01 * (seed + 1)) + bytes((i * 7 + seed) % 256 for i in range(32))


def q4_1_block(seed):
    return struct.pack("<ee", 0.02, -0.1) + bytes((i * 13 + seed) % 256 for i in range(16))


tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [chr(c) for c in range(33, 127)] + ["Ġ", "Ġt", "he", "Ġthe"]
base_meta = [
    ("general.architecture", "llama"),
    ("general.name", "tiny"),
    ("llama.block_count", 1),
    ("llama.embedding_length", 32),
    ("llama.attention.head_count", 2),
    ("llama.attention.head_count_kv", 1),
    ("llama.feed_forward_length", 64),
    ("llama.context_length", 128),
    ("llama.attention.layer_norm_rms_epsilon", 1e-5),
    ("llama.rope.freq_base", 10000.0),
    ("tokenizer.ggml.model", "gpt2"),
    ("tokenizer.ggml.pre", "smollm"),
    ("tokenizer.ggml.tokens", tokens),
    ("tokenizer.ggml.token_type", [3, 3, 3] + [1] * (len(tokens) - 3)),
    ("tokenizer.ggml.merges", ["Ġ t", "h e", "Ġt he"]),
    ("tokenizer.ggml.eos_token_id", 2),
    ("tokenizer.chat_template", "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"),
]
tensors = [
    ("token_embd.weight", [32, len(tokens)], 8, b"".join(q8_0_block(i) for i in range(len(tokens)))),
    ("output_norm.weight", [32], 0, struct.pack("<32f", *([1.0] * 32))),
    ("blk.0.attn_q.weight", [32, 32], 3, b"".join(q4_1_block(i) for i in range(32))),
    ("blk.0.ffn_down.weight", [64, 32], 1, struct.pack("<2048e", *([0.5] * 2048))),
]
put("gguf", "tiny_llama", gguf(base_meta, tensors))
put("gguf", "rope_linear", gguf(base_meta + [("llama.rope.scaling.type", "linear"), ("llama.rope.scaling.factor", 4.0)], tensors[:2]))
put("gguf", "rope_yarn", gguf(base_meta + [("llama.rope.scaling.type", "yarn")], tensors[:1]))
put("gguf", "nested_arrays", gguf([("general.architecture", "llama"), ("x.nested", [[1, 2], [3]]), ("x.bytes", [True, False])], []))
put("gguf", "llama_spm", gguf([("general.architecture", "llama"), ("tokenizer.ggml.model", "llama"),
                               ("tokenizer.ggml.tokens", ["<unk>", "<s>", "</s>", "▁a", "b"]),
                               ("tokenizer.ggml.scores", [0.0, 0.0, 0.0, -1.0, -2.0]),
                               ("tokenizer.ggml.token_type", [2, 3, 3, 1, 1])], []))


# --- safetensors ----------------------------------------------------------------------------
def safetensors(tensors):
    header, data = {}, b""
    for name, shape, values in tensors:
        raw = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    h += b" " * ((-len(h)) % 8)
    return struct.pack("<Q", len(h)) + h + data


cfg = json.loads(open(os.path.join(SHARED, "config.json")).read())
small = dict(cfg, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
             head_dim=16, num_hidden_layers=1, vocab_size=8)
hf_tensors = [
    ("model.embed_tokens.weight", [8, 32], [0.01] * 256),
    ("model.norm.weight", [32], [1.0] * 32),
    ("model.layers.0.self_attn.q_proj.weight", [32, 32], [0.02] * 1024),
    ("model.layers.0.input_layernorm.weight", [32], [1.0] * 32),
]
put("hf_checkpoint", "small", json.dumps(small).encode() + SEP + safetensors(hf_tensors))
put("hf_checkpoint", "with_index", json.dumps(small).encode() + SEP + safetensors(hf_tensors[:2]) + SEP +
    json.dumps({"weight_map": {"model.norm.weight": "model.safetensors"}}).encode())
put("hf_checkpoint", "fixture_config", open(os.path.join(SHARED, "config.json"), "rb").read() + SEP + safetensors([]))

# --- PEFT adapters (shapes of the fuzz target's small config: 2 layers, 64 wide, q 64, kv 32, ff 96)
r = 2
dims = {"q_proj": (64, 64), "k_proj": (64, 32), "v_proj": (64, 32), "o_proj": (64, 64),
        "gate_proj": (64, 96), "up_proj": (64, 96), "down_proj": (96, 64)}
lora = []
for layer in range(2):
    for m, (n_in, n_out) in dims.items():
        part = "self_attn" if m.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
        base = f"base_model.model.model.layers.{layer}.{part}.{m}"
        lora.append((base + ".lora_A.weight", [r, n_in], [0.01] * (r * n_in)))
        lora.append((base + ".lora_B.weight", [n_out, r], [0.02] * (n_out * r)))
acfg = {"peft_type": "LORA", "r": r, "lora_alpha": 4, "target_modules": list(dims)}
put("peft_adapter", "all_modules", b"\x00" + json.dumps(acfg).encode() + SEP + safetensors(lora))
put("peft_adapter", "qk_neox", b"\x01" + json.dumps(dict(acfg, use_rslora=True)).encode() + SEP + safetensors(lora[:4]))

# --- datasets (first byte: extension and format choice) --------------------------------------
put("dataset", "prompt_completion", b"\x00" + b'{"prompt": "2+2=", "completion": " 4"}\n{"prompt": "Capital of France?", "completion": " Paris"}\n')
put("dataset", "messages", b"\x06" + json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}).encode() + b"\n")
put("dataset", "text_label", b"\x09" + b'{"text": "Great food, friendly staff.", "label": "great"}\n{"text": "Cold and stale.", "label": "other"}\n')
put("dataset", "json_array", b"\x01" + b'[{"prompt": "a", "completion": "b"}, {"prompt": "c", "completion": "d"}]')
put("dataset", "csv", b"\x02" + b'text,label\n"Loved it, really",great\nmeh,other\n')
put("dataset", "malformed_skip", b"\x80" + b'{"prompt": 1}\n{"prompt": "x", "completion": "y"}\nnot json\n')

# --- training TOML --------------------------------------------------------------------------
put("train_config", "full", b"""epochs = 2
batch_size = 4
grad_accum = 2
lr = 2e-4
warmup_steps = 5
schedule = "cosine"
max_len = 128
checkpoint_every = 10
validation_fraction = 0.1
[lora]
r = 8
alpha = 16.0
dropout = 0.05
targets = ["q_proj", "v_proj"]
""")
put("train_config", "steps", b'max_steps = 100\nepochs = 0\nschedule = "constant"\nrecompute = true\n')

# --- tokenizer (first byte: mode bits) ------------------------------------------------------
for i, t in enumerate(["Hello, world!", "C'est très beau 🙂 — naïve café", "日本語のテキスト", "<|im_start|>user\nhi<|im_end|>", "  spaces\t\ttabs\n\n"]):
    put("tokenizer", f"text{i}", bytes([2 * (i % 2)]) + t.encode())
put("tokenizer", "ids", b"\x01" + struct.pack("<8H", 1, 2, 100, 200, 30000, 49151, 60000, 5))

# --- chat templates (first byte: mode) ------------------------------------------------------
msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 🙂"}, {"role": "assistant", "content": "Hello."}]
put("chat_template", "messages", b"\x02" + json.dumps(msgs).encode())
put("chat_template", "fixture_template", b"\x03" + open(os.path.join(SHARED, "chat_template.jinja"), "rb").read() + SEP + b"What is 2+2?")
put("chat_template", "loops", b"\x01{% for m in messages %}{{ m.role | upper }}{{ m.content | tojson(indent=2) }}{% endfor %}" + SEP + b"x")

# --- stop strings (three stops, then the text) ----------------------------------------------
put("stop_strings", "french", b"." + SEP + b"\n\n" + SEP + b"" + SEP + "C'est très beau. Voilà é".encode())
put("stop_strings", "emoji", "🙂!".encode() + SEP + b"ab" + SEP + b"</s>" + SEP + "ok 🙂🙂! rest".encode())
put("stop_strings", "none", b"zz" + SEP + b"" + SEP + b"" + SEP + b"no stop here, only text")
print("seeds written to", os.path.join(HERE, "corpus"))
