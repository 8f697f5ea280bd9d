//! Durations written as "90s", "15m", "1h".

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A duration from the config, written as `"90s"`, `"15m"`, `"1h"`, `"1h30m"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// A duration of whole seconds.
    pub const fn secs(s: u64) -> Self {
        Self(Duration::from_secs(s))
    }

    /// Whole seconds, as i64 for clock arithmetic.
    pub fn as_secs_i64(self) -> i64 {
        i64::try_from(self.0.as_secs()).unwrap_or(i64::MAX)
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(text.trim())
            .map(ConfigDuration)
            .map_err(|e| {
                serde::de::Error::custom(format!(
                    "`{text}` is not a duration ({e}); write e.g. \"90s\", \"15m\", \"1h\""
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        d: ConfigDuration,
    }

    #[test]
    fn parses_human_durations() -> Result<(), toml::de::Error> {
        let t: T = toml::from_str("d = \"1h30m\"")?;
        assert_eq!(t.d.0, Duration::from_secs(5400));
        let t: T = toml::from_str("d = \"90s\"")?;
        assert_eq!(t.d.as_secs_i64(), 90);
        assert!(toml::from_str::<T>("d = \"soon\"").is_err());
        assert!(toml::from_str::<T>("d = 90").is_err());
        Ok(())
    }
}
