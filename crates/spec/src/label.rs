use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::VolumeKind;

/// Longest label key, in characters.
pub const LABEL_KEY_MAX: usize = 128;
/// Longest label value, in characters.
pub const LABEL_VALUE_MAX: usize = 1024;

/// Why a label was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("label key is empty")]
    EmptyKey,
    #[error("label key {0:?} is longer than {LABEL_KEY_MAX} characters")]
    KeyTooLong(String),
    #[error("label key {0:?} contains a non-printable character or '='")]
    BadKey(String),
    #[error("label value for {0:?} is longer than {LABEL_VALUE_MAX} characters")]
    ValueTooLong(String),
    #[error("label value for {0:?} contains a control character")]
    BadValue(String),
    #[error("label {0:?} is not of the form KEY=VALUE")]
    Syntax(String),
}

/// Validated metadata labels, ordered by key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    try_from = "BTreeMap<String, String>",
    into = "BTreeMap<String, String>"
)]
pub struct Labels(BTreeMap<String, String>);

fn check_key(key: &str) -> Result<(), LabelError> {
    if key.is_empty() {
        return Err(LabelError::EmptyKey);
    }
    if key.chars().count() > LABEL_KEY_MAX {
        return Err(LabelError::KeyTooLong(key.to_string()));
    }
    if key.chars().any(|c| c.is_control() || c == '=') {
        return Err(LabelError::BadKey(key.to_string()));
    }
    Ok(())
}

impl Labels {
    /// No labels.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces one label after validating it.
    pub fn insert(
        &mut self,
        key: impl Into<String>,
        value: impl Into<String>,
    ) -> Result<(), LabelError> {
        let (key, value) = (key.into(), value.into());
        check_key(&key)?;
        if value.chars().count() > LABEL_VALUE_MAX {
            return Err(LabelError::ValueTooLong(key));
        }
        if value.chars().any(char::is_control) {
            return Err(LabelError::BadValue(key));
        }
        self.0.insert(key, value);
        Ok(())
    }

    /// Parses `KEY=VALUE` (the value may be empty) and adds it.
    pub fn insert_pair(&mut self, pair: &str) -> Result<(), LabelError> {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| LabelError::Syntax(pair.to_string()))?;
        self.insert(k, v)
    }

    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Iterates over `(key, value)` in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The labels as a plain map.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

impl TryFrom<BTreeMap<String, String>> for Labels {
    type Error = LabelError;
    fn try_from(map: BTreeMap<String, String>) -> Result<Self, LabelError> {
        let mut labels = Labels::new();
        for (k, v) in map {
            labels.insert(k, v)?;
        }
        Ok(labels)
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(l: Labels) -> Self {
        l.0
    }
}

/// Why a label filter was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelFilterError {
    #[error("filter {0:?} is not supported; use label=KEY or label=KEY=VALUE")]
    Syntax(String),
    #[error("filter {0:?}: {1}")]
    Label(String, LabelError),
}

/// A label filter: `key` (present) or `key=value` (equal).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelFilter {
    key: String,
    value: Option<String>,
}

impl LabelFilter {
    /// A filter matching volumes that carry `key`, with `value` if given.
    pub fn new(key: impl Into<String>, value: Option<String>) -> Result<Self, LabelError> {
        let key = key.into();
        check_key(&key)?;
        Ok(Self { key, value })
    }

    /// Parses the CLI form `label=KEY` or `label=KEY=VALUE`.
    pub fn parse_cli(s: &str) -> Result<Self, LabelFilterError> {
        let rest = s
            .strip_prefix("label=")
            .ok_or_else(|| LabelFilterError::Syntax(s.to_string()))?;
        let (key, value) = match rest.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (rest, None),
        };
        Self::new(key, value).map_err(|e| LabelFilterError::Label(s.to_string(), e))
    }

    /// Whether `labels` satisfy this filter.
    pub fn matches(&self, labels: &Labels) -> bool {
        match (labels.get(&self.key), &self.value) {
            (Some(v), Some(want)) => v == want,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

impl fmt::Display for LabelFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "label={}={v}", self.key),
            None => write!(f, "label={}", self.key),
        }
    }
}

/// Why a volume filter was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeFilterError {
    #[error(
        "filter {0:?} is not supported; use label=KEY[=VALUE], label!=KEY[=VALUE], name=TEXT, kind=dir|disk or until=TIME"
    )]
    Syntax(String),
    #[error("filter {0:?}: {1}")]
    Label(String, LabelError),
    #[error("filter {0:?}: the kind is dir or disk")]
    Kind(String),
    #[error(
        "filter {0:?}: the time is an RFC 3339 timestamp, a Unix time or a duration such as 24h, 30m or 1h30m"
    )]
    Time(String),
}

