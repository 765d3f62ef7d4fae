//! A model's `max_concurrency`: a number of calls in flight, or `"auto"` (an adaptive limit that
//! the client layer finds by itself, up to `max_concurrency_limit`). Both keys are operational:
//! they change how fast rows come, not which.

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `max_concurrency_limit` when `"auto"` leaves it out.
pub const DEFAULT_AUTO_LIMIT: usize = 256;

/// How many calls of a model may be in flight from one process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Concurrency {
    /// `max_concurrency = N`: exactly N (at least 1).
    Fixed(usize),
    /// `max_concurrency = "auto"`: a limit that adapts to the server, between 1 and `limit`
    /// (`max_concurrency_limit`).
    Auto {
        /// The most it may grow to.
        limit: usize,
    },
}

impl Concurrency {
    /// The most calls it ever lets be in flight: what sizes the samples in flight of a worker
    /// (and the mock's simulated capacity).
    pub fn most_in_flight(self) -> usize {
        match self {
            Concurrency::Fixed(n) | Concurrency::Auto { limit: n } => n,
        }
    }

    /// Reads the two keys as the job file writes them; the error names the key.
    pub(super) fn from_file(max: MaxConcurrency, limit: Option<usize>) -> Result<Self, String> {
        if limit == Some(0) {
            return Err("`max_concurrency_limit` must be at least 1".into());
        }
        match max {
            MaxConcurrency::Fixed(0) => Err("`max_concurrency` must be at least 1".into()),
            MaxConcurrency::Fixed(_) if limit.is_some() => Err(
                "`max_concurrency_limit` applies only to `max_concurrency = \"auto\"`: remove it, \
                 or set `max_concurrency = \"auto\"`"
                    .into(),
            ),
            MaxConcurrency::Fixed(n) => Ok(Concurrency::Fixed(n)),
            MaxConcurrency::Auto => Ok(Concurrency::Auto {
                limit: limit.unwrap_or(DEFAULT_AUTO_LIMIT),
            }),
        }
    }

    /// The two keys to write: a fixed number alone (as every job wrote it before `"auto"`
    /// existed), or `"auto"` with its limit unless that is the default.
    pub(super) fn to_file(self) -> (MaxConcurrency, Option<usize>) {
        match self {
            Concurrency::Fixed(n) => (MaxConcurrency::Fixed(n), None),
            Concurrency::Auto { limit } => (
                MaxConcurrency::Auto,
                Some(limit).filter(|&limit| limit != DEFAULT_AUTO_LIMIT),
            ),
        }
    }
}

/// The `max_concurrency` key: an integer or the string `"auto"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum MaxConcurrency {
    /// A number of calls.
    Fixed(usize),
    /// `"auto"`.
    Auto,
}

impl Serialize for MaxConcurrency {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            MaxConcurrency::Fixed(n) => serializer.serialize_u64(*n as u64),
            MaxConcurrency::Auto => serializer.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for MaxConcurrency {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(MaxConcurrencyVisitor)
    }
}

/// Reads an integer (TOML's are signed, JSON's unsigned) or `"auto"`.
struct MaxConcurrencyVisitor;

impl Visitor<'_> for MaxConcurrencyVisitor {
    type Value = MaxConcurrency;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("a number of calls in flight or \"auto\"")
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<MaxConcurrency, E> {
        usize::try_from(n)
            .map(MaxConcurrency::Fixed)
            .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(n), &self))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<MaxConcurrency, E> {
        u64::try_from(n)
            .map_err(|_| E::invalid_value(de::Unexpected::Signed(n), &self))
            .and_then(|n| self.visit_u64(n))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<MaxConcurrency, E> {
        match text {
            "auto" => Ok(MaxConcurrency::Auto),
            _ => Err(E::invalid_value(de::Unexpected::Str(text), &self)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_reads_a_number_or_auto_and_writes_it_back() {
        let read = |json: &str| serde_json::from_str::<MaxConcurrency>(json);
        assert_eq!(read("16").unwrap(), MaxConcurrency::Fixed(16));
        assert_eq!(read("\"auto\"").unwrap(), MaxConcurrency::Auto);
        for bad in ["-1", "\"fast\"", "1.5"] {
            let error = read(bad).unwrap_err().to_string();
            assert!(
                error.contains("a number of calls in flight or \"auto\""),
                "{error}"
            );
        }
        #[derive(Deserialize)]
        struct Table {
            m: MaxConcurrency,
        }
        let table = |text: &str| toml::from_str::<Table>(text).map(|table| table.m);
        assert_eq!(table("m = 8").unwrap(), MaxConcurrency::Fixed(8));
        assert_eq!(table("m = \"auto\"").unwrap(), MaxConcurrency::Auto);
        assert!(table("m = -3").is_err());
        for key in [MaxConcurrency::Fixed(16), MaxConcurrency::Auto] {
            assert_eq!(read(&serde_json::to_string(&key).unwrap()).unwrap(), key);
        }
        assert_eq!(
            serde_json::to_string(&MaxConcurrency::Fixed(16)).unwrap(),
            "16"
        );
    }

    #[test]
    fn the_limit_goes_with_auto_only_and_is_written_unless_default() {
        let auto = Concurrency::from_file(MaxConcurrency::Auto, None).unwrap();
        assert_eq!(auto, Concurrency::Auto { limit: 256 });
        assert_eq!(auto.to_file(), (MaxConcurrency::Auto, None));
        let small = Concurrency::from_file(MaxConcurrency::Auto, Some(32)).unwrap();
        assert_eq!(small.most_in_flight(), 32);
        assert_eq!(small.to_file(), (MaxConcurrency::Auto, Some(32)));
        let fixed = Concurrency::from_file(MaxConcurrency::Fixed(16), None).unwrap();
        assert_eq!(fixed.to_file(), (MaxConcurrency::Fixed(16), None));
        for (max, limit, key) in [
            (
                MaxConcurrency::Fixed(16),
                Some(32),
                "`max_concurrency_limit` applies only",
            ),
            (
                MaxConcurrency::Auto,
                Some(0),
                "`max_concurrency_limit` must be",
            ),
            (MaxConcurrency::Fixed(0), None, "`max_concurrency` must be"),
        ] {
            let error = Concurrency::from_file(max, limit).unwrap_err();
            assert!(error.starts_with(key), "{error}");
        }
    }
}
