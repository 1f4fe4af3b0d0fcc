//! Incremental, validating scanner for the chunked transfer coding
//! (RFC 9112 §7.1). The proxy forwards the raw bytes it consumed; only the
//! payload slices are handed to the callback.
//!
//! Strictness (each rule stops a known desync between two parsers):
//! * chunk-size is 1+ hex digits only: no `0x`, sign or leading whitespace;
//!   whitespace after the size only as BWS before a `;` extension.
//! * sizes above 2^62 are rejected (no wrap-around on 64-bit arithmetic).
//! * a chunk line (size + extensions) is at most [`MAX_CHUNK_LINE`] bytes and may
//!   not contain control characters other than HTAB.
//! * chunk data is followed by exactly CRLF.
//! * the trailer section is at most [`MAX_TRAILER_BYTES`], each line shaped like
//!   a header field (`token ":" value`), no obs-fold.
//! * every line ends in CRLF: a bare LF is an error.

use super::codec::FramingError;

/// Longest accepted chunk-size line including extensions and CRLF.
pub const MAX_CHUNK_LINE: usize = 4 * 1024;
/// Largest accepted trailer section including the final CRLF.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Largest accepted chunk size.
const MAX_CHUNK_SIZE: u64 = 1 << 62;

/// Progress of one `ChunkedDecoder::decode` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that belong to the chunked body (forward them as-is).
    pub consumed: usize,
    /// The terminating chunk and trailer section were fully consumed.
    pub done: bool,
    /// Where in this input the trailer section began (just after the
    /// last-chunk line), when it began in this call.
    pub trailer_start: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// Reading the hex digits of a chunk size (`digits` seen so far).
    #[default]
    Size,
    /// Whitespace after the size: only more whitespace or `;` may follow.
    SizeBws,
    /// Inside chunk extensions, up to CR.
    Ext,
    /// Saw the CR ending the chunk line.
    SizeLf,
    /// Inside chunk data.
    Data,
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// Start of a trailer line or of the final empty line.
    TrailerStart,
    /// Inside a trailer field name.
    TrailerName,
    /// Inside a trailer field value.
    TrailerValue,
    /// Saw the CR ending a trailer field line.
    TrailerLf,
    /// Saw the CR of the final empty line.
    FinalLf,
    /// The body is complete.
    Done,
}

/// Trailer fields that frame, route, authenticate or otherwise control a
/// message (RFC 9110 §6.5.1): a recipient must not merge them into the
/// header section, and some do; they are dropped from forwarded trailers.
const FORBIDDEN_TRAILERS: &[&str] = &[
    "authorization",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "cookie",
    "expect",
    "host",
    "keep-alive",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "range",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "www-authenticate",
];

/// Whether a trailer field of this name is forwarded.
pub fn trailer_allowed(name: &str) -> bool {
    !FORBIDDEN_TRAILERS
        .iter()
        .any(|f| f.eq_ignore_ascii_case(name.trim()))
}

/// A complete, validated trailer section (`field CRLF`* `CRLF`) without the
/// fields [`trailer_allowed`] refuses.
pub fn filter_trailer_section(section: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(section.len());
    for line in section.split_inclusive(|&b| b == b'\n') {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        let is_field = line.contains(&b':');
        if !is_field || trailer_allowed(&String::from_utf8_lossy(name)) {
            out.extend_from_slice(line);
        }
    }
    out
}

/// Incremental, validating chunked-body scanner. The proxy forwards the raw
/// bytes it consumes; `on_data` sees the payload slices (for byte counts and
/// body capture). Rejects bad chunk sizes, overflow, missing CRLF, oversized
/// chunk lines and trailer sections. Input may be split anywhere.
#[derive(Debug, Default)]
pub struct ChunkedDecoder {
    state: State,
    /// Size being parsed, then the payload bytes left in the current chunk.
    size: u64,
    /// Hex digits seen in the current size.
    digits: usize,
    /// Bytes of the current chunk line so far.
    line_len: usize,
    /// Bytes of the trailer section so far.
    trailer_len: usize,
}

