//! The WGSL sources in `shaders/`, and the two-directive preprocessor that specializes them:
//! `#include NAME` pastes `shaders/NAME.wgsl`; `#if FLAG` / `#else` / `#endif` keep the lines
//! for the device's features (SUBGROUPS, F16). Everything else is WGSL override constants.

/// Device features a shader variant is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags {
    pub subgroups: bool,
    pub f16: bool,
}

impl Flags {
    fn get(&self, name: &str) -> Option<bool> {
        match name {
            "SUBGROUPS" => Some(self.subgroups),
            "F16" => Some(self.f16),
            _ => None,
        }
    }
}

/// Every kernel file, by name.
pub const FILES: &[(&str, &str)] = &[
    ("dequant", include_str!("../shaders/dequant.wgsl")),
    ("kv_type", include_str!("../shaders/kv_type.wgsl")),
    ("dropout", include_str!("../shaders/dropout.wgsl")),
    ("matmul", include_str!("../shaders/matmul.wgsl")),
    ("rmsnorm", include_str!("../shaders/rmsnorm.wgsl")),
    ("embed", include_str!("../shaders/embed.wgsl")),
    ("rope_kv", include_str!("../shaders/rope_kv.wgsl")),
    ("attention", include_str!("../shaders/attention.wgsl")),
    ("argmax", include_str!("../shaders/argmax.wgsl")),
    ("topk", include_str!("../shaders/topk.wgsl")),
    ("penalty", include_str!("../shaders/penalty.wgsl")),
    ("lora_down", include_str!("../shaders/lora_down.wgsl")),
    ("lora_up", include_str!("../shaders/lora_up.wgsl")),
    (
        "cross_entropy",
        include_str!("../shaders/cross_entropy.wgsl"),
    ),
    ("adamw", include_str!("../shaders/adamw.wgsl")),
    ("matmul_t", include_str!("../shaders/matmul_t.wgsl")),
    (
        "rmsnorm_backward",
        include_str!("../shaders/rmsnorm_backward.wgsl"),
    ),
    (
        "swiglu_backward",
        include_str!("../shaders/swiglu_backward.wgsl"),
    ),
    (
        "lora_backward",
        include_str!("../shaders/lora_backward.wgsl"),
    ),
    (
        "attention_backward",
        include_str!("../shaders/attention_backward.wgsl"),
    ),
    (
        "rope_backward",
        include_str!("../shaders/rope_backward.wgsl"),
    ),
    ("gather_rows", include_str!("../shaders/gather_rows.wgsl")),
    ("sum_squares", include_str!("../shaders/sum_squares.wgsl")),
];

/// Kernels with an entry point (the rest are included by them).
pub const KERNELS: &[&str] = &[
    "matmul",
    "rmsnorm",
    "embed",
    "rope_kv",
    "attention",
    "argmax",
    "topk",
    "penalty",
    "lora_down",
    "lora_up",
    "cross_entropy",
    "adamw",
    "matmul_t",
    "rmsnorm_backward",
    "swiglu_backward",
    "lora_backward",
    "attention_backward",
    "rope_backward",
    "gather_rows",
    "sum_squares",
];

fn file(name: &str) -> Result<&'static str, String> {
    FILES
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, s)| *s)
        .ok_or_else(|| format!("no shader named '{name}'"))
}

/// A kernel as the device compiles it: the preprocessor's flags and the override constants.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Variant {
    pub kernel: &'static str,
    pub flags: Flags,
    pub constants: Vec<(&'static str, u64)>,
}

/// The WGSL of a kernel variant exactly as [`crate::gpu::Gpu::pipeline`] compiles it: the
/// `#if` lines for `flags` kept, then `constants` written in place of their overrides.
pub fn variant_source(
    kernel: &str,
    flags: &Flags,
    constants: &[(&str, u64)],
) -> Result<String, String> {
    source(kernel, flags).and_then(|s| specialize(&s, constants))
}

/// The specialized source of a kernel.
pub fn source(name: &str, flags: &Flags) -> Result<String, String> {
    let mut out = String::new();
    expand(name, flags, &mut out, 0)?;
    Ok(out)
}

