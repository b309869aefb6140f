//! Turning generated token bytes into text that is safe to send as it comes: a UTF-8
//! character split across tokens is held until it is whole, and text that could be the start
//! of a stop string is held until it is known not to be one, so a stop string is never sent.

/// What one push of bytes released.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Released {
    /// Text that can be sent now.
    pub text: String,
    /// A stop string was found: `text` ends just before it and the generation is over.
    pub stopped: bool,
}

pub(crate) struct TextAssembler {
    /// Bytes of an incomplete UTF-8 character.
    pending: Vec<u8>,
    /// Decoded text held back because it may be the start of a stop string.
    held: String,
    stops: Vec<String>,
}

impl TextAssembler {
    /// Empty stop strings are ignored (they would stop before the first character).
    pub(crate) fn new(stops: Vec<String>) -> TextAssembler {
        TextAssembler {
            pending: Vec::new(),
            held: String::new(),
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
        }
    }

    pub(crate) fn push(&mut self, bytes: &[u8]) -> Released {
        self.pending.extend_from_slice(bytes);
        self.decode_pending();
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|stop| self.held.find(stop.as_str()))
            .min()
        {
            let text = self.held[..at].to_string();
            self.held.clear();
            self.pending.clear();
            return Released {
                text,
                stopped: true,
            };
        }
        let keep = self.longest_stop_prefix_at_end();
        let text = self.held[..self.held.len() - keep].to_string();
        self.held.drain(..self.held.len() - keep);
        Released {
            text,
            stopped: false,
        }
    }

    /// Whatever is still held when the generation ends for another reason; bytes that never
    /// became a whole character are sent as U+FFFD.
    pub(crate) fn finish(&mut self) -> String {
        let mut text = std::mem::take(&mut self.held);
        text.push_str(&String::from_utf8_lossy(&self.pending));
        self.pending.clear();
        text
    }

    fn decode_pending(&mut self) {
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(text) => {
                    self.held.push_str(text);
                    self.pending.clear();
                    return;
                }
                Err(error) => {
                    let valid = error.valid_up_to();
                    self.held.push_str(
                        std::str::from_utf8(&self.pending[..valid]).expect("checked valid"),
                    );
                    match error.error_len() {
                        // Incomplete at the end: wait for the next token's bytes.
                        None => {
                            self.pending.drain(..valid);
                            return;
                        }
                        // Bytes that can never be UTF-8, whatever follows.
                        Some(invalid) => {
                            self.held.push(char::REPLACEMENT_CHARACTER);
                            self.pending.drain(..valid + invalid);
                        }
                    }
                }
            }
        }
    }

    /// The length of the longest end of `held` that is a proper prefix of a stop string.
    fn longest_stop_prefix_at_end(&self) -> usize {
        self.stops
            .iter()
            .flat_map(|stop| {
                (1..stop.len())
                    .rev()
                    .filter(|&n| stop.is_char_boundary(n) && self.held.ends_with(&stop[..n]))
                    .take(1)
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn released(text: &str, stopped: bool) -> Released {
        Released {
            text: text.into(),
            stopped,
        }
    }

    #[test]
    fn passes_plain_text_through() {
        let mut assembler = TextAssembler::new(vec![]);
        assert_eq!(assembler.push(b"Hello"), released("Hello", false));
        assert_eq!(assembler.push(b" world"), released(" world", false));
        assert_eq!(assembler.finish(), "");
    }

    #[test]
    fn holds_a_character_split_across_tokens() {
        let euro = "€".as_bytes(); // three bytes
        let mut assembler = TextAssembler::new(vec![]);
        assert_eq!(assembler.push(&euro[..1]), released("", false));
        assert_eq!(assembler.push(&euro[1..2]), released("", false));
        assert_eq!(assembler.push(&[euro[2], b'!']), released("€!", false));
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let mut assembler = TextAssembler::new(vec![]);
        assert_eq!(
            assembler.push(&[b'a', 0xFF, b'b']),
            released("a\u{FFFD}b", false)
        );
        // An incomplete character left at the end is flushed lossily.
        assert_eq!(assembler.push(&[0xE2, 0x82]), released("", false));
        assert_eq!(assembler.finish(), "\u{FFFD}");
    }

    #[test]
    fn stops_before_a_stop_string_and_never_sends_it() {
        let mut assembler = TextAssembler::new(vec!["\n\n".into(), "END".into()]);
        assert_eq!(assembler.push(b"one E"), released("one ", false));
        assert_eq!(assembler.push(b"N"), released("", false));
        // "ENx" is not "END": the held text goes out.
        assert_eq!(assembler.push(b"x two"), released("ENx two", false));
        assert_eq!(assembler.push(b"\n"), released("", false));
        assert_eq!(assembler.push(b"\nthree"), released("", true));
    }

    #[test]
    fn a_stop_string_inside_one_token_cuts_there() {
        let mut assembler = TextAssembler::new(vec!["stop".into()]);
        assert_eq!(assembler.push(b"go stop go"), released("go ", true));
    }

    #[test]
    fn the_earliest_of_several_stop_strings_wins() {
        let mut assembler = TextAssembler::new(vec!["cd".into(), "b".into()]);
        assert_eq!(assembler.push(b"abcd"), released("a", true));
    }

    #[test]
    fn held_text_is_flushed_when_generation_ends_otherwise() {
        let mut assembler = TextAssembler::new(vec!["END".into()]);
        assert_eq!(assembler.push(b"the EN"), released("the ", false));
        assert_eq!(assembler.finish(), "EN");
    }

    #[test]
    fn multibyte_stop_strings_match_on_characters() {
        let mut assembler = TextAssembler::new(vec!["→|".into()]);
        let arrow = "→".as_bytes();
        assert_eq!(assembler.push(b"a"), released("a", false));
        assert_eq!(assembler.push(&arrow[..2]), released("", false));
        assert_eq!(assembler.push(&arrow[2..]), released("", false));
        assert_eq!(assembler.push(b"|b"), released("", true));
    }
}