fn bad(what: &str) -> FramingError {
    FramingError::BadChunk(what.to_owned())
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Field-value and chunk-extension bytes: HTAB, SP, VCHAR, obs-text.
fn is_field_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

impl ChunkedDecoder {
    /// A scanner positioned at the start of a chunked body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the last chunk was seen and the trailer section (possibly
    /// empty) is being read or was read.
    pub fn past_last_chunk(&self) -> bool {
        matches!(
            self.state,
            State::TrailerStart
                | State::TrailerName
                | State::TrailerValue
                | State::TrailerLf
                | State::FinalLf
                | State::Done
        )
    }

    /// Whether the whole body (last chunk, trailers, final CRLF) was seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Scan `input`, the next bytes of the body. Returns how many of them
    /// belong to the body (`consumed`; the rest, only possible when `done`,
    /// is the next message) and whether the body ended. `on_data` receives
    /// the payload slices in order. After an error the decoder must not be
    /// used again (the connection is broken).
    pub fn decode(
        &mut self,
        input: &[u8],
        on_data: &mut dyn FnMut(&[u8]),
    ) -> Result<Progress, FramingError> {
        let mut i = 0;
        let mut trailer_start = None;
        while i < input.len() {
            if self.state == State::Done {
                break;
            }
            if self.state == State::Data {
                let avail = input.len() - i;
                let take = usize::try_from(self.size).map_or(avail, |left| left.min(avail));
                if take > 0 {
                    on_data(&input[i..i + take]);
                }
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let before = self.state;
            self.step(input[i])?;
            i += 1;
            if before == State::SizeLf && self.state == State::TrailerStart {
                trailer_start = Some(i);
            }
        }
        Ok(Progress {
            consumed: i,
            done: self.state == State::Done,
            trailer_start,
        })
    }

    /// Advance over one byte outside chunk data.
    fn step(&mut self, b: u8) -> Result<(), FramingError> {
        match self.state {
            State::Size | State::SizeBws | State::Ext | State::SizeLf => {
                self.line_len += 1;
                if self.line_len > MAX_CHUNK_LINE {
                    return Err(bad("chunk line too long"));
                }
                self.step_size_line(b)
            }
            State::DataCr => {
                if b != b'\r' {
                    return Err(bad("chunk data not followed by CRLF"));
                }
                self.state = State::DataLf;
                Ok(())
            }
            State::DataLf => {
                if b != b'\n' {
                    return Err(bad("chunk data not followed by CRLF"));
                }
                self.state = State::Size;
                self.size = 0;
                self.digits = 0;
                self.line_len = 0;
                Ok(())
            }
            State::TrailerStart
            | State::TrailerName
            | State::TrailerValue
            | State::TrailerLf
            | State::FinalLf => {
                self.trailer_len += 1;
                if self.trailer_len > MAX_TRAILER_BYTES {
                    return Err(bad("trailer section too large"));
                }
                self.step_trailer(b)
            }
            // decode() never steps in these states.
            State::Data | State::Done => Ok(()),
        }
    }

    fn step_size_line(&mut self, b: u8) -> Result<(), FramingError> {
        match self.state {
            State::Size => {
                if let Some(d) = (b as char).to_digit(16) {
                    self.size = self
                        .size
                        .checked_mul(16)
                        .map(|v| v + u64::from(d))
                        .filter(|v| *v <= MAX_CHUNK_SIZE)
                        .ok_or_else(|| bad("chunk size too large"))?;
                    self.digits += 1;
                    return Ok(());
                }
                if self.digits == 0 {
                    return Err(bad("chunk size must start with a hex digit"));
                }
                match b {
                    b'\r' => self.state = State::SizeLf,
                    b';' => self.state = State::Ext,
                    b' ' | b'\t' => self.state = State::SizeBws,
                    _ => return Err(bad("invalid byte after chunk size")),
                }
            }
            State::SizeBws => match b {
                b' ' | b'\t' => {}
                b';' => self.state = State::Ext,
                _ => return Err(bad("whitespace after chunk size without extension")),
            },
            State::Ext => match b {
                b'\r' => self.state = State::SizeLf,
                b if is_field_byte(b) => {}
                _ => return Err(bad("control character in chunk extension")),
            },
            State::SizeLf => {
                if b != b'\n' {
                    return Err(bad("chunk line not ended by CRLF"));
                }
                if self.size == 0 {
                    self.state = State::TrailerStart;
                } else {
                    self.state = State::Data;
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn step_trailer(&mut self, b: u8) -> Result<(), FramingError> {
        match self.state {
            State::TrailerStart => match b {
                b'\r' => self.state = State::FinalLf,
                b if is_tchar(b) => self.state = State::TrailerName,
                b' ' | b'\t' => return Err(bad("obsolete line folding in trailer")),
                _ => return Err(bad("invalid trailer line")),
            },
            State::TrailerName => match b {
                b':' => self.state = State::TrailerValue,
                b if is_tchar(b) => {}
                _ => return Err(bad("invalid trailer field name")),
            },
            State::TrailerValue => match b {
                b'\r' => self.state = State::TrailerLf,
                b if is_field_byte(b) => {}
                _ => return Err(bad("invalid trailer field value")),
            },
            State::TrailerLf => {
                if b != b'\n' {
                    return Err(bad("trailer line not ended by CRLF"));
                }
                self.state = State::TrailerStart;
            }
            State::FinalLf => {
                if b != b'\n' {
                    return Err(bad("chunked body not ended by CRLF"));
                }
                self.state = State::Done;
            }
            _ => {}
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
