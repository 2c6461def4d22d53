//! A streamed OpenAI-compatible answer (`"stream": true`): server-sent events, each `data:` a
//! chunk of the answer (`choices[i].delta.content` for chat, `choices[i].text` for raw
//! completions), the usage in a last chunk when `stream_options.include_usage` asked for it,
//! and `data: [DONE]` at the end. [`StreamedReply`] reads the events as they arrive, tells a
//! watcher each choice's text as it grows, and joins them into the reply a request without
//! `stream` gets, so that what follows reads both alike.
//!
//! A server is not trusted to keep to the format: a choice index past the choices asked for, an
//! event that is not JSON, an error inside the stream, or a stream that ends before its answer
//! does, each fail the request with a message that says which.

use serde_json::{Map, Value, json};

use super::PromptForm;

/// The reply being read from a stream of events.
#[derive(Debug)]
pub struct StreamedReply {
    form: PromptForm,
    /// Choices asked for: an index past them is a fault of the server.
    choices: usize,
    /// Bytes of a line not yet ended.
    line: Vec<u8>,
    /// The `data` of the event being read (an event may span several `data:` lines).
    data: Option<String>,
    texts: Vec<String>,
    finish_reasons: Vec<Value>,
    /// `id`, `model`, `system_fingerprint` and `usage`, as the chunks said them.
    about: Map<String, Value>,
    done: bool,
}

impl StreamedReply {
    /// A reply to a `form` request that asked for `choices` choices.
    pub fn new(form: PromptForm, choices: usize) -> StreamedReply {
        StreamedReply {
            form,
            choices,
            line: Vec::new(),
            data: None,
            texts: vec![String::new(); choices],
            finish_reasons: vec![Value::Null; choices],
            about: Map::new(),
            done: false,
        }
    }

    /// Reads the next bytes of the stream; `grown(choice, text)` is told the text of every
    /// choice a chunk added to, as it now reads.
    pub fn feed(&mut self, bytes: &[u8], grown: &mut dyn FnMut(u32, &str)) -> Result<(), String> {
        for &byte in bytes {
            if byte != b'\n' {
                self.line.push(byte);
                continue;
            }
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line_ended(&String::from_utf8_lossy(&line), grown)?;
        }
        Ok(())
    }

    fn line_ended(&mut self, line: &str, grown: &mut dyn FnMut(u32, &str)) -> Result<(), String> {
        if line.is_empty() {
            return match self.data.take() {
                Some(data) => self.event(&data, grown),
                None => Ok(()),
            };
        }
        // Other fields (`event`, `id`, `retry`) and comments (`:`) carry no part of the answer.
        if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            }
        }
        Ok(())
    }

    fn event(&mut self, data: &str, grown: &mut dyn FnMut(u32, &str)) -> Result<(), String> {
        if data.trim() == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        if self.done {
            return Err("the stream went on after [DONE]".to_owned());
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| format!("an event of the stream is not JSON ({e}): {}", cut(data)))?;
        if chunk.get("error").is_some_and(|e| !e.is_null()) {
            return Err(format!("the stream carried an error: {}", cut(data)));
        }
        for field in ["id", "model", "system_fingerprint", "usage"] {
            if let Some(value) = chunk.get(field).filter(|v| !v.is_null()) {
                self.about.insert(field.to_owned(), value.clone());
            }
        }
        let Some(choices) = chunk.get("choices").and_then(Value::as_array) else {
            return Ok(());
        };
        for (position, choice) in choices.iter().enumerate() {
            let index = choice["index"].as_u64().map_or(position as u64, |i| i);
            let Some(slot) = usize::try_from(index).ok().filter(|&i| i < self.choices) else {
                return Err(format!(
                    "the stream sent choice {index}, where {} were asked for",
                    self.choices
                ));
            };
            let piece = match self.form {
                PromptForm::Chat => &choice["delta"]["content"],
                PromptForm::Raw => &choice["text"],
            };
            if let Some(piece) = piece.as_str().filter(|p| !p.is_empty()) {
                self.texts[slot].push_str(piece);
                grown(slot as u32, &self.texts[slot]);
            }
            if let Some(reason) = choice.get("finish_reason").filter(|r| !r.is_null()) {
                self.finish_reasons[slot] = reason.clone();
            }
        }
        Ok(())
    }

    /// The whole reply, in the shape of a reply to a request without `stream`, once the stream
    /// has ended: at `[DONE]`, or where the server closes it without one after every choice
    /// has finished.
    pub fn finish(mut self) -> Result<Value, String> {
        if !self.line.is_empty() {
            let line = String::from_utf8_lossy(&std::mem::take(&mut self.line)).into_owned();
            self.line_ended(&line, &mut |_, _| {})?;
        }
        if let Some(data) = self.data.take() {
            self.event(&data, &mut |_, _| {})?;
        }
        let finished = self.finish_reasons.iter().all(|r| !r.is_null());
        if !self.done && !finished {
            return Err("the stream ended before its answer did (no [DONE])".to_owned());
        }
        let choices: Vec<Value> = self
            .texts
            .into_iter()
            .zip(self.finish_reasons)
            .enumerate()
            .map(|(index, (text, finish_reason))| match self.form {
                PromptForm::Chat => json!({
                    "index": index,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": finish_reason,
                }),
                PromptForm::Raw => {
                    json!({"index": index, "text": text, "finish_reason": finish_reason})
                }
            })
            .collect();
        let mut reply = self.about;
        reply.insert("choices".to_owned(), Value::Array(choices));
        Ok(Value::Object(reply))
    }
}

