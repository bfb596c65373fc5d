//! A decoder for server-sent events (the `text/event-stream` format streaming OpenAI
//! replies use): bytes arrive in arbitrary pieces, events come out whole.
//!
//! Only `data:` fields matter to the OpenAI API; `event:`, `id:` and `retry:` fields and
//! `:` comments (keep-alives) are skipped. An event's data lines are joined with `\n` and
//! the event ends at a blank line, as the WHATWG specification says.

#[derive(Debug, Default)]
pub(crate) struct SseDecoder {
    /// Bytes of a line not yet ended by `\n`.
    partial_line: Vec<u8>,
    /// The data of the event being read.
    data: String,
    has_data: bool,
}

impl SseDecoder {
    /// Feeds the next piece of the body; returns the data of every event it completes.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, String> {
        let mut events = Vec::new();
        let mut rest = bytes;
        while let Some(end) = rest.iter().position(|&byte| byte == b'\n') {
            self.partial_line.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            let line = std::mem::take(&mut self.partial_line);
            if let Some(data) = self.line(&line)? {
                events.push(data);
            }
        }
        self.partial_line.extend_from_slice(rest);
        Ok(events)
    }

    /// The body ended: the event still being read, if any. The specification drops an
    /// event not closed by a blank line; servers that close the connection right after
    /// `data: [DONE]` are common enough that it is kept.
    pub(crate) fn finish(&mut self) -> Result<Option<String>, String> {
        let line = std::mem::take(&mut self.partial_line);
        if !line.is_empty()
            && let Some(data) = self.line(&line)?
        {
            return Ok(Some(data));
        }
        Ok(self.take_event())
    }

    fn line(&mut self, line: &[u8]) -> Result<Option<String>, String> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let line = std::str::from_utf8(line)
            .map_err(|error| format!("the event stream is not UTF-8 text: {error}"))?;
        if line.is_empty() {
            return Ok(self.take_event());
        }
        if line.starts_with(':') {
            return Ok(None);
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        if field == "data" {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(value);
            self.has_data = true;
        }
        Ok(None)
    }

    fn take_event(&mut self) -> Option<String> {
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        Some(std::mem::take(&mut self.data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(body: &str, piece_length: usize) -> Vec<String> {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        for piece in body.as_bytes().chunks(piece_length) {
            events.extend(decoder.push(piece).unwrap());
        }
        events.extend(decoder.finish().unwrap());
        events
    }

    #[test]
    fn events_survive_any_split_of_the_body() {
        let body = ": keep-alive\r\n\r\ndata: {\"a\":1}\r\n\r\nevent: x\nid: 3\ndata:{\"b\":\"é\"}\n\n\
                    data: line one\ndata: line two\n\ndata: [DONE]\n\n";
        let expected = ["{\"a\":1}", "{\"b\":\"é\"}", "line one\nline two", "[DONE]"];
        for piece_length in [1, 2, 3, 7, 1000] {
            assert_eq!(decode_in_pieces(body, piece_length), expected, "pieces of {piece_length}");
        }
    }

    #[test]
    fn an_unclosed_last_event_is_kept_and_bad_bytes_are_an_error() {
        assert_eq!(decode_in_pieces("data: 1\n\ndata: [DONE]", 4), ["1", "[DONE]"]);
        assert_eq!(decode_in_pieces("data: 1\n\ndata: 2\n", 4), ["1", "2"]);
        let error = SseDecoder::default().push(b"data: \xff\n").unwrap_err();
        assert!(error.contains("UTF-8"), "{error}");
    }
}
