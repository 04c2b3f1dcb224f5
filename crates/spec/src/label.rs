use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

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
    fn serde_validates() {
        let bad: Result<Labels, _> = serde_json::from_str(r#"{"": "x"}"#);
        assert!(bad.is_err());
        let good: Labels = serde_json::from_str(r#"{"a": "b"}"#).unwrap();
        assert_eq!(serde_json::to_string(&good).unwrap(), r#"{"a":"b"}"#);
    }
}
