//! Stop strings over streamed UTF-8: no panic, the emitted text is exactly the text before
//! the first stop string, and no part of a stop string is ever emitted.
#![no_main]
mod common;
use lamina::generate::StopFilter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let p = common::parts(data, 4);
    let stops: Vec<String> = p[..3]
        .iter()
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect();
    let full = String::from_utf8_lossy(p[3]).into_owned();
    // Cut the text into pieces at character boundaries, as tokens arrive.
    let mut pieces = Vec::new();
    let mut start = 0;
    for (i, (at, _)) in full.char_indices().enumerate() {
        if at > start && (i * 7 + at) % 3 == 0 {
            pieces.push(&full[start..at]);
            start = at;
        }
    }
    pieces.push(&full[start..]);

    let mut filter = StopFilter::new(&stops);
    let (mut text, mut out) = (String::new(), String::new());
    let mut stopped = false;
    for (i, piece) in pieces.iter().enumerate() {
        text.push_str(piece);
        let f = filter.feed(&mut text, i + 1 == pieces.len());
        out.push_str(&text[f.emit]);
        if f.stopped {
            stopped = true;
            break;
        }
    }
    let stops: Vec<&String> = stops.iter().filter(|s| !s.is_empty()).collect();
    assert!(
        full.starts_with(&out),
        "emitted {out:?} is not a prefix of {full:?}"
    );
    assert!(
        !stops.iter().any(|s| out.contains(s.as_str())),
        "emitted a stop string: {out:?}"
    );
    if stopped {
        let rest = &full[out.len()..];
        assert!(
            stops.iter().any(|s| rest.starts_with(s.as_str())),
            "stopped before {rest:?}"
        );
    } else {
        assert_eq!(out, full);
        assert!(!stops.iter().any(|s| full.contains(s.as_str())));
    }
});