fn expand(name: &str, flags: &Flags, out: &mut String, depth: u32) -> Result<(), String> {
    if depth > 4 {
        return Err(format!("#include nesting too deep at '{name}'"));
    }
    // Stack of (this branch is kept, an enclosing branch is kept).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &Vec<(bool, bool)>| stack.last().map(|&(a, p)| a && p).unwrap_or(true);
    for (i, line) in file(name)?.lines().enumerate() {
        let trimmed = line.trim();
        let at = || format!("{name}.wgsl:{}", i + 1);
        if let Some(flag) = trimmed.strip_prefix("#if ") {
            let v = flags
                .get(flag.trim())
                .ok_or_else(|| format!("{}: unknown flag '{}'", at(), flag.trim()))?;
            let parent = active(&stack);
            stack.push((v, parent));
        } else if trimmed == "#else" {
            let top = stack
                .last_mut()
                .ok_or_else(|| format!("{}: #else without #if", at()))?;
            top.0 = !top.0;
        } else if trimmed == "#endif" {
            stack
                .pop()
                .ok_or_else(|| format!("{}: #endif without #if", at()))?;
        } else if let Some(inc) = trimmed.strip_prefix("#include ") {
            if active(&stack) {
                expand(inc.trim(), flags, out, depth + 1)?;
            }
        } else if active(&stack) {
            out.push_str(line);
            out.push('\n');
        } else {
            // Keep line numbers of naga's messages meaningful.
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err(format!("{name}.wgsl: #if without #endif"));
    }
    Ok(())
}

/// Parses and validates a kernel variant with naga, as the device would (without a device).
/// Turns the given override constants into plain `const` declarations in `source`.
///
/// Why not pipeline overrides: a loop bounded by an override is not unrolled by llvmpipe
/// (Mesa 22.3), and llvmpipe caps the loop iterations of one invocation at 65535 in total,
/// silently cutting off longer work; with `const` bounds the small inner loops unroll, so only
/// the outer loops count. Each combination is its own pipeline either way.
pub fn specialize(source: &str, constants: &[(&str, u64)]) -> Result<String, String> {
    let mut out = String::with_capacity(source.len());
    let mut found = vec![false; constants.len()];
    for line in source.lines() {
        let trimmed = line.trim_start();
        let decl = trimmed.strip_prefix("override ").and_then(|rest| {
            let (name, rest) = rest.split_once(':')?;
            let ty = rest.split(['=', ';']).next()?.trim();
            Some((name.trim(), ty))
        });
        let spec = decl.and_then(|(name, ty)| {
            let i = constants.iter().position(|(n, _)| *n == name)?;
            Some((i, name, ty))
        });
        match spec {
            Some((i, name, ty)) => {
                let v = constants[i].1;
                let value = match ty {
                    "bool" => (v != 0).to_string(),
                    "u32" => format!("{v}u"),
                    "i32" => format!("{}i", v as i64),
                    other => return Err(format!("override {name}: {other} cannot be specialized")),
                };
                found[i] = true;
                out.push_str(&format!("const {name}: {ty} = {value};\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if let Some(i) = found.iter().position(|f| !f) {
        return Err(format!("no override named {}", constants[i].0));
    }
    Ok(out)
}

pub fn validate(name: &str, flags: &Flags) -> Result<(), String> {
    let src = source(name, flags)?;
    let module = naga::front::wgsl::parse_str(&src)
        .map_err(|e| format!("{name} {flags:?}: {}", e.emit_to_string(&src)))?;
    // unpack2x16float is core WGSL; naga files it under this capability, which wgpu grants.
    let mut caps =
        naga::valid::Capabilities::default() | naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
    if flags.subgroups {
        caps |= naga::valid::Capabilities::SUBGROUP;
    }
    if flags.f16 {
        caps |= naga::valid::Capabilities::SHADER_FLOAT16;
    }
    let mut validator = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps);
    if flags.subgroups {
        validator.subgroup_stages(naga::valid::ShaderStages::COMPUTE);
        validator.subgroup_operations(naga::valid::SubgroupOperationSet::all());
    }
    validator
        .validate(&module)
        .map_err(|e| format!("{name} {flags:?}: {}", e.emit_to_string(&src)))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kernel_variant_validates_with_naga() {
        for name in KERNELS {
            for subgroups in [false, true] {
                for f16 in [false, true] {
                    let flags = Flags { subgroups, f16 };
                    if let Err(e) = validate(name, &flags) {
                        panic!("{e}");
                    }
                }
            }
        }
    }

    #[test]
    fn preprocessor_keeps_the_right_branch() {
        let on = source(
            "matmul",
            &Flags {
                subgroups: true,
                f16: false,
            },
        )
        .unwrap();
        let off = source("matmul", &Flags::default()).unwrap();
        assert!(on.contains("subgroup_id)") && !off.contains("subgroup_id)"));
        assert!(on.contains("fn dq4") && off.contains("fn dq4"));
    }
}
