//! Tokenizer encode and decode of arbitrary text and ids, and the streaming decoder, which
//! must give exactly what decoding all ids at once gives.
#![no_main]
mod common;
use lamina::tokenizer::StreamDecoder;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tok = common::tokenizer();
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let ids: Vec<u32> = if sel & 1 == 0 {
        let text = String::from_utf8_lossy(rest);
        match tok.encode(&text, sel & 2 != 0) {
            Ok(ids) => ids,
            Err(_) => return,
        }
    } else {
        // Raw ids, some past the vocabulary.
        rest.chunks(2)
            .map(|c| u16::from_le_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
            .collect()
    };
    let skip = sel & 4 != 0;
    let whole = tok.decode(&ids, skip);
    let mut dec = StreamDecoder::new(tok).skip_special(skip);
    let mut streamed = String::new();
    let mut ok = true;
    for &id in &ids {
        match dec.push(id) {
            Ok(s) => streamed.push_str(&s),
            Err(_) => {
                ok = false;
                break;
            }
        }
    }
    if ok {
        if let Ok(s) = dec.finish() {
            streamed.push_str(&s);
            if let Ok(w) = whole {
                assert_eq!(streamed, w, "streamed decode differs for {ids:?}");
            }
        }
    }
    for &id in ids.iter().take(16) {
        let _ = tok.token_text(id);
    }
});
