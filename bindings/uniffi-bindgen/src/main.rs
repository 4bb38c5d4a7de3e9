//! `cargo run -p uniffi-bindgen -- generate --library target/release/liblamina_ffi.so ...`:
//! writes the Kotlin, Swift and Python sources from the metadata in the built library.
fn main() {
    uniffi::uniffi_bindgen_main()
}