/// One condition on volumes, as `docker volume prune --filter` takes them.
/// Several filters combine as docker combines them: every `label`,
/// `label!` and `until` filter must hold; of several `name` filters one
/// must match, and likewise of several `kind` filters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeFilter {
    /// `label=KEY[=VALUE]`: the volume has the label.
    Label(LabelFilter),
    /// `label!=KEY[=VALUE]`: the volume lacks the label (or has another value).
    NotLabel(LabelFilter),
    /// `name=TEXT`: the name contains the text.
    Name(String),
    /// `kind=dir|disk`.
    Kind(VolumeKind),
    /// `until=TIME`: created before this instant.
    Until(SystemTime),
}

/// What a [`VolumeFilter`] looks at.
#[derive(Debug, Clone, Copy)]
pub struct FilterSubject<'a> {
    pub name: &'a str,
    pub kind: VolumeKind,
    pub labels: &'a Labels,
    pub created_at: SystemTime,
}

impl VolumeFilter {
    /// Parses `label=..`, `label!=..`, `name=..`, `kind=..` or `until=..`;
    /// a relative `until` counts back from now.
    pub fn parse_cli(s: &str) -> Result<Self, VolumeFilterError> {
        Self::parse_cli_at(s, SystemTime::now())
    }

    /// As [`parse_cli`](Self::parse_cli), counting a relative `until` back
    /// from `now`.
    pub fn parse_cli_at(s: &str, now: SystemTime) -> Result<Self, VolumeFilterError> {
        let syntax = || VolumeFilterError::Syntax(s.to_string());
        // `label!=` first: `label=` alone would not split it.
        let (key, value) = match s.split_once("!=") {
            Some((k, v)) if !k.contains('=') => (format!("{k}!"), v),
            _ => {
                let (k, v) = s.split_once('=').ok_or_else(syntax)?;
                (k.to_string(), v)
            }
        };
        let label = |v: &str| {
            let (k, val) = match v.split_once('=') {
                Some((k, val)) => (k, Some(val.to_string())),
                None => (v, None),
            };
            LabelFilter::new(k, val).map_err(|e| VolumeFilterError::Label(s.to_string(), e))
        };
        match key.as_str() {
            "label" => Ok(Self::Label(label(value)?)),
            "label!" => Ok(Self::NotLabel(label(value)?)),
            "name" => Ok(Self::Name(value.to_string())),
            "kind" => value
                .parse()
                .map(Self::Kind)
                .map_err(|_| VolumeFilterError::Kind(s.to_string())),
            "until" => parse_until(value, now)
                .map(Self::Until)
                .ok_or_else(|| VolumeFilterError::Time(s.to_string())),
            _ => Err(syntax()),
        }
    }

    /// Whether `v` passes all of `filters`, combined as the type's docs say.
    pub fn all_match(filters: &[VolumeFilter], v: &FilterSubject<'_>) -> bool {
        // `None` when no filter of that key is given: the key then passes.
        let any = |m: &dyn Fn(&VolumeFilter) -> Option<bool>| {
            filters
                .iter()
                .filter_map(m)
                .reduce(|a, b| a || b)
                .unwrap_or(true)
        };
        filters.iter().all(|f| match f {
            Self::Label(l) => l.matches(v.labels),
            Self::NotLabel(l) => !l.matches(v.labels),
            Self::Until(t) => v.created_at < *t,
            Self::Name(_) | Self::Kind(_) => true,
        }) && any(&|f| match f {
            Self::Name(n) => Some(v.name.contains(n.as_str())),
            _ => None,
        }) && any(&|f| match f {
            Self::Kind(k) => Some(*k == v.kind),
            _ => None,
        })
    }
}

/// `until`'s time: RFC 3339, a Unix time in seconds (docker's third form),
/// or a duration counted back from `now`.
fn parse_until(s: &str, now: SystemTime) -> Option<SystemTime> {
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Some(t.into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0)
            .then(|| UNIX_EPOCH + Duration::from_secs_f64(secs));
    }
    now.checked_sub(parse_duration(s)?)
}

