//! Per-target deviations from RFC 7644, as data.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PatchOpCase {
    /// `"op": "replace"` as RFC 7644 writes it.
    #[default]
    Lower,
    /// `"op": "Replace"`, which some targets (Entra-style) require.
    Pascal,
}

/// How a target deviates. Stored on the app as JSON; unknown fields are refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Quirks {
    pub patch_op_case: PatchOpCase,
    pub max_members_per_patch: u32,
    pub page_size: u32,
    pub supports_filter: bool,
}

impl Default for Quirks {
    fn default() -> Self {
        Self {
            patch_op_case: PatchOpCase::Lower,
            max_members_per_patch: 100,
            page_size: 100,
            supports_filter: true,
        }
    }
}

impl Quirks {
    /// An app's `quirks` setting: `{}`/null for the defaults, or an object of flags.
    pub fn from_json(raw: &serde_json::Value) -> Result<Self, String> {
        match raw {
            serde_json::Value::Null => Ok(Self::default()),
            other => serde_json::from_value(other.clone()).map_err(|e| e.to_string()),
        }
    }
}
