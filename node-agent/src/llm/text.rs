//! Turning generated token bytes into streamable text: whole UTF-8 characters only (a token
//! may end inside one), and never a character of a stop sequence (held back until it is
//! clear the text does not become one). Pure; the generation loop feeds it.

/// Accumulates token bytes and hands out the longest valid UTF-8 prefix.
#[derive(Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    out.push_str(text);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Checked by from_utf8: the prefix is valid.
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // An incomplete character at the end: wait for the next token.
                        None => {
                            self.pending.drain(..valid);
                            return out;
                        }
                        // Bytes no character starts with: replace them, go on.
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
    }

    /// What is left when generation ends: an unfinished character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

/// Finds the first stop sequence in generated text, holding back any suffix that could still
/// grow into one so that a stop sequence is never streamed, even split across tokens.
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Matched {
    /// Text safe to send now.
    pub emit: String,
    /// A stop sequence was found; `emit` ends right before it.
    pub stopped: bool,
}

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> StopMatcher {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> Matched {
        self.held.push_str(text);
        let first_stop = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min();
        if let Some(at) = first_stop {
            let emit = self.held[..at].to_string();
            self.held.clear();
            return Matched {
                emit,
                stopped: true,
            };
        }
        let keep = self.longest_partial_suffix();
        let split = self.held.len() - keep;
        let emit = self.held[..split].to_string();
        self.held.drain(..split);
        Matched {
            emit,
            stopped: false,
        }
    }

    /// Generation ended without a stop sequence: the held text is plain output.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Bytes at the end of `held` that are a proper prefix of some stop sequence.
    fn longest_partial_suffix(&self) -> usize {
        let held = self.held.as_str();
        self.stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len().min(held.len() + 1))
                    .rev()
                    .filter(move |n| stop.is_char_boundary(*n))
                    .find(move |n| {
                        held.is_char_boundary(held.len() - n) && held.ends_with(&stop[..*n])
                    })
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_character_split_across_tokens_is_sent_whole() {
        let mut s = Utf8Stream::default();
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(s.push(&euro[..1]), "");
        assert_eq!(s.push(&euro[1..2]), "");
        assert_eq!(s.push(&[euro[2], b'!']), "€!");
        assert_eq!(s.finish(), "");
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&[b'a', 0xff, b'b']), "a\u{fffd}b");
        assert_eq!(s.push(&[0xe2, 0x82]), "");
        assert_eq!(s.finish(), "\u{fffd}");
    }

    #[test]
    fn a_stop_sequence_split_across_tokens_is_never_emitted() {
        let mut m = StopMatcher::new(vec!["\nUser:".into()]);
        assert_eq!(m.push("Hello").emit, "Hello");
        let held = m.push(" there\nUs");
        assert_eq!(held.emit, " there");
        assert!(!held.stopped);
        let done = m.push("er: next");
        assert_eq!(done.emit, "");
        assert!(done.stopped);
    }

    #[test]
    fn held_text_that_does_not_become_a_stop_is_released() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("ST").emit, "");
        assert_eq!(m.push("ART").emit, "START");
        assert_eq!(m.push("ends S").emit, "ends ");
        assert_eq!(m.finish(), "S");
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        let mut m = StopMatcher::new(vec!["b".into(), "a".into(), String::new()]);
        let r = m.push("xxab");
        assert_eq!(r.emit, "xx");
        assert!(r.stopped);
        let mut none = StopMatcher::new(vec![]);
        assert_eq!(none.push("anything").emit, "anything");
    }

    #[test]
    fn multibyte_stops_and_text_split_on_character_boundaries() {
        let mut m = StopMatcher::new(vec!["é!".into()]);
        assert_eq!(m.push("café").emit, "caf");
        let r = m.push("!");
        assert_eq!(r.emit, "");
        assert!(r.stopped);
    }
}