/// The start of a long event, for a message.
fn cut(text: &str) -> String {
    const LIMIT: usize = 200;
    match text.char_indices().nth(LIMIT) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat_chunk(index: u32, content: &str) -> String {
        let chunk = json!({
            "id": "chatcmpl-1", "model": "m", "object": "chat.completion.chunk",
            "choices": [{"index": index, "delta": {"content": content}, "finish_reason": null}],
        });
        format!("data: {chunk}\n\n")
    }

    fn read(
        form: PromptForm,
        choices: usize,
        pieces: &[&str],
    ) -> (Result<Value, String>, Vec<(u32, String)>) {
        let mut reply = StreamedReply::new(form, choices);
        let mut seen = Vec::new();
        for piece in pieces {
            if let Err(e) = reply.feed(piece.as_bytes(), &mut |c, t| seen.push((c, t.to_owned()))) {
                return (Err(e), seen);
            }
        }
        (reply.finish(), seen)
    }

    #[test]
    fn chunks_split_anywhere_join_into_the_reply_a_plain_request_gets() {
        let usage = json!({"id": "chatcmpl-1", "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 2}});
        let stop = json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
        let whole = format!(
            ": keep-alive\r\n\r\n{}{}data: {stop}\r\n\r\ndata: {usage}\n\ndata: [DONE]\n\n",
            chat_chunk(0, "Hel"),
            chat_chunk(0, "lo, wörld"),
        );
        // Every split of the bytes, one inside the two-byte ö included, reads the same.
        for at in 0..whole.len() {
            let (head, tail) = whole.as_bytes().split_at(at);
            let mut reply = StreamedReply::new(PromptForm::Chat, 1);
            let mut seen = Vec::new();
            reply
                .feed(head, &mut |c, t| seen.push((c, t.to_owned())))
                .unwrap();
            reply
                .feed(tail, &mut |c, t| seen.push((c, t.to_owned())))
                .unwrap();
            let reply = reply.finish().unwrap();
            assert_eq!(reply["choices"][0]["message"]["content"], "Hello, wörld");
            assert_eq!(reply["choices"][0]["finish_reason"], "stop");
            assert_eq!(reply["usage"]["prompt_tokens"], 5);
            assert_eq!(reply["id"], "chatcmpl-1");
            assert_eq!(reply["model"], "m");
            let grew: Vec<&str> = seen.iter().map(|(_, t)| t.as_str()).collect();
            assert_eq!(grew, ["Hel", "Hello, wörld"], "split at {at}");
        }
    }

    #[test]
    fn raw_completions_and_several_choices_are_read_by_index() {
        let chunk = |index: u32, text: &str| {
            format!(
                "data: {}\n\n",
                json!({"choices": [{"index": index, "text": text, "finish_reason": null}]})
            )
        };
        let (reply, seen) = read(
            PromptForm::Raw,
            2,
            &[
                &chunk(1, "b"),
                &chunk(0, "a"),
                &chunk(1, "c"),
                "data: [DONE]\n\n",
            ],
        );
        let reply = reply.unwrap();
        assert_eq!(reply["choices"][0]["text"], "a");
        assert_eq!(reply["choices"][1]["text"], "bc");
        assert_eq!(seen, [(1, "b".into()), (0, "a".into()), (1, "bc".into())]);
    }

    #[test]
    fn a_server_that_breaks_the_format_fails_the_request_saying_how() {
        let (reply, _) = read(PromptForm::Chat, 1, &[&chat_chunk(3, "x")]);
        assert!(
            reply
                .unwrap_err()
                .contains("choice 3, where 1 were asked for")
        );
        let (reply, _) = read(PromptForm::Chat, 1, &["data: {not json\n\n"]);
        assert!(reply.unwrap_err().contains("not JSON"));
        let error = r#"data: {"error": {"message": "overloaded"}}"#;
        let (reply, _) = read(PromptForm::Chat, 1, &[&chat_chunk(0, "x"), error, "\n\n"]);
        assert!(reply.unwrap_err().contains("overloaded"));
        // Cut off mid-answer: no [DONE], no finish reason.
        let (reply, seen) = read(PromptForm::Chat, 1, &[&chat_chunk(0, "half an ans")]);
        assert!(reply.unwrap_err().contains("ended before its answer did"));
        assert_eq!(seen.len(), 1);
        let (reply, _) = read(
            PromptForm::Chat,
            1,
            &["data: [DONE]\n\n", &chat_chunk(0, "more")],
        );
        assert!(reply.unwrap_err().contains("after [DONE]"));
    }

    #[test]
    fn a_stream_closed_after_every_choice_finished_is_whole_without_done() {
        let stop = json!({"choices": [{"index": 0, "delta": {"content": "end"}, "finish_reason": "length"}]});
        // The last event's blank line is missing too: the close ends it.
        let (reply, _) = read(
            PromptForm::Chat,
            1,
            &[&chat_chunk(0, "the "), &format!("data: {stop}")],
        );
        let reply = reply.unwrap();
        assert_eq!(reply["choices"][0]["message"]["content"], "the end");
        assert_eq!(reply["choices"][0]["finish_reason"], "length");
    }
}
