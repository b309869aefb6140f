use std::fmt;

/// One thing wrong with the configuration, located precisely enough to fix it without
/// guessing: which file (or the environment), which line, which field.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The config file's path as the user gave it (`flowers.toml`), `environment` for a
    /// `FLOWERS_*` variable, or `command line` for a flag.
    pub origin: String,
    /// 1-based line in the file; `None` when the problem has no place in a file.
    pub line: Option<usize>,
    /// Dotted path of the field (`services.chat.replicas`, `services.web.routes[0].path`), or
    /// the environment variable's name. Empty for a problem with the file as a whole, such as a
    /// TOML syntax error.
    pub field: String,
    /// What was expected and what was got.
    pub message: String,
}

impl fmt::Display for Problem {
    /// `flowers.toml:12: services.chat.replicas: expected an integer 0..=64, got "two"`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a configuration was refused: every problem found, not just the first, so that one edit
/// can fix them all. Displayed one problem per line.
#[derive(Debug, thiserror::Error)]
#[error("{}", render(.problems))]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(line: Option<usize>, field: &str) -> Problem {
        Problem {
            origin: "flowers.toml".to_string(),
            line,
            field: field.to_string(),
            message: "expected an integer 0..=64, got \"two\"".to_string(),
        }
    }

    #[test]
    fn problem_reads_origin_line_field_message() {
        assert_eq!(
            problem(Some(12), "services.chat.replicas").to_string(),
            "flowers.toml:12: services.chat.replicas: expected an integer 0..=64, got \"two\""
        );
        assert_eq!(
            problem(None, "services.chat.replicas").to_string(),
            "flowers.toml: services.chat.replicas: expected an integer 0..=64, got \"two\""
        );
        assert_eq!(
            problem(Some(3), "").to_string(),
            "flowers.toml:3: expected an integer 0..=64, got \"two\""
        );
    }

    #[test]
    fn error_lists_one_problem_per_line() {
        let error = ConfigError {
            problems: vec![problem(Some(1), "a"), problem(Some(2), "b")],
        };
        let text = error.to_string();
        assert_eq!(text.lines().count(), 2);
        assert!(text.starts_with("flowers.toml:1: a: "));
    }
}
