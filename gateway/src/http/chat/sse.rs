//! A server-sent events reader for upstream streams: linear in the bytes
//! received and bounded in memory.
//!
//! Written for the gateway rather than taken from a crate because of the
//! two guarantees a hostile upstream must not break: every byte is looked
//! at a constant number of times however the stream is split (a parser that
//! rescans its buffer on each chunk is quadratic on a long line sent a byte
//! at a time), and no event, nor a line without an end, grows past
//! `max_event` bytes. Lines end with `\n`, `\r\n` or `\r`, split anywhere;
//! comments, `event:`, `id:` and `retry:` are ignored; several `data:`
//! lines make one event whose data joins them with `\n`, as the SSE
//! specification says.

/// The stream broke the size bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an upstream event is larger than {0} bytes")]
pub struct EventTooLarge(pub usize);

#[derive(Debug)]
pub struct SseReader {
    /// Bytes of the line being read, not yet ended.
    line: Vec<u8>,
    /// The line ended with `\r`: a `\n` right after it belongs to it.
    after_cr: bool,
    /// The data of the event being read.
    data: String,
    has_data: bool,
    max_event: usize,
}

impl SseReader {
    #[must_use]
    pub fn new(max_event: usize) -> SseReader {
        SseReader {
            line: Vec::new(),
            after_cr: false,
            data: String::new(),
            has_data: false,
            max_event,
        }
    }

    /// Feeds one chunk; complete events' data go to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<String>) -> Result<(), EventTooLarge> {
        let mut rest = chunk;
        if self.after_cr {
            self.after_cr = false;
            if let Some(tail) = rest.strip_prefix(b"\n") {
                rest = tail;
            }
        }
        while let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            self.extend_line(&rest[..end])?;
            self.end_line(out);
            let ended_by_cr = rest[end] == b'\r';
            rest = &rest[end + 1..];
            if ended_by_cr {
                match rest.first() {
                    Some(b'\n') => rest = &rest[1..],
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
        self.extend_line(rest)
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), EventTooLarge> {
        if self.line.len() + bytes.len() + self.data.len() > self.max_event {
            return Err(EventTooLarge(self.max_event));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<String>) {
        let line = std::mem::take(&mut self.line);
        if line.is_empty() {
            if self.has_data {
                out.push(std::mem::take(&mut self.data));
                self.has_data = false;
            }
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return,
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &b""[..]),
        };
        if field == b"data" {
            if self.has_data {
                self.data.push('\n');
            }
            self.data.push_str(&String::from_utf8_lossy(value));
            self.has_data = true;
        }
    }
}

/// One event's data as SSE bytes for the client: a `data:` line per line
/// of it, then the blank line that ends the event.
#[must_use]
pub fn frame(data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 8);
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out.push('\n');
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn read_all(chunks: &[&[u8]], max: usize) -> Result<Vec<String>, EventTooLarge> {
        let mut reader = SseReader::new(max);
        let mut out = Vec::new();
        for c in chunks {
            reader.push(c, &mut out)?;
        }
        Ok(out)
    }

    #[test]
    fn events_survive_any_split_and_any_line_ending() {
        let stream = b": comment\r\ndata: {\"a\":1}\r\n\r\nevent: x\rdata: one\rdata: two\r\rid: 7\ndata:three\n\ndata: [DONE]\n\n";
        let want = vec!["{\"a\":1}", "one\ntwo", "three", "[DONE]"];
        assert_eq!(read_all(&[stream], 1 << 20).unwrap(), want);
        for split in 1..stream.len() {
            let (a, b) = stream.split_at(split);
            assert_eq!(
                read_all(&[a, b], 1 << 20).unwrap(),
                want,
                "split at {split}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(read_all(&bytes, 1 << 20).unwrap(), want);
    }

    #[test]
    fn a_huge_line_is_refused_in_linear_time() {
        // Four megabytes without a line end, a kilobyte at a time: refused
        // once past the bound, after looking at each byte once.
        let chunk = [b'x'; 1024];
        let mut reader = SseReader::new(1 << 20);
        let mut out = Vec::new();
        let mut refused_at = None;
        for i in 0..4096 {
            if reader.push(&chunk, &mut out).is_err() {
                refused_at = Some(i);
                break;
            }
        }
        assert_eq!(refused_at, Some(1024));
        // Many data lines adding up past the bound are refused too.
        let line = format!("data: {}\n", "y".repeat(1000));
        let mut reader = SseReader::new(10_000);
        let many: Vec<u8> = line.repeat(20).into_bytes();
        assert!(reader.push(&many, &mut out).is_err());
    }

    #[test]
    fn multi_line_data_is_framed_line_by_line() {
        assert_eq!(frame("a\nb"), "data: a\ndata: b\n\n");
        assert_eq!(frame("{}"), "data: {}\n\n");
    }
}
