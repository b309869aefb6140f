use std::fmt;

use serde::{Deserialize, Serialize};

/// A service or job name: what routes, logs, run ids and the CLI refer to.
///
/// Names start with a lowercase letter and use lowercase letters, digits and `-` (at most 48
/// characters), so they are safe in file names, URLs, host names and run ids.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Name(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a name of lowercase letters, digits and '-', starting with a letter, at most 48 characters; got {0:?}")]
pub struct NameError(pub String);

impl Name {
    pub fn new(text: &str) -> Result<Self, NameError> {
        let valid = !text.is_empty()
            && text.len() <= 48
            && text.starts_with(|c: char| c.is_ascii_lowercase())
            && !text.ends_with('-')
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if valid {
            Ok(Name(text.to_string()))
        } else {
            Err(NameError(text.to_string()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Name {
    type Error = NameError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Name::new(&value)
    }
}

impl From<Name> for String {
    fn from(name: Name) -> String {
        name.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names_and_refuses_the_rest() {
        for ok in ["chat", "rag-embed", "a1", "train-m2"] {
            assert!(Name::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Chat",
            "1chat",
            "chat_bot",
            "chat-",
            "a/b",
            "é",
            &"a".repeat(49),
        ] {
            assert!(Name::new(bad).is_err(), "{bad}");
        }
    }
}