/// A Go-style duration as docker reads it: one or more decimal numbers
/// each with a unit of h, m, s, ms, us or ns (`1h30m`, `1.5h`, `90s`).
fn parse_duration(s: &str) -> Option<Duration> {
    let mut rest = s;
    let mut total = 0f64;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * seconds;
    }
    Duration::try_from_secs_f64(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_rules() {
        let mut l = Labels::new();
        l.insert("team", "storage").unwrap();
        l.insert_pair("empty=").unwrap();
        l.insert_pair("eq=a=b").unwrap();
        assert_eq!(l.get("eq"), Some("a=b"));
        assert_eq!(l.get("empty"), Some(""));
        assert_eq!(l.insert("", "x"), Err(LabelError::EmptyKey));
        assert!(matches!(
            l.insert("k".repeat(129), "x"),
            Err(LabelError::KeyTooLong(_))
        ));
        l.insert("k".repeat(128), "v".repeat(1024)).unwrap();
        assert!(matches!(
            l.insert("k", "v".repeat(1025)),
            Err(LabelError::ValueTooLong(_))
        ));
        assert!(matches!(l.insert("a\tb", "x"), Err(LabelError::BadKey(_))));
        assert!(matches!(
            l.insert("k", "a\nb"),
            Err(LabelError::BadValue(_))
        ));
        assert!(matches!(
            l.insert_pair("novalue"),
            Err(LabelError::Syntax(_))
        ));
    }

    #[test]
    fn filters() {
        let mut l = Labels::new();
        l.insert("env", "prod").unwrap();
        assert!(LabelFilter::parse_cli("label=env").unwrap().matches(&l));
        assert!(
            LabelFilter::parse_cli("label=env=prod")
                .unwrap()
                .matches(&l)
        );
        assert!(!LabelFilter::parse_cli("label=env=dev").unwrap().matches(&l));
        assert!(!LabelFilter::parse_cli("label=team").unwrap().matches(&l));
        assert!(
            LabelFilter::parse_cli("label=env=").unwrap().matches(
                &Labels::try_from(
                    [("env".to_string(), String::new())]
                        .into_iter()
                        .collect::<BTreeMap<_, _>>()
                )
                .unwrap()
            )
        );
        assert!(matches!(
            LabelFilter::parse_cli("name=x"),
            Err(LabelFilterError::Syntax(_))
        ));
        assert!(matches!(
            LabelFilter::parse_cli("label="),
            Err(LabelFilterError::Label(..))
        ));
    }

    #[test]
    fn volume_filters() {
        let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let parse = |s: &str| VolumeFilter::parse_cli_at(s, now);
        let mut labels = Labels::new();
        labels.insert("env", "prod").unwrap();
        let v = FilterSubject {
            name: "cache-7",
            kind: VolumeKind::Dir,
            labels: &labels,
            created_at: now - Duration::from_secs(3600),
        };
        let all = |fs: &[&str]| {
            let fs: Vec<_> = fs.iter().map(|f| parse(f).unwrap()).collect();
            VolumeFilter::all_match(&fs, &v)
        };
        assert!(all(&[]));
        assert!(all(&["label=env", "label=env=prod", "label!=team"]));
        assert!(!all(&["label!=env"]));
        assert!(!all(&["label!=env=prod"]));
        assert!(all(&["label!=env=dev"]));
        assert!(all(&["name=cache", "kind=dir"]));
        // Several names or kinds: one must match.
        assert!(all(&["name=nope", "name=-7"]));
        assert!(!all(&["name=nope"]));
        assert!(all(&["kind=disk", "kind=dir"]));
        assert!(!all(&["kind=disk"]));
        // Created an hour before `now`.
        assert!(all(&["until=30m"]));
        assert!(!all(&["until=1h30m"]));
        assert!(!all(&["until=1.5h"]));
        assert!(all(&["until=1970-01-12T13:46:40Z"]));
        assert!(!all(&["until=1970-01-12T12:46:40Z"]));
        assert!(all(&["until=997000"]));
        for bad in [
            "dangling=true",
            "label",
            "kind=zfs",
            "until=",
            "until=yesterday",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
        }
        assert!(matches!(
            parse("label!="),
            Err(VolumeFilterError::Label(..))
        ));
        assert!(matches!(parse("until=5d"), Err(VolumeFilterError::Time(_))));
    }

    #[test]
    fn serde_validates() {
        let bad: Result<Labels, _> = serde_json::from_str(r#"{"": "x"}"#);
        assert!(bad.is_err());
        let good: Labels = serde_json::from_str(r#"{"a": "b"}"#).unwrap();
        assert_eq!(serde_json::to_string(&good).unwrap(), r#"{"a":"b"}"#);
    }
}
