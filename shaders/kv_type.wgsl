// The KV cache element type: f16 where the device has shader-f16 (half the memory and the
// bandwidth of attention, as llama.cpp's default cache), f32 otherwise. Included first.
#if F16
enable f16;
alias kv_t = f16;
#else
alias kv_t = f32;
#endif
