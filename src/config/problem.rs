//! What is wrong with a config, as `file: entry: problem` lines.

use std::fmt;

/// One thing wrong with a config: `file: entry: problem`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file (as given on the command line, or the policy/JWKS file).
    pub file: String,
    /// The entry (`issuers[github].mapping.subject`, `line 4`, …).
    pub entry: String,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.entry, self.problem)
    }
}

/// Every problem found in a config, one per line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<Problem>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// Records a problem.
    pub fn push(
        &mut self,
        file: impl Into<String>,
        entry: impl Into<String>,
        problem: impl Into<String>,
    ) {
        self.0.push(Problem {
            file: file.into(),
            entry: entry.into(),
            problem: problem.into(),
        });
    }

    /// True when nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when empty, else `Err(self)`.
    pub fn into_result<T>(self, value: T) -> Result<T, Self> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}
