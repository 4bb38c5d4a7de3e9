//! Chat templates: the model's own template over arbitrary messages, and arbitrary templates
//! over a fixed conversation. Templates come from model files, so they are input too.
#![no_main]
mod common;
use lamina::tokenizer::{render_chat_template, ChatMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let p = common::parts(rest, 2);
    let a = String::from_utf8_lossy(p[0]);
    let b = String::from_utf8_lossy(p[1]);
    if sel & 1 == 0 {
        // Messages: JSON if it parses, else the two parts as a user and an assistant turn.
        let messages: Vec<ChatMessage> = serde_json::from_str(&a).unwrap_or_else(|_| {
            vec![
                ChatMessage::new("user", a.as_ref()),
                ChatMessage::new("assistant", b.as_ref()),
            ]
        });
        let _ = common::tokenizer().apply_chat_template(&messages, sel & 2 != 0);
    } else {
        let messages = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", b.as_ref()),
        ];
        let _ = render_chat_template(&a, &messages, sel & 2 != 0, Some("<s>"), Some("</s>"));
    }
});
